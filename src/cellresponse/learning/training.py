"""Training with PyTorch Lightning: batches from the crop store, the study's loss/optimiser/schedule (the
``train`` stage, stages/train.py, drives it).

The loader hands out uint8 crops straight from the memory-mapped store (one fancy-index per batch);
conversion to float, the resize to the model's input size (224 px in the study), normalisation
(mean 0.5 / std 0.5), augmentation and ``channels_last`` happen on the device, batch-wise.

``history.csv`` holds one row per epoch: epoch, train_loss, train_accuracy, val_loss, val_accuracy,
learning_rate, seconds (the study's Table 1).
"""

from __future__ import annotations

import csv
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from cellresponse.config import Config, CropConfig, TrainingConfig
from cellresponse.features.crop_store import CropStore
from cellresponse.input.io import atomic_path
from cellresponse.input.transforms import augment_batch, prepare_batch
from cellresponse.networks.model import CellResponseNet

log = logging.getLogger(__name__)
# Seconds between training's progress lines (BatchProgress).
PROGRESS_SECONDS = 60.0


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


@dataclass
class CellSet:
    """One side of the split: store rows, standardised table rows and class codes of its cells (rows and codes as
    narrow as they fit: a screen's training side is millions of cells)."""

    rows: np.ndarray
    features: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


class CropBatches(Dataset):
    """Indexed by a *list* of positions: one memory-map read per batch, not one per cell."""

    def __init__(self, store: CropStore, cells: CellSet):
        self.store, self.cells = store, cells

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        at = np.asarray(positions)
        return {
            "crops": torch.from_numpy(self.store.batch(self.cells.rows[at])),
            "table": torch.from_numpy(self.cells.features[at]),
            "target": torch.from_numpy(self.cells.targets[at].astype(np.int64)),
        }


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of positions, reshuffled per epoch from the seed (deterministic), split across DDP ranks."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _positions(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.world > 1:  # equal shares per rank (DDP needs the same number of steps everywhere)
            per_rank = math.ceil(self.n / self.world)
            order = np.resize(order, per_rank * self.world)[self.rank :: self.world]
        return order

    def _sizes(self, n: int) -> list[int]:
        sizes = [min(self.batch_size, n - start) for start in range(0, n, self.batch_size)]
        if self.shuffle and len(sizes) > 1 and sizes[-1] < 2:
            sizes.pop()  # BatchNorm cannot train on a batch of one cell; it comes back next epoch
        return sizes

    def __iter__(self) -> Iterator[list[int]]:
        order = self._positions()
        for i, size in enumerate(self._sizes(len(order))):
            start = i * self.batch_size
            yield order[start : start + size].tolist()

    def __len__(self) -> int:
        return len(self._sizes(math.ceil(self.n / self.world) if self.world > 1 else self.n))


def make_loader(
    store: CropStore,
    cells: CellSet,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    sampler = ShardedBatchSampler(len(cells), batch_size, shuffle, seed, rank, world)
    return DataLoader(
        CropBatches(store, cells),
        sampler=sampler,
        batch_size=None,  # the sampler yields whole batches
        num_workers=workers,
        persistent_workers=workers > 0,
    )


# --------------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------------


class CellResponseModule(L.LightningModule):
    def __init__(self, n_features: int, n_classes: int, config: dict[str, Any]):
        super().__init__()
        # Plain dicts only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters({"n_features": n_features, "n_classes": n_classes, "config": config})
        cfg = Config.model_validate(config)
        self.training_config: TrainingConfig = cfg.training
        self.crop_config: CropConfig = cfg.crops
        self.model = CellResponseNet.from_config(n_features, n_classes, cfg.training, cfg.model)
        if cfg.training.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # see inference
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=cfg.training.label_smoothing)
        self._augment_generator = torch.Generator().manual_seed(cfg.seed)

    def forward(self, crops: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        c = self.crop_config
        x = prepare_batch(crops, c.size, c.mean, c.std, self.training_config.channels_last)
        return self.model.forward_crops(x, table)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        crops = batch["crops"]
        if stage == "train" and self.training_config.augment:
            crops = augment_batch(crops, self._augment_generator)
        logits = self(crops, batch["table"])
        loss = self.loss(logits, batch["target"])
        accuracy = (logits.argmax(1) == batch["target"]).float().mean()
        size = len(batch["target"])
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log(f"{stage}_accuracy", accuracy, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        t = self.training_config
        optimizer = torch.optim.Adam(self.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class EpochHistory(L.Callback):
    """Writes ``history.csv`` (the study's Table 1) after every epoch; a resumed run appends to it."""

    FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")

    def __init__(self, path: Path):
        self.path = Path(path)
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if isinstance(sampler, ShardedBatchSampler):
            sampler.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {
            "epoch": trainer.current_epoch + 1,
            "train_loss": metrics.get("train_loss"),
            "train_accuracy": metrics.get("train_accuracy"),
            "val_loss": metrics.get("val_loss"),
            "val_accuracy": metrics.get("val_accuracy"),
            "learning_rate": trainer.optimizers[0].param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - self._started, 2),
        }
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        log.info(
            "epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f (%.0f s)",
            row["epoch"],
            row["train_loss"] or float("nan"),
            row["train_accuracy"] or float("nan"),
            row["val_loss"] or float("nan"),
            row["val_accuracy"] or float("nan"),
            row["seconds"],
        )


class BatchProgress(L.Callback):
    """A line every ``every`` seconds while an epoch trains — batches done, cells/s, time left in the epoch — so a
    long first epoch (5 to 35 minutes on a 440-field run on 2 cores) shows life before its epoch line."""

    def __init__(self, every: float = PROGRESS_SECONDS):
        self.every = every
        self._started = self._last = time.perf_counter()
        self._cells = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self._last = time.perf_counter()
        self._cells = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._cells += len(batch["target"])
        now = time.perf_counter()
        if trainer.global_rank != 0 or now - self._last < self.every:
            return
        self._last = now
        done, total = batch_idx + 1, trainer.num_training_batches
        rate = self._cells / max(now - self._started, 1e-9)
        left = (now - self._started) / done * (total - done) if isinstance(total, int) else float("nan")
        log.info(
            "epoch %d: batch %d of %s, %.0f cells/s, about %s left in the epoch",
            trainer.current_epoch + 1,
            done,
            total,
            rate,
            f"{left / 60:.1f} min" if left == left else "?",
        )


def _quiet_lightning() -> None:
    # Lightning sets its loggers to INFO and adds handlers at import; its banners are not news here.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    # A resumed run trains into the folder that holds its own checkpoints: that is the point, not a hazard.
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


def build_trainer(config: Config, checkpoints: Path, history: Path) -> L.Trainer:
    """Lightning trainer with early stopping, best/last checkpoints in ``checkpoints`` and the per-epoch
    ``history`` CSV; DDP when several devices or nodes are asked for."""
    _quiet_lightning()
    t = config.training
    distributed = (t.devices not in ("auto", 1, "1") and str(t.devices) != "1") or t.num_nodes > 1
    callbacks = [
        L.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience, mode="min"),
        L.pytorch.callbacks.ModelCheckpoint(
            dirpath=checkpoints,
            filename="best",
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        ),
        EpochHistory(history),
        BatchProgress(),
    ]
    return L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if distributed else "auto",
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,  # EpochHistory logs one line per epoch; Lightning's bars added ~14 KB of output
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # ShardedBatchSampler shards by rank itself
        default_root_dir=str(checkpoints.parent),
        deterministic="warn" if t.deterministic else False,
        benchmark=not t.deterministic,  # cuDNN picks the fastest kernels for the fixed input size
        precision=t.precision,
    )


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators (and loader workers) from one seed. PYTHONHASHSEED is not set: it only
    takes effect when the interpreter starts, and nothing here depends on str hashing order."""
    L.seed_everything(seed, workers=True, verbose=False)


class CellDataModule(L.LightningDataModule):
    def __init__(self, store: CropStore, train: CellSet, val: CellSet, config: Config):
        super().__init__()
        self.store, self.train, self.val, self.config = store, train, val, config

    def _loader(self, cells: CellSet, shuffle: bool) -> DataLoader:
        t = self.config.training
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        loader = make_loader(self.store, cells, t.batch_size, shuffle, self.config.seed, t.num_workers, rank, world)
        if world > 1:
            log.info("process %d/%d: %d %s batches", rank, world, len(loader), "training" if shuffle else "validation")
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

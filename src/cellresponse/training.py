"""Training with PyTorch Lightning: batches from the crop store, the study's loss/optimiser/schedule.

The loader hands out uint8 crops straight from the memory-mapped store (one fancy-index per batch);
conversion to float, the resize to the model's input size (224 px in the study), normalisation
(mean 0.5 / std 0.5), augmentation and ``channels_last`` happen on the device, batch-wise.

Outputs in ``RUN/model/``:

    checkpoints/best.ckpt, checkpoints/last.ckpt   Lightning checkpoints (resume from last)
    history.csv      one row per epoch: epoch, train_loss, train_accuracy, val_loss, val_accuracy,
                     learning_rate, seconds (the study's Table 1)
    split.parquet    image_id, side (train / validation / test) — evaluation uses the same split
    split.json       what the split could and could not do (leaky / untestable classes, counts)
    bundle/          the model bundle (bundle.py): everything `predict` needs
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from cellresponse.config import Config, CropConfig, TrainingConfig
from cellresponse.model import IMAGE_CHANNELS, CellResponseNet
from cellresponse.store import CropStore

log = logging.getLogger(__name__)

# Positions of the flow vectors inside the flow half: flips and transposes must move them too.
FLOW_DY, FLOW_DX = 0, 1


# --------------------------------------------------------------------------------------------------
# batches on the device (pure tensor functions)
# --------------------------------------------------------------------------------------------------


def prepare_batch(crops: torch.Tensor, crop_config: CropConfig, channels_last: bool = True) -> torch.Tensor:
    """uint8 ``(B, 8, S, S)`` → float ``(B, 8, size, size)``, normalised with the study's mean/std."""
    x = crops.float().div_(255.0)
    if x.shape[-1] != crop_config.size:
        x = F.interpolate(x, size=(crop_config.size, crop_config.size), mode="bilinear", align_corners=False)
    x = (x - crop_config.mean) / crop_config.std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips and transposes (all 8 symmetries of the square), per crop, on stored values.

    The flow vectors turn with the image: a horizontal flip negates dX, a vertical flip dY, a
    transpose swaps them. Values are stored as (v + 1) / 2 in [0, 1] (uint8: × 255), so negation
    is ``top - value`` and exact on uint8.
    """
    top = 255 if x.dtype == torch.uint8 else 1.0
    flips = torch.rand(x.shape[0], 3, generator=generator).lt(0.5).to(x.device)
    dy, dx = IMAGE_CHANNELS + FLOW_DY, IMAGE_CHANNELS + FLOW_DX
    x = x.clone()
    sel = flips[:, 0]
    if sel.any():  # horizontal flip
        x[sel] = x[sel].flip(-1)
        x[sel, dx] = top - x[sel, dx]
    sel = flips[:, 1]
    if sel.any():  # vertical flip
        x[sel] = x[sel].flip(-2)
        x[sel, dy] = top - x[sel, dy]
    sel = flips[:, 2]
    if sel.any():  # transpose
        order = [*range(IMAGE_CHANNELS), dx, dy, *range(IMAGE_CHANNELS + 2, x.shape[1])]
        x[sel] = x[sel].transpose(-1, -2)[:, order]
    return x


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


@dataclass
class CellSet:
    """One side of the split: store rows, standardised table rows and class codes of its cells."""

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
        positions = np.asarray(positions)
        return {
            "crops": torch.from_numpy(self.store.batch(self.cells.rows[positions])),
            "table": torch.from_numpy(self.cells.features[positions]),
            "target": torch.from_numpy(self.cells.targets[positions]),
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

    def __iter__(self):
        order = self._positions()
        for i, size in enumerate(self._sizes(len(order))):
            start = i * self.batch_size
            yield order[start : start + size].tolist()

    def __len__(self) -> int:
        return len(self._sizes(math.ceil(self.n / self.world) if self.world > 1 else self.n))


def make_loader(
    store: CropStore, cells: CellSet, batch_size: int, shuffle: bool, seed: int, workers: int = 0, rank=0, world=1
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
        self.model = CellResponseNet(
            n_features,
            n_classes,
            tabular_hidden=cfg.training.tabular_hidden,
            dropout=cfg.training.dropout,
            attention_hidden=cfg.training.attention_hidden,
            projection=cfg.training.projection,
            pretrained_weights=cfg.training.pretrained_weights,
        )
        if cfg.training.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=cfg.training.label_smoothing)
        self._augment_generator = torch.Generator().manual_seed(cfg.seed)

    def forward(self, crops: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        x = prepare_batch(crops, self.crop_config, self.training_config.channels_last)
        return self.model(x[:, :IMAGE_CHANNELS], x[:, IMAGE_CHANNELS:], table)

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

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
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

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if isinstance(sampler, ShardedBatchSampler):
            sampler.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
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
        from cellresponse.io import atomic_path

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


def _quiet_lightning() -> None:
    # Lightning sets its loggers to INFO and adds handlers at import; its banners are not news here.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def build_trainer(config: Config, model_dir: Path, progress: bool = True) -> L.Trainer:
    _quiet_lightning()
    t = config.training
    distributed = (t.devices not in ("auto", 1, "1") and str(t.devices) != "1") or t.num_nodes > 1
    callbacks = [
        L.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience, mode="min"),
        L.pytorch.callbacks.ModelCheckpoint(
            dirpath=model_dir / "checkpoints",
            filename="best",
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        ),
        EpochHistory(model_dir / "history.csv"),
    ]
    return L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if distributed else "auto",
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # ShardedBatchSampler shards by rank itself
        default_root_dir=str(model_dir),
        deterministic=True,
    )


def seed_everything(seed: int) -> None:
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    L.seed_everything(seed, workers=True, verbose=False)


# --------------------------------------------------------------------------------------------------
# the train stage (I/O)
# --------------------------------------------------------------------------------------------------


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


def is_main_process() -> bool:
    """False inside the extra processes Lightning's DDP launcher starts (they rerun the command)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def feature_columns(cells) -> list[str]:
    """Table-branch columns: the study's shape/intensity features plus the per-channel and compartment ones."""
    from cellresponse.measure import FEATURE_PREFIXES, FEATURES

    extra = sorted(c for c in cells.columns if c.startswith(FEATURE_PREFIXES))
    return [c for c in FEATURES if c in cells.columns] + extra


def labelled_images(run, config: Config):
    """The image table restricted to images with a label; clear errors when training is impossible."""
    import pandas as pd

    from cellresponse.errors import InputError
    from cellresponse.io import read_parquet

    images = read_parquet(run.require(run.images, "images"))
    label = config.input.label
    if label not in images.columns:
        meta = [c for c in images.columns if c.startswith("Metadata_")]
        raise InputError(f"label column {label!r} is not in the image table; metadata columns: {meta} — use --label")
    values = images[label]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.all():
        raise InputError(f"label column {label!r} is empty for every image — check the metadata join")
    if empty.any():
        log.warning("%d images have no %s and are left out of training and evaluation", int(empty.sum()), label)
    images = images[~empty].reset_index(drop=True)
    images[label] = images[label].astype(str)
    if images[label].nunique() < 2:
        raise InputError(
            f"all {len(images)} images have the same {label} ({images[label].iloc[0]!r}): nothing to learn — "
            "add images of other treatments or choose another --label"
        )
    return pd.DataFrame(images)


def make_split(run, config: Config, images, cells):
    """Down-sample controls and split by group; stored in RUN/model/split.parquet (reused on resume)."""
    import json

    import pandas as pd

    from cellresponse.errors import InputError
    from cellresponse.io import read_parquet, write_json, write_parquet
    from cellresponse.splits import assign_split, downsample_control, log_split

    split_path, report_path = run.model / "split.parquet", run.model / "split.json"
    s = config.split
    settings = {"label": config.input.label, "seed": config.seed, **s.model_dump()}
    if split_path.exists() and report_path.exists():
        report = json.loads(report_path.read_text())
        if report.get("settings", settings) != settings:
            changed = sorted(k for k in settings if report["settings"].get(k) != settings[k])
            raise InputError(
                f"{run.model} was trained on another split ({', '.join(changed)} changed) — "
                "rerun with --overwrite to split and train again"
            )
        return read_parquet(split_path), report
    info: dict[str, Any] = {"applied": False}
    chosen = images
    if s.downsample_control:
        per_image = cells.groupby("image_id").size()
        chosen, info = downsample_control(
            images, per_image, config.input.label, config.input.control_label, config.seed
        )
    side, report = assign_split(
        chosen,
        config.input.label,
        by=s.by,
        column=s.column,
        test_values=s.test_values,
        test_fraction=s.test_fraction,
        validation_fraction=s.validation_fraction,
        stratify=s.stratify,
        seed=config.seed,
    )
    report.downsampling = info
    log_split(report)
    sides = pd.DataFrame({"image_id": chosen["image_id"].astype(str).to_numpy(), "side": side.to_numpy()})
    summary = {**report.to_dict(), "settings": settings}
    if is_main_process():
        write_parquet(split_path, sides)
        write_json(report_path, summary)
    return sides, summary


def cell_sets(cells, sides, images, config: Config, store: CropStore):
    """Encoder, scaler and the train/validation cell sets (validation = test when none was kept)."""
    from cellresponse.errors import InputError
    from cellresponse.splits import TEST, TRAIN, VALIDATION, LabelEncoder, Scaler, count_nonfinite

    label = config.input.label
    side_of = dict(zip(sides["image_id"], sides["side"], strict=True))
    label_of = dict(zip(images["image_id"].astype(str), images[label].astype(str), strict=True))
    cells = cells[cells["image_id"].astype(str).isin(side_of)].copy()
    cells["side"] = cells["image_id"].astype(str).map(side_of)
    cells["true_label"] = cells["image_id"].astype(str).map(label_of)
    train = cells[cells["side"] == TRAIN]
    if train.empty:
        raise InputError("the training side has no cells — check the split settings and the segmentation")
    encoder = LabelEncoder.fit(train["true_label"])
    columns = feature_columns(cells)
    bad = count_nonfinite(cells, columns)
    if bad:
        log.warning("%d NaN/infinite feature values replaced by the training mean", bad)
    scaler = Scaler.fit(train, columns)
    val_side = VALIDATION if (cells["side"] == VALIDATION).any() else TEST
    val = cells[cells["side"] == val_side]
    if val.empty:
        raise InputError("no validation cells: the split left no validation or test images")

    def to_set(part) -> CellSet:
        return CellSet(
            rows=store.rows_for(part["cell_id"].astype(str)),
            features=scaler.transform(part),
            targets=encoder.transform(part["true_label"]),
        )

    val = val[encoder.transform(val["true_label"]) >= 0]  # classes never trained on cannot be scored
    return encoder, scaler, to_set(train), to_set(val), val_side


def label_to_target(images, config: Config) -> dict[str, str]:
    """Compound → gene target, when every compound has exactly one target (CPJUMP1-style metadata)."""
    column = config.input.target_column
    if column not in images.columns:
        return {}
    pairs = images[[config.input.label, column]].dropna().astype(str).drop_duplicates()
    if pairs[config.input.label].duplicated().any():
        return {}
    return dict(zip(pairs[config.input.label], pairs[column], strict=True))


def stage_train(run, config: Config, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train the network on RUN/crops and write RUN/model (checkpoints, history, split, bundle)."""
    import shutil

    from cellresponse.bundle import save_bundle
    from cellresponse.io import read_parquet, write_json
    from cellresponse.pipeline import crop_settings, record_stage
    from cellresponse.plate import channel_names

    started = time.perf_counter()
    if overwrite and run.model.exists() and is_main_process():
        shutil.rmtree(run.model)
    run.model.mkdir(parents=True, exist_ok=True)
    images = labelled_images(run, config)
    cells = read_parquet(run.require(run.cells, "measure"))
    store = CropStore(run.crops)
    sides, report = make_split(run, config, images, cells)
    encoder, scaler, train, val, val_side = cell_sets(cells, sides, images, config, store)
    log.info(
        "training on %d cells, validating on %d (%s side), %d classes, %d table features",
        len(train),
        len(val),
        val_side,
        len(encoder.classes),
        len(scaler.columns),
    )
    seed_everything(config.seed)
    module = CellResponseModule(len(scaler.columns), len(encoder.classes), config.to_dict())
    data = CellDataModule(store, train, val, config)
    trainer = build_trainer(config, run.model, progress)
    last = run.model / "checkpoints" / "last.ckpt"
    resume = last if last.exists() else None
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    best = run.model / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best if best.exists() else last, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    names = channel_names(read_parquet(run.images))
    save_bundle(
        run.model / "bundle",
        module.model.cpu(),
        encoder,
        scaler,
        config,
        crop_settings(config, names),
        names,
        label_to_target(images, config),
        extra={"validation_side": val_side, "best_checkpoint_epoch": checkpoint.get("epoch")},
    )
    save_features_model(run.model / "bundle", cells, images, sides, config)
    history = read_history(run.model / "history.csv")
    summary = {
        "cells_train": len(train),
        "cells_validation": len(val),
        "validation_side": val_side,
        "classes": len(encoder.classes),
        "epochs": len(history),
        "best_val_loss": min((h["val_loss"] for h in history), default=None),
        "split": {k: report.get(k) for k in ("by", "images", "leaky_classes", "untestable_classes")},
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(run.model / "train.json", summary)
    record_stage(run, "train", summary, [])
    return summary


def save_features_model(bundle_dir: Path, cells, images, sides, config: Config) -> None:
    """The features-only model (fitted on the non-test images, as `evaluate` scores it) beside the CNN in
    the bundle, so `predict --model features` can use it where it is the better of the two."""
    from cellresponse.evaluation import fit_features_model, image_feature_table
    from cellresponse.io import write_json
    from cellresponse.splits import TEST

    train_ids = sides.loc[sides["side"] != TEST, "image_id"].astype(str)
    labels = images.set_index(images["image_id"].astype(str))[config.input.label]
    features = image_feature_table(cells[cells["image_id"].astype(str).isin(set(train_ids))], feature_columns(cells))
    if labels.loc[features.index].nunique() < 2:
        return
    model = fit_features_model(features, labels.loc[features.index].to_numpy())
    write_json(bundle_dir / "features_model.json", model)


def read_history(path: Path) -> list[dict[str, float]]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return [
            {k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in csv.DictReader(handle)
        ]

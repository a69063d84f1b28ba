"""Benchmark: the study preset's training throughput on one GPU (224 px input, batch 512, two EfficientNet-B0s).

Prints, all measured in this one run on one GPU, through the `train` stage's own path (crop store → DataLoader →
`build_trainer`'s Lightning trainer → `CellResponseModule`), for each setting (precision, deterministic kernels,
loader workers):
  * training cells/s after a warm-up, peak GPU memory, and one epoch of the study's plate projected from it;
  * the bare model step on a batch already on the GPU, and real/bare (is the GPU fed by the loader?);
  * the crop-store loader alone (cells/s), and whether strict determinism (torch's error mode) can train at all.

The crops are real (a crop store of BBBC021 fields, tiled to the cells needed); features and labels are random —
throughput does not depend on them. 250 classes, as the study's 249 compounds + DMSO.

Usage: python benchmarks/gpu_train.py [--store RUN/crops] [--steps 12] [--epoch-cells N] [--json FILE]
Without --store, one is built from 16 real BBBC021 fields (needs ../shared/data). --epoch-cells defaults to the
study plate's training side at the study's settings (needs ../shared/data; 427,322 at 189.5 cells a field).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from common import SHARED, prepared_run

from cellresponse.config import Config, load_config
from cellresponse.features.crop_store import CropStore
from cellresponse.learning.training import CellDataModule, CellResponseModule, CellSet, build_trainer, make_loader

N_FEATURES, N_CLASSES = 12, 250
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPJUMP1_CELLS_PER_FIELD = 9096 / 48  # the plate-scale benchmark's real CPJUMP1 fields


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last one, the GPU synchronised at both."""

    def __init__(self, warmup: int, batches: int):
        self.warmup, self.batches = warmup, batches
        self.started = self.seconds = float("nan")

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _sync()
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batches - 1:
            _sync()
            self.seconds = time.perf_counter() - self.started


def cell_sets(store: CropStore, n_train: int, n_val: int) -> tuple[CellSet, CellSet]:
    rng = np.random.default_rng(0)
    rows = np.arange(len(store))

    def one(n: int) -> CellSet:
        return CellSet(
            np.resize(rng.permutation(rows), n),
            rng.normal(size=(n, N_FEATURES)).astype(np.float32),
            rng.integers(0, N_CLASSES, n),
        )

    return one(n_train), one(n_val)


def study_config(precision: str, deterministic: bool, workers: int, smoke: list[str]) -> Config:
    """The study's settings (no preset) on one GPU; ``smoke`` overrides them for a CPU check of this script."""
    return load_config(
        None,
        None,
        [
            "training.max_epochs=1",
            "training.accelerator=gpu",
            "training.devices=1",
            f"training.precision={precision}",
            f"training.deterministic={str(deterministic).lower()}",
            f"training.num_workers={workers}",
            *smoke,
        ],
    )


def lightning_rate(store: CropStore, config: Config, warmup: int, steps: int, folder: Path) -> dict:
    """One Lightning epoch of (warmup + steps) batches through the `train` stage's trainer."""
    batch = config.training.batch_size
    train, val = cell_sets(store, (warmup + steps) * batch, batch)
    L.seed_everything(0, verbose=False)
    module = CellResponseModule(N_FEATURES, N_CLASSES, config.to_dict())
    trainer = build_trainer(config, folder / "checkpoints", folder / "history.csv")
    timer = StepTimer(warmup, warmup + steps)
    trainer.callbacks.append(timer)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=CellDataModule(store, train, val, config))
    result = {
        "cells_per_s": steps * batch / timer.seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan"),
    }
    del trainer, module
    return result


def bare_rate(store: CropStore, config: Config, warmup: int, steps: int) -> float:
    """The same module's step on one batch already on the GPU: no loader, no Lightning."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    batch_size = config.training.batch_size
    cells, _ = cell_sets(store, batch_size, 1)
    crops = torch.from_numpy(store.batch(cells.rows)).to(DEVICE)
    table = torch.from_numpy(cells.features).to(DEVICE)
    target = torch.from_numpy(cells.targets).to(DEVICE)
    module = CellResponseModule(N_FEATURES, N_CLASSES, config.to_dict()).to(DEVICE).train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, weight_decay=1e-4)
    bf16 = config.training.precision == "bf16-mixed"

    def step() -> None:
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            loss = module.loss(module(crops, table), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return steps * batch_size / (time.perf_counter() - started)


def loader_rate(store: CropStore, batch: int, batches: int, workers: int) -> float:
    cells, _ = cell_sets(store, batch * batches, 1)
    loader = make_loader(store, cells, batch, shuffle=True, seed=0, workers=workers)
    started, seen = time.perf_counter(), 0
    for item in loader:
        seen += len(item["target"])
    return seen / (time.perf_counter() - started)


def strict_determinism_error(store: CropStore, smoke: list[str]) -> str:
    """Whether torch's error mode (Lightning's deterministic=True) can run one training step on the GPU."""
    config = study_config("32-true", True, 0, smoke)
    cells, _ = cell_sets(store, 8, 1)
    module = CellResponseModule(N_FEATURES, N_CLASSES, config.to_dict()).to(DEVICE).train()
    torch.use_deterministic_algorithms(True)
    try:
        logits = module(
            torch.from_numpy(store.batch(cells.rows)).to(DEVICE), torch.from_numpy(cells.features).to(DEVICE)
        )
        module.loss(logits, torch.from_numpy(cells.targets).to(DEVICE)).backward()
        _sync()
        return "trains"
    except RuntimeError as error:
        return "fails: " + str(error).splitlines()[0][:160]
    finally:
        torch.use_deterministic_algorithms(False)


def build_store(folder: Path) -> Path:
    data = SHARED / "bbbc021-moa" / "load_data.csv"
    if not data.is_file():
        raise SystemExit(f"no --store and no data to build one: {data} (needs ../shared/data)")
    config = load_config(None, None, ["segmentation.backend=offline", "input.label=Metadata_Compound"])
    return prepared_run(data, 16, folder, config, ("segment", "measure", "crops")).crops


def epoch_cells_default() -> int | None:
    if not (SHARED / "cpjump1" / "metadata").is_dir():
        return None
    from common import study_epoch_cells

    return study_epoch_cells(CPJUMP1_CELLS_PER_FIELD, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="a crop store (RUN/crops) at the study's store size (96 px)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed batches per setting")
    parser.add_argument("--epoch-cells", type=int, help="cells in one epoch of the study plate's training side")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="a tiny CPU run that checks this script, no figures")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("no CUDA GPU here: this benchmark measures GPU training (--smoke checks it on the CPU)")
    smoke = ["training.accelerator=cpu", "crops.size=32", "training.batch_size=8"] if args.smoke else []
    epoch_cells = args.epoch_cells or epoch_cells_default()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = CropStore(args.store or build_store(tmp))
        name = torch.cuda.get_device_properties(0).name if DEVICE == "cuda" else "CPU (smoke run)"
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if DEVICE == "cuda" else 0
        print(f"{name}, {memory:.0f} GiB, torch {torch.__version__}, lightning {L.__version__}")
        print(f"crop store: {len(store)} real cells at {store.store_size} px (tiled to the batches needed)")
        results: dict = {"device": name, "torch": torch.__version__, "epoch_cells": epoch_cells}
        results["strict_determinism"] = strict_determinism_error(store, smoke)
        print(f"torch's strict determinism (Lightning deterministic=True): {results['strict_determinism']}")
        batch = study_config("32-true", True, 0, smoke).training.batch_size
        results["loader_cells_per_s"] = {w: loader_rate(store, batch, 16, w) for w in (0, 4)}
        print("crop-store loader alone: " + ", ".join(f"{v:.0f} cells/s ({w} workers)" for w, v in
                                                       results["loader_cells_per_s"].items()))  # fmt: skip

        settings = [
            ("32-true", True, 0),
            ("32-true", False, 0),
            ("bf16-mixed", False, 0),
            ("bf16-mixed", False, 4),
        ]
        rows = []
        for precision, deterministic, workers in settings:
            config = study_config(precision, deterministic, workers, smoke)
            row = {"precision": precision, "deterministic": deterministic, "workers": workers}
            try:
                row |= lightning_rate(store, config, args.warmup, args.steps, tmp / f"fit{len(rows)}")
                if not deterministic and workers == 0:
                    row["bare_cells_per_s"] = bare_rate(store, config, args.warmup, args.steps)
            except torch.cuda.OutOfMemoryError as error:
                row["error"] = "out of GPU memory: " + str(error).splitlines()[0][:120]
            gc.collect()
            torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
        results["settings"] = rows

    print(f"\nstudy preset: 224 px input from 96 px crops, batch 512, 2 × EfficientNet-B0 from scratch, {N_CLASSES} "
          f"classes; {args.steps} timed batches after {args.warmup}")  # fmt: skip
    print(f"{'precision':<11}{'determ.':>8}{'workers':>8}{'cells/s':>9}{'bare':>8}{'real/bare':>10}{'peak GiB':>9}"
          f"{'study epoch':>13}")  # fmt: skip
    for r in rows:
        if "error" in r:
            print(f"{r['precision']:<11}{r['deterministic']!s:>8}{r['workers']:>8}  {r['error']}")
            continue
        bare = r.get("bare_cells_per_s")
        bare_text, ratio = (f"{bare:.0f}", f"{r['cells_per_s'] / bare:.2f}") if bare else ("-", "-")
        epoch = f"{epoch_cells / r['cells_per_s'] / 60:.1f} min" if epoch_cells else "n/a"
        print(
            f"{r['precision']:<11}{r['deterministic']!s:>8}{r['workers']:>8}{r['cells_per_s']:>9.0f}"
            f"{bare_text:>8}{ratio:>10}{r['peak_gib']:>9.1f}{epoch:>13}"
        )
    if epoch_cells:
        print(f"study epoch: {epoch_cells} training cells (the study plate's training side at its settings)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

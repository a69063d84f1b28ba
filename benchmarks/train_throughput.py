"""Benchmark: is training fed fast enough, and how much does the crop store save?

Prints, all measured in this one run on real BBBC021 fields:
  * training crops/s through the real loader (crop store → DataLoader → device prep → model step)
    divided by the bare model step on the same batch already in memory (goal >= 0.9);
  * crops/s of the crop-store loader divided by a study-style loader that re-reads the full
    mask and flow TIFFs (and the image) for every cell and cuts + resizes its crop (goal >= 10x).

Usage: python benchmarks/train_throughput.py [--images 60] [--size 48] [--batch 64] [--steps 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import SHARED, prepared_run

from cellresponse.config import load_config
from cellresponse.features.crop_store import CropStore
from cellresponse.features.crops import cell_crops
from cellresponse.input.channels import apply_recipe, load_stack
from cellresponse.input.io import read_parquet, read_tiff
from cellresponse.input.plate import channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.input.transforms import flow_planes, prepare_batch, to_unit
from cellresponse.learning.training import CellResponseModule, CellSet, make_loader

DEFAULT_DATA = SHARED / "bbbc021-moa" / "load_data.csv"


def _model_step(module, optimizer, crops, table, target) -> None:
    c = module.crop_config
    x = prepare_batch(crops, c.size, c.mean, c.std, module.training_config.channels_last)
    logits = module.model.forward_crops(x, table)
    loss = module.loss(logits, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def study_style_batch(run: RunFolder, rows: dict[str, dict], cells: pd.DataFrame, names, config, scales) -> np.ndarray:
    """What a loader without a crop store does per cell: read the field's TIFFs, cut, resize."""
    out = []
    for cell in cells.itertuples():
        row = rows[cell.image_id]
        labels = read_tiff(run.mask_path(cell.image_id))
        flows = read_tiff(run.flow_path(cell.image_id))
        seg = apply_recipe(load_stack(row, names), config.segmentation.input, names)
        lo, hi = scales[str(row["plate"])][0]
        bbox = np.array([[cell.bbox_min_row, cell.bbox_min_col, cell.bbox_max_row, cell.bbox_max_col]])
        out.append(
            cell_crops(
                labels,
                [cell.label],
                bbox,
                to_unit(seg, lo, hi)[None],
                flow_planes(flows, False),
                config.crops.store_size,
            )[0]
        )
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=48, help="model input size (the study: 224)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"data not found: {args.data} (needs ../shared/data)")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            None,
            "cpu",
            [
                "segmentation.backend=offline",
                f"crops.store_size={args.size}",
                f"crops.size={args.size}",
                f"training.batch_size={args.batch}",
                "input.label=Metadata_Compound",
            ],
        )
        run = prepared_run(args.data, args.images, Path(tmp), config, ("segment", "measure", "crops"))
        store = CropStore(run.crops)
        cells = read_parquet(run.cells)
        n = len(cells)
        features = np.random.default_rng(0).normal(size=(n, 12)).astype(np.float32)
        targets = np.random.default_rng(1).integers(0, 6, n)
        cellset = CellSet(store.rows_for(cells), features, targets)
        module = CellResponseModule(12, 6, config.to_dict())
        module.train()
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

        loader = make_loader(store, cellset, args.batch, shuffle=True, seed=0)
        batches = iter(loader)
        first = next(batches)
        for _ in range(2):  # warm-up (allocator, kernels)
            _model_step(module, optimizer, first["crops"], first["table"], first["target"])

        started = time.perf_counter()
        for _ in range(args.steps):
            _model_step(module, optimizer, first["crops"], first["table"], first["target"])
        bare = args.steps * args.batch / (time.perf_counter() - started)

        started, seen = time.perf_counter(), 0
        for step, batch in enumerate(loader):
            if step >= args.steps:
                break
            _model_step(module, optimizer, batch["crops"], batch["table"], batch["target"])
            seen += len(batch["target"])
        real = seen / (time.perf_counter() - started)

        # loaders alone: the crop store vs re-reading TIFFs per cell
        started, seen = time.perf_counter(), 0
        for step, batch in enumerate(loader):
            if step >= args.steps:
                break
            seen += len(batch["target"])
        store_rate = seen / (time.perf_counter() - started)
        import json

        scales = json.loads((run.crops / "settings.json").read_text())["scales"]
        images = read_parquet(run.images)
        rows = {r["image_id"]: r for r in images.to_dict("records")}
        names = channel_names(images)
        sample = cells.sample(min(2 * args.batch, n), random_state=0)
        started = time.perf_counter()
        study_style_batch(run, rows, sample, names, config, scales)
        study_rate = len(sample) / (time.perf_counter() - started)

    print(f"cells in store: {n}, crops {args.size}px, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"bare model step (batch in memory):  {bare:8.1f} crops/s")
    print(f"training through the real loader:   {real:8.1f} crops/s")
    print(f"ratio real/bare:                    {real / bare:8.2f}   (goal >= 0.9)")
    print(f"crop-store loader:                  {store_rate:8.1f} crops/s")
    print(f"study-style loader (TIFF per cell): {study_rate:8.1f} crops/s")
    print(f"ratio store/study-style:            {store_rate / study_rate:8.1f}x  (goal >= 10x)")


if __name__ == "__main__":
    main()

"""Benchmark: a whole CPJUMP1 plate on a small machine — every per-image stage on N real 1080×1080 fields.

Builds a plate folder of N fields under Phenix names, each hard-linked to one of the two real 5-channel CPJUMP1
fields in ../shared/data/cpjump1/fields (ch1-ch5), runs `segment`, `measure`, `crops` and `embed` with the
defaults (each as the CLI runs it, `--workers W`), then two training epochs with the CPU preset, and prints per
stage, all measured in this one run:

  * fields/s and cells/s, and the projection for the study's 2,867 fields on this machine: each stage also runs
    on a plate of the first --small fields, so a stage's fixed cost (starting Dask and its workers, imports, the
    main process's own work) is told from its cost per field — projected = fixed + 2,867 × per field;
  * peak RSS of the stage's main process and of its largest worker (sampled every 0.1 s);
  * bytes on disk per cell and per field of each output;
  * the measure stage again without `measurement.extended` (both plates, `--overwrite`, after everything else),
    so that what the extended columns cost is a ratio of two stage runs in this one run;
  * the CPU training epoch of the study's plate, projected from the measured training rate (the slope between one
    epoch at a cap of 56 cells a field and one with every cell) and the cells an epoch sees there (the study's
    metadata, control down-sampling, the split and the cell cap of the preset).

Usage: python benchmarks/plate_scale.py [--fields 48] [--small 8] [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
from common import SHARED, STUDY_FIELDS, study_epoch_cells

from cellresponse.config import load_config

SOURCES = ("BR00143976-r03c03f03", "unlabelled-r01c02f01")  # the real fields with five fluorescence channels
CHANNELS = (1, 2, 3, 4, 5)
STAGES = ("segment", "measure", "crops", "embed")
OUTPUTS = {"segment": ("masks", "flows"), "measure": ("cells",), "crops": ("crops",), "embed": ("embeddings",)}


def build_plate(folder: Path, n_fields: int) -> tuple[Path, Path]:
    """N fields (4 sites a well) hard-linked under Phenix names, and metadata with two labels by well."""
    images = folder / "BENCH" / "Images"
    images.mkdir(parents=True)
    wells = []
    for i in range(n_fields):
        source_dir = SHARED / "cpjump1" / "fields" / SOURCES[i % len(SOURCES)]
        well, site = divmod(i, 4)
        row, col = divmod(well, 24)
        name = f"r{row + 1:02d}c{col + 1:02d}f{site + 1:02d}p01"
        for channel in CHANNELS:
            source = next(source_dir.glob(f"*-ch{channel}sk1fk1fl1.tiff"))
            os.link(source, images / f"{name}-ch{channel}sk1fk1fl1.tiff")
        if site == 0:
            wells.append((f"{chr(ord('A') + row)}{col + 1:02d}", f"label_{well % 2}"))
    metadata = folder / "metadata.csv"
    pd.DataFrame(
        {
            "Metadata_Plate": "BENCH",
            "Metadata_Well": [w for w, _ in wells],
            "Metadata_pert_iname": [x for _, x in wells],
        }
    ).to_csv(metadata, index=False)
    return images.parent, metadata


def run_measured(argv: list[str]) -> dict[str, float]:
    """Run a CLI command; wall seconds and peak RSS (bytes) of its main process and of its largest child."""
    process = subprocess.Popen([sys.executable, "-m", "cellresponse.cli", *argv], stderr=subprocess.PIPE, text=True)
    peak = {"main": 0, "worker": 0}
    watched = psutil.Process(process.pid)

    def sample() -> None:
        while process.poll() is None:
            try:
                peak["main"] = max(peak["main"], watched.memory_info().rss)
                for child in watched.children(recursive=True):
                    peak["worker"] = max(peak["worker"], child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    thread.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    thread.join()
    if process.returncode != 0:
        raise SystemExit(f"cellresponse {' '.join(argv)} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, "rss_main": peak["main"], "rss_worker": peak["worker"]}


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_stages(base: Path, fields: int, small_fields: int, common: list[str]) -> tuple[dict, dict, Path]:
    """Every per-image stage on the plate of ``fields`` fields and on the small one, measured; the plate's run."""
    results, small = {}, {}
    for name, n_fields, out in (("small", small_fields, small), ("plate", fields, results)):
        plate, metadata = build_plate(base / name, n_fields)
        run = base / f"run_{name}"
        run_measured(["images", "--images", str(plate / "Images"), "--metadata", str(metadata), "--out", str(run)])
        for stage in STAGES:
            out[stage] = run_measured([stage, str(run), *common])
    return results, small, run


def print_stages(results: dict, small: dict, run: Path, n: int, small_fields: int, cells: int) -> dict[str, float]:
    """The per-stage table (rates, fixed and per-field time, projection, memory, disk) and the goals; returns each
    stage's projected seconds for the study's plate."""
    header = (
        f"{'stage':<9}{'fields/s':>9}{'cells/s':>9}{'fixed':>8}{'per field':>10}{'projected':>11}{'RSS main':>10}"
        f"{'RSS worker':>11}  on disk"
    )
    print(header)
    print("-" * len(header))
    projections = {}
    for stage, r in results.items():
        per_field = (r["seconds"] - small[stage]["seconds"]) / (n - small_fields)
        fixed = max(r["seconds"] - n * per_field, 0.0)
        projections[stage] = fixed + per_field * STUDY_FIELDS
        sizes = {name: folder_bytes(run / name) for name in OUTPUTS[stage]}
        disk = "; ".join(
            f"{name} {size / cells / 1e3:.1f} KB/cell, {size / n / 1e6:.2f} MB/field" for name, size in sizes.items()
        )
        print(
            f"{stage:<9}{n / r['seconds']:>9.2f}{cells / r['seconds']:>9.0f}{fixed:>6.1f} s{per_field:>8.2f} s"
            f"{projections[stage] / 60:>7.1f} min{r['rss_main'] / 1e9:>8.2f} GB{r['rss_worker'] / 1e9:>9.2f} GB  {disk}"
        )
    per_image_total = sum(seconds for stage, seconds in projections.items() if stage != "embed")
    print(f"\nsegment + measure + crops projected: {per_image_total / 60:.1f} min (goal <= 60)")
    peak = max(max(r["rss_main"], r["rss_worker"]) for r in results.values())
    print(f"peak RSS of any process: {peak / 1e9:.2f} GB (goal <= 1.5)")
    crops_per_cell = folder_bytes(run / "crops") / cells
    print(f"crop store: {crops_per_cell / 1e3:.1f} KB per cell (goal <= 40), no second copy: "
          f"{not list((run / 'crops').rglob('*.npy'))}")  # fmt: skip
    return projections


def cpu_training(run: Path, n: int, cells: int, common: list[str]) -> None:
    """The cpu preset's training on the crops cut with the defaults (96-px store, resized to the preset's 32 px):
    one epoch at two cell caps, whose slope is the training rate free of each epoch's fixed cost (validation,
    checkpoint, loader start), which a single short epoch would charge to its few cells."""
    cpu = load_config(preset="cpu")
    training = [f"training.{k}={v}" for k, v in cpu.training.model_dump().items() if v is not None]
    sets = [x for item in [*training, f"crops.size={cpu.crops.size}"] for x in ("--set", item)]
    epochs = {}
    for trial_cap in (56, None):
        shutil.rmtree(run / "model", ignore_errors=True)
        capped = [*sets, "--set", f"training.max_cells_per_image={'null' if trial_cap is None else trial_cap}"]
        train = run_measured(["train", str(run), *capped, "--epochs", "1", "--split-by", "well", *common])
        history = pd.read_csv(run / "model" / "history.csv")
        summary = pd.read_json(run / "model" / "train.json", typ="series")
        epochs[trial_cap] = (int(summary["cells_train"]), float(history["seconds"].iloc[0]), train)
    (few, few_s, _), (many, many_s, train) = epochs[56], epochs[None]
    rate = (many - few) / (many_s - few_s)
    fixed = max(many_s - many / rate, 0.0)
    cap = cpu.training.max_cells_per_image
    epoch_cells = study_epoch_cells(cells / n, cap, "cpu")
    print(
        f"\nCPU training, cpu preset: {rate:.0f} cells/s (one epoch of {few} cells {few_s:.0f} s, of {many} cells "
        f"{many_s:.0f} s: {fixed:.0f} s fixed an epoch; train stage peak RSS {train['rss_main'] / 1e9:.2f} GB)"
    )
    print(
        f"study plate: {epoch_cells} cells an epoch (cap {cap} a field) -> {(fixed + epoch_cells / rate) / 60:.1f} "
        "min an epoch projected (goal <= 30)"
    )


def measure_without_extended(
    base: Path, results: dict, small: dict, projections: dict[str, float], n: int, small_fields: int, common: list[str]
) -> None:
    """The measure stage again without the extended columns (last: it rewrites cells.parquet), and what they cost."""
    plain = {}
    for name in ("small", "plate"):
        argv = ["measure", str(base / f"run_{name}"), *common, "--overwrite", "--set", "measurement.extended=false"]
        plain[name] = run_measured(argv)["seconds"]
    plain_per_field = (plain["plate"] - plain["small"]) / (n - small_fields)
    extended_per_field = (results["measure"]["seconds"] - small["measure"]["seconds"]) / (n - small_fields)
    plain_projected = max(plain["plate"] - n * plain_per_field, 0.0) + plain_per_field * STUDY_FIELDS
    per_image_total = sum(seconds for stage, seconds in projections.items() if stage != "embed")
    without = per_image_total - projections["measure"] + plain_projected
    print(
        f"measure without measurement.extended: {plain_per_field:.2f} s per field, {plain_projected / 60:.1f} min "
        f"projected -> the extended columns cost {extended_per_field / plain_per_field:.2f}x per field; "
        f"segment + measure + crops without them: {without / 60:.1f} min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=48)
    parser.add_argument("--small", type=int, default=8, help="fields of the second plate (fixed cost per stage)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="build the plate and run folder here and keep them")
    args = parser.parse_args()
    if not (SHARED / "cpjump1" / "fields").is_dir():
        raise SystemExit(f"needs the real CPJUMP1 fields in {SHARED / 'cpjump1' / 'fields'}")
    base = args.keep or Path(tempfile.mkdtemp(prefix="plate_scale_"))
    base.mkdir(parents=True, exist_ok=True)
    common = ["--workers", str(args.workers), "--no-progress"]
    results, small, run = run_stages(base, args.fields, args.small, common)
    cells = len(pd.read_parquet(run / "cells.parquet", columns=["image_id"]))
    n = args.fields
    print(f"plate_scale: {n} real 1080×1080 CPJUMP1 fields (ch1-5), {cells} cells ({cells / n:.0f} a field), ")
    print(
        f"defaults, --workers {args.workers}, {os.cpu_count()} cores; projected to the study's {STUDY_FIELDS} fields "
        f"as fixed + per field × {STUDY_FIELDS}, from this plate and one of {args.small} fields\n"
    )
    projections = print_stages(results, small, run, n, args.small, cells)
    cpu_training(run, n, cells, common[2:])
    measure_without_extended(base, results, small, projections, n, args.small, common)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

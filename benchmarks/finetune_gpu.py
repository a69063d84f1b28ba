"""Benchmark: the network fine-tuned from ImageNet on one GPU, BBBC021-moa leave-replicate-out (issue 15).

On two CPU cores the `finetune` preset trains 3 epochs at 48 px (~140 s an epoch); a GPU affords what the CPU could
not: training until early stopping, and a larger input. This script measures whether that lifts the fine-tuned
network to the frozen embeddings' linear model (MoA 0.977 per field both ways, docs/results.md "Which model predicts").

What it does, all through the CLI:
  * one base run: images → segment → measure → crops (`embed` and `profile` stay with the CPU runs: `train` and
    `evaluate` build the measured per-field profiles from the cell table themselves, and the deep ones are not
    needed to score the network);
  * for each candidate setting × label (MoA, compound) × direction (test replicate 2, 1): a copy of the base run and
    `cellresponse run --from train` (train, evaluate, report), all side by side on the one GPU;
  * each label's candidate is chosen on the validation side of the direction train replicate 1 → test replicate 2
    (the README's choosing direction): validation cell accuracy at the kept checkpoint (lowest validation loss);
    the test sides are read only after, and printed for both directions and every candidate.

Prints per run: epochs, the kept epoch's validation accuracy, training seconds and cells/s (runs share the GPU, so a
lower bound of one run alone), and the test side per field / per well for the network, the measured profiles and
the auto model.

Usage: python benchmarks/finetune_gpu.py [--load-data CSV] [--work DIR] [--labels moa compound] [--parallel 4]
       [--candidates 48px 96px] [--start-by SECONDS] [--json FILE] [--smoke]
--candidates: train only these (a single one is scored on both test sides without a choice being made).
--start-by: a label after the first starts only within this many seconds of the script's start (else: not run).
--smoke: a few fields, one epoch, capped cells, on the CPU (checks the script, measures nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from common import SHARED

LABELS = {"moa": "Metadata_MoA", "compound": "Metadata_Compound"}
DIRECTIONS = ("2", "1")  # test replicate; "2" (train on replicate 1) chooses
PROFILES = [
    "profiles.treatment=[Metadata_Compound,Metadata_Concentration]",
    "profiles.compound=Metadata_Compound",
    "profiles.moa=Metadata_MoA",
]
# Candidates, fixed before any run: the preset's 48-px input and the frozen embeddings' 96 px (the preset already
# flips and turns the crops: `augment` is on in the cpu preset it builds on), each trained until early stopping
# (patience 3 on validation loss, at most 12 epochs, the rate halved every 4 epochs), in bfloat16
# (docs/benchmarks.md "Training on a GPU"). Six runs side by side, each loading in its training process, trained
# ~560 cells/s each on an H200
# (37 s an epoch, 2026-11-26); two runs at 96 px with two loader workers each, ~800 cells/s each on an H100 (26 s an
# epoch): the loaders, not the GPU, set the pace. `evaluate` ran the network on the CPU in both runs (since fixed).
SCHEDULE = [
    "training.max_epochs=12",
    "training.patience=3",
    "training.step_size=4",
    "training.precision=bf16-mixed",
    "training.num_workers=2",
]
CANDIDATES = {"48px": ["crops.size=48", *SCHEDULE], "96px": ["crops.size=96", *SCHEDULE]}
SMOKE = [
    "training.max_epochs=1",
    "training.max_cells_per_image=4",
    "training.precision=32-true",
    "training.num_workers=0",
]


def cli(*args: str, log: Path, threads: int) -> float:
    """Run ``cellresponse`` with ``args`` (output to ``log``); returns its seconds, raises when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "cellresponse.cli", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    if done.returncode != 0:
        raise RuntimeError(f"cellresponse {' '.join(args[:3])} failed ({done.returncode}): see {log}")
    return time.perf_counter() - began


def sets(overrides: list[str]) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


def smoke_csv(source: Path, folder: Path) -> Path:
    """Site 1 of the first two wells of every compound and replicate, paths made absolute."""
    table = pd.read_csv(source)
    table = table[table["Metadata_Site"] == 1].groupby(["Metadata_Compound", "Metadata_Replicate"]).head(2)
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [str((source.parent / p).resolve()) for p in table[column]]
    path = folder / "smoke.csv"
    table.to_csv(path, index=False)
    return path


def kept_epoch(history: pd.DataFrame) -> pd.Series:
    """The checkpoint `train` keeps: the epoch of lowest validation loss."""
    return history.loc[history["val_loss"].idxmin()]


def summarise(run: Path) -> dict:
    history = pd.read_csv(run / "model" / "history.csv")
    kept = kept_epoch(history)
    train = json.loads((run / "model" / "train.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    vote = metrics["headline_vote"] + "_vote"
    measured = metrics["profile_models"]["measured"]
    epoch_seconds = float(history["seconds"].sum())
    return {
        "epochs": len(history),
        "kept_epoch": int(kept["epoch"]),
        "validation_cell_accuracy": float(kept["val_accuracy"]),
        "cells_train": train["cells_train"],
        "train_seconds": round(epoch_seconds, 1),
        "train_cells_per_s": round(train["cells_train"] * len(history) / epoch_seconds),
        "network": {level: metrics[level][vote]["accuracy"] for level in ("image", "well")},
        "network_cell": metrics["cell"]["accuracy"],
        "measured": {level: measured.get(level, {}).get("accuracy", float("nan")) for level in ("image", "well")},
        "auto": {"model": metrics["auto"]["model"], **metrics["auto"]["test"]},
        "auto_validation": metrics["auto"]["validation"],
    }


def print_table(results: dict) -> None:
    """Every run of a label that had a candidate chosen: epochs, validation accuracy, speed and the test sides."""
    chosen = results["chosen"]
    print(f"\nchosen on the validation side of train replicate 1 → test 2 (cell accuracy, kept epoch): {chosen}")
    header = "label     test cand.  chosen epochs kept  val.cell  cells/s  network f/w     measured f/w    auto"
    print(header)
    for (candidate, label, test), r in ((tuple(k.split("/")), v) for k, v in results["runs"].items()):
        if label not in chosen or "failed" in r:
            continue
        print(
            f"{label:9} {test:4} {candidate:6} {'yes' if chosen[label] == candidate else '':6} {r['epochs']:6} "
            f"{r['kept_epoch']:4} {r['validation_cell_accuracy']:9.3f} {r['train_cells_per_s']:8} "
            f"{r['network']['image']:.3f}/{r['network']['well']:.3f}   "
            f"{r['measured']['image']:.3f}/{r['measured']['well']:.3f}   "
            f"{r['auto']['model']} {r['auto']['image']:.3f}/{r['auto']['well']:.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-data", type=Path, default=SHARED / "bbbc021-moa" / "load_data.csv")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--labels", nargs="+", choices=list(LABELS), default=list(LABELS))
    parser.add_argument("--parallel", type=int, default=4, help="trainings side by side")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--start-by", type=float, help="start no label's runs later than this (seconds)")
    parser.add_argument("--json", type=Path, help="write the results here too (rewritten as runs finish)")
    parser.add_argument("--smoke", action="store_true", help="check the script on a CPU with a few fields")
    args = parser.parse_args()
    if not args.load_data.is_file():
        print(f"skipped: {args.load_data} not found (BBBC021-moa from ../shared/data)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="finetune_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    load_data = smoke_csv(args.load_data, work) if args.smoke else args.load_data
    extra = SMOKE if args.smoke else []
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    results: dict = {"runs": {}, "stages_seconds": {}, "candidates": CANDIDATES, "schedule": SCHEDULE}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    base = work / "base"
    common = ["--no-progress", "--workers", "0", *sets(PROFILES + extra)]
    results["stages_seconds"]["images_to_crops"] = round(
        cli("run", "--load-data", str(load_data), "--preset", "finetune", "--out", str(base), "--until", "crops",
            *common, log=work / "base.log", threads=os.cpu_count() or 2),
    )  # fmt: skip
    print(f"base run: {results['stages_seconds']}", flush=True)
    save()

    def one(key: tuple[str, str, str]) -> tuple[tuple[str, str, str], dict]:
        candidate, label, test = key
        run = work / "_".join(key)
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        try:
            seconds = cli(
                "run", "--out", str(run), "--from", "train", "--label", LABELS[label],
                "--split-column", "Metadata_Replicate", "--test-values", test,
                *common, *sets(CANDIDATES[candidate] + extra), log=work / f"{'_'.join(key)}.log", threads=threads,
            )  # fmt: skip
        except RuntimeError as failure:  # the other runs go on; the table leaves this one out
            print(f"{'/'.join(key)}: {failure}", flush=True)
            return key, {"failed": str(failure)}
        summary = {**summarise(run), "run_seconds": round(seconds)}
        print(f"{'/'.join(key)}: {json.dumps(summary)}", flush=True)
        return key, summary

    results["chosen"], results["not_run"] = {}, []
    for label in args.labels:
        late = args.start_by is not None and time.perf_counter() - began > args.start_by
        if late and label != args.labels[0]:  # the first label always runs
            results["not_run"].append(label)
            print(f"{label}: not run (past --start-by {args.start_by:.0f} s)", flush=True)
            continue
        keys = [(c, label, t) for t in DIRECTIONS for c in args.candidates]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for key, summary in pool.map(one, keys):
                results["runs"]["/".join(key)] = summary
                save()
        choosing = {c: results["runs"][f"{c}/{label}/{DIRECTIONS[0]}"] for c in args.candidates}
        scores = {c: r["validation_cell_accuracy"] for c, r in choosing.items() if "failed" not in r}
        if scores:  # a tie keeps the first listed (the preset's 48 px)
            results["chosen"][label] = max(scores, key=scores.get)
        save()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

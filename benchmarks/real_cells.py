"""Benchmark: accuracy on real cells, leave-replicate-out / leave-plate-out, CNN vs features-only.

Runs (each in both directions unless --forward-only):
  moa-MoA        ../shared/data/bbbc021-moa, --label Metadata_MoA, train replicate 1 / test replicate 2 (and swap)
  moa-compound   the same fields, --label Metadata_Compound
  bbbc021        ../shared/data/bbbc021 (DMSO vs cycloheximide), train Week4_27481 + Week4_27801,
                 test Week4_27521 + Week4_27821 (and swap)

Segmentation, measurement and crops are computed once per data set and shared by its runs (they
do not depend on the split); training and evaluation are per run. Prints per run: field- and
well-level accuracy (soft and majority vote), cell-level accuracy, the features-only baseline,
chance and majority rates, and wall time (the first run of a data set includes segmentation).

Usage: python benchmarks/real_cells.py [--sets moa-MoA moa-compound bbbc021] [--forward-only]
       [--preset cpu] [--set KEY=VALUE ...] [--out benchmark-runs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import SHARED

SETS = {
    "moa-MoA": ("bbbc021-moa", "Metadata_MoA", "Metadata_Replicate", (["2"], ["1"])),
    "moa-compound": ("bbbc021-moa", "Metadata_Compound", "Metadata_Replicate", (["2"], ["1"])),
    "bbbc021": (
        "bbbc021",
        "Metadata_Compound",
        "Metadata_Plate",
        (["Week4_27521", "Week4_27821"], ["Week4_27481", "Week4_27801"]),
    ),
}
SHARED_OUTPUTS = (
    "images.parquet",
    "segmentation.parquet",
    "masks",
    "flows",
    "figures",
    "cells",
    "cells.parquet",
    "crops",
)


def cli(*args: str) -> None:
    command = [sys.executable, "-m", "cellresponse.cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")


def link_tree(source: Path, target: Path) -> None:
    """Share the split-independent outputs of a base run (hard links: no copies)."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "logs").mkdir(exist_ok=True)
    for name in SHARED_OUTPUTS:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, target / name, copy_function=os.link, dirs_exist_ok=True)
        elif src.exists() and not (target / name).exists():
            os.link(src, target / name)
    for log in (source / "logs").glob("*.json"):
        shutil.copy(log, target / "logs" / log.name)
    shutil.copy(source / "config.yaml", target / "config.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--forward-only", action="store_true", help="one direction per set")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("benchmark-runs"))
    args = parser.parse_args()
    sets = ["--set=" + o for o in args.overrides]
    results = []
    for name in args.sets:
        folder, label, column, (test_a, test_b) = SETS[name]
        load_data = SHARED / folder / "load_data.csv"
        if not load_data.is_file():
            raise SystemExit(f"data not found: {load_data} (needs ../shared/data)")
        base = args.out / f"{folder}-base"
        started = time.perf_counter()
        if not (base / "crops" / "index.parquet").exists():
            cli("run", "--load-data", load_data, "--preset", args.preset, *sets, "--label", label,
                "--out", base, "--until", "crops", "--no-progress")  # fmt: skip
        base_seconds = time.perf_counter() - started
        directions = [test_a] if args.forward_only else [test_a, test_b]
        for i, test_values in enumerate(directions):
            run = args.out / f"{name}-test-{'+'.join(test_values)}"
            shutil.rmtree(run, ignore_errors=True)
            link_tree(base, run)
            began = time.perf_counter()
            cli("run", "--out", run, "--from", "train", "--label", label, "--preset", args.preset, *sets,
                "--split-column", column, "--test-values", *test_values, "--no-progress")  # fmt: skip
            seconds = time.perf_counter() - began + (base_seconds if i == 0 else 0.0)
            m = json.loads((run / "metrics.json").read_text())
            results.append((name, "+".join(test_values), m, seconds))
            print_result(*results[-1])
    print("\nsummary (field = image):")
    header = f"{'run':<14} {'test':<24} {'field soft':>10} {'field maj':>9} {'well soft':>9} {'cell':>6}"
    header += f" {'feat. field':>11} {'feat. well':>10} {'chance':>6} {'major.':>6} {'seconds':>7}"
    print(header)
    for name, test, m, seconds in results:
        image, well = m["image"], m.get("well", {})
        print(
            f"{name:<14} {test:<24} {image['soft_vote']['accuracy']:>10.3f} {image['majority_vote']['accuracy']:>9.3f}"
            f" {well.get('soft_vote', {}).get('accuracy', float('nan')):>9.3f} {m['cell']['accuracy']:>6.3f}"
            f" {m['baseline_features'].get('image', {}).get('accuracy', float('nan')):>11.3f}"
            f" {m['baseline_features'].get('well', {}).get('accuracy', float('nan')):>10.3f}"
            f" {m['chance_rate']:>6.3f} {m['majority_rate']:>6.3f} {seconds:>7.0f}"
        )


def print_result(name: str, test: str, m: dict, seconds: float) -> None:
    print(f"\n{name}, test side {test} ({seconds:.0f} s)")
    for level in ("image", "well"):
        block = m.get(level, {})
        if "soft_vote" not in block:
            continue
        base = m["baseline_features"].get(level, {}).get("accuracy", float("nan"))
        print(
            f"  {level:<5} soft {block['soft_vote']['accuracy']:.3f}  majority {block['majority_vote']['accuracy']:.3f}"
            f"  features-only {base:.3f}  chance {block['chance_rate']:.3f}  majority rate {block['majority_rate']:.3f}"
            f"  n={block['soft_vote']['n']}"
        )
    print(f"  cell  {m['cell']['accuracy']:.3f}  (chance {m['cell']['chance_rate']:.3f})")


if __name__ == "__main__":
    main()

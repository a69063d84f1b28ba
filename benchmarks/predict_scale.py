"""Scale-out of ``predict``'s image work: the same new plate predicted with 1 and with 2 Dask workers.

    python benchmarks/predict_scale.py BUNDLE_OR_RUN [LOAD_DATA] [--images 120] [--workers 1 2]

Each arm is ``cellresponse predict`` in its own process into a fresh folder, as a user types it (cluster start-up
included). Printed per arm: wall seconds and the seconds each per-image stage recorded (``DIR/logs/<stage>.json``:
segment, measure and, for a bundle whose model or references need them, embed or crops), then the ratios of the
first arm to the others. On one machine the embedding stays in the predicting process (``embedding.execution:
auto`` goes to the workers only where ``--scheduler`` names a cluster), so its time is not expected to scale here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED, subset_csv

STAGES = ("segment", "measure", "crops", "embed")


def predicted(bundle: str, load_data: Path, out: Path, workers: int) -> dict[str, float]:
    """Wall seconds of one ``predict`` and the seconds each per-image stage recorded."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cellresponse.cli", "predict", bundle, "--load-data", str(load_data), "--out",
         str(out), "--no-progress", "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    times = {"wall": time.perf_counter() - started}
    for stage in STAGES:
        record = out / "logs" / f"{stage}.json"
        if record.is_file():
            times[stage] = float(json.loads(record.read_text()).get("seconds", float("nan")))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("load_data", type=Path, nargs="?", default=SHARED / "bbbc021-moa" / "load_data.csv")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        subset = subset_csv(args.load_data, args.images, work)
        arms = {n: predicted(args.bundle, subset, work / f"w{n}", n) for n in args.workers}
    first = args.workers[0]
    for n, times in arms.items():
        print(f"{n} worker(s): " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    for n in args.workers[1:]:
        ratios = {k: arms[first][k] / arms[n][k] for k in arms[n] if k in arms[first] and arms[n][k] > 0}
        print(f"workers {first} → {n}: " + ", ".join(f"{k} ×{v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()

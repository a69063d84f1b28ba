"""Two commands side by side on one machine: what torch's threads per process cost when they share the cores.

    python benchmarks/side_by_side.py RUN [--epochs 1] [--threads N]

``RUN`` is a run folder cropped and ready to train (``cellresponse run … --until crops``). Copies it three times and
times ``cellresponse train COPY --epochs 1``, each in its own process as a user would: once alone (torch's default,
a thread per core), then two side by side with the default, then two side by side with ``OMP_NUM_THREADS`` (and
MKL's, OpenBLAS's) set to ``--threads`` (default: the cores divided between the two). Prints the wall times and
their ratios. The training runs are the same work each time (same split, same seed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def train_command(run: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "cellresponse.cli", "train", str(run), "--epochs", str(epochs), "--no-progress"]


def timed_side_by_side(runs: list[Path], epochs: int, threads: int | None) -> float:
    """Wall time of ``train`` on every run at once (threads per process: torch's default where ``threads`` is
    None)."""
    environment = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if threads is not None:
        environment.update({name: str(threads) for name in THREAD_VARIABLES})
    started = time.perf_counter()
    processes = [
        subprocess.Popen(train_command(run, epochs), env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for run in runs
    ]
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode:
            raise SystemExit(f"train failed:\n{stderr.decode()[-2000:]}")
    return time.perf_counter() - started


def fresh_copies(run: Path, folder: Path, names: list[str]) -> list[Path]:
    copies = []
    for name in names:
        copy = folder / name
        shutil.rmtree(copy, ignore_errors=True)
        copies.append(Path(shutil.copytree(run, copy, ignore=shutil.ignore_patterns("model", ".lock"))))
    return copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) // 2))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as scratch:
        folder = Path(scratch)
        alone = timed_side_by_side(fresh_copies(args.run, folder, ["alone"]), args.epochs, None)
        default = timed_side_by_side(fresh_copies(args.run, folder, ["a", "b"]), args.epochs, None)
        shared = timed_side_by_side(fresh_copies(args.run, folder, ["a", "b"]), args.epochs, args.threads)
    print(f"side_by_side: cellresponse train --epochs {args.epochs} on {args.run}, {cores} cores")
    rows = [
        ("one alone, torch's default threads", alone),
        ("two side by side, torch's default threads", default),
        (f"two side by side, {args.threads} thread(s) each", shared),
    ]
    for name, seconds in rows:
        print(f"{name:<45} {seconds:7.1f} s  ({seconds / alone:.2f}x one alone)")
    print(f"{'default threads / shared cores, side by side':<45} {default / shared:7.2f}x")


if __name__ == "__main__":
    main()

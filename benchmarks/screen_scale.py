"""A screen, not a plate: peak memory and time of every stage as the number of plates grows.

    python benchmarks/screen_scale.py [--plates 1 4 16] [--workers 0]

Every stage from ``images`` to ``evaluate``, with the cpu preset and one epoch of training (since 2026-12-05,
session 25; before, ``images`` to ``profile`` with the default settings on 12 fields a plate), then ``predict`` of
the same plates with the bundle just trained (since 2026-12-06, session 26: segment, measure, embed, the calls and
the open-world answer and report, in one process). Synthetic screens
of 1, 4 and 16 plates with the same fields per plate: 30 fields of 128 px, 8 cells each, three wells a compound
and of the control, so that even one plate's split has a validation side (without one, ``train`` skips the
held-out scoring a larger screen does, and one plate would not be measured doing the same work). The numbers of
cells are tiny, so the per-plate part of memory is small beside the interpreter's: what matters is whether it
grows with the plates. Each stage runs as its own ``cellresponse`` process; its peak resident memory is the
process's (``getrusage`` of the waited child, so Dask workers are not in it: ``--workers 0`` keeps all work in the
measured process). Printed per stage: seconds and peak RSS per screen size, and the ratios 16 plates / 1 plate
(target: memory ≤ 1.2×, time ∝ plates).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cellresponse.input.synth import SynthSpec, make_plates

STAGES = ("images", "segment", "measure", "crops", "embed", "profile", "train", "evaluate", "predict")


def measured(command: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of ``command`` run in a fresh wrapper process (so each stage's peak is its own)."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True)
    seconds, megabytes = out.stdout.split()
    return float(seconds), float(megabytes)


def screen(plates: int, folder: Path, workers: int) -> dict[str, tuple[float, float]]:
    spec = SynthSpec(n_compounds=4, wells_per_compound=3, control_wells=3, sites=2, plates=plates, size=128,
                     cells_per_image=8, cell_radius=11, seed=3)  # fmt: skip
    make_plates(folder / "plates", spec)
    run = folder / "run"
    cli = [sys.executable, "-m", "cellresponse.cli"]
    results = {}
    for stage in STAGES:
        if stage == "images":
            # the cpu preset and one epoch: what is measured is what the stages hold of the plates, not training
            command = [*cli, "images", "--load-data", str(folder / "plates" / "load_data.csv"), "--out", str(run),
                       "--no-progress", "--preset", "cpu", "--set", "training.max_epochs=1"]  # fmt: skip
        elif stage == "predict":
            # the screen's plates as new plates through the bundle just trained: images to calls and the report
            command = [*cli, "predict", str(run), "--load-data", str(folder / "plates" / "load_data.csv"), "--out",
                       str(folder / "predicted"), "--no-progress", "--workers", str(workers)]  # fmt: skip
        else:
            command = [*cli, stage, str(run), "--no-progress"]
            if stage in ("segment", "measure", "crops", "embed"):
                command += ["--workers", str(workers)]
        results[stage] = measured(command)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plates", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    table = {}
    started = time.perf_counter()
    for plates in args.plates:
        with tempfile.TemporaryDirectory() as folder:
            table[plates] = screen(plates, Path(folder), args.workers)
        print(f"{plates:3d} plates: " + "; ".join(f"{s} {table[plates][s][0]:.1f} s {table[plates][s][1]:.0f} MB"
                                                 for s in STAGES), flush=True)  # fmt: skip
    first, last = args.plates[0], args.plates[-1]
    print(f"\n{last} plates against {first} (plates ×{last / first:g}):")
    for stage in STAGES:
        time_ratio = table[last][stage][0] / table[first][stage][0]
        memory_ratio = table[last][stage][1] / table[first][stage][1]
        print(f"  {stage:>8}: time ×{time_ratio:.2f}, peak memory ×{memory_ratio:.2f}")
    print(f"(all in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

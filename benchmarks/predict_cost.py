"""What the open-world answer (activity, nearest references, mechanism, novelty, the report) adds to ``predict``.

    python benchmarks/predict_cost.py RUN LOAD_DATA [--kind auto|measured|deep|both] [--workers 2]

Runs ``cellresponse predict`` twice on the same images into fresh folders, in one process each as a user would:
with the bundle as it is, and with a copy of it that keeps no reference profiles (predict then answers only
which training label each field looks like). Prints both wall times and their ratio, and the time the log gives
the embedding (which the answer needs when the references are deep or both and the predicting model is not).
With ``--kind`` predict uses the bundle's references of that kind (``--set references.kind=KIND``); a bundle made
before it kept every kind gets them rebuilt from the training run first, in a copy, as ``train`` builds them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cellresponse.config import apply_overrides
from cellresponse.errors import InputError
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.bundle import clear_references, find_bundle, load_bundle
from cellresponse.learning.profile_tables import profile_tables
from cellresponse.learning.splits import TEST
from cellresponse.profiling.reference_building import build_reference_kinds
from cellresponse.profiling.references import save_references


def rebuild_references(run: RunFolder, bundle: Path, kind: str) -> None:
    """``kind``'s references added to the bundle (``references_<kind>/``), from the training run's non-test
    images, as ``train`` now keeps them."""
    config = apply_overrides(run.load_config(), [f"references.kind={kind}"])
    sides, _ = run.read_split()
    tables = profile_tables(run, run.read_cells(), [str(i) for i in sides.index])
    side_of = sides.set_axis(sides.index.astype(str))
    references, _ = build_reference_kinds(tables, run.read_images(), side_of.index[side_of != TEST], config)
    if references is None:
        raise InputError(f"the run {run.root} has no profiles to build {kind} references from")
    save_references(bundle / f"references_{kind}", references)


def timed_predict(bundle: Path, load_data: Path, out: Path, workers: int, kind: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cellresponse.cli", "predict", str(bundle), "--load-data", str(load_data),
         "--out", str(out), "--no-progress", "--workers", str(workers), "--set", f"references.kind={kind}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.perf_counter() - started, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("load_data", type=Path)
    parser.add_argument("--kind", default="auto", choices=["auto", "measured", "deep", "both"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    bundle = find_bundle(args.bundle)
    try:
        load_bundle(bundle).references_of(args.kind)
        kept = True
    except InputError:  # a bundle made before train kept every kind
        kept = False
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if not kept:
            copy = work / "bundle"
            shutil.copytree(bundle, copy)
            rebuild_references(RunFolder(Path(args.bundle)), copy, args.kind)
            bundle = copy
        bare = work / "bundle-without-references"
        shutil.copytree(bundle, bare)
        clear_references(bare)
        without, _ = timed_predict(bare, args.load_data, work / "without", args.workers, "auto")
        with_answer, printed = timed_predict(bundle, args.load_data, work / "with", args.workers, args.kind)
    embedded = [line for line in printed.splitlines() if line.startswith("embedded ")]
    print(f"predict {args.load_data} with {bundle}:")
    print(f"  without the open-world answer: {without:.1f} s")
    print(f"  with it: {with_answer:.1f} s — {with_answer / without:.2f}× ({(with_answer / without - 1):+.0%})")
    if embedded:
        print(f"  of which embedding the cells for the references: {embedded[-1]}")


if __name__ == "__main__":
    main()

"""What ``train`` holds of a screen's cells: peak memory of its cell-set step as the number of plates grows.

    python benchmarks/train_memory.py [--plates 1 4 16] [--cells 20000]

Synthetic run folders of 1, 4 and 16 plates, each plate ``--cells`` cells of 74 features (random values, named
as measured features are, so that ``train`` takes them; the cells table partitioned by plate as ``measure`` writes
it, a crop-store index beside it, cell ids ``<image>#<label>`` as ``measure`` makes them). In a fresh process per
case, the peak resident memory above the process's after its imports (``VmHWM``) of opening the crop store
(its index keeps a row of every cell of the screen) and then:

* ``plate by plate`` — what ``train`` does: the per-image statistics and the cell sets read one plate at a time,
  feature rows written to a memory-mapped file (``RunFolder.cell_parts``, ``training_cells.cell_sets``);
* ``whole table`` — what it did before (2026-12-05, session 24): every plate's cells read into one table, the
  scaler fitted on it and the feature rows standardised in memory.

Printed: MB per case, the ratios largest / smallest screen (target for a screen: flat, ≤ 1.2×) and the bytes a
cell that the peak grows by between the two largest screens (past the allocators' first high-water marks: what
each further cell costs). Each cell's store row, side and label, and the crop store's few numbers a cell, stay in
memory either way; what no longer grows is the features.

Before 2026-12-05 (session 25) the synthetic features were named ``f0`` … ``f73``, which ``train`` does not take
as features: the figures printed then measured the sets without their feature rows, and left the store out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = 74
FIELDS = 40  # per plate

CHILD = """
import json, sys
from pathlib import Path
import numpy as np, pandas as pd
from cellresponse.config import TrainingConfig
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.crop_store import CropStore
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.encoders import Scaler
from cellresponse.learning.training_cells import cell_sets
from cellresponse.profiling.profile_models import image_feature_statistics, plate_by_plate_statistics
run, how = RunFolder(sys.argv[1]), sys.argv[2]
images = run.read_images()
side = np.where(np.arange(len(images)) % 5, "train", "validation")
sides = pd.DataFrame({"image_id": images["image_id"], "side": side})
base = high_water()
store = CropStore(run.crops)  # its index holds a row of every cell of the screen: counted
columns = feature_columns(run.cell_columns())
if how == "plate":
    parts = lambda: run.cell_parts(images["image_id"], ["image_id", "label", *columns])
    plate_by_plate_statistics(parts(), columns)
    sets = cell_sets(parts, columns, sides, images, "label", TrainingConfig(), 0, store, run.training_cells / "0")
    held = sets[2].features
else:
    cells = run.read_cells(image_ids=images["image_id"])
    image_feature_statistics(cells, columns)
    cells = cells[cells["image_id"].isin(set(sides["image_id"]))].copy()  # as training_cells.sided_cells did
    cells["side"] = cells["image_id"].map(dict(zip(sides["image_id"], sides["side"])))
    cells["true_label"] = cells["image_id"].map(dict(zip(images["image_id"], images["label"])))
    train = cells[cells["side"] == "train"]
    scaler = Scaler.fit(train, columns)
    held = (scaler.transform(train), scaler.transform(cells[cells["side"] == "validation"]))
print(json.dumps({"peak": high_water() - base}))
"""


# Prepended to every child script. The process's own peak resident memory, in MB: /proc/self/status's VmHWM, not
# getrusage's ru_maxrss, which a child started by fork and exec inherits from its parent (measured: a child of a
# parent holding 300 MB reports ru_maxrss 311 MB at start, VmHWM 9 MB). The parent here builds the synthetic screens,
# so ru_maxrss raised each child's starting point with the screen's size and hid the growth being measured (figures
# published before 2026-12-06, session 26).
HIGH_WATER = """
def high_water():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
"""


def make_run(folder: Path, plates: int, cells: int, seed: int = 0) -> Path:
    """A run folder with ``images.parquet``, ``cells.parquet/<plate>.parquet`` and ``crops/index.parquet``."""
    rng = np.random.default_rng(seed)
    (folder / "cells.parquet").mkdir(parents=True)
    (folder / "crops").mkdir()
    images, index = [], []
    for p in range(plates):
        plate = f"P{p:03d}"
        ids = [f"{plate}_f{f:03d}" for f in range(FIELDS)]
        images.append(pd.DataFrame({"image_id": ids, "plate": plate, "well": [f"w{f // 4}" for f in range(FIELDS)],
                                    "label": [f"compound_{f % 4}" for f in range(FIELDS)]}))  # fmt: skip
        image_of = np.repeat(ids, cells // FIELDS)
        labels = np.tile(np.arange(1, cells // FIELDS + 1), FIELDS)
        cell_ids = [f"{i}#{n}" for i, n in zip(image_of, labels, strict=True)]
        names = [f"Intensity_Feature{i:02d}" for i in range(FEATURES)]  # named as features are: train takes them
        table = pd.DataFrame(rng.normal(size=(len(cell_ids), FEATURES)), columns=names)
        table.insert(0, "label", labels)
        table.insert(0, "image_id", image_of)
        table.insert(0, "cell_id", cell_ids)
        table.to_parquet(folder / "cells.parquet" / f"{plate}.parquet")
        index.append(table[["cell_id", "image_id", "label"]])
    pd.concat(images, ignore_index=True).to_parquet(folder / "images.parquet")
    index = pd.concat(index, ignore_index=True)
    index.insert(0, "row", np.arange(len(index)))
    index["part"], index["offset"], index["length"] = index["image_id"] + ".crops", 0, 0
    index.to_parquet(folder / "crops" / "index.parquet")
    return folder


def main() -> None:
    measure_screens(CHILD, __doc__)


def measure_screens(child: str, doc: str) -> None:
    """Run ``child`` (a script printing one JSON line with its ``peak`` MB and whatever it scored) on each screen
    of the command line's sizes, both ways, in fresh processes; print the peaks, whether both ways scored alike,
    and the ratios."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--plates", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--cells", type=int, default=20_000, help="cells per plate")
    args = parser.parse_args()
    peaks: dict[str, dict[int, float]] = {"plate": {}, "whole": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for plates in args.plates:
            run = make_run(Path(tmp) / f"screen{plates}", plates, args.cells)
            scores = {}
            for how in peaks:
                out = subprocess.run([sys.executable, "-c", HIGH_WATER + child, str(run), how], check=True,
                                     capture_output=True, text=True)  # fmt: skip
                result = json.loads(out.stdout.splitlines()[-1])
                peaks[how][plates], scores[how] = result.pop("peak"), result
            same = "" if scores["plate"] == scores["whole"] else f" — DIFFERENT figures {scores}"
            plate, whole = peaks["plate"][plates], peaks["whole"][plates]
            print(f"{plates:3d} plates ({plates * args.cells:,} cells): plate by plate {plate:7.1f} MB, "
                  f"whole table {whole:7.1f} MB{same}")  # fmt: skip
    print_ratios(peaks, args.cells)


def print_ratios(peaks: dict[str, dict[int, float]], cells: int) -> None:
    """Each way's peak on the largest screen over the smallest's, and the bytes a cell between the two largest."""
    for how, name in (("plate", "plate by plate"), ("whole", "whole table")):
        ordered = sorted(peaks[how])
        low, high = ordered[0], ordered[-1]
        line = f"{name}: {high} / {low} plates ×{peaks[how][high] / max(peaks[how][low], 1e-9):.2f} peak memory"
        if len(ordered) > 2:
            below = ordered[-2]
            slope = (peaks[how][high] - peaks[how][below]) * 2**20 / ((high - below) * cells)
            line += f"; {slope:.0f} bytes a cell from {below} to {high} plates"
        print(line + " above the interpreter's")


if __name__ == "__main__":
    main()

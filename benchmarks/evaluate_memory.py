"""What ``evaluate`` holds of a screen's cells: peak memory of its baselines as the number of plates grows.

    python benchmarks/evaluate_memory.py [--plates 1 4 16] [--cells 20000]

The synthetic run folders of ``benchmarks/train_memory.py`` (``--cells`` cells a plate, 74 features named as
measured features are, the cells table partitioned by plate); one image in five on the test side, the rest on the
training side. In a fresh process per case, the peak resident memory above the process's after its imports
(``VmHWM``) of the per-image statistics of the profile models, the single-cell logistic regression and the
control-vs-compound check (``learning.baselines``), computed:

* ``plate by plate`` — what ``evaluate`` does since 2026-12-05 (session 25): the split's cells read a plate at a
  time (``RunFolder.cell_parts``), each baseline's training sample gathered and its test cells predicted plate by
  plate;
* ``whole table`` — what it did before: every split cell of every plate read into one table first.

Both give the same figures (the training samples are the same rows; a line says where they differ). The network's
own test-side predictions (crops, a plate at a time too) are not part of this benchmark: they need a trained
bundle.
Printed: MB per case, the ratios largest / smallest screen (target: flat, ≤ 1.2×), and bytes a cell between the two
largest screens.
"""

from __future__ import annotations

from train_memory import measure_screens

CHILD = """
import json, sys
import numpy as np, pandas as pd
from cellresponse.features.cell_features import feature_columns
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.baselines import cell_features_baseline, sanity_check
from cellresponse.profiling.profile_models import image_feature_statistics, plate_by_plate_statistics
run, how = RunFolder(sys.argv[1]), sys.argv[2]
images = run.read_images()
sides = pd.Series(np.where(np.arange(len(images)) % 5, "train", "test"), index=images["image_id"].astype(str))
meta = images.set_index("image_id")["label"]
columns = feature_columns(run.cell_columns())
def labelled(cells):
    cells["true_label"], cells["plate"], cells["well"] = cells["image_id"].map(meta), "P", cells["image_id"]
    return cells
base = high_water()
if how == "plate":
    parts = lambda: map(labelled, run.cell_parts(sides.index))
    plate_by_plate_statistics(parts(), columns)
else:
    cells = labelled(run.read_cells(image_ids=sides.index))
    image_feature_statistics(cells, columns)
    parts = lambda: [cells]
single = cell_features_baseline(parts, columns, sides, 0, 3, max_train=20000)
check = sanity_check(parts, columns, sides, "compound_0", 0, max_train=20000)
peak = high_water() - base
print(json.dumps({"peak": peak, "cell": single["cell"]["accuracy"], "check": check["accuracy"]}))
"""


def main() -> None:
    measure_screens(CHILD, __doc__)


if __name__ == "__main__":
    main()

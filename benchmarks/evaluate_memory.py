"""What ``evaluate`` holds of a screen's cells: peak memory of its baselines and of scoring the network's calls as
the number of plates grows.

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

Then the network's calls on the test side, as ``evaluate`` scores and writes them: probabilities over 250 classes
(the study's plate has 250 labels; float32 rows as the network gives them, a seeded function of the plate's test
cells, the true class favoured), since the benchmark has no trained bundle to run:

* ``plate by plate`` — since 2026-12-06 (session 28): each plate's calls written to the cell predictions table as
  a row group and reduced to a tally (``evaluation.call_tallies``: a few bytes a cell, sums a group), the scores
  made from the merged tallies;
* ``whole table`` — before: every test cell's probabilities and columns kept, one prediction table written, the
  scores made from them.

Both give the same figures (the training samples are the same rows, the calls the same probabilities; a line says
where they differ).
Printed: MB per case, the ratios largest / smallest screen (target: flat, ≤ 1.2×), and bytes a cell between the two
largest screens.
"""

from __future__ import annotations

from train_memory import measure_screens

CHILD = """
import json, sys
import numpy as np, pandas as pd
import tempfile
from cellresponse.evaluation.call_tallies import merge_tallies, tally_cells
from cellresponse.evaluation.classification import network_test_scores, tally_scores
from cellresponse.evaluation.prediction_tables import prediction_table
from cellresponse.evaluation.votes import LEVELS
from cellresponse.features.cell_features import feature_columns
from cellresponse.input.io import write_parquet, write_parquet_parts
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.baselines import cell_features_baseline, sanity_check, test_side_parts
from cellresponse.profiling.profile_models import image_feature_statistics, plate_by_plate_statistics
run, how = RunFolder(sys.argv[1]), sys.argv[2]
images = run.read_images()
sides = pd.Series(np.where(np.arange(len(images)) % 5, "train", "test"), index=images["image_id"].astype(str))
meta = images.set_index("image_id")["label"]
columns = feature_columns(run.cell_columns())
def labelled(cells):
    cells["true_label"], cells["well"] = cells["image_id"].map(meta), cells["image_id"]
    cells["plate"] = cells["image_id"].str[:4]
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
classes = [f"compound_{i}" for i in range(250)]
columns = ["cell_id", "image_id", "plate", "well", "true_label"]
def calls(cells):  # what a network might answer: seeded by the plate, the true class favoured
    rng = np.random.default_rng(int(cells["image_id"].iloc[0][1:4]))
    probs = rng.random((len(cells), len(classes)), dtype=np.float32)
    probs[np.arange(len(cells)), cells["true_label"].str[9:].astype(int).to_numpy()] += 60
    return probs / probs.sum(axis=1, keepdims=True)
with tempfile.TemporaryDirectory() as out:
    if how == "plate":
        tallies = []
        def table(cells):
            probs = calls(cells)
            tallies.append(tally_cells(cells, probs, classes, 5, LEVELS))
            return prediction_table(cells[columns], probs, classes, 5)
        write_parquet_parts(f"{out}/cells.parquet", map(table, test_side_parts(parts, sides)))
        scores = tally_scores(merge_tallies(tallies), classes, 5)
    else:
        kept = [(t[columns], calls(t)) for _, t in cells[cells["image_id"].map(sides) == "test"].groupby("plate")]
        test = pd.concat([t for t, _ in kept], ignore_index=True)
        probs = np.concatenate([p for _, p in kept])
        del kept
        write_parquet(f"{out}/cells.parquet", prediction_table(test, probs, classes, 5))
        scores = network_test_scores(test, probs, classes, 5)
peak = high_water() - base
print(json.dumps({"peak": peak, "cell": single["cell"]["accuracy"], "check": check["accuracy"],
                  "network": [scores["cell"]["accuracy"], scores["cell"]["top5"], scores["image"]]}))
"""


def main() -> None:
    measure_screens(CHILD, __doc__)


if __name__ == "__main__":
    main()

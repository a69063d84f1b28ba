"""What ``predict`` holds of a screen's new cells: peak memory of its per-image profiles as the number of plates
grows.

    python benchmarks/predict_memory.py [--plates 1 4 16] [--cells 20000]

The synthetic run folders of ``benchmarks/train_memory.py`` (``--cells`` cells a plate, 74 features named as
measured features are, the cells table partitioned by plate as ``measure`` writes it) stand for the folder
``predict`` writes for a screen of new plates. In a fresh process per case, the peak resident memory above the
process's after its imports (``VmHWM``) of what ``predict`` does with the cells once they are measured — check
that there are cells, the measured per-image profiles its profile model and references are made of, the images that
have cells (whose mean embeddings deep references take) — done:

* ``plate by plate`` — what ``predict`` does since 2026-12-06 (session 26): the cells counted from the parts'
  footers and read a plate at a time (``profile_models.plate_by_plate_feature_table`` in image order,
  ``RunFolder.images_with_cells``);
* ``whole table`` — what it did before: every plate's cells read into one table first (``RunFolder.read_cells``),
  the profiles made from it (``image_feature_table``).

Both give the same profiles (a line says where they differ). The network's per-cell predictions (crops; a plate
at a time too, each plate's calls written as a row group) and the report's cell strips (a treatment's cells at a
time) are not in it: they need a trained bundle and images.
Printed: MB per case, the ratios largest / smallest screen (target: flat, ≤ 1.2×), and bytes a cell between the two
largest screens.
"""

from __future__ import annotations

from train_memory import measure_screens

CHILD = """
import json, sys
import pandas as pd
from cellresponse.features.cell_features import feature_columns
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.profile_models import image_feature_table, plate_by_plate_feature_table
run, how = RunFolder(sys.argv[1]), sys.argv[2]
ids = run.read_images()["image_id"]
columns = feature_columns(run.cell_columns())
base = high_water()
if how == "plate":
    assert run.count_cells() > 0
    parts = run.cell_parts(ids, ["image_id", *columns])
    table = plate_by_plate_feature_table(parts, columns, in_image_order=True)
    with_cells = run.images_with_cells(ids)
else:
    cells = run.read_cells()
    assert not cells.empty
    table = image_feature_table(cells, columns)
    with_cells = sorted(cells["image_id"].astype(str).unique())
peak = high_water() - base
digest = int(pd.util.hash_pandas_object(table.reset_index()).sum() % 2**61)
print(json.dumps({"peak": peak, "profiles": digest, "rows": len(table), "images": len(with_cells)}))
"""


def main() -> None:
    measure_screens(CHILD, __doc__)


if __name__ == "__main__":
    main()

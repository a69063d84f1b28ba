"""The study's protocol made visible: on plates where compounds do nothing but wells differ, an
image-level split still "predicts" the compound (sites of one well on both sides); a well-level split
does not, and `evaluate` flags the leak."""

from __future__ import annotations

import json

import pandas as pd

from cellresponse.features.cell_features import FEATURES
from tests.conftest import run_cli, synthetic_plates


def test_image_split_scores_higher_than_well_split_and_is_flagged(tmp_path_factory, tmp_path):
    plates = synthetic_plates(
        tmp_path_factory,
        "leaky_plates",
        n_compounds=6,
        wells_per_compound=1,  # one well per compound per plate, as 236 of 249 compounds in the study
        control_wells=2,
        sites=6,
        plates=2,
        size=128,
        cells_per_image=14,
        cell_radius=11,
        effect=0.0,
        null_compounds=6,  # no compound has any effect ...
        well_effect=3.0,  # ... but every well has its own look
        seed=11,
    )
    run = tmp_path / "run"
    run_cli("run", "--load-data", plates / "load_data.csv", "--workers", "0", "--out", run, "--until", "measure")
    cells = pd.read_parquet(run / "cells.parquet")
    images = pd.read_parquet(run / "images.parquet")
    table = cells.groupby("image_id")[list(FEATURES)].mean()
    table["Image_Count_Cells"] = cells.groupby("image_id").size()
    table = images.set_index("image_id")[["Metadata_Plate", "Metadata_Well", "Metadata_pert_iname"]].join(table)
    table.to_csv(tmp_path / "per_image.csv", index=False)

    results = {}
    for by in ("image", "well"):
        out = tmp_path / by
        done = run_cli("evaluate", "--features", tmp_path / "per_image.csv", "--split-by", by, "--out", out)
        results[by] = (json.loads((out / "metrics.json").read_text()), done.stderr)
    (image, image_log), (well, well_log) = results["image"], results["well"]
    chance = image["image"]["chance_rate"]
    # the leak: compounds without any effect are "recognised" from their wells' look
    assert image["image"]["accuracy"] >= 3 * chance
    assert well["image"]["accuracy"] <= image["image"]["accuracy"] - 0.25
    assert image["split"]["leaky_classes"] == 7 and "leakage" in image_log
    assert well["split"]["leaky_classes"] == 0 and "leakage" not in well_log
    # the temperature is fitted across wells (out-of-fold by well, as there is no validation side), where the
    # features carry nothing: under the leaky split the calls are right 0.65 of the time yet say they are unsure
    assert image["temperature"] > 10 and image["image"]["mean_probability"] < image["image"]["accuracy"] - 0.3
    assert well["temperature"] > 10 and well["image"]["mean_probability"] < 2 * chance

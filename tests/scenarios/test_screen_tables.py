"""Tables that grow by plate (issue 36): ``RUN/cells.parquet/`` holds one part per plate, reads back equal to the
single table it replaced, serves the plates a stage asks for, and a two-plate run gives each plate the profiles
that a run of that plate alone gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cellresponse.features.cell_features import cell_ids
from cellresponse.input.runfolder import RunFolder
from tests.conftest import run_cli

STEPS = ("images", "segment", "measure", "profile")


def run_through_profile(load_data: Path, out: Path) -> RunFolder:
    """``images`` → ``profile`` (measured profiles only, each plate normalised to its DMSO wells as a screen's
    plates of many compounds are; the tiny plates' three compounds would read as confounded) on ``load_data``."""
    settings = ("--set", "profiles.kinds=[measured]", "--set", "profiles.normalize=plate")
    run_cli("images", "--load-data", load_data, "--out", out, "--no-progress", *settings)
    for step in STEPS[1:]:
        run_cli(step, out, "--no-progress", "--workers", "0")
    return RunFolder(out)


def one_plate(load_data: Path, plate: str, folder: Path) -> Path:
    """A load_data holding ``plate``'s rows only, its image folders made absolute."""
    table = pd.read_csv(load_data)
    table = table[table["Metadata_Plate"].astype(str) == plate].copy()
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [str((load_data.parent / p).resolve()) for p in table[column]]
    path = folder / f"load_data_{plate}.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def two_plate_run(tiny_plates, tmp_path_factory) -> RunFolder:
    return run_through_profile(tiny_plates / "load_data.csv", tmp_path_factory.mktemp("screen") / "both")


def test_cells_are_written_one_part_per_plate_and_read_back_equal_to_the_single_table(two_plate_run):
    run = two_plate_run
    images = run.read_images()
    plates = list(pd.unique(images["plate"].astype(str)))
    assert len(plates) == 2
    assert sorted(p.name for p in run.cells.glob("*.parquet")) == sorted(f"{p}.parquet" for p in plates)
    # the table measure wrote before it was partitioned: every per-image part, in image-table order, with cell ids
    parts = [pd.read_parquet(run.cells_path(i)) for i in images["image_id"] if run.cells_path(i).exists()]
    single = pd.concat([p for p in parts if len(p)], ignore_index=True)
    single.insert(0, "cell_id", cell_ids(single["image_id"], single["label"]))
    pd.testing.assert_frame_equal(run.read_cells(), single.astype({"image_id": str, "cell_id": str}))
    pd.testing.assert_frame_equal(
        pd.read_parquet(run.cells).sort_values("cell_id", ignore_index=True),
        single.sort_values("cell_id", ignore_index=True),
        check_dtype=False,
    )  # what a user reading the folder with pandas gets


def test_a_stage_reads_only_the_plates_of_the_images_it_asks_for(two_plate_run, tmp_path):
    run = two_plate_run
    images = run.read_images()
    first = images[images["plate"].astype(str) == str(images["plate"].iloc[0])]["image_id"]
    every = run.read_cells()
    some = run.read_cells(columns=["area"], image_ids=first.iloc[:1])
    assert list(some.columns) == ["image_id", "area"]
    assert set(some["image_id"]) == {first.iloc[0]}
    expected = every.loc[every["image_id"] == first.iloc[0], ["image_id", "area"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(some, expected)
    # the other plate's part is not opened: with it gone, the first plate still reads
    other = [p for p in run.cells.glob("*.parquet") if p.stem != str(images["plate"].iloc[0])]
    moved = tmp_path / "elsewhere.parquet"
    other[0].rename(moved)
    try:
        assert len(run.read_cells(image_ids=first)) == (every["image_id"].isin(set(first))).sum()
    finally:
        moved.rename(other[0])


def test_a_run_measured_as_one_file_reads_the_same(two_plate_run, tmp_path):
    old = RunFolder(tmp_path / "old")
    old.root.mkdir()
    (old.root / "images.parquet").write_bytes(two_plate_run.images.read_bytes())
    every = two_plate_run.read_cells()
    every.to_parquet(old.cells, index=False)
    pd.testing.assert_frame_equal(old.read_cells(), every)
    ids = every["image_id"].iloc[:1]
    assert set(old.read_cells(image_ids=ids)["image_id"]) == set(ids)


def test_a_two_plate_run_gives_each_plate_the_profiles_of_its_own_run(two_plate_run, tiny_plates, tmp_path):
    """Per-plate normalisation to each plate's DMSO wells: a plate's well profiles do not depend on the other plate
    (compared on the features both runs keep; feature selection sees different wells; a NaN is filled with the mean
    of the wells a run holds, which the synthetic cells never need)."""
    together = pd.read_parquet(two_plate_run.profile_path("measured", "wells"))
    for plate in pd.unique(together["Metadata_Plate"].astype(str)):
        alone_run = run_through_profile(one_plate(tiny_plates / "load_data.csv", plate, tmp_path), tmp_path / plate)
        alone = pd.read_parquet(alone_run.profile_path("measured", "wells"))
        mine = together[together["Metadata_Plate"].astype(str) == plate]
        features = [c for c in alone.columns if c.startswith("Cells_") and c in mine.columns]
        assert len(features) > 20
        keys = ["Metadata_Plate", "Metadata_Well"]
        a = alone.set_index(keys).sort_index()[features]
        b = mine.set_index(keys).sort_index()[features]
        assert a.index.equals(b.index)
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, atol=1e-9)
        cells_alone = alone_run.read_cells().drop(columns=["cell_id"])
        cells_mine = two_plate_run.read_cells(image_ids=alone_run.read_images()["image_id"]).drop(columns=["cell_id"])
        assert len(cells_alone) == len(cells_mine) > 0


def test_the_run_counts_its_cells_and_the_images_that_have_some_without_reading_the_table(two_plate_run):
    every = two_plate_run.read_cells()
    assert two_plate_run.count_cells() == len(every) > 0
    ids = two_plate_run.read_images()["image_id"]
    assert two_plate_run.images_with_cells(ids) == sorted(set(every["image_id"]))
    assert two_plate_run.images_with_cells(ids.iloc[:1]) == sorted(set(every["image_id"]) & {ids.iloc[0]})


@pytest.mark.parametrize("model", ["both", "network"])
def test_predict_reads_a_plate_at_a_time_and_calls_what_the_whole_table_gives(
    tiny_demo, tiny_plates, tmp_path, monkeypatch, model
):
    """``predict`` on the two tiny plates with the demo's bundle: every read of the cells table opens one plate's
    part (never the screen's table at once), every read of the new plates' cells asks for one plate or for some of
    their images (a report strip's treatment), never every image of both plates, and the calls equal those made
    from every cell read at once, as predict made them before (the profile model's image probabilities; the
    network's cells, image votes)."""
    import cellresponse.input.runfolder as runfolder
    from cellresponse.evaluation.votes import vote
    from cellresponse.features.crop_store import CropStore
    from cellresponse.features.embedding_tables import mean_embeddings
    from cellresponse.input.plate import ImageSource
    from cellresponse.learning.bundle import load_bundle
    from cellresponse.learning.inference import predict_cells
    from cellresponse.profiling.profile_models import (
        features_model_probabilities,
        image_feature_table,
        image_profiles,
        profile_cell_columns,
    )
    from cellresponse.stages import predict

    demo, _ = tiny_demo
    opened: list[str | list] = []
    read_parquet = runfolder.read_parquet

    def recording(path, columns=None):
        opened.append(path if isinstance(path, list) else str(path))
        return read_parquet(path, columns)

    asked: list[tuple[Path, list[str] | None, list[str] | None, set[str] | None]] = []
    plate_cells = RunFolder.plate_cells

    def asking(self, plates, columns, wanted):
        asked.append((self.root, plates, columns, wanted))
        return plate_cells(self, plates, columns, wanted)

    monkeypatch.setattr(runfolder, "read_parquet", recording)
    monkeypatch.setattr(RunFolder, "plate_cells", asking)
    out = RunFolder(tmp_path / "predicted")
    source = ImageSource(load_data=tiny_plates / "load_data.csv")
    predict.run(demo / "run", out, source, overrides=["runtime.workers=0"], progress=False, model=model)
    monkeypatch.undo()
    parts = [path for path in opened if "cells.parquet" in str(path)]
    assert parts and all(isinstance(path, str) and path.endswith(".parquet") and Path(path).is_file() for path in parts)
    assert {Path(path).parent.name for path in parts} == {"cells.parquet"}  # a plate's part, never the folder
    every_image = len(out.read_images())
    # the crops stage (the network's path) reads the cells' ids for its store's index a plate at a time too
    new_plates = [(plates, wanted) for root, plates, _, wanted in asked if root == out.root]
    assert new_plates and any(len(plates) == 1 for plates, _ in new_plates)
    for plates, wanted in new_plates:  # one plate, or a treatment's images: never the screen's cells at once
        assert len(plates) == 1 or (wanted is not None and len(wanted) < every_image), (plates, wanted)

    bundle = load_bundle(demo / "run")
    cells = out.read_cells()  # every cell at once, as predict read them before
    images = pd.read_parquet(out.image_predictions)
    if model == "network":
        index = pq.ParquetFile(out.crops / "index.parquet")
        assert index.metadata.num_row_groups == 2  # written a plate at a time, one row group each
        index = index.read().to_pandas()
        assert index["cell_id"].tolist() == cells["cell_id"].tolist()
        assert index["row"].tolist() == list(range(len(index)))
        probs = predict_cells(bundle, CropStore(out.crops), cells)
        calls = pd.read_parquet(out.cell_predictions)
        assert calls["cell_id"].tolist() == cells["cell_id"].tolist()
        np.testing.assert_allclose(calls["probability"], probs.max(1), rtol=1e-5)
        groups, scores = vote(cells["image_id"].to_numpy(), probs, bundle.config.evaluation.vote)
        assert images["image_id"].tolist() == groups.tolist()
        np.testing.assert_allclose(images["probability"], scores.max(1), rtol=1e-5)
        return
    kind = model
    profile_model = bundle.profile_models[kind]
    columns = profile_model.get("cell_columns") or profile_cell_columns(profile_model["columns"])
    measured = image_feature_table(cells, columns)
    deep = mean_embeddings(out, [str(i) for i in measured.index]) if kind != "measured" else None
    probs = features_model_probabilities(profile_model, image_profiles(kind, measured, deep))
    assert images["image_id"].tolist() == list(measured.index)
    np.testing.assert_array_equal(images["probability"], probs.max(1))


def test_evaluate_writes_and_scores_the_calls_a_plate_at_a_time_as_the_whole_test_side_gives(tiny_demo):
    """``evaluate`` (run by the demo) writes the cell calls a plate at a time (a row group each) and scores them from
    tallies of each plate's calls: the same figures as every test cell's probabilities scored at once, as evaluate
    scored them before."""
    import json

    from cellresponse.evaluation.classification import network_test_scores
    from cellresponse.features.crop_store import CropStore
    from cellresponse.learning.bundle import load_bundle
    from cellresponse.learning.inference import predict_cells
    from cellresponse.learning.splits import TEST

    run = RunFolder(tiny_demo[0] / "run")
    bundle = load_bundle(run.root)
    sides, _ = run.read_split()
    images = run.read_images().set_index("image_id")
    cells = run.read_cells(image_ids=sides.index[sides == TEST])
    label = bundle.meta["label"]
    for column, source in (("true_label", label), ("plate", "plate"), ("well", "well")):
        cells[column] = cells["image_id"].map(images[source]).astype(str)
    assert cells["plate"].nunique() == 2  # the test side spans both plates

    table = pq.ParquetFile(run.cell_predictions)
    assert table.metadata.num_row_groups == 2  # one a plate
    calls = table.read().to_pandas()
    assert calls["cell_id"].tolist() == cells["cell_id"].tolist()
    probs = predict_cells(bundle, CropStore(run.crops), cells)
    np.testing.assert_allclose(calls["probability"], probs.max(1), rtol=1e-5)

    expected = network_test_scores(cells, probs, bundle.encoder.classes, bundle.config.evaluation.top_k)
    metrics = json.loads(run.metrics.read_text())
    for level in ("cell", "image", "well"):
        got, want = metrics[level], expected[level]
        if level != "cell":
            got, want = got["soft_vote"], want["soft_vote"]
            assert got["mean_probability"] == pytest.approx(want["mean_probability"], rel=1e-5)
        for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "top5", "confusion"):
            assert got[key] == pytest.approx(want[key]) if isinstance(want[key], float) else got[key] == want[key]

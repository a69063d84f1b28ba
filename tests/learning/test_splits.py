"""Splits: whole groups per side, stratification, leakage and untestable-class reports, encoders, scaler."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cellresponse.config import SplitConfig
from cellresponse.errors import InputError
from cellresponse.input.plate import group_keys, parse_phenix_name
from cellresponse.learning.splits import (
    TEST,
    TRAIN,
    VALIDATION,
    assign_split,
    downsample_control,
    log_split,
)
from tests.conftest import shared


def _plate(n_classes=6, wells=3, sites=4, plates=1):
    rows = []
    for p in range(plates):
        for c in range(n_classes):
            for w in range(wells):
                for s in range(sites):
                    rows.append(
                        {
                            "image_id": f"P{p}_c{c}w{w}s{s}",
                            "plate": f"P{p}",
                            "well": f"{chr(65 + c)}{w + 1:02d}",
                            "compound": f"cmp{c}",
                        }
                    )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("by", ["image", "well", "plate"])
def test_groups_never_cross_sides(by):
    images = _plate(plates=3)
    side, report = assign_split(images, "compound", SplitConfig(by=by), seed=1)
    groups = group_keys(images, by)
    assert (side.groupby(groups.to_numpy()).nunique() == 1).all()
    assert set(side) <= {TRAIN, VALIDATION, TEST}
    assert (side == TEST).any() and (side == TRAIN).any()
    if by in ("well", "plate"):
        assert report.leaky_classes == 0


def test_stratified_image_split_tests_every_class_and_flags_wells():
    images = _plate()
    side, report = assign_split(
        images, "compound", SplitConfig(by="image", test_fraction=0.25, validation_fraction=0), seed=0
    )
    tested = images.loc[side == TEST, "compound"]
    assert tested.nunique() == 6
    # 12 images per class, 25 % held out = 3 per class
    assert (tested.value_counts() == 3).all()
    # sites of the same wells on both sides: every class leaks
    assert report.leaky_classes == 6


def test_column_split_with_named_test_values():
    images = _plate(plates=2)
    images["Metadata_Replicate"] = np.where(images["plate"] == "P0", 1, 2)
    side, _ = assign_split(images, "compound", SplitConfig(by="column", column="Metadata_Replicate", test_values=["2"]))
    assert (side[images["plate"] == "P1"] == TEST).all()
    assert set(side[images["plate"] == "P0"]) == {TRAIN, VALIDATION}  # validation wells carved from replicate 1
    wells = group_keys(images, "well")
    assert (side.groupby(wells.to_numpy()).nunique() == 1).all()
    with pytest.raises(InputError, match="--test-values"):
        assign_split(images, "compound", SplitConfig(by="column", column="Metadata_Replicate"))


def test_study_metadata_leakage_is_reported(caplog):
    """The study's plate: 236 of 249 compounds sit in one well. An image split leaks for almost all of
    them; a well split cannot test them at all — both are said, with counts."""
    meta = pd.read_csv(shared("cpjump1", "metadata", "metadata_BR00116991_filtered.csv"))
    parsed = [parse_phenix_name(name + "p01-ch1sk1fk1fl1.tiff") for name in meta["FileName_OrigRNA"].str[:9]]
    images = pd.DataFrame(
        {
            "image_id": meta["FileName_OrigRNA"].str[:9],
            "plate": "BR00116991",
            "well": [p.well for p in parsed],
            "label": meta["Metadata_pert_iname"].astype(str),
        }
    )
    wells_per_compound = images.groupby("label")["well"].nunique()
    single_well = int((wells_per_compound == 1).sum())
    assert single_well == 236
    _, by_image = assign_split(images, "label", SplitConfig(by="image", validation_fraction=0), seed=0)
    assert by_image.leaky_classes >= 230
    with caplog.at_level(logging.WARNING):
        log_split(by_image)
    assert "leakage" in caplog.text and str(by_image.leaky_classes) in caplog.text
    _, by_well = assign_split(images, "label", SplitConfig(by="well", validation_fraction=0), seed=0)
    assert by_well.leaky_classes == 0
    assert by_well.untestable_classes == single_well
    assert by_well.classes_in_test == 250 - single_well


def test_plates_that_give_the_class_away_are_reported(caplog):
    """A plate holding one compound (BBBC021's design): split by well, a test image's plate neighbours in training
    all carry its label, so the plate can name it — said with counts; a replicate split has no such image."""
    one_per_plate = _plate(n_classes=1, wells=4, sites=3, plates=6)
    one_per_plate["compound"] = one_per_plate["plate"].map(lambda p: f"cmp{p}")
    one_per_plate["well"] = one_per_plate["image_id"].str.split("_").str[1].str[:4]
    side, report = assign_split(one_per_plate, "compound", SplitConfig(by="well", test_fraction=0.25), seed=0)
    assert report.images[TEST] > 0 and report.plate_confounded_images == report.images[TEST]
    with caplog.at_level(logging.WARNING):
        log_split(report)
    assert f"plates: {report.plate_confounded_images} of {report.images[TEST]} test images" in caplog.text
    # a control on the same plate does not make the plate any less telling
    with_control = one_per_plate.copy()
    with_control.loc[with_control["image_id"].str.contains("w0"), "compound"] = "DMSO"
    side, report = assign_split(
        with_control, "compound", SplitConfig(by="well", test_fraction=0.25), seed=0, control="DMSO"
    )
    treated_tests = int(((side == TEST) & (with_control["compound"] != "DMSO")).sum())
    assert treated_tests > 0 and report.plate_confounded_images == treated_tests
    _, uncontrolled = assign_split(with_control, "compound", SplitConfig(by="well", test_fraction=0.25), seed=0)
    assert uncontrolled.plate_confounded_images < treated_tests  # DMSO counted as a class: plates look mixed
    # six compounds on every plate: the plate says nothing about the class
    _, mixed = assign_split(_plate(plates=3), "compound", SplitConfig(by="well"), seed=0)
    assert mixed.plate_confounded_images == 0


def test_bbbc021_plates_give_compounds_away_unless_the_split_is_by_replicate():
    table = pd.read_csv(shared("bbbc021-moa", "load_data.csv"))
    images = table.rename(columns={"Metadata_Plate": "plate", "Metadata_Well": "well", "Metadata_Compound": "compound"})
    images["image_id"] = images["plate"] + "_" + images["well"] + "_" + images["Metadata_Site"].astype(str)
    side, by_well = assign_split(images, "compound", SplitConfig(by="well"), seed=0)
    # every test image on a single-compound plate that kept training images is one whose plate names it
    single = images.groupby("plate")["compound"].transform("nunique") == 1
    trained_plates = set(images.loc[side != TEST, "plate"])
    expected = (side == TEST) & single & images["plate"].isin(trained_plates)
    assert expected.sum() > 0 and by_well.plate_confounded_images >= expected.sum()
    _, by_replicate = assign_split(
        images, "compound", SplitConfig(by="column", column="Metadata_Replicate", test_values=["2"])
    )
    assert by_replicate.plate_confounded_images == 0


def test_downsample_control_to_second_largest_class():
    images = _plate(n_classes=3)
    images.loc[images["compound"] == "cmp0", "compound"] = "DMSO"
    cells = pd.Series(10, index=images["image_id"])
    cells[images.loc[images["compound"] == "DMSO", "image_id"]] = 40  # DMSO: 12 images x 40 = 480 cells
    kept, info = downsample_control(images, cells, "compound", "DMSO", seed=0)
    dmso_cells = cells[kept.loc[kept["compound"] == "DMSO", "image_id"]].sum()
    assert info["applied"] and info["second_largest_cells"] == 120
    assert dmso_cells <= 120 and dmso_cells >= 120 - 40
    assert (kept["compound"] != "DMSO").sum() == (images["compound"] != "DMSO").sum()

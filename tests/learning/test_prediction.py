"""What a new plate must share with a bundle, and which of its models predicts (learning/prediction.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from cellresponse.errors import InputError
from cellresponse.learning.encoders import Scaler
from cellresponse.learning.prediction import (
    CELL_AREA_RATIO_LIMIT,
    cell_scale_note,
    check_compatible,
    resolve_model,
)


def bundle_with(choice: str | None, kinds: tuple[str, ...]) -> SimpleNamespace:
    """The two things resolve_model reads of a bundle: its recorded choice and its profile models."""
    recorded = {"auto": choice, "scored_on": "the validation side (60 images)"} if choice else None
    return SimpleNamespace(choice=recorded, profile_models={kind: {} for kind in kinds})


def test_auto_is_the_bundles_recorded_choice_and_old_names_still_work(caplog):
    bundle = bundle_with("measured", ("measured", "deep"))
    with caplog.at_level("INFO"):
        assert resolve_model("auto", bundle, "b") == "measured"
    assert "model auto: measured" in caplog.text
    assert resolve_model("cnn", bundle, "b") == "network" and resolve_model("features", bundle, "b") == "measured"
    assert resolve_model("auto", bundle_with(None, ()), "b") == "network"  # a bundle from before model choices


def test_an_unknown_or_missing_model_is_refused_with_what_there_is():
    bundle = bundle_with("measured", ("measured",))
    with pytest.raises(InputError, match="unknown model 'lda'; choose one of: auto, measured, deep, both, network"):
        resolve_model("lda", bundle, "b")
    with pytest.raises(InputError, match="b has no both profile model \\(it has: measured\\); use --model network"):
        resolve_model("both", bundle, "b")


def test_images_must_carry_the_bundles_channels_in_its_order_and_its_crop_settings():
    check_compatible(["DNA", "Actin"], ["DNA", "Actin"], {"size": 64}, {"size": 64})
    with pytest.raises(InputError, match="trained on channels \\['DNA', 'Actin'\\], these images have"):
        check_compatible(["DNA", "Actin"], ["Actin", "DNA"], {"size": 64}, {"size": 64})
    with pytest.raises(InputError, match="crop settings differ"):
        check_compatible(["DNA"], ["DNA"], {"size": 64}, {"size": 96})


def test_cells_on_another_scale_are_said_in_both_directions_and_same_scale_cells_are_not():
    # BBBC021-moa's compounds move a plate's mean cell area 0.55-1.61x: no line for them
    assert cell_scale_note(270.0, 270.0 * 1.61) is None and cell_scale_note(270.0, 270.0 * 0.55) is None
    assert cell_scale_note(270.0, 270.0 * CELL_AREA_RATIO_LIMIT) is None  # the limit itself is still the same scale
    larger = cell_scale_note(270.0, 1511.0)  # the tiled full-resolution BBBC021 cells against the 256-px fields'
    assert larger is not None and "1511 px², 5.6× the 270 px²" in larger and "expect novel calls" in larger
    smaller = cell_scale_note(1511.0, 270.0)  # binned or a lower magnification
    assert smaller is not None and "0.18× the 1511 px²" in smaller
    assert cell_scale_note(270.0, None) is None and cell_scale_note(0.0, 100.0) is None  # nothing to compare


def test_the_new_cells_mean_is_pooled_over_plates_as_the_training_cells_mean_was():
    # scale_note pools the new plates' areas with Scaler.fit_parts, the helper that made the bundle's training mean
    plates = [pd.DataFrame({"area": [100.0, 200.0]}), pd.DataFrame({"area": [600.0, None]}), pd.DataFrame({"area": []})]
    pooled = Scaler.fit_parts(iter(plates), ["area"]).mean[0]
    assert pooled == pytest.approx(300.0)  # (100 + 200 + 600) / 3, the missing value left out
    assert cell_scale_note(270.0, Scaler.fit_parts(iter([pd.DataFrame({"area": []})]), ["area"]).mean[0]) is None


def test_a_part_of_a_plate_scaled_on_its_own_is_said_where_the_scales_are_read():
    """A bundle scaled per plate, predicting plates of one compound each (a well or two of a plate): their scales
    are their compounds', said where the network or deep references read them; a bundle with one fixed scale, the
    measured model with measured references, and mixed plates say nothing."""
    from cellresponse.config import Config
    from cellresponse.learning.prediction import own_scale_note

    plate_scaled, fixed = SimpleNamespace(meta={}), SimpleNamespace(meta={"intensity_scales": {"crops": [[0, 1]]}})
    one_well = pd.DataFrame({"plate": ["P1"] * 4 + ["P2"] * 4, "Metadata_Compound": ["a"] * 4 + ["b"] * 4})
    config = Config()
    note = own_scale_note(plate_scaled, one_well, config, scaled=True)
    assert note is not None and "median 1 compound per plate" in note and "predict whole plates" in note
    assert own_scale_note(plate_scaled, one_well, config, scaled=False) is None  # nothing reads a scale
    assert own_scale_note(fixed, one_well, config, scaled=True) is None  # the bundle's own scale is used
    mixed = pd.DataFrame({"plate": ["P1"] * 8, "Metadata_Compound": list("abcdefgh")})
    assert own_scale_note(plate_scaled, mixed, config, scaled=True) is None
    # DMSO beside one compound is still one compound a plate
    with_dmso = one_well.assign(Metadata_Compound=["a", "a", "DMSO", "DMSO", "b", "b", "DMSO", "DMSO"])
    assert "median 1 compound per plate" in own_scale_note(plate_scaled, with_dmso, config, scaled=True)
    blind = one_well.drop(columns=["Metadata_Compound"])  # nothing to tell the design by
    assert own_scale_note(plate_scaled, blind, config, scaled=True) is None

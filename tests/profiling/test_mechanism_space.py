"""Where moa_call is made: the references' mechanism-discriminant space (mechanism_space.py) and how references.py
chooses, calibrates, keeps and uses it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from cellresponse.config import ReferencesConfig
from cellresponse.errors import InputError
from cellresponse.profiling.calibration import in_moa_space, leave_one_compound_out
from cellresponse.profiling.matching import match
from cellresponse.profiling.mechanism_space import compound_folds, fit_mechanism_space, held_out_spaces
from cellresponse.profiling.queries import normalize_query
from cellresponse.profiling.reference_building import build_references
from cellresponse.profiling.references import image_meta, level_table, load_references, profile_fields, save_references

MOAS = ("actin", "tubulin", "dna", "kinase")
SIGNAL, NUISANCE = 8, 72  # columns that tell mechanisms apart; columns where each compound has a quirk of its own


def screen(
    compounds_per_moa: int, seed: int, quirk: float = 4.0, signal: float = 2.0, wells: int = 2, fields: int = 3
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Per-field profiles of ``compounds_per_moa`` compounds of each mechanism: the mechanism shows in a few
    columns, each compound's own quirk (``quirk`` times as large) in many more — so the nearest other compound by
    the whole profile's cosine is anyone's, while the mechanism columns still tell. Returns (blocks, images)."""
    rng = np.random.default_rng(seed)
    centres = {moa: rng.normal(0, signal, SIGNAL) for moa in MOAS}
    profiles, records = [], []
    for moa in MOAS:
        for j in range(compounds_per_moa):
            compound = f"{moa}-{j}"
            own = rng.normal(0, quirk, NUISANCE)
            for w in range(wells):
                for site in range(fields):
                    mechanism = centres[moa] + rng.normal(0, 0.3, SIGNAL)
                    profiles.append(np.r_[mechanism, own + rng.normal(0, 0.5, NUISANCE)])
                    records.append({"image_id": f"{compound}-w{w}-s{site}", "plate": "P1", "well": f"{compound}-w{w}",
                                    "Metadata_Compound": compound, "Metadata_MoA": moa})  # fmt: skip
    images = pd.DataFrame(records)
    columns = [f"f{i:03d}__mean" for i in range(SIGNAL + NUISANCE)]
    return {"measured": pd.DataFrame(profiles, columns=columns, index=images["image_id"])}, images


def references_of(blocks, images, moa_space: str = "auto"):
    meta = image_meta(images, ["Metadata_Compound"], "Metadata_Compound", "Metadata_MoA")
    columns = {"treatment": ["Metadata_Compound"], "moa": "Metadata_MoA"}
    settings = ReferencesConfig(moa_space=moa_space, feature_selection=["variance_threshold"])
    return build_references(blocks, meta, None, "measured", columns, settings)


@pytest.fixture(scope="module")
def quirky():
    """References whose compounds' quirks outweigh their mechanism in the cosine, built with each setting."""
    blocks, images = screen(compounds_per_moa=4, seed=0)
    return {setting: references_of(blocks, images, setting) for setting in ("auto", "profile", "discriminant")}


def test_auto_takes_the_mechanism_space_where_it_calls_more_held_out_compounds_right(quirky):
    auto, profile = quirky["auto"], quirky["profile"]
    assert auto.moa_space["used"] == "discriminant" and auto.mechanism_space is not None
    assert auto.mechanism_space.scalings.shape == (len(auto.features), len(MOAS) - 1)
    assert auto.moa_space["discriminant_accuracy"] > 0.9 > 0.8 > auto.moa_space["profile_accuracy"]
    assert auto.calibration["field"]["accuracy"] == auto.moa_space["discriminant_accuracy"]
    assert profile.moa_space["used"] == "profile" and profile.mechanism_space is None
    assert profile.calibration["field"]["accuracy"] == pytest.approx(auto.moa_space["profile_accuracy"])
    # the novelty threshold reads the profile cosine whichever space calls the mechanism
    for level in ("field", "well", "treatment"):
        assert auto.calibration[level]["novelty_threshold"] == profile.calibration[level]["novelty_threshold"]


def test_a_new_compound_of_a_known_mechanism_is_called_in_the_space_and_listed_by_the_cosine(quirky):
    """Compounds the references lack (quirks of their own, the same mechanisms): the space calls their mechanism
    where the cosine's nearest treatment mostly does not; the nearest list stays the cosine's."""
    auto, profile = quirky["auto"], quirky["profile"]
    blocks, images = screen(compounds_per_moa=6, seed=0, wells=1)  # the seed draws the same mechanism centres
    images = images[images["Metadata_Compound"].str.endswith(("-4", "-5"))]  # not among the references' -0 … -3
    meta = image_meta(images, ["Metadata_Compound"], "Metadata_Compound", "Metadata_MoA")
    raw, _ = profile_fields({"measured": blocks["measured"].loc[images["image_id"]]}, meta)
    fields = normalize_query(raw, None, auto, "references")
    in_space, by_cosine = match(fields, auto, "field", 3), match(fields, profile, "field", 3)
    truth = fields["moa"].to_numpy()
    assert (in_space["moa_call"].to_numpy() == truth).mean() > 0.9
    assert (by_cosine["moa_call"].to_numpy() == truth).mean() < 0.7
    pd.testing.assert_frame_equal(in_space.filter(like="nearest_"), by_cosine.filter(like="nearest_"))


def test_the_held_out_calibration_never_scores_a_compound_in_a_space_that_saw_it():
    """Pure noise with mechanism labels: a space fitted on every field separates the labels it was fitted on, so
    scoring a compound in it would claim calls far above chance; fitted without the compound, as the calibration
    does, its calls stay near chance (1 in 4) — and auto keeps the profile cosine."""
    blocks, images = screen(compounds_per_moa=3, seed=3, quirk=1.0, signal=0.0)
    refs = references_of(blocks, images, "discriminant")
    fields = refs.fields
    seen = refs.mechanism_space.project(fields[refs.features].to_numpy())  # the space fitted on every field
    centres = {m: seen[(fields["moa"] == m).to_numpy()].mean(0) for m in MOAS}
    nearest_centre = [min(centres, key=lambda m: np.linalg.norm(row - centres[m])) for row in seen]
    assert np.mean(np.array(nearest_centre) == fields["moa"].to_numpy()) > 0.8  # what leakage would claim
    spaces = held_out_spaces(fields[refs.features].to_numpy(), fields["compound"].to_numpy(),
                             fields["moa"].to_numpy(), refs.features)  # fmt: skip
    held_out = leave_one_compound_out(refs, "field", spaces)
    assert (held_out["moa_call"] == held_out["moa"]).mean() < 0.5
    assert refs.calibration["field"]["accuracy"] == (held_out["moa_call"] == held_out["moa"]).mean()
    assert references_of(blocks, images, "auto").moa_space["used"] == "profile"


def test_fewer_than_three_mechanisms_keep_the_profile_cosine_and_say_why():
    blocks, images = screen(compounds_per_moa=3, seed=4)
    two = images[images["Metadata_MoA"].isin(MOAS[:2])]
    refs = references_of({"measured": blocks["measured"].loc[two["image_id"]]}, two, "discriminant")
    assert refs.mechanism_space is None and refs.moa_space["used"] == "profile"
    assert "needs 3 mechanisms" in refs.moa_space["why"] and refs.calibration["field"]["accuracy"] is not None


def test_compounds_are_left_out_one_by_one_up_to_the_fold_count_then_in_groups():
    assert compound_folds(np.array(["b", "a", "c", "a"]), most=5) == {"a": 0, "b": 1, "c": 2}
    folds = compound_folds(np.array([f"c{i:02d}" for i in range(50)]), most=20)
    assert len(set(folds.values())) == 20 and max(pd.Series(folds).value_counts()) == 3


def test_a_bundle_keeps_its_mechanism_space_and_an_older_one_predicts_with_the_cosine(quirky, tmp_path):
    auto = quirky["auto"]
    save_references(tmp_path, auto)
    loaded = load_references(tmp_path)
    np.testing.assert_allclose(loaded.mechanism_space.scalings, auto.mechanism_space.scalings)
    assert loaded.mechanism_space.columns == auto.features and loaded.moa_space == auto.moa_space
    units = level_table(auto.fields, auto.features, "well")
    pd.testing.assert_frame_equal(match(units, loaded, "well", 3), match(units, auto, "well", 3))
    # a bundle copied without its space file is refused in one line, not answered in the wrong space
    (tmp_path / "references_mechanism_space.npz").unlink()
    with pytest.raises(InputError, match=r"references_mechanism_space\.npz is missing"):
        load_references(tmp_path)
    # a bundle written before mechanism spaces (no space file, no moa_space entry) calls by the cosine, as it did
    described = json.loads((tmp_path / "references.json").read_text())
    del described["moa_space"]
    (tmp_path / "references.json").write_text(json.dumps(described))
    older = load_references(tmp_path)
    assert older.mechanism_space is None and older.moa_space["used"] == "profile"
    # saving references without a space where a space was saved before leaves no stale file
    save_references(tmp_path, auto)
    save_references(tmp_path, quirky["profile"])
    assert not (tmp_path / "references_mechanism_space.npz").exists()


def test_predict_calibrates_a_bundle_again_only_where_its_moa_space_differs(quirky, tmp_path, caplog):
    """A bundle made before mechanism spaces gets one from its reference fields at predict time (the same as
    train would have made); a bundle calibrated with the asked setting is used as stored; ``profile`` goes back
    to the cosine."""
    auto, profile = quirky["auto"], quirky["profile"]
    assert in_moa_space(auto, "auto", 0.1) is auto
    save_references(tmp_path, profile)
    described = json.loads((tmp_path / "references.json").read_text())
    del described["moa_space"]
    (tmp_path / "references.json").write_text(json.dumps(described))
    older = load_references(tmp_path)
    with caplog.at_level("INFO"):
        now = in_moa_space(older, "auto", 0.1)
    assert "before mechanism spaces" in caplog.text and now.moa_space["used"] == "discriminant"
    np.testing.assert_allclose(now.mechanism_space.scalings, auto.mechanism_space.scalings)
    assert now.calibration == auto.calibration
    back = in_moa_space(auto, "profile", 0.1)
    assert back.mechanism_space is None and back.calibration == profile.calibration


def test_predict_moves_the_novelty_threshold_where_asked_without_retraining(quirky, caplog):
    """``--set references.novelty_quantile=Q`` (and ``references.moa_space``) at predict: the bundle's references
    calibrated again with Q — a higher quantile, a higher threshold, more new treatments flagged — and the
    mechanism calls unchanged; predict accepts both settings."""
    from cellresponse.config import Config
    from cellresponse.learning.prediction import prediction_config

    auto = quirky["auto"]
    with caplog.at_level("INFO"):
        raised = in_moa_space(auto, "auto", 0.5)
    assert "novelty_quantile 0.1" in caplog.text
    for level in ("field", "well"):
        before, after = auto.calibration[level], raised.calibration[level]
        assert after["novelty_quantile"] == 0.5 and after["novelty_threshold"] > before["novelty_threshold"]
        assert after["accuracy"] == before["accuracy"] and after["temperature"] == before["temperature"]
    assert in_moa_space(raised, "auto", 0.5) is raised
    config = prediction_config(Config(), ["references.novelty_quantile=0.25", "references.moa_space=profile"])
    assert config.references.novelty_quantile == 0.25 and config.references.moa_space == "profile"
    with pytest.raises(InputError, match="predict takes the bundle's settings"):
        prediction_config(Config(), ["crops.size=32"])


def test_fields_without_a_mechanism_shape_no_space():
    """Reference compounds of unknown mechanism (NA, None or NaN) are neither a class nor a crash."""
    rng = np.random.default_rng(5)
    compounds = np.repeat([f"c{i}" for i in range(8)], 4)
    mechanisms = np.repeat(np.array(["a", "b", "c", "a", "b", "c", pd.NA, None], dtype=object), 4)
    mechanisms[-1] = np.nan
    folds, spaces = held_out_spaces(rng.normal(size=(32, 6)), compounds, mechanisms, [f"f{i}" for i in range(6)])
    assert len(folds) == 8 and all(space.mechanisms == ["a", "b", "c"] for space in spaces.values())


def test_a_mechanism_with_a_single_reference_field_fits_without_a_warning():
    """A JUMP reference set has mechanisms with one field: the space is fitted, scikit-learn's Ledoit-Wolf warning
    about a one-sample class is not passed on to the user's console."""
    rng = np.random.default_rng(7)
    mechanisms = np.array(["a"] * 5 + ["b"] * 5 + ["single"])
    values = rng.normal(size=(11, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        space = fit_mechanism_space(values, mechanisms, [f"f{i}" for i in range(6)])
    assert space is not None and space.mechanisms == ["a", "b", "single"] and space.scalings.shape == (6, 2)

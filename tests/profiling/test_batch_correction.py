"""Batch correction (profiles.batch_correction): sphering and Harmony on profiles, confounded designs left alone,
and the references' correction carried to new plates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.config import ReferencesConfig
from cellresponse.errors import InputError
from cellresponse.profiling.batch_correction import confounded, corrected_profiles
from cellresponse.profiling.profile_benchmarks import nsc_accuracy
from cellresponse.profiling.queries import batch_corrected
from cellresponse.profiling.reference_building import build_references
from cellresponse.profiling.references import load_references, save_references

# the references' settings with novelty quantile 0.05, the default when these tests were written
QUANTILE_005 = ReferencesConfig(novelty_quantile=0.05)

COLUMNS = {"treatment": ["compound"], "compound": "compound", "moa": "moa"}


def two_batches(seed: int = 0, shift: float = 3.0) -> tuple[pd.DataFrame, list[str]]:
    """Wells of 6 compounds (3 mechanisms) in 2 batches, each well its mechanism's pattern + noise, batch 2
    shifted by a large offset on every feature."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 1, (3, 20))
    rows = []
    for batch in ("b1", "b2"):
        for compound in range(6):
            for _ in range(3):
                values = patterns[compound % 3] + rng.normal(0, 0.4, 20) + (shift if batch == "b2" else 0.0)
                rows.append({"Metadata_Batch": batch, "Metadata_Plate": f"{batch}-p", "compound": f"c{compound}",
                             "moa": f"m{compound % 3}", **{f"f{i}": v for i, v in enumerate(values)}})  # fmt: skip
    table = pd.DataFrame(rows)
    return table, [f"f{i}" for i in range(20)]


def batch_gap(table: pd.DataFrame, features: list[str]) -> float:
    means = table.groupby("Metadata_Batch")[features].mean()
    return float(np.linalg.norm(means.iloc[0] - means.iloc[1]))


def test_harmony_removes_a_batch_shift_and_keeps_mechanisms():
    wells, features = two_batches()
    fit = np.ones(len(wells), bool)
    corrected, names, note = corrected_profiles(wells, features, "harmony", None, "compound", fit, seed=0)
    assert "harmony over 2 batches" in note and "Metadata_Batch" in note
    spread = np.linalg.norm(corrected[names].std())
    assert batch_gap(corrected, names) / spread < 0.5 * batch_gap(wells, features) / np.linalg.norm(
        wells[features].std()
    )
    x, moa, compound = corrected[names].to_numpy(), corrected["moa"], corrected["compound"]
    assert nsc_accuracy(x, moa, compound, corrected["Metadata_Batch"].to_numpy())["accuracy"] == 1.0


def test_spherize_whitens_on_the_fitted_wells():
    wells, features = two_batches(shift=0.0)
    fit = np.ones(len(wells), bool)
    sphered, names, note = corrected_profiles(wells, features, "spherize", None, "compound", fit, seed=0)
    assert names == features and "spherize" in note
    covariance = np.cov(sphered[names].to_numpy(), rowvar=False)
    np.testing.assert_allclose(np.diag(covariance), 1.0, atol=0.05)


def test_confounded_batches_and_one_batch_are_left_alone():
    wells, features = two_batches()
    one_compound = wells.assign(Metadata_Plate=wells["compound"])  # BBBC021-moa: each plate one compound
    controls = np.zeros(len(wells), bool)
    assert confounded(one_compound["Metadata_Plate"], one_compound["compound"], controls)
    _, names, note = corrected_profiles(
        one_compound.drop(columns=["Metadata_Batch"]), features, "harmony", None, "compound", controls, 0, controls
    )
    assert "skipped" in note and "confounded" in note and names == features
    # a control on every plate anchors it: the tiled BBBC021 plates (DMSO beside one compound) can be corrected
    assert not confounded(one_compound["Metadata_Plate"], one_compound["compound"], np.ones(len(wells), bool))
    single = wells[wells["Metadata_Batch"] == "b1"]
    _, _, note = corrected_profiles(single, features, "harmony", None, "compound", np.ones(len(single), bool), 0)
    assert "one batch" in note


def test_a_missing_batch_column_names_the_nearest():
    wells, features = two_batches()
    with pytest.raises(InputError, match="Metadata_Batch"):
        corrected_profiles(wells, features, "harmony", "Metadata_Bach", "compound", np.ones(len(wells), bool), 0)


def field_blocks(wells: pd.DataFrame, features: list[str]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    ids = [f"img{i}" for i in range(len(wells))]
    meta = pd.DataFrame({"plate": wells["Metadata_Plate"].to_numpy(), "well": [f"w{i}" for i in range(len(wells))],
                         "treatment": wells["compound"].to_numpy(), "compound": wells["compound"].to_numpy(),
                         "moa": wells["moa"].to_numpy(), "batch": wells["Metadata_Batch"].to_numpy()},
                        index=ids)  # fmt: skip
    return {"measured": wells[features].set_axis(ids)}, meta


def test_sphered_references_round_trip_and_new_plates_go_through_the_same_map(tmp_path):
    wells, features = two_batches(shift=0.0)
    blocks, meta = field_blocks(wells, features)
    refs = build_references(blocks, meta, None, "measured", COLUMNS, QUANTILE_005, batch_correction="spherize")
    assert refs.batch_correction["method"] == "spherize" and refs.sphere is not None
    save_references(tmp_path, refs)
    loaded = load_references(tmp_path)
    assert loaded.batch_correction["method"] == "spherize"
    np.testing.assert_allclose(loaded.sphere["W"], refs.sphere["W"], rtol=1e-5, atol=1e-6)
    queries = refs.fields.iloc[:4].copy()
    _, moved = batch_corrected(loaded, queries, None, 0.05, 0)
    assert not np.allclose(moved[loaded.features].to_numpy(), queries[loaded.features].to_numpy())


def test_harmony_references_refit_with_the_new_plate():
    wells, features = two_batches()
    reference_rows = wells["Metadata_Batch"] == "b1"
    blocks, meta = field_blocks(wells[reference_rows].reset_index(drop=True), features)
    refs = build_references(blocks, meta, None, "measured", COLUMNS, QUANTILE_005, batch_correction="harmony")
    assert refs.batch_correction["method"] == "harmony"
    query_blocks, query_meta = field_blocks(wells[~reference_rows].reset_index(drop=True), features)
    from cellresponse.profiling.queries import normalize_query
    from cellresponse.profiling.references import profile_fields

    raw, _ = profile_fields(query_blocks, query_meta)
    queries = normalize_query(raw, None, refs, "references")
    joint, corrected = batch_corrected(refs, queries, None, 0.05, 0)
    assert joint.features[0] == "harmony_1" and list(corrected.columns[-len(joint.features) :]) == joint.features
    assert "temperature" in joint.calibration["well"]  # calibrated again in the joint space


def test_one_control_well_cannot_scale_the_references():
    """With a single control well there is no spread to standardise by: the references are standardised to all
    their wells instead (raw units would let areas in pixels drown 0-1 intensities)."""
    wells, features = two_batches(shift=0.0)
    blocks, meta = field_blocks(wells, features)
    blocks["measured"]["f0"] *= 1000.0  # one feature in far larger units
    one = pd.Series(meta.index == meta.index[0], index=meta.index)
    refs = build_references(blocks, meta, one, "measured", COLUMNS, QUANTILE_005)
    assert refs.normalization.samples == "all wells"
    assert np.allclose(refs.fields[refs.features].std(), 1.0, atol=0.1)
    two = pd.Series(meta["well"].isin(meta["well"].iloc[:2]).to_numpy(), index=meta.index)
    assert (
        build_references(blocks, meta, two, "measured", COLUMNS, QUANTILE_005).normalization.samples
        == "negative controls"
    )

"""Feature selection on well profiles (profiling.well_profiles): pycytominer's operations, its correlation
threshold by the same rule without its table of every pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pycytominer import feature_select

from cellresponse.profiling.well_profiles import (
    TREATMENT,
    combine_blocks,
    correlated_features,
    normalization_scope,
    select_features,
)

OPERATIONS = ["variance_threshold", "drop_na_columns", "correlation_threshold"]


def near_copies(seed: int) -> pd.DataFrame:
    """Well profiles whose features are scaled, sign-flipped and noisy copies of a few signals (ties in the
    correlation sums included: some copies are exact), with a missing value and a constant feature."""
    rng = np.random.default_rng(seed)
    wells, features = int(rng.integers(6, 40)), int(rng.integers(8, 90))
    signals = rng.normal(size=(wells, max(2, features // 4)))
    columns = [
        signals[:, rng.integers(signals.shape[1])] * rng.choice([1.0, -1.0, 2.0])
        + rng.normal(scale=rng.choice([0.0, 0.05, 0.5, 2.0]), size=wells)
        for _ in range(features)
    ]
    table = pd.DataFrame(np.array(columns).T, columns=[f"Cells_F{k:03d}" for k in range(features)])
    table.insert(0, "Metadata_Well", [f"w{i}" for i in range(wells)])
    table.iloc[int(rng.integers(wells)), 1 + int(rng.integers(features))] = np.nan if seed % 2 else 0.0
    table["Cells_Constant"] = 1.0
    return table


@pytest.mark.parametrize("seed", range(12))
def test_feature_selection_keeps_what_pycytominer_keeps(seed):
    wells = near_copies(seed)
    features = [c for c in wells.columns if c.startswith("Cells_")]
    selected, kept = select_features(wells, features, OPERATIONS)
    expected = feature_select(wells, features=features, operation=OPERATIONS)
    pd.testing.assert_frame_equal(selected, expected)
    assert kept == [c for c in features if c in expected.columns] and len(kept) < len(features) - 1


def test_of_each_correlated_pair_the_feature_more_correlated_with_all_is_dropped():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    wells = pd.DataFrame({"a": a, "a_copy": a + rng.normal(scale=0.01, size=20), "a_and_b": a + b, "b": b})
    # a and its copy correlate at ~1: of the two, the one with the larger sum of |correlation| over all goes
    sums = wells.corr().abs().sum()
    dropped = correlated_features(wells, list(wells.columns))
    assert dropped == [max(["a", "a_copy"], key=lambda c: sums[c])]
    assert correlated_features(wells, ["a", "b"]) == []  # nothing above 0.9


def test_confounded_plates_are_detected_and_not_normalised_per_plate():
    confounded = pd.DataFrame(
        {"Metadata_Plate": ["p1", "p1", "p2", "p2"], "Metadata_Compound": ["a", "a", "b", "b"], TREATMENT: list("abcd")}
    )
    scope, why = normalization_scope(confounded, "auto", "Metadata_Compound")
    assert scope == "experiment" and "confounded" in why
    mixed = pd.DataFrame(
        {
            "Metadata_Plate": ["p1"] * 5 + ["p2"] * 5,
            "Metadata_Compound": list("abcde") * 2,
            TREATMENT: list("abcde") * 2,
        }
    )
    assert normalization_scope(mixed, "auto", "Metadata_Compound")[0] == "plate"
    assert normalization_scope(confounded, "plate", "Metadata_Compound")[0] == "plate"  # the user decides


def test_blocks_weigh_the_same_whatever_their_width():
    narrow = pd.DataFrame(np.ones((3, 4)))
    wide = pd.DataFrame(np.ones((3, 400)))
    combined, columns = combine_blocks([narrow, wide], ["m", "d"])
    m = combined[[c for c in columns if c.startswith("m__")]].to_numpy()
    d = combined[[c for c in columns if c.startswith("d__")]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), np.linalg.norm(d, axis=1))

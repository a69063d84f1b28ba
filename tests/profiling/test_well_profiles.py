"""Feature selection on well profiles (profiling.well_profiles): pycytominer's operations, its correlation
threshold by the same rule without its table of every pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pycytominer import feature_select

from cellresponse.profiling.well_profiles import correlated_features, select_features

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

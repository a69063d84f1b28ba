"""The label encoder and feature scaler the network is trained with (learning.encoders)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.learning.encoders import LabelEncoder, Scaler, count_nonfinite


def test_encoder_and_scaler_round_trip_and_nonfinite():
    enc = LabelEncoder.fit(["b", "a", "c", "a"])
    assert enc.classes == ["a", "b", "c"]
    assert enc.transform(["c", "a", "zzz"]).tolist() == [2, 0, -1]
    assert enc.inverse(np.array([1, 2])).tolist() == ["b", "c"]
    # a categorical column (the training sets') maps its categories: the same codes as its strings give
    values = pd.Series(pd.Categorical(["c", "a", "zzz", None, "b"], categories=["zzz", "c", "b", "a"]))
    assert enc.transform(values).tolist() == enc.transform(["c", "a", "zzz", "", "b"]).tolist() == [2, 0, -1, -1, 1]
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.inf], "y": [5.0, 5.0, 5.0, np.nan]})
    scaler = Scaler.fit(train, ["x", "y"])
    assert scaler.mean[0] == pytest.approx(2.0) and scaler.std[1] == 1.0  # constant column: std 1, not 0
    out = scaler.transform(pd.DataFrame({"x": [2.0, np.nan], "y": [5.0, -np.inf]}))
    assert np.isfinite(out).all() and out[0].tolist() == [0.0, 0.0]
    assert count_nonfinite(train, ["x", "y"]) == 2


def test_scaler_fitted_plate_by_plate_equals_the_scaler_of_the_whole_table():
    """A screen's training side comes one plate at a time: the pooled moments give the scaler of the concatenated
    table (within rounding), and the float32 rows the network sees are the same — NaN, infinities, a column
    empty on one plate, a constant column and an empty plate included."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(1000.0, 10.0, (3000, 4)), columns=["a", "b", "c", "d"])
    table.iloc[::7, 1] = np.nan
    table.iloc[::11, 2] = np.inf
    table.iloc[:1000, 3] = np.nan  # no finite value on the first plate
    table["e"] = 3.0
    columns = list(table.columns)
    plates = [table.iloc[:1000], table.iloc[1000:1000], table.iloc[1000:2400], table.iloc[2400:]]
    whole, pooled = Scaler.fit(table, columns), Scaler.fit_parts(iter(plates), columns)
    np.testing.assert_allclose(pooled.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(pooled.std, whole.std, rtol=1e-13)
    assert pooled.std[-1] == 1.0
    np.testing.assert_array_equal(pooled.transform(table), whole.transform(table))
    empty = Scaler.fit_parts([], columns)
    assert empty.mean == [0.0] * 5 and empty.std == [1.0] * 5

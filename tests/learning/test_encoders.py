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
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.inf], "y": [5.0, 5.0, 5.0, np.nan]})
    scaler = Scaler.fit(train, ["x", "y"])
    assert scaler.mean[0] == pytest.approx(2.0) and scaler.std[1] == 1.0  # constant column: std 1, not 0
    out = scaler.transform(pd.DataFrame({"x": [2.0, np.nan], "y": [5.0, -np.inf]}))
    assert np.isfinite(out).all() and out[0].tolist() == [0.0, 0.0]
    assert count_nonfinite(train, ["x", "y"]) == 2

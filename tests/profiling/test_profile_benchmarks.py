"""The profile benchmarks' memory: copairs' pair batches sized to a budget, with the same mAP whatever the size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.profiling import profile_benchmarks
from cellresponse.profiling.profile_benchmarks import PAIR_BATCH_BYTES, pair_batch_size, retrieval_map
from cellresponse.profiling.well_profiles import TREATMENT


def test_pair_batches_hold_the_budget_over_the_threads():
    # a 1,970-column profile on two threads: ~133 pairs a batch, each gathered array within the budget
    batch = pair_batch_size(1970, threads=2)
    assert batch * 1970 * 8 * 2 <= PAIR_BATCH_BYTES < (batch + 1) * 1970 * 8 * 2
    assert pair_batch_size(5, threads=1) == 20_000  # a narrow profile keeps copairs' own default
    assert pair_batch_size(100_000, threads=64) == 64  # never fewer than 64 pairs a batch


def test_retrieval_map_is_the_same_whatever_the_batch(monkeypatch):
    """40 wells of 8 treatments (780 pairs): batches of 64 pairs give the mAP of one batch of all pairs, and copairs
    is handed the budgeted batch size."""
    import copairs.map

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 30))
    features = np.repeat(centres, 5, axis=0) + rng.normal(scale=1.5, size=(40, 30))
    meta = pd.DataFrame({TREATMENT: np.repeat([f"t{i}" for i in range(8)], 5), "Metadata_Well": np.arange(40)})
    seen = []
    original = copairs.map.average_precision

    def spy(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(copairs.map, "average_precision", spy)
    default_batch = pair_batch_size(30)
    whole = retrieval_map(meta, features, [TREATMENT], [], [TREATMENT], [TREATMENT], null_size=200)
    monkeypatch.setattr(profile_benchmarks, "PAIR_BATCH_BYTES", 1)
    batched = retrieval_map(meta, features, [TREATMENT], [], [TREATMENT], [TREATMENT], null_size=200)
    assert seen == [default_batch, 64]
    assert batched["mean_average_precision"] == pytest.approx(whole["mean_average_precision"], abs=1e-6)
    assert 0.3 < whole["mean_average_precision"] < 1.0 and batched["groups"] == 8

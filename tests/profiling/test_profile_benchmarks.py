"""The profile benchmarks (profiling.profile_benchmarks): NSC and mAP on hand-made profiles, and their memory —
copairs' pair batches sized to a budget, with the same mAP whatever the size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.profiling import similarity
from cellresponse.profiling.profile_benchmarks import nsc_accuracy, retrieval_map
from cellresponse.profiling.similarity import PAIR_BATCH_BYTES, pair_batch_size
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
    monkeypatch.setattr(similarity, "PAIR_BATCH_BYTES", 1)
    batched = retrieval_map(meta, features, [TREATMENT], [], [TREATMENT], [TREATMENT], null_size=200)
    assert seen == [default_batch, 64]
    assert batched["mean_average_precision"] == pytest.approx(whole["mean_average_precision"], abs=1e-6)
    assert 0.3 < whole["mean_average_precision"] < 1.0 and batched["groups"] == 8


def test_nsc_accuracy_on_hand_made_profiles():
    # two MoAs, two compounds each; compound c2's nearest other-compound neighbour has the other MoA
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0], [0.95, 0.05]])
    moa = ["A", "A", "B", "B", "B"]
    compound = ["c1", "c2", "c3", "c4", "c5"]
    result = nsc_accuracy(features, moa, compound)
    # c1 → c5 (B: wrong), c2 → c5 (wrong), c3 → c4 (right), c4 → c3 (right), c5 → c1 (wrong)
    assert result["accuracy"] == pytest.approx(2 / 5) and result["n"] == 5
    assert result["chance_rate"] == pytest.approx(np.mean([1 / 4, 1 / 4, 2 / 4, 2 / 4, 2 / 4]))
    batch = ["b1", "b1", "b1", "b2", "b2"]
    nscb = nsc_accuracy(features, moa, compound, batch)
    # other batch only: c1 and c2 (A, batch b1) have no A in batch b2 and are skipped; c3 → c4 right,
    # c4 → c3 right, c5 → c1 wrong
    assert nscb["accuracy"] == pytest.approx(2 / 3) and nscb["skipped"] == 2


def test_retrieval_map_matches_average_precision_by_hand():
    """Four profiles, two treatments of two replicates each: each query's one positive ranks first (AP 1) for
    treatment x; for treatment y one query ranks its positive second (AP 1/2)."""
    meta = pd.DataFrame({TREATMENT: ["x", "x", "y", "y"], "Metadata_Well": ["a", "b", "c", "d"]})
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.3, 1.0], [0.7, 0.35]])
    result = retrieval_map(meta, features, [TREATMENT], [], [TREATMENT], [TREATMENT], null_size=100)
    similarity = features @ features.T / np.outer(np.linalg.norm(features, axis=1), np.linalg.norm(features, axis=1))
    # by hand: rank the other three by cosine similarity, AP = precision at the positive's rank
    aps = []
    for i, same in ((0, 1), (1, 0), (2, 3), (3, 2)):
        others = [j for j in range(4) if j != i]
        order = sorted(others, key=lambda j: -similarity[i, j])
        aps.append(1.0 / (order.index(same) + 1))
    expected = np.mean([np.mean(aps[:2]), np.mean(aps[2:])])
    assert result["mean_average_precision"] == pytest.approx(expected)
    assert result["groups"] == 2 and result["profiles"] == 4

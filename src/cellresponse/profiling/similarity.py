"""How profiles are compared: the cosine similarity of every pair of rows, and the batch size at which copairs
compares pairs within a memory bound. Shared by the open-world answer (matching, calibration, activity) and the
run's profile benchmarks."""

from __future__ import annotations

import os

import numpy as np

# copairs gathers both profiles of every pair in a batch (and normalised copies of them), one batch per thread: at its
# default 20,000 pairs, a 1,970-column `both` profile costs ~300 MB an array, and a screen reaches that cap as soon as
# it has ~200 wells. Batches of this many bytes an array, shared by the threads, keep the profile stage's peak flat
# in the number of plates (benchmarks/screen_scale.py); the pairs' similarities are the same whatever the batch.
PAIR_BATCH_BYTES = 4 * 2**20


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Each row of ``a`` scaled to length 1 (a zero row stays zero): the profiles as the cosine sees them."""
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def cosine_similarity(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (of ``a`` itself without ``b``)."""
    a = unit_rows(a)
    return a @ (a if b is None else unit_rows(b)).T


def pair_batch_size(n_features: int, threads: int | None = None) -> int:
    """copairs' ``batch_size`` (pairs a batch) that holds a batch's gathered profiles of ``n_features`` columns
    within :data:`PAIR_BATCH_BYTES` over ``threads`` threads (copairs runs one per CPU), between 64 and 20,000."""
    threads = threads or os.cpu_count() or 1
    return int(min(20_000, max(64, PAIR_BATCH_BYTES // (8 * max(n_features, 1) * threads))))

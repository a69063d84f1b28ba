"""Votes: cell predictions aggregated into images, wells and plates.

majority  each cell votes for its top class; the class with most votes wins. Ties go to the
          tied class with the highest mean probability, then to the first class in sorted
          order (deterministic).
soft      the class with the highest mean probability over the cells (ties: first class).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LEVELS = ("image", "well", "plate")
Votes = tuple[np.ndarray, np.ndarray]  # sorted groups and their voted scores, as vote() returns them


def most_common_label(labels: pd.Series, groups: np.ndarray | pd.Series) -> pd.Series:
    """Each group's most common label (ties: the label seen first), indexed by group."""
    return pd.Series(np.asarray(labels)).groupby(np.asarray(groups)).agg(lambda s: s.value_counts().index[0])


def group_sums(groups: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a soft vote needs of each group of ``probs`` ``(N, C)``: the sorted unique groups, each row's group (an
    index into them), the groups' summed probabilities ``(G, C)`` and their cell counts ``(G,)``. Sums run over each
    group's rows in their order, so a group's figures do not depend on the other rows handed in with it (a plate's
    groups summed apart equal the same groups summed over a screen)."""
    groups = np.asarray(groups)
    probs = np.asarray(probs, dtype=np.float64)
    unique, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(unique)).astype(np.float64)
    sums = np.zeros((len(unique), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    return unique, inverse, sums, sizes


def call_counts(inverse: np.ndarray, called: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """What a majority vote adds: how many of each group's rows (``inverse``, :func:`group_sums`) called each class
    (``called``: each row's top class, the first on ties), a ``shape`` ``(G, C)`` array."""
    counts = np.zeros(shape)
    np.add.at(counts, (inverse, called), 1.0)
    return counts


def voted_scores(
    sums: np.ndarray, sizes: np.ndarray, method: str = "soft", counts: np.ndarray | None = None
) -> np.ndarray:
    """The ``(G, C)`` scores of a vote from :func:`group_sums`' figures: mean probabilities (soft), or vote counts
    (:func:`call_counts`) plus the mean probability scaled below one vote as tie-breaker (majority)."""
    mean = sums / sizes[:, None]
    if method == "soft":
        return mean
    if method != "majority":
        raise ValueError(f"unknown vote {method!r}")
    if counts is None:
        raise ValueError("a majority vote needs its call counts (call_counts)")
    return counts + mean * 0.5  # mean prob < 1 cannot outweigh one vote: it only breaks ties


def vote(groups: np.ndarray, probs: np.ndarray, method: str = "soft") -> Votes:
    """Aggregate cell probabilities ``(N, C)`` per group.

    Returns the sorted unique groups and a ``(G, C)`` score matrix whose argmax (first maximum on
    ties) is the group's prediction (:func:`voted_scores`).
    """
    unique, inverse, sums, sizes = group_sums(groups, probs)
    counts = call_counts(inverse, np.asarray(probs).argmax(1), sums.shape) if method == "majority" else None
    return unique, voted_scores(sums, sizes, method, counts)


def merged_votes(parts: list[Votes], n_classes: int) -> Votes:
    """:func:`vote`'s groups and scores of parts voted apart (a screen's plates: no group spans two), in the
    order one vote over every part gives (sorted groups)."""
    if not parts:
        return np.array([], dtype=object), np.zeros((0, n_classes))
    groups = np.concatenate([g for g, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    order = np.argsort(groups, kind="stable")
    return groups[order], scores[order]

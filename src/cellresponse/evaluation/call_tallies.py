"""Tallies of a classifier's calls on a test side, made a plate at a time and merged: what the cell-level and voted
metrics need and nothing more — of each test cell its true label's code, the class called and whether the truth is
among the top k; of each image, well and plate its summed probabilities, top-class counts, cell count and most
common true label. A screen's evaluation then holds ~9 bytes a test cell instead of its row of probabilities (1 kB
a cell at 250 classes) and its table of strings.

``tally_cells`` makes one part's tally (pure, from its cells and probabilities); ``merge_tallies`` joins parts whose
groups do not overlap (a screen's plates); ``classification.tally_scores`` scores the result as
``classification.network_test_scores`` scores one table — the same figures to the bit, since every sum runs over a
group's rows in their order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellresponse.evaluation.votes import call_counts, group_sums, most_common_label, voted_scores
from cellresponse.input.plate import group_keys


@dataclass(frozen=True)
class GroupTally:
    """One level's groups (sorted keys) and what a vote and its scoring need of them."""

    groups: np.ndarray
    sums: np.ndarray  # (G, C) summed probabilities
    counts: np.ndarray  # (G, C) cells calling each class
    sizes: np.ndarray  # (G,) cells
    truth: np.ndarray  # (G,) the most common true label of each group's cells (ties: the first seen)
    agreeing: int  # cells whose true label is their group's

    def scores(self, method: str) -> np.ndarray:
        """The ``(G, C)`` scores of a ``method`` vote over the groups (votes.voted_scores)."""
        return voted_scores(self.sums, self.sizes, method, self.counts)

    @property
    def purity(self) -> float:
        """The share of cells that carry their group's true label."""
        return self.agreeing / float(self.sizes.sum())


@dataclass(frozen=True)
class CallTally:
    """A test side's calls: per cell, codes into ``labels`` (the true labels seen, sorted) and into the model's
    classes; per level, a :class:`GroupTally`."""

    labels: np.ndarray
    true_codes: np.ndarray
    called: np.ndarray
    in_top: np.ndarray
    levels: dict[str, GroupTally]

    def __len__(self) -> int:
        return len(self.true_codes)


def top_k_hits(true_codes: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's true class (a column of ``scores``; -1 for a class the model lacks, which misses) is
    among its ``k`` highest scores (first columns first on ties)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (top == np.asarray(true_codes)[:, None]).any(axis=1)


def group_tally(keys: np.ndarray, labels: pd.Series | np.ndarray, probs: np.ndarray, called: np.ndarray) -> GroupTally:
    """The :class:`GroupTally` of cells with group ``keys``, true ``labels`` (as strings), ``probs`` and the class
    each ``called`` (its top one, the first on ties)."""
    labels = pd.Series(np.asarray(labels, dtype=str))
    groups, inverse, sums, sizes = group_sums(keys, probs)
    truth = most_common_label(labels, keys)
    agreeing = int((labels.to_numpy() == truth.loc[np.asarray(keys)].to_numpy()).sum())
    counts = call_counts(inverse, called, sums.shape)
    return GroupTally(groups, sums, counts, sizes, truth.loc[groups].to_numpy(), agreeing)


def tally_cells(
    cells: pd.DataFrame, probs: np.ndarray, classes: list[str], top_k: int, levels: tuple[str, ...]
) -> CallTally:
    """One part's tally: ``cells`` with ``true_label`` and the columns of ``levels`` (``image_id``, ``plate``,
    ``well``), ``probs`` one row a cell over ``classes``."""
    probs = np.asarray(probs, dtype=np.float64)  # once, not once a level
    called = probs.argmax(1)
    true = cells["true_label"].astype(str).to_numpy()
    labels, true_codes = np.unique(true, return_inverse=True)
    column = {c: i for i, c in enumerate(classes)}
    class_codes = np.array([column.get(label, -1) for label in labels], dtype=np.int64)
    return CallTally(
        labels=labels.astype(object),
        true_codes=true_codes.astype(np.int32),
        called=called.astype(np.int32),
        in_top=top_k_hits(class_codes[true_codes], probs, top_k),
        levels={level: group_tally(group_keys(cells, level).to_numpy(), true, probs, called) for level in levels},
    )


def merge_group_tallies(parts: list[GroupTally]) -> GroupTally:
    """Parts' groups in one sorted tally; a group may sit in one part only (a screen's plates hold their own
    images, wells and plate)."""
    groups = np.concatenate([p.groups for p in parts])
    order = np.argsort(groups, kind="stable")
    groups = groups[order]
    if len(groups) > 1 and (groups[1:] == groups[:-1]).any():
        twice = groups[1:][groups[1:] == groups[:-1]][0]
        raise ValueError(f"group {twice!r} is in two parts: parts must not share a group")
    return GroupTally(
        groups=groups,
        sums=np.concatenate([p.sums for p in parts])[order],
        counts=np.concatenate([p.counts for p in parts])[order],
        sizes=np.concatenate([p.sizes for p in parts])[order],
        truth=np.concatenate([p.truth for p in parts])[order],
        agreeing=sum(p.agreeing for p in parts),
    )


def merge_tallies(parts: list[CallTally]) -> CallTally:
    """The parts' tallies as one, cells in the parts' order; their label codes recoded into the union of labels."""
    labels = np.array(sorted(set().union(*(p.labels.tolist() for p in parts))), dtype=object)
    position = {label: i for i, label in enumerate(labels)}
    recoded = [np.array([position[x] for x in p.labels], dtype=np.int32)[p.true_codes] for p in parts]
    return CallTally(
        labels=labels,
        true_codes=np.concatenate(recoded) if parts else np.zeros(0, np.int32),
        called=np.concatenate([p.called for p in parts]) if parts else np.zeros(0, np.int32),
        in_top=np.concatenate([p.in_top for p in parts]) if parts else np.zeros(0, bool),
        levels={level: merge_group_tallies([p.levels[level] for p in parts]) for level in parts[0].levels}
        if parts
        else {},
    )

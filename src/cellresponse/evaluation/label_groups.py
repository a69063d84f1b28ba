"""Label groups: each label's coarser group (a compound's mechanism or gene target) read from the image table,
and where a model's wrong calls go against it (a compound mistaken for another of its mechanism, or not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.evaluation.run_metrics import Confusion, RunMetrics, WrongCalls, WrongCallsByModel, WrongPair


def label_groups(images: pd.DataFrame, label: str, column: str) -> dict[str, str]:
    """Each label's coarser group (compound → MoA or gene target) from the image table, when every label has
    exactly one; otherwise (or when ``column`` is missing or is the label itself) an empty mapping."""
    if column == label or column not in images.columns or label not in images.columns:
        return {}
    pairs = images[[label, column]].dropna().astype(str).drop_duplicates()
    if pairs[label].duplicated().any():
        return {}
    return dict(zip(pairs[label], pairs[column], strict=True))


def label_grouping(
    images: pd.DataFrame, label: str, columns: Sequence[str | None]
) -> tuple[str, dict[str, str]] | None:
    """The first of ``columns`` that the images carry, that is not the label and that gives every label one group
    (:func:`label_groups`), with each label's group in it; None where none does. Evaluation and predictions try
    :meth:`cellresponse.config.Config.grouping_columns`: the MoA column, then the gene target column."""
    for column in columns:
        if column and (groups := label_groups(images, label, column)):
            return column, groups
    return None


def group_accuracy(confusion: Confusion, groups: dict[str, str]) -> float | None:
    """The share of the calls a confusion matrix counts whose label has the true label's group (a compound call
    naming the right gene target); None without ``groups``. Labels with no group count as one group of their own
    (``?``), as evaluation always has."""
    if not groups:
        return None
    matrix = np.asarray(confusion.matrix, dtype=np.int64)
    group = np.array([groups.get(label, "?") for label in confusion.labels], dtype=object)
    return float(matrix[group[:, None] == group[None, :]].sum() / matrix.sum())


def grouping_record(grouping: tuple[str, dict[str, str]] | None) -> dict[str, Any] | None:
    """A :func:`label_grouping` as ``bundle.json`` and ``metrics.json`` keep it: ``{"column", "groups"}``."""
    return None if grouping is None else {"column": grouping[0], "groups": grouping[1]}


def wrong_calls(confusion: Confusion, groups: dict[str, str], top: int = 5) -> WrongCalls:
    """Where the wrong calls of a confusion matrix go, against a coarser grouping of its labels (``groups``,
    :func:`label_groups`): how many wrong calls name a label of the same group (a compound mistaken for another
    compound of its mechanism), the accuracy at the group level, and the ``top`` most frequent wrong pairs.
    A label with no group never counts as within one."""
    labels = list(confusion.labels)
    matrix = np.asarray(confusion.matrix, dtype=np.int64)
    total, right = int(matrix.sum()), int(np.trace(matrix))
    same = np.array([[groups.get(t) is not None and groups.get(t) == groups.get(p) for p in labels] for t in labels])
    np.fill_diagonal(same, False)
    within = int(matrix[same].sum())
    wrong = total - right
    off = [(int(matrix[i, j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and matrix[i, j]]
    off.sort(key=lambda entry: (-entry[0], entry[1], entry[2]))
    return WrongCalls(
        n=total,
        wrong=wrong,
        wrong_within_group=within,
        share_within_group=within / wrong if wrong else None,
        group_accuracy=(right + within) / total if total else None,
        pairs=[WrongPair(labels[i], labels[j], n, bool(same[i, j])) for n, i, j in off[:top]],
    )


# From this share of wrong calls inside the true label's group, the report says the model finds the group (e.g. the
# mechanism) and errs only between its members.
MOSTLY_WITHIN_GROUP = 0.75


def wrong_calls_by_model(metrics: RunMetrics, grouping: tuple[str, dict[str, str]] | None) -> WrongCallsByModel | None:
    """Per candidate model (the network's headline vote and each profile model) and level (image, well): where its
    wrong test calls go against the labels' ``grouping`` (:func:`label_grouping`; :func:`wrong_calls`). None when
    the images carry no such grouping."""
    if grouping is None:
        return None
    column, groups = grouping
    blocks = {"network": {level: metrics.network(level, metrics.headline_vote) for level in ("image", "well")}}
    blocks |= {
        kind: {level: scores.level(level) for level in ("image", "well")}
        for kind, scores in metrics.profile_models.items()
    }
    models = {
        name: {
            level: wrong_calls(block.confusion, groups)
            for level, block in levels.items()
            if block is not None and block.confusion is not None
        }
        for name, levels in blocks.items()
    }
    return WrongCallsByModel(column, {name: levels for name, levels in models.items() if levels})


def wrong_calls_sentence(metrics: RunMetrics) -> str:
    """Where the predicting model's wrong image calls go: how many stay within the true label's group, the
    group-level accuracy that follows and the most frequent wrong pairs."""
    grouped = metrics.wrong_calls
    name = metrics.auto.model if metrics.auto else "network"
    image = grouped.models.get(name, {}).get("image") if grouped else None
    if grouped is None or image is None:
        return ""
    label, column = metrics.label, grouped.column
    who = f"the {name} model" + (" (auto)" if metrics.auto else "")
    if not image.wrong or image.share_within_group is None:
        return f"{who} called all {image.n} test images right."
    sentence = (
        f"Of the {image.n} test images, {who} called {image.wrong} wrongly; {image.wrong_within_group} of "
        f"them ({image.share_within_group:.0%}) named another {label} with the same {column}, so as a {column} "
        f"call it is right on {image.group_accuracy:.3f} of images."
    )
    pairs = ", ".join(f"{p.true} → {p.predicted} ({p.n})" for p in image.pairs)
    sentence += f" Most frequent (true → called, images): {pairs}."
    if image.share_within_group >= MOSTLY_WITHIN_GROUP:
        sentence += (
            f" The model finds the {column}; what it misses is telling apart {label} values that share one, "
            "which may look alike in these images."
        )
    return sentence

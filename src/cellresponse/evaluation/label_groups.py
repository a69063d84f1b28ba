"""Label groups: each label's coarser group (a compound's mechanism or gene target) read from the image table,
and where a model's wrong calls go against it (a compound mistaken for another of its mechanism, or not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config


def label_groups(images: pd.DataFrame, label: str, column: str) -> dict[str, str]:
    """Each label's coarser group (compound → MoA or gene target) from the image table, when every label has
    exactly one; otherwise (or when ``column`` is missing or is the label itself) an empty mapping."""
    if column == label or column not in images.columns or label not in images.columns:
        return {}
    pairs = images[[label, column]].dropna().astype(str).drop_duplicates()
    if pairs[label].duplicated().any():
        return {}
    return dict(zip(pairs[label], pairs[column], strict=True))


def label_grouping(images: pd.DataFrame, label: str, columns: Sequence[str]) -> tuple[str, dict[str, str]] | None:
    """The first of ``columns`` that the images carry, that is not the label and that gives every label one group
    (:func:`label_groups`), with each label's group in it; None where none does."""
    for column in columns:
        if column and (groups := label_groups(images, label, column)):
            return column, groups
    return None


def grouping_record(grouping: tuple[str, dict[str, str]] | None) -> dict[str, Any] | None:
    """A :func:`label_grouping` as ``bundle.json`` and ``metrics.json`` keep it: ``{"column", "groups"}``."""
    return None if grouping is None else {"column": grouping[0], "groups": grouping[1]}


def label_grouping_of(images: pd.DataFrame, label: str, config: Config) -> tuple[str, dict[str, str]] | None:
    """The coarser grouping of the labels that evaluation reads wrong calls against and predictions name beside
    each call: the MoA column (``profiles.moa``; ``auto``: :meth:`Config.moa_column`), else the gene target column
    (``input.target_column``) — the first that the images carry, is not the label and gives every label one group
    (:func:`label_grouping`)."""
    return label_grouping(images, label, (config.moa_column(images.columns), config.input.target_column))


def wrong_calls(confusion: dict[str, Any], groups: dict[str, str], top: int = 5) -> dict[str, Any]:
    """Where the wrong calls of a confusion matrix go, against a coarser grouping of its labels (``groups``,
    :func:`label_groups`): how many wrong calls name a label of the same group (a compound mistaken for another
    compound of its mechanism), the accuracy at the group level, and the ``top`` most frequent wrong pairs.
    A label with no group never counts as within one."""
    labels = list(confusion["labels"])
    matrix = np.asarray(confusion["matrix"], dtype=np.int64)
    total, right = int(matrix.sum()), int(np.trace(matrix))
    same = np.array([[groups.get(t) is not None and groups.get(t) == groups.get(p) for p in labels] for t in labels])
    np.fill_diagonal(same, False)
    within = int(matrix[same].sum())
    wrong = total - right
    off = [(int(matrix[i, j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and matrix[i, j]]
    off.sort(key=lambda entry: (-entry[0], entry[1], entry[2]))
    return {
        "n": total,
        "wrong": wrong,
        "wrong_within_group": within,
        "share_within_group": within / wrong if wrong else None,
        "group_accuracy": (right + within) / total if total else None,
        "pairs": [
            {"true": labels[i], "predicted": labels[j], "n": n, "same_group": bool(same[i, j])} for n, i, j in off[:top]
        ],
    }


# From this share of wrong calls inside the true label's group, the report says the model finds the group (e.g. the
# mechanism) and errs only between its members.
MOSTLY_WITHIN_GROUP = 0.75


def wrong_calls_sentence(metrics: dict[str, Any]) -> str:
    """Where the predicting model's wrong image calls go: how many stay within the true label's group, the
    group-level accuracy that follows and the most frequent wrong pairs."""
    grouped = metrics.get("wrong_calls", {})
    name = metrics.get("auto", {}).get("model", "network")
    image = grouped.get("models", {}).get(name, {}).get("image")
    if not image:
        return ""
    label, column = metrics.get("label", "label"), grouped["column"]
    who = f"the {name} model" + (" (auto)" if metrics.get("auto") else "")
    if not image["wrong"]:
        return f"{who} called all {image['n']} test images right."
    sentence = (
        f"Of the {image['n']} test images, {who} called {image['wrong']} wrongly; {image['wrong_within_group']} of "
        f"them ({image['share_within_group']:.0%}) named another {label} with the same {column}, so as a {column} "
        f"call it is right on {image['group_accuracy']:.3f} of images."
    )
    pairs = ", ".join(f"{p['true']} → {p['predicted']} ({p['n']})" for p in image["pairs"])
    sentence += f" Most frequent (true → called, images): {pairs}."
    if image["share_within_group"] >= MOSTLY_WITHIN_GROUP:
        sentence += (
            f" The model finds the {column}; what it misses is telling apart {label} values that share one, "
            "which may look alike in these images."
        )
    return sentence

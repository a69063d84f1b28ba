"""Metrics: votes of cell predictions into images, wells and plates; classification metrics with chance and
majority rates beside them; object matching for segmentation quality. Pure functions on arrays and tables.

Votes (:func:`vote`):
    majority  each cell votes for its top class; the class with most votes wins. Ties go to the
              tied class with the highest mean probability, then to the first class in sorted
              order (deterministic).
    soft      the class with the highest mean probability over the cells (ties: first class).

Rates printed beside every metric:
    chance    1 / number of classes in the model
    majority  accuracy of always answering the most frequent true class at that level
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import relabel_sequential
from sklearn import metrics as skm

from cellresponse.config import Config
from cellresponse.input.plate import group_keys

LEVELS = ("image", "well", "plate")
# Share of cells that must carry their group's label for a vote at that level to be scored (see voted_metrics).
MIN_GROUP_PURITY = 0.99


def most_common_label(labels: pd.Series, groups: np.ndarray | pd.Series) -> pd.Series:
    """Each group's most common label (ties: the label seen first), indexed by group."""
    return pd.Series(np.asarray(labels)).groupby(np.asarray(groups)).agg(lambda s: s.value_counts().index[0])


def vote(groups: np.ndarray, probs: np.ndarray, method: str = "soft") -> tuple[np.ndarray, np.ndarray]:
    """Aggregate cell probabilities ``(N, C)`` per group.

    Returns the sorted unique groups and a ``(G, C)`` score matrix whose argmax (first maximum on
    ties) is the group's prediction: mean probabilities (soft), or vote counts plus the mean
    probability scaled below one vote as tie-breaker (majority).
    """
    groups = np.asarray(groups)
    probs = np.asarray(probs, dtype=np.float64)
    unique, inverse = np.unique(groups, return_inverse=True)
    n_groups, n_classes = len(unique), probs.shape[1]
    sizes = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    mean = np.zeros((n_groups, n_classes))
    np.add.at(mean, inverse, probs)
    mean /= sizes[:, None]
    if method == "soft":
        return unique, mean
    if method != "majority":
        raise ValueError(f"unknown vote {method!r}")
    counts = np.zeros((n_groups, n_classes))
    np.add.at(counts, (inverse, probs.argmax(1)), 1.0)
    return unique, counts + mean * 0.5  # mean prob < 1 cannot outweigh one vote: it only breaks ties


def top_k_accuracy(true_codes: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Share of rows whose true class is among the k highest scores (unknown classes, code -1, miss)."""
    if len(true_codes) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([t in row for t, row in zip(true_codes, top, strict=True)]))


def rates(true_labels: pd.Series | np.ndarray, n_classes: int) -> dict[str, float]:
    counts = pd.Series(np.asarray(true_labels)).value_counts()
    return {
        "chance_rate": 1.0 / max(n_classes, 1),
        "majority_rate": float(counts.iloc[0] / counts.sum()) if len(counts) else float("nan"),
    }


def classification_metrics(
    true_labels: np.ndarray,
    predicted: np.ndarray,
    scores: np.ndarray | None,
    classes: list[str],
    top_k: int = 5,
    details: bool = True,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, top-k, macro F1 (+ per-class precision/recall and confusion)."""
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small test sides
        warnings.simplefilter("ignore", UserWarning)
        return _classification_metrics(true_labels, predicted, scores, classes, top_k, details)


def _classification_metrics(
    true_labels: np.ndarray,
    predicted: np.ndarray,
    scores: np.ndarray | None,
    classes: list[str],
    top_k: int,
    details: bool,
) -> dict[str, Any]:
    true_labels = np.asarray(true_labels).astype(str)
    predicted = np.asarray(predicted).astype(str)
    labels = sorted(set(true_labels) | set(predicted))
    out: dict[str, Any] = {
        "n": len(true_labels),
        "accuracy": float(skm.accuracy_score(true_labels, predicted)) if len(true_labels) else float("nan"),
        "balanced_accuracy": float(skm.balanced_accuracy_score(true_labels, predicted))
        if len(true_labels)
        else float("nan"),
        "macro_f1": float(skm.f1_score(true_labels, predicted, labels=sorted(set(true_labels)), average="macro"))
        if len(true_labels)
        else float("nan"),
    }
    if scores is not None:
        lookup = {c: i for i, c in enumerate(classes)}
        codes = np.array([lookup.get(t, -1) for t in true_labels])
        out[f"top{top_k}"] = top_k_accuracy(codes, scores, top_k)
    out.update(rates(true_labels, len(classes)))
    if details and len(true_labels):
        precision, recall, _, support = skm.precision_recall_fscore_support(
            true_labels, predicted, labels=labels, zero_division=0
        )
        out["per_class"] = {
            lab: {"precision": float(p), "recall": float(r), "support": int(s)}
            for lab, p, r, s in zip(labels, precision, recall, support, strict=True)
        }
        out["confusion"] = {
            "labels": labels,
            "matrix": skm.confusion_matrix(true_labels, predicted, labels=labels).tolist(),
        }
    return out


def per_class_from_confusion(confusion: dict[str, Any]) -> dict[str, dict[str, float | int]]:
    """Per-class precision, recall and support from a stored confusion matrix (rows true, columns called), as
    :func:`classification_metrics` gives them: the profile models' blocks in ``metrics.json`` keep only the matrix."""
    matrix = np.asarray(confusion["matrix"], dtype=np.int64)
    right, support, called = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    return {
        label: {
            "precision": float(right[i] / called[i]) if called[i] else 0.0,
            "recall": float(right[i] / support[i]) if support[i] else 0.0,
            "support": int(support[i]),
        }
        for i, label in enumerate(confusion["labels"])
    }


def top_labels(scores: np.ndarray, classes: list[str], k: int = 5) -> tuple[list[list[str]], list[list[float]]]:
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    names = np.asarray(classes, dtype=object)[order]
    values = np.take_along_axis(scores, order, axis=1)
    return [list(map(str, n)) for n in names], [list(map(float, v)) for v in values]


def voted_metrics(
    table: pd.DataFrame,
    probs: np.ndarray,
    classes: list[str],
    level: str,
    top_k: int = 5,
    min_purity: float = MIN_GROUP_PURITY,
) -> dict[str, Any]:
    """Majority- and soft-vote metrics at one level; the true label of a group is its most common one. The soft
    vote also gives ``mean_probability``, the mean probability of its calls: beside its accuracy, how far the
    probabilities can be taken at their word.

    A level whose groups mix classes (fewer than ``min_purity`` of the cells share their group's label, e.g.
    plates holding many treatments) is skipped with the reason: a vote over such groups answers nothing useful."""
    keys = group_keys(table, level).to_numpy()
    labels = pd.Series(table["true_label"].astype(str).to_numpy())
    truth = most_common_label(labels, keys)
    purity = float((labels == truth.loc[keys].to_numpy()).mean())
    if purity < min_purity:
        share = f"{purity:.0%} of cells share their group's label"
        return {"skipped": f"groups at the {level} level hold several classes ({share}; votes need {min_purity:.0%})"}
    out: dict[str, Any] = {}
    for method, name in (("majority", "majority_vote"), ("soft", "soft_vote")):
        groups, scores = vote(keys, probs, method)
        predicted = np.asarray(classes, dtype=object)[scores.argmax(1)]
        out[name] = classification_metrics(truth.loc[groups].to_numpy(), predicted, scores, classes, top_k)
        if method == "soft":
            out[name]["mean_probability"] = float(scores.max(axis=1).mean())
    out.update(rates(truth.to_numpy(), len(classes)))
    return out


def match_f1(truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Object F1 at an IoU threshold (one-to-one matches; IoU > 0.5 makes matches unique)."""
    truth = relabel_sequential(truth.astype(np.int64))[0]
    pred = relabel_sequential(pred.astype(np.int64))[0]
    n_true, n_pred = int(truth.max()), int(pred.max())
    if n_true == 0 or n_pred == 0:
        return {
            "f1": float(n_true == n_pred),
            "precision": 0.0,
            "recall": 0.0,
            "tp": 0,
            "n_true": n_true,
            "n_pred": n_pred,
        }
    overlap = np.zeros((n_true + 1, n_pred + 1), np.int64)
    np.add.at(overlap, (truth.ravel(), pred.ravel()), 1)
    area_t, area_p = overlap.sum(1, keepdims=True), overlap.sum(0, keepdims=True)
    iou = overlap / np.maximum(area_t + area_p - overlap, 1)
    iou = iou[1:, 1:]
    if iou_threshold >= 0.5:
        tp = int((iou > iou_threshold).sum())
    else:
        rows, cols = linear_sum_assignment(-iou)
        tp = int((iou[rows, cols] >= iou_threshold).sum())
    precision, recall = tp / n_pred, tp / n_true
    f1 = 2 * tp / (n_true + n_pred)
    return {"f1": f1, "precision": precision, "recall": recall, "tp": tp, "n_true": n_true, "n_pred": n_pred}


def group_calls(
    scores: np.ndarray, classes: list[str], groups: dict[str, str], called: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """The group of each ``called`` label and the summed scores of that group's labels; NaN for a label that has
    no group (a class the mapping does not know is its own group, never pooled with another)."""
    group_of = [groups.get(c, f"\0{c}") for c in classes]
    column_of = {name: j for j, name in enumerate(sorted(set(group_of)))}
    member = np.zeros((len(classes), len(column_of)))
    member[np.arange(len(classes)), [column_of[g] for g in group_of]] = 1.0
    summed = np.asarray(scores, np.float64) @ member  # per row and group: the summed scores of its labels
    column = called.map(lambda c: column_of[groups[c]] if c in groups else -1).to_numpy(np.int64)
    probability = np.where(column >= 0, summed[np.arange(len(column)), np.maximum(column, 0)], np.nan)
    return called.map(groups).to_numpy(dtype=object), probability


def prediction_table(
    table: pd.DataFrame,
    scores: np.ndarray,
    classes: list[str],
    top_k: int = 5,
    grouping: tuple[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """``table`` with the prediction columns added: ``predicted_label``, ``probability`` (its score), with a
    ``grouping`` (a coarser column and each label's group in it, :func:`label_grouping`) the called label's group
    ``predicted_<column>`` and ``probability_<column>`` (the summed scores of that group's labels: a compound call
    may be unsure between compounds of one mechanism and sure of the mechanism), then the top-k labels and scores
    (``top<k>_labels``, ``top<k>_probabilities``)."""
    names, values = top_labels(scores, classes, top_k)
    out = table.copy()
    out["predicted_label"] = [n[0] for n in names]
    out["probability"] = [v[0] for v in values]
    if grouping is not None:
        column, groups = grouping
        out[f"predicted_{column}"], out[f"probability_{column}"] = group_calls(
            scores, classes, groups, out["predicted_label"]
        )
    out[f"top{top_k}_labels"] = names
    out[f"top{top_k}_probabilities"] = values
    return out


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


def label_grouping_of(images: pd.DataFrame, label: str, config: Config) -> tuple[str, dict[str, str]] | None:
    """The coarser grouping of the labels that evaluation reads wrong calls against and predictions name beside
    each call: the MoA column (``profiles.moa``; ``auto``: :meth:`Config.moa_column`), else the gene target column
    (``input.target_column``) — the first that the images carry, is not the label and gives every label one group
    (:func:`cellresponse.evaluation.metrics.label_grouping`)."""
    return label_grouping(images, label, (config.moa_column(images.columns), config.input.target_column))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % for ``z`` = 1.96): honest on small test sides and near 0 or 1,
    where the normal approximation is not."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))

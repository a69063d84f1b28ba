"""Classification metrics — accuracy, balanced accuracy, top-k, macro F1, per-class precision and recall,
confusion — with the rates to read them against, at the cell level and voted into images, wells and plates; the
Wilson interval of an accuracy on a small test side.

Rates printed beside every metric:
    chance    1 / number of classes in the model
    majority  accuracy of always answering the most frequent true class at that level
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from cellresponse.evaluation.votes import LEVELS, most_common_label, vote
from cellresponse.input.plate import group_keys

# Share of cells that must carry their group's label for a vote at that level to be scored (see voted_metrics).
MIN_GROUP_PURITY = 0.99


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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % for ``z`` = 1.96): honest on small test sides and near 0 or 1,
    where the normal approximation is not."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def network_test_scores(cells: pd.DataFrame, probs: np.ndarray, classes: list[str], top_k: int) -> dict[str, Any]:
    """A network's scores on test ``cells`` (``true_label``, ``image_id``, ``well``, ``plate``; ``probs`` one row a
    cell): per cell and voted per image, well and plate (:func:`voted_metrics`), with the image level's chance and
    majority rates."""
    called = np.asarray(classes)[probs.argmax(1)]
    scores: dict[str, Any] = {"cell": classification_metrics(cells["true_label"], called, probs, classes, top_k)}
    for level in LEVELS:
        scores[level] = voted_metrics(cells, probs, classes, level, top_k)
    scores["chance_rate"] = scores["image"]["chance_rate"]
    scores["majority_rate"] = scores["image"]["majority_rate"]
    return scores

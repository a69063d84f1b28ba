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

from cellresponse.evaluation.call_tallies import CallTally, GroupTally, group_tally, tally_cells, top_k_hits
from cellresponse.evaluation.votes import LEVELS
from cellresponse.input.plate import group_keys

# Share of cells that must carry their group's label for a vote at that level to be scored (see voted_metrics).
MIN_GROUP_PURITY = 0.99


def top_k_accuracy(true_codes: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Share of rows whose true class is among the k highest scores (unknown classes, code -1, miss)."""
    if len(true_codes) == 0:
        return float("nan")
    return float(np.mean(top_k_hits(true_codes, scores, k)))


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
    true_labels = np.asarray(true_labels).astype(str)
    predicted = np.asarray(predicted).astype(str)
    labels = sorted(set(true_labels) | set(predicted))
    position = {label: i for i, label in enumerate(labels)}
    in_top = None
    if scores is not None:
        lookup = {c: i for i, c in enumerate(classes)}
        in_top = top_k_hits(np.array([lookup.get(t, -1) for t in true_labels], dtype=np.int64), scores, top_k)
    true_codes = np.array([position[t] for t in true_labels], dtype=np.int64)
    called_codes = np.array([position[t] for t in predicted], dtype=np.int64)
    return code_metrics(labels, true_codes, called_codes, in_top, len(classes), top_k, details)


def code_metrics(
    labels: list[str],
    true_codes: np.ndarray,
    called_codes: np.ndarray,
    in_top: np.ndarray | None,
    n_classes: int,
    top_k: int = 5,
    details: bool = True,
) -> dict[str, Any]:
    """:func:`classification_metrics` of calls given as codes into ``labels`` (sorted; every true and called label
    among them), ``in_top`` whether each true label is among the top ``top_k`` scores (None: no top-k)."""
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small test sides
        warnings.simplefilter("ignore", UserWarning)
        return _code_metrics(labels, true_codes, called_codes, in_top, n_classes, top_k, details)


def _code_metrics(
    labels: list[str],
    true_codes: np.ndarray,
    called_codes: np.ndarray,
    in_top: np.ndarray | None,
    n_classes: int,
    top_k: int,
    details: bool,
) -> dict[str, Any]:
    n = len(true_codes)
    nan = float("nan")
    present = np.unique(true_codes).tolist()  # scikit-learn's sorted labels of y_true, as codes
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(skm.accuracy_score(true_codes, called_codes)) if n else nan,
        "balanced_accuracy": float(skm.balanced_accuracy_score(true_codes, called_codes)) if n else nan,
        "macro_f1": float(skm.f1_score(true_codes, called_codes, labels=present, average="macro")) if n else nan,
    }
    if in_top is not None:
        out[f"top{top_k}"] = float(np.mean(in_top)) if n else nan
    out.update(rates(true_codes, n_classes))
    if details and n:
        every = list(range(len(labels)))
        precision, recall, _, support = skm.precision_recall_fscore_support(
            true_codes, called_codes, labels=every, zero_division=0
        )
        out["per_class"] = {
            lab: {"precision": float(p), "recall": float(r), "support": int(s)}
            for lab, p, r, s in zip(labels, precision, recall, support, strict=True)
        }
        out["confusion"] = {
            "labels": list(labels),
            "matrix": skm.confusion_matrix(true_codes, called_codes, labels=every).tolist(),
        }
    return out


def voted_metrics(
    table: pd.DataFrame,
    probs: np.ndarray,
    classes: list[str],
    level: str,
    top_k: int = 5,
    min_purity: float = MIN_GROUP_PURITY,
) -> dict[str, Any]:
    """Majority- and soft-vote metrics at one level of a table of cells (``true_label`` and the level's columns)
    and their ``probs`` (:func:`tally_level_metrics`)."""
    keys = group_keys(table, level).to_numpy()
    tally = group_tally(keys, table["true_label"], probs, np.asarray(probs).argmax(1))
    return tally_level_metrics(tally, classes, level, top_k, min_purity)


def tally_level_metrics(
    tally: GroupTally,
    classes: list[str],
    level: str,
    top_k: int = 5,
    min_purity: float = MIN_GROUP_PURITY,
) -> dict[str, Any]:
    """Majority- and soft-vote metrics of one level's groups; the true label of a group is its most common one. The
    soft vote also gives ``mean_probability``, the mean probability of its calls: beside its accuracy, how far the
    probabilities can be taken at their word.

    A level whose groups mix classes (fewer than ``min_purity`` of the cells share their group's label, e.g.
    plates holding many treatments) is skipped with the reason: a vote over such groups answers nothing useful."""
    purity = tally.purity
    if purity < min_purity:
        share = f"{purity:.0%} of cells share their group's label"
        return {"skipped": f"groups at the {level} level hold several classes ({share}; votes need {min_purity:.0%})"}
    out: dict[str, Any] = {}
    for method, name in (("majority", "majority_vote"), ("soft", "soft_vote")):
        scores = tally.scores(method)
        predicted = np.asarray(classes, dtype=object)[scores.argmax(1)]
        out[name] = classification_metrics(tally.truth, predicted, scores, classes, top_k)
        if method == "soft":
            out[name]["mean_probability"] = float(scores.max(axis=1).mean())
    out.update(rates(tally.truth, len(classes)))
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
    cell): per cell and voted per image, well and plate (:func:`tally_scores` of the one table)."""
    return tally_scores(tally_cells(cells, probs, classes, top_k, LEVELS), classes, top_k)


def tally_cell_metrics(tally: CallTally, classes: list[str], top_k: int, details: bool = True) -> dict[str, Any]:
    """:func:`classification_metrics` of a tally's cells (its labels and the classes called, coded together)."""
    called_labels = {classes[i] for i in np.unique(tally.called)}
    labels = sorted(set(tally.labels.tolist()) | called_labels)
    position = {label: i for i, label in enumerate(labels)}
    true_codes = np.array([position[x] for x in tally.labels], dtype=np.int64)[tally.true_codes]
    class_codes = np.array([position.get(c, -1) for c in classes], dtype=np.int64)[tally.called]
    return code_metrics(labels, true_codes, class_codes, tally.in_top, len(classes), top_k, details)


def tally_scores(tally: CallTally, classes: list[str], top_k: int) -> dict[str, Any]:
    """A network's scores from its test side's tally (call_tallies): per cell, and voted per image, well and plate
    (:func:`tally_level_metrics`), with the image level's chance and majority rates."""
    scores: dict[str, Any] = {"cell": tally_cell_metrics(tally, classes, top_k)}
    for level in LEVELS:
        scores[level] = tally_level_metrics(tally.levels[level], classes, level, top_k)
    scores["chance_rate"] = scores["image"]["chance_rate"]
    scores["majority_rate"] = scores["image"]["majority_rate"]
    return scores

"""Segmentation quality: objects of a label image matched one-to-one to a ground truth's, and the F1 at an IoU
threshold (as the Data Science Bowl 2018 and cellpose's ``metrics`` score it).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import relabel_sequential


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

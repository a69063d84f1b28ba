"""Baselines beside every network number: the features-only model on the same split, logistic regression on
single cells, the study's control-vs-compound sanity check, and the sentences that compare them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cellresponse.evaluation.classification import classification_metrics, voted_metrics
from cellresponse.evaluation.run_metrics import RunMetrics
from cellresponse.evaluation.votes import LEVELS
from cellresponse.learning.splits import TEST
from cellresponse.profiling.profile_models import (
    FEATURES_MODEL,
    features_model_probabilities,
    fit_features_model,
    why_no_features_model,
)

# Accuracy gap (image level) under which the network and the features-only model are called level: differences
# of one image in a hundred are noise at the test sizes this tool sees.
VERDICT_MARGIN = 0.01


def _logistic(seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, random_state=seed))


def features_baseline(
    features: pd.DataFrame,
    images: pd.DataFrame,
    label: str,
    sides: pd.Series,
    top_k: int = 5,
    model: dict[str, Any] | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """The features-only model (:func:`fit_features_model`) on per-image features: trained on the
    non-test images with ``temperature`` (or ``model``, the one training already fitted on them and stored in
    the bundle with its own), scored on the test images, voted (soft) into wells and plates like the CNN."""
    images = images.set_index(images["image_id"].astype(str))
    ids = features.index.intersection(images.index)
    side = sides.reindex(ids)
    train_ids, test_ids = ids[side != TEST], ids[side == TEST]
    y_train = images.loc[train_ids, label].astype(str).to_numpy()
    if len(test_ids) == 0:
        return {"skipped": "needs test images"}
    if model is None:
        if why := why_no_features_model(y_train):
            return {"skipped": why}
        model = fit_features_model(features.loc[train_ids], y_train, temperature=temperature)
    classes = model["classes"]
    probs = features_model_probabilities(model, features.loc[test_ids])
    table = images.loc[test_ids, ["image_id", "plate", "well"]].copy()
    table["true_label"] = images.loc[test_ids, label].astype(str).to_numpy()
    out: dict[str, Any] = {"model": model.get("model", FEATURES_MODEL), "temperature": model.get("temperature", 1.0)}
    for level in LEVELS:
        result = voted_metrics(table, probs, classes, level, top_k)
        if "skipped" in result:
            continue
        out[level] = {
            **result["soft_vote"],
            "chance_rate": result["chance_rate"],
            "majority_rate": result["majority_rate"],
        }
        out[level].pop("per_class", None)
    return out


def cell_features_baseline(
    cells: pd.DataFrame, columns: list[str], sides: pd.Series, seed: int = 42, top_k: int = 5, max_train: int = 50000
) -> dict[str, Any]:
    """Logistic regression on single-cell features, voted into images like the CNN."""
    side = cells["image_id"].astype(str).map(sides)
    train, test = cells[side.notna() & (side != TEST)], cells[side == TEST]
    if train.empty or test.empty or train["true_label"].nunique() < 2:
        return {"skipped": "needs test cells and two classes on the training side"}
    if len(train) > max_train:
        train = train.sample(max_train, random_state=seed)
    x_train = train[columns].replace([np.inf, -np.inf], np.nan).fillna(0.0).to_numpy()
    model = _logistic(seed).fit(x_train, train["true_label"].astype(str))
    classes = [str(c) for c in model.classes_]
    probs = model.predict_proba(test[columns].replace([np.inf, -np.inf], np.nan).fillna(0.0).to_numpy())
    out: dict[str, Any] = {"model": "logistic regression on single-cell features, soft vote"}
    out["cell"] = classification_metrics(
        test["true_label"], np.asarray(classes)[probs.argmax(1)], probs, classes, top_k, details=False
    )
    for level in ("image", "well"):
        result = voted_metrics(test, probs, classes, level, top_k)
        if "skipped" in result:
            continue
        out[level] = {k: v for k, v in result["soft_vote"].items() if k not in ("per_class", "confusion")}
    return out


def sanity_check(
    cells: pd.DataFrame, columns: list[str], sides: pd.Series, control: str, seed: int = 42, max_train: int = 50000
) -> dict[str, Any]:
    """The study's check: can the features tell control cells from treated ones at all?"""
    side = cells["image_id"].astype(str).map(sides)
    is_control = (cells["true_label"].astype(str) == control).to_numpy()
    target = np.where(is_control, "control", "compound")
    train_mask = (side.notna() & (side != TEST)).to_numpy()
    test_mask = (side == TEST).to_numpy()
    if not is_control.any() or is_control.all() or not test_mask.any():
        return {"skipped": f"needs {control!r} and treated cells on both sides"}
    x = cells[columns].replace([np.inf, -np.inf], np.nan).fillna(0.0).to_numpy()
    train_idx = np.flatnonzero(train_mask)
    if len(train_idx) > max_train:
        train_idx = np.random.default_rng(seed).choice(train_idx, max_train, replace=False)
    if len(set(target[train_idx])) < 2:
        return {"skipped": "the training side has only one of control/compound"}
    model = _logistic(seed).fit(x[train_idx], target[train_idx])
    predicted = model.predict(x[test_mask])
    truth = target[test_mask]
    counts = pd.Series(truth).value_counts()
    return {
        "task": f"{control} vs compound, per cell, logistic regression on the measured features",
        "n": int(test_mask.sum()),
        "accuracy": float(skm.accuracy_score(truth, predicted)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(truth, predicted)),
        "majority_rate": float(counts.iloc[0] / counts.sum()),
    }


# --------------------------------------------------------------------------------------------------
# summaries for people
# --------------------------------------------------------------------------------------------------


def headline(metrics: RunMetrics, vote_name: str) -> list[str]:
    """Lines like 'image accuracy 0.81 (soft vote) — chance 0.17, majority 0.25, features-only 0.74'."""
    lines = []
    key = f"{vote_name}_vote"
    for level in ("cell", *LEVELS):
        block = metrics.level(level)
        if not block:
            continue
        result = block if level == "cell" else block.get(key, {})
        if "accuracy" not in result:
            continue
        base = metrics.baseline_features.get(level, {}).get("accuracy")
        chance, majority = block.get("chance_rate", float("nan")), block.get("majority_rate", float("nan"))
        line = (
            f"{level:>5} accuracy {result['accuracy']:.3f}"
            + ("" if level == "cell" else f" ({vote_name} vote)")
            + f" — chance {chance:.3f}, majority {majority:.3f}"
        )
        if base is not None:
            line += f", features-only {base:.3f}"
        lines.append(line + f"  [n={result.get('n')}]")
    return lines


def compare_with_baseline(metrics: RunMetrics, vote_name: str, margin: float = VERDICT_MARGIN) -> str:
    """One sentence: does the network beat the features-only model at image level (by more than ``margin``)?"""
    cnn = metrics.image.get(f"{vote_name}_vote", {}).get("accuracy")
    base = metrics.baseline_features.get("image", {}).get("accuracy")
    if cnn is None or base is None:
        return "No features-only baseline to compare with"
    if cnn > base + margin:
        return f"The CNN beats the features-only baseline at image level ({cnn:.3f} vs {base:.3f})"
    if cnn < base - margin:
        verdict = f"The features-only baseline beats the CNN at image level ({base:.3f} vs {cnn:.3f})"
        if (metrics.auto or {}).get("model") == "measured":
            return f"{verdict}: cellresponse predict already uses it (its auto model, chosen on the validation side)"
        return (
            f"{verdict}: use the features-only model for this data (cellresponse predict BUNDLE --model measured), "
            "or train longer"
        )
    return f"The CNN and the features-only baseline are level at image level ({cnn:.3f} vs {base:.3f})"


def compare_with_embeddings(metrics: RunMetrics, vote_name: str, margin: float = VERDICT_MARGIN) -> str:
    """One sentence: does the trained network beat the profile model on frozen embeddings (``deep``) at image level
    by more than ``margin``? When it does not, training added nothing over the pretrained network (level within
    the margin, or below it). Empty when there is no deep model."""
    cnn = metrics.image.get(f"{vote_name}_vote", {}).get("accuracy")
    deep = metrics.profile_models.get("deep", {}).get("image", {}).get("accuracy")
    if cnn is None or deep is None:
        return ""
    if cnn > deep + margin:
        return f"Training the network adds to the frozen embeddings at image level ({cnn:.3f} vs {deep:.3f})"
    if cnn >= deep - margin:
        # Within the margin either way: a network ahead by one image of a few hundred has not earned its training.
        return (
            f"The trained network is level with the frozen ImageNet embeddings at image level ({cnn:.3f} vs "
            f"{deep:.3f} for the deep profile model, within {margin:.2f}): training gains no more than that margin"
        )
    return (
        f"Training the network adds nothing over the frozen ImageNet embeddings at image level ({cnn:.3f} vs "
        f"{deep:.3f} for the deep profile model)"
    )

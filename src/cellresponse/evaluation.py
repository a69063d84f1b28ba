"""Evaluation: cell predictions voted into images, wells and plates; metrics beside chance, majority
and a features-only baseline; the study's DMSO-vs-compound sanity check.

Votes (``vote``):
    majority  each cell votes for its top class; the class with most votes wins. Ties go to the
              tied class with the highest mean probability, then to the first class in sorted
              order (deterministic).
    soft      the class with the highest mean probability over the cells (ties: first class).

Rates printed beside every metric:
    chance    1 / number of classes in the model
    majority  accuracy of always answering the most frequent true class at that level
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from cellresponse.config import Config
from cellresponse.errors import InputError

log = logging.getLogger(__name__)

LEVELS = ("image", "well", "plate")


# --------------------------------------------------------------------------------------------------
# votes and metrics (pure)
# --------------------------------------------------------------------------------------------------


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


def _classification_metrics(true_labels, predicted, scores, classes, top_k, details) -> dict[str, Any]:
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


def top_labels(scores: np.ndarray, classes: list[str], k: int = 5) -> tuple[list[list[str]], list[list[float]]]:
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    names = np.asarray(classes, dtype=object)[order]
    values = np.take_along_axis(scores, order, axis=1)
    return [list(map(str, n)) for n in names], [list(map(float, v)) for v in values]


def level_keys(table: pd.DataFrame, level: str) -> np.ndarray:
    if level == "cell":
        return table["cell_id"].astype(str).to_numpy()
    if level == "image":
        return table["image_id"].astype(str).to_numpy()
    if level == "well":
        return (table["plate"].astype(str) + "/" + table["well"].astype(str)).to_numpy()
    if level == "plate":
        return table["plate"].astype(str).to_numpy()
    raise ValueError(level)


def voted_metrics(
    table: pd.DataFrame, probs: np.ndarray, classes: list[str], level: str, top_k: int = 5
) -> dict[str, Any]:
    """Majority- and soft-vote metrics at one level; the true label of a group is its most common one."""
    keys = level_keys(table, level)
    labels = pd.Series(table["true_label"].astype(str).to_numpy())
    truth = labels.groupby(keys).agg(lambda s: s.value_counts().index[0])
    purity = float((labels == truth.loc[keys].to_numpy()).mean())
    if purity < 0.99:  # e.g. plates holding many treatments: a vote over them answers nothing useful
        share = f"{purity:.0%} of cells share their group's label"
        return {"skipped": f"groups at the {level} level hold several classes ({share})"}
    out: dict[str, Any] = {}
    for method, name in (("majority", "majority_vote"), ("soft", "soft_vote")):
        groups, scores = vote(keys, probs, method)
        predicted = np.asarray(classes, dtype=object)[scores.argmax(1)]
        out[name] = classification_metrics(truth.loc[groups].to_numpy(), predicted, scores, classes, top_k)
    out.update(rates(truth.to_numpy(), len(classes)))
    return out


# --------------------------------------------------------------------------------------------------
# features-only baseline and the sanity check (scikit-learn logistic regression)
# --------------------------------------------------------------------------------------------------


def _logistic(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, random_state=seed))


# Per-image profile of the cell features: their distribution over the field's cells, not only the mean,
# because a treatment often shifts a subpopulation (mitotic, apoptotic cells) more than the average.
# Measured on BBBC021-moa leave-replicate-out (benchmarks/features_ablation.py, README), same features and
# classifier: mean only → compound 0.595 / 0.641 per field; mean, sd and five quantiles → 0.714 / 0.800.
PROFILE_STATISTICS = ("mean", "std", "q05", "q25", "q50", "q75", "q95")
FEATURES_MODEL = (
    "shrinkage LDA on per-image profiles (mean, sd, 5/25/50/75/95th percentiles of each cell feature + cell count)"
)


def image_feature_table(cells: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per-image profile: mean, standard deviation and quantiles of each cell feature, plus the cell count
    (the features-only model's input). Columns are ``<feature>__<statistic>`` and ``cell_count``."""
    values = cells[[*columns]].replace([np.inf, -np.inf], np.nan).astype(np.float64)
    groups = values.groupby(cells["image_id"].astype(str))
    parts = []
    for statistic in PROFILE_STATISTICS:
        if statistic == "mean":
            part = groups.mean()
        elif statistic == "std":
            part = groups.std(ddof=0)
        else:
            part = groups.quantile(int(statistic[1:]) / 100)
        parts.append(part.add_suffix(f"__{statistic}"))
    table = pd.concat(parts, axis=1)
    table["cell_count"] = cells.groupby(cells["image_id"].astype(str)).size()
    return table.fillna(table.mean()).fillna(0.0)


def profile_cell_columns(columns: list[str]) -> list[str]:
    """The cell-level columns an :func:`image_feature_table` was built from."""
    return list(dict.fromkeys(c.rsplit("__", 1)[0] for c in columns if "__" in c))


def fit_features_model(features: pd.DataFrame, labels: np.ndarray) -> dict[str, Any]:
    """Fit the features-only model and return it as plain JSON (stored in the model bundle).

    Linear discriminant analysis with Ledoit-Wolf shrinkage: hundreds of correlated profile columns
    against a few hundred training images is where plain LDA breaks down and shrinkage holds
    (benchmarks/features_ablation.py: compound 0.714 / 0.800 per field vs 0.636 / 0.695 for logistic
    regression on the same profiles; MoA 0.995 / 0.977 vs 1.000 / 0.955).
    Its decision function is linear, so the model is stored as a scaler plus coefficients."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.preprocessing import StandardScaler

    x = features.to_numpy(np.float64)
    scaler = StandardScaler().fit(x)
    # Constant columns get scale 1 (scikit-learn's choice), so they stay 0 after scaling.
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    with warnings.catch_warnings():
        # A class with one training image warns about its covariance; the pooled, shrunk one is still fine.
        warnings.filterwarnings("ignore", message="Only one sample available")
        lda.fit(scaler.transform(x), np.asarray(labels).astype(str))
    return {
        "model": FEATURES_MODEL,
        "classes": [str(c) for c in lda.classes_],
        "columns": list(features.columns),
        "cell_columns": profile_cell_columns(list(features.columns)),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": np.atleast_2d(lda.coef_).tolist(),
        "intercept": np.atleast_1d(lda.intercept_).tolist(),
    }


def features_model_probabilities(model: dict[str, Any], features: pd.DataFrame) -> np.ndarray:
    """Class probabilities of a :func:`fit_features_model` model (the same numbers scikit-learn gives)."""
    missing = [c for c in model["columns"] if c not in features.columns]
    if missing:
        raise InputError(f"the features-only model needs columns {missing} — measure with the bundle's settings")
    x = (features[model["columns"]].to_numpy(np.float64) - np.asarray(model["mean"])) / np.asarray(model["scale"])
    logits = x @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    if logits.shape[1] == 1:  # binary: scikit-learn keeps one column for the second class
        second = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - second, second], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def features_baseline(
    features: pd.DataFrame,
    images: pd.DataFrame,
    label: str,
    sides: pd.Series,
    top_k: int = 5,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The features-only model (:func:`fit_features_model`) on per-image features: trained on the
    non-test images (or ``model``, the one training already fitted on them and stored in the bundle),
    scored on the test images, voted (soft) into wells and plates like the CNN."""
    from cellresponse.splits import TEST

    images = images.set_index(images["image_id"].astype(str))
    ids = features.index.intersection(images.index)
    side = sides.reindex(ids)
    train_ids, test_ids = ids[side != TEST], ids[side == TEST]
    y_train = images.loc[train_ids, label].astype(str).to_numpy()
    if len(test_ids) == 0 or len(set(y_train)) < 2:
        return {"skipped": "needs test images and two classes on the training side"}
    if model is None:
        model = fit_features_model(features.loc[train_ids], y_train)
    classes = model["classes"]
    probs = features_model_probabilities(model, features.loc[test_ids])
    table = images.loc[test_ids, ["image_id", "plate", "well"]].copy()
    table["true_label"] = images.loc[test_ids, label].astype(str).to_numpy()
    out: dict[str, Any] = {"model": model.get("model", FEATURES_MODEL)}
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
    from cellresponse.splits import TEST

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
    from cellresponse.splits import TEST

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


def headline(metrics: dict[str, Any], vote_name: str) -> list[str]:
    """Lines like 'image accuracy 0.81 (soft vote) — chance 0.17, majority 0.25, features-only 0.74'."""
    lines = []
    key = f"{vote_name}_vote"
    for level in ("cell", *LEVELS):
        block = metrics.get(level)
        if not block:
            continue
        result = block if level == "cell" else block.get(key, {})
        if "accuracy" not in result:
            continue
        base = metrics.get("baseline_features", {}).get(level, {}).get("accuracy")
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


def compare_with_baseline(metrics: dict[str, Any], vote_name: str) -> str:
    cnn = metrics.get("image", {}).get(f"{vote_name}_vote", {}).get("accuracy")
    base = metrics.get("baseline_features", {}).get("image", {}).get("accuracy")
    if cnn is None or base is None:
        return "no features-only baseline to compare with"
    if cnn > base + 0.01:
        return f"the CNN beats the features-only baseline at image level ({cnn:.3f} vs {base:.3f})"
    if cnn < base - 0.01:
        return (
            f"the features-only baseline beats the CNN at image level ({base:.3f} vs {cnn:.3f}): "
            "use the features-only model for this data (cellresponse predict BUNDLE --model features), or train longer"
        )
    return f"the CNN and the features-only baseline are level at image level ({cnn:.3f} vs {base:.3f})"


# --------------------------------------------------------------------------------------------------
# the evaluate stage (I/O)
# --------------------------------------------------------------------------------------------------


def write_predictions(path: Path, table: pd.DataFrame, probs: np.ndarray, classes: list[str], top_k: int) -> None:
    from cellresponse.io import write_parquet

    names, values = top_labels(probs, classes, top_k)
    out = table.copy()
    out["predicted_label"] = [n[0] for n in names]
    out["probability"] = [v[0] for v in values]
    out[f"top{top_k}_labels"] = names
    out[f"top{top_k}_probabilities"] = values
    write_parquet(path, out)


def stage_evaluate(run, config: Config, progress: bool = True) -> dict[str, Any]:
    """Predict the test side, vote, score, add baselines; writes RUN/predictions and RUN/metrics.json."""
    import json
    import time

    from cellresponse.bundle import load_bundle, predict_probabilities
    from cellresponse.io import read_parquet, write_json
    from cellresponse.pipeline import record_stage
    from cellresponse.splits import TEST
    from cellresponse.store import CropStore
    from cellresponse.training import feature_columns, labelled_images

    started = time.perf_counter()
    bundle = load_bundle(run.require(run.model / "bundle", "train"))
    images = labelled_images(run, config)
    label = config.input.label
    if bundle.meta.get("label") != label:
        raise InputError(f"the model predicts {bundle.meta.get('label')!r}, the run's label is {label!r}")
    sides = read_parquet(run.model / "split.parquet").set_index("image_id")["side"]
    split_report = json.loads((run.model / "split.json").read_text())
    cells = read_parquet(run.cells)
    meta = images.set_index(images["image_id"].astype(str))
    cells = cells[cells["image_id"].astype(str).isin(sides.index)].copy()
    cells["true_label"] = cells["image_id"].astype(str).map(meta[label])
    cells["plate"] = cells["image_id"].astype(str).map(meta["plate"])
    cells["well"] = cells["image_id"].astype(str).map(meta["well"])
    test = cells[cells["image_id"].astype(str).map(sides) == TEST].reset_index(drop=True)
    if test.empty:
        raise InputError("the test side has no cells — nothing to evaluate")
    store = CropStore(run.crops)
    classes = bundle.encoder.classes
    top_k = config.evaluation.top_k
    probs = predict_probabilities(
        bundle.model,
        store,
        store.rows_for(test["cell_id"].astype(str)),
        bundle.scaler.transform(test),
        bundle.config,
        progress=progress,
    )
    run.predictions.mkdir(parents=True, exist_ok=True)
    columns = ["cell_id", "image_id", "plate", "well", "true_label"]
    write_predictions(run.predictions / "cell_predictions.parquet", test[columns], probs, classes, top_k)
    groups, scores = vote(test["image_id"].astype(str).to_numpy(), probs, config.evaluation.vote)
    image_table = meta.loc[groups].reset_index(drop=True)
    write_predictions(run.predictions / "image_predictions.parquet", image_table, scores, classes, top_k)

    metrics: dict[str, Any] = {"label": label, "classes": len(classes), "headline_vote": config.evaluation.vote}
    metrics["cell"] = classification_metrics(
        test["true_label"], np.asarray(classes)[probs.argmax(1)], probs, classes, top_k
    )
    for level in LEVELS:
        metrics[level] = voted_metrics(test, probs, classes, level, top_k)
    metrics["chance_rate"] = metrics["image"]["chance_rate"]
    metrics["majority_rate"] = metrics["image"]["majority_rate"]
    metrics["split"] = split_report
    columns_f = feature_columns(cells)
    metrics["baseline_features"] = features_baseline(
        image_feature_table(cells, columns_f), images, label, sides, top_k, bundle.features_model
    )
    metrics["baseline_cell_features"] = cell_features_baseline(cells, columns_f, sides, config.seed, top_k)
    metrics["sanity_check"] = sanity_check(cells, columns_f, sides, config.input.control_label, config.seed)
    if bundle.label_to_target:
        to_target = np.vectorize(lambda c: bundle.label_to_target.get(c, "?"))
        true_t = to_target(test["true_label"].astype(str).to_numpy())
        pred_t = to_target(np.asarray(classes)[probs.argmax(1)])
        metrics["target_cell_accuracy"] = float(np.mean(true_t == pred_t))
    metrics["verdict"] = compare_with_baseline(metrics, config.evaluation.vote)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_json(run.metrics, metrics)
    for line in headline(metrics, config.evaluation.vote):
        log.info(line)
    log.info(metrics["verdict"])
    if split_report.get("leaky_classes"):
        log.warning(
            "%d classes have sites of one well on both sides of the split: the image-level number is optimistic",
            split_report["leaky_classes"],
        )
    record_stage(run, "evaluate", {"cells": len(test), "seconds": metrics["seconds"]}, [])
    return metrics


def evaluate_feature_table(path: str | Path, config: Config, out: str | Path) -> dict[str, Any]:
    """Features-only evaluation of a per-image table a user already has (e.g. CellProfiler Image.csv
    joined to metadata): same split rules, same metrics, written to OUT/metrics.json."""
    from cellresponse.io import write_json
    from cellresponse.plate import read_table
    from cellresponse.splits import assign_split, log_split

    table = read_table(Path(path))
    label = config.input.label
    if label not in table.columns:
        raise InputError(f"{path}: label column {label!r} not found; columns: {list(table.columns)[:20]}")
    table = table[table[label].notna()].reset_index(drop=True)
    plate_col = next((c for c in ("plate", "Metadata_Plate") if c in table.columns), None)
    well_col = next((c for c in ("well", "Metadata_Well") if c in table.columns), None)
    if plate_col is None or well_col is None:
        raise InputError(f"{path}: needs plate and well columns (Metadata_Plate, Metadata_Well) for grouped splits")
    images = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(len(table))],
            "plate": table[plate_col].astype(str),
            "well": table[well_col].astype(str),
        }
    )
    for column in table.columns:
        if column.startswith("Metadata_") and column not in images:
            images[column] = table[column].to_numpy()
    images[label] = table[label].astype(str).to_numpy()
    numeric = [
        c
        for c in table.select_dtypes("number").columns
        if not c.startswith(("Metadata_", "ImageNumber", "Image_Count")) or c == "Image_Count_Cells"
    ]
    if not numeric:
        raise InputError(f"{path}: no numeric feature columns")
    features = table[numeric].replace([np.inf, -np.inf], np.nan)
    bad = int(features.isna().to_numpy().sum())
    if bad:
        log.warning("%d NaN/infinite values in %s replaced by column means", bad, path)
    features = features.fillna(features.mean()).fillna(0.0)
    features.index = images["image_id"]
    s = config.split
    side, report = assign_split(
        images, label, s.by, s.column, s.test_values, s.test_fraction, 0.0, s.stratify, config.seed
    )
    log_split(report)
    baseline = features_baseline(features, images, label, pd.Series(side.to_numpy(), index=images["image_id"]))
    metrics = {
        "label": label,
        "source": str(path),
        "features": len(numeric),
        **{k: baseline[k] for k in LEVELS if k in baseline},
        "split": report.to_dict(),
    }
    write_json(Path(out) / "metrics.json", metrics)
    for level in LEVELS:
        if level in metrics:
            b = metrics[level]
            log.info(
                "%s accuracy %.3f — chance %.3f, majority %.3f [n=%d]",
                level,
                b["accuracy"],
                b["chance_rate"],
                b["majority_rate"],
                b["n"],
            )
    return metrics

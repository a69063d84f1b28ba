"""Baselines beside every network number: the features-only model on the same split, logistic regression on
single cells, the study's control-vs-compound sanity check, and the sentences that compare them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cellresponse.evaluation.call_tallies import CallTally, merge_tallies, tally_cells
from cellresponse.evaluation.classification import rates, tally_cell_metrics, tally_level_metrics, voted_metrics
from cellresponse.evaluation.run_metrics import RunMetrics
from cellresponse.evaluation.votes import LEVELS
from cellresponse.input.io import one_at_a_time
from cellresponse.input.runfolder import CellParts
from cellresponse.learning.splits import TEST
from cellresponse.profiling.profile_models import (
    FEATURES_MODEL,
    features_model_probabilities,
    fit_features_model,
    why_no_features_model,
)

T = TypeVar("T")

# Accuracy gap (image level) under which the network and the features-only model are called level: differences
# of one image in a hundred are noise at the test sizes this tool sees.
VERDICT_MARGIN = 0.01


def _logistic(seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, random_state=seed))


def split_sides_of(part: pd.DataFrame, sides: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``part``'s cells are on the training side (any side of the split but the test side) and which
    on the test side; ``sides`` indexed by image id."""
    side = part["image_id"].astype(str).map(sides)
    return (side.notna() & (side != TEST)).to_numpy(), (side == TEST).to_numpy()


def split_summary(parts: CellParts, sides: pd.Series) -> dict[str, Any]:
    """Over all parts: the training side's and the test side's cell counts, the training side's labels and
    every split cell's labels."""

    def summary(part: pd.DataFrame) -> tuple[int, int, set[str], set[str]]:
        train, test = split_sides_of(part, sides)
        labels = part["true_label"]
        return int(train.sum()), int(test.sum()), set(labels[train].dropna().astype(str)), set(labels.astype(str))

    counts = one_at_a_time(parts(), summary)
    return {
        "train": sum(c[0] for c in counts),
        "test": sum(c[1] for c in counts),
        "train_labels": set().union(*(c[2] for c in counts)),
        "labels": set().union(*(c[3] for c in counts)),
    }


def chosen_training_rows(parts: CellParts, sides: pd.Series, chosen: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """``columns`` of the training-side cells at positions ``chosen`` (among every part's training-side cells,
    in the parts' order), in ``chosen``'s order — the rows a sample of the whole table would give."""
    order = np.argsort(chosen, kind="stable")
    wanted, seen = chosen[order], [0]

    def take(part: pd.DataFrame) -> pd.DataFrame:
        train = part[split_sides_of(part, sides)[0]]
        start = seen[0]
        seen[0] += len(train)
        low, high = np.searchsorted(wanted, [start, start + len(train)])
        return train.iloc[wanted[low:high] - start][columns]

    rows = pd.concat(one_at_a_time(parts(), take), ignore_index=True)
    return rows.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def test_side_parts(parts: CellParts, sides: pd.Series) -> Iterator[pd.DataFrame]:
    """Each part's test-side cells (parts with none left out), a plate at a time: nothing of a plate is held here
    once the next is asked for."""
    iterator = iter(parts())
    while (part := next(iterator, None)) is not None:
        test = part[split_sides_of(part, sides)[1]].reset_index(drop=True)
        del part
        if len(test):
            yield test
        del test


def test_side_tallies(parts: CellParts, sides: pd.Series, tally: Callable[[pd.DataFrame], T]) -> list[T]:
    """``tally`` of each part's test-side cells, a plate at a time: what a score needs of a plate's calls, so that
    nothing of a cell but that is kept while the next plate is read."""
    return one_at_a_time(test_side_parts(parts, sides), tally)


def finite_values(table: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """``columns`` of ``table`` with NaN and infinite values as 0 (what the single-cell baselines fit on)."""
    return table[columns].replace([np.inf, -np.inf], np.nan).fillna(0.0).to_numpy()


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
    parts: CellParts,
    columns: list[str],
    sides: pd.Series,
    seed: int = 42,
    top_k: int = 5,
    max_train: int = 50000,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Logistic regression on single-cell features, voted into images like the CNN: fitted on at most
    ``max_train`` training-side cells (a seeded sample, as ``DataFrame.sample`` of the whole table draws it),
    scored on every test-side cell; the cells read plate by plate. ``split``: their :func:`split_summary`, where
    the caller has it (one pass over the plates fewer)."""
    split = split or split_summary(parts, sides)
    if not split["train"] or not split["test"] or len(split["train_labels"]) < 2:
        return {"skipped": "needs test cells and two classes on the training side"}
    chosen = np.arange(split["train"])
    if split["train"] > max_train:
        chosen = np.random.RandomState(seed).choice(split["train"], max_train, replace=False)
    train = chosen_training_rows(parts, sides, chosen, [*columns, "true_label"])
    model = _logistic(seed).fit(finite_values(train, columns), train["true_label"].astype(str))
    classes = [str(c) for c in model.classes_]

    def tally(cells: pd.DataFrame) -> CallTally:
        return tally_cells(cells, model.predict_proba(finite_values(cells, columns)), classes, top_k, ("image", "well"))

    calls = merge_tallies(test_side_tallies(parts, sides, tally))
    out: dict[str, Any] = {"model": "logistic regression on single-cell features, soft vote"}
    out["cell"] = tally_cell_metrics(calls, classes, top_k, details=False)
    for level in ("image", "well"):
        result = tally_level_metrics(calls.levels[level], classes, level, top_k)
        if "skipped" in result:
            continue
        out[level] = {k: v for k, v in result["soft_vote"].items() if k not in ("per_class", "confusion")}
    return out


def sanity_check(
    parts: CellParts,
    columns: list[str],
    sides: pd.Series,
    control: str,
    seed: int = 42,
    max_train: int = 50000,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The study's check: can the features tell control cells from treated ones at all? (At most ``max_train``
    training-side cells, a seeded sample; the cells read plate by plate; ``split`` as in
    :func:`cell_features_baseline`.)"""
    split = split or split_summary(parts, sides)
    if control not in split["labels"] or split["labels"] == {control} or not split["test"]:
        return {"skipped": f"needs {control!r} and treated cells on both sides"}
    chosen = np.arange(split["train"])
    if split["train"] > max_train:
        chosen = np.random.default_rng(seed).choice(split["train"], max_train, replace=False)
    train = chosen_training_rows(parts, sides, chosen, [*columns, "true_label"])
    target = np.where(train["true_label"].astype(str) == control, "control", "compound")
    if len(set(target)) < 2:
        return {"skipped": "the training side has only one of control/compound"}
    model = _logistic(seed).fit(finite_values(train, columns), target)

    def tally(cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:  # a cell's two booleans, not its strings
        is_control = cells["true_label"].astype(str).to_numpy() == control
        return is_control, model.predict(finite_values(cells, columns)) == "control"

    calls = test_side_tallies(parts, sides, tally)
    # booleans sort as the two names do ("compound" < "control"), so scikit-learn's per-class order is the same
    truth = np.concatenate([is_control for is_control, _ in calls])
    called = np.concatenate([c for _, c in calls])
    return {
        "task": f"{control} vs compound, per cell, logistic regression on the measured features",
        "n": len(truth),
        "accuracy": float(skm.accuracy_score(truth, called)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(truth, called)),
        "majority_rate": rates(truth, 2)["majority_rate"],
    }


# --------------------------------------------------------------------------------------------------
# summaries for people
# --------------------------------------------------------------------------------------------------


def headline(metrics: RunMetrics, vote_name: str) -> list[str]:
    """Lines like 'image accuracy 0.81 (soft vote) — chance 0.17, majority 0.25, features-only 0.74'."""
    lines = []
    for level in ("cell", *LEVELS):
        result = metrics.network(level, vote_name)
        if result is None:
            continue
        rates = result if level == "cell" else metrics.voted(level)
        chance = rates.chance_rate if rates.chance_rate is not None else float("nan")
        majority = rates.majority_rate if rates.majority_rate is not None else float("nan")
        base = metrics.baseline_features.accuracy(level)
        line = (
            f"{level:>5} accuracy {result.accuracy:.3f}"
            + ("" if level == "cell" else f" ({vote_name} vote)")
            + f" — chance {chance:.3f}, majority {majority:.3f}"
        )
        if base is not None:
            line += f", features-only {base:.3f}"
        lines.append(line + f"  [n={result.n}]")
    return lines


def network_image_accuracy(metrics: RunMetrics, vote_name: str) -> float | None:
    """The network's image accuracy by its ``vote_name`` vote, or None where images were not voted."""
    image = metrics.network("image", vote_name)
    return None if image is None else image.accuracy


def compare_with_baseline(metrics: RunMetrics, vote_name: str, margin: float = VERDICT_MARGIN) -> str:
    """One sentence: does the network beat the features-only model at image level (by more than ``margin``)?"""
    cnn = network_image_accuracy(metrics, vote_name)
    base = metrics.baseline_features.accuracy("image")
    if cnn is None or base is None:
        return "No features-only baseline to compare with"
    if cnn > base + margin:
        return f"The CNN beats the features-only baseline at image level ({cnn:.3f} vs {base:.3f})"
    if cnn < base - margin:
        verdict = f"The features-only baseline beats the CNN at image level ({base:.3f} vs {cnn:.3f})"
        if metrics.auto is not None and metrics.auto.model == "measured":
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
    cnn = network_image_accuracy(metrics, vote_name)
    deep = metrics.profile_models["deep"].accuracy("image") if "deep" in metrics.profile_models else None
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

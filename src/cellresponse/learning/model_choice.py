"""Which model predicts: every candidate — the profile models of each kind and the network — scored on the
validation side of the split, never on the test side, and the best one recorded as ``auto``.

Profile models are fitted on the training images and scored on the validation images; the network is scored on
the validation images it was early-stopped on (the same images, so the comparison is fair). Where the split kept
no validation side, the profile models are scored by grouped cross-validation over the training images (folds by
well, so sites of one well never score each other) and the network, whose only held-out images are the test
side, is not a candidate.

The same held-out images fit each profile model's temperature
(:func:`cellresponse.profiling.profile_models.fit_temperature`), so the probabilities of the model that predicts
say how often its calls are right; the choice reads only accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from cellresponse.config import EvaluationConfig
from cellresponse.evaluation.run_metrics import ModelChoice, ModelScores, RunMetrics, Scores
from cellresponse.evaluation.votes import LEVELS, Votes, merged_votes, vote
from cellresponse.features.crop_store import CropStore
from cellresponse.input.io import one_at_a_time
from cellresponse.learning.bundle import CANDIDATES, NETWORK, load_bundle
from cellresponse.learning.splits import TEST, TRAIN, VALIDATION
from cellresponse.profiling.profile_models import (
    fit_features_model,
    fit_temperature,
    held_out_logits,
    why_no_features_model,
)

FOLDS = 3


def _called_right(model: dict[str, Any], features: pd.DataFrame, labels: pd.Series) -> tuple[int, tuple]:
    """How many held-out images a model calls right (an image of a class it never saw counts as wrong), and its
    logits and true columns there, which fit its temperature — one pass over the images for both."""
    logits, codes = held_out_logits(model, features, labels)
    return int(np.sum(logits.argmax(axis=1) == codes)), (logits, codes)


def cross_validated(
    kind: str, train: pd.DataFrame, y_train: pd.Series, labels: pd.Series, wells: pd.Series
) -> tuple[int, int, int, list[tuple]]:
    """Grouped ``FOLDS``-fold cross-validation of a kind's profile model over the training images (folds by well,
    so sites of one well never score each other): images called right, images scored, folds, and each fold's
    held-out logits and true columns (for the temperature)."""
    groups = wells.loc[train.index].to_numpy()
    folds = min(FOLDS, len(set(groups)))
    if folds < 2:
        return 0, 0, folds, []
    correct = scored = 0
    held_out = []
    for fit_rows, score_rows in GroupKFold(folds).split(train, groups=groups):
        fit_labels = y_train.iloc[fit_rows]
        # an image whose class has no other well cannot be scored: its fold holds the class's only well
        score_rows = score_rows[y_train.iloc[score_rows].isin(set(fit_labels)).to_numpy()]
        if why_no_features_model(fit_labels) or not len(score_rows):
            continue
        model = fit_features_model(train.iloc[fit_rows], fit_labels.to_numpy(), kind)
        right, logits = _called_right(model, train.iloc[score_rows], labels)
        correct += right
        scored += len(score_rows)
        held_out.append(logits)
    return correct, scored, folds, held_out


def profile_validation_scores(
    tables: dict[str, pd.DataFrame], labels: pd.Series, sides: pd.Series, wells: pd.Series
) -> dict[str, dict[str, Any]]:
    """Per profile kind, the image accuracy of its model on held-out non-test images: fitted on the training side
    and scored on the validation side, or (no validation side) by grouped cross-validation over the training side
    (:func:`cross_validated`); and the ``temperature`` fitted on every held-out image there is — the validation side
    *and* the training side's out-of-fold images, pooled (``calibration_images``): a validation side of a few
    images alone cannot tell a model that is right by luck from one that is right. ``labels``, ``sides`` and
    ``wells`` are indexed by image id; test images are never read."""
    scores: dict[str, dict[str, Any]] = {}
    for kind, table in tables.items():
        side = sides.reindex(table.index)
        train, validation = table[side == TRAIN], table[side == VALIDATION]
        y_train = labels.loc[train.index].astype(str)
        if why := why_no_features_model(y_train):
            scores[kind] = {"accuracy": None, "skipped": why}
            continue
        correct, scored, folds, held_out = cross_validated(kind, train, y_train, labels, wells)
        if len(validation):
            right, logits = _called_right(fit_features_model(train, y_train.to_numpy(), kind), validation, labels)
            scores[kind] = {"accuracy": right / len(validation), "images": len(validation)}
            held_out = [logits, *held_out]
        elif scored:
            scores[kind] = {"accuracy": correct / scored, "images": scored, "folds": folds}
        else:
            why = (
                "one well on the training side: nothing to cross-validate"
                if folds < 2
                else "no class has two wells on the training side"
            )
            scores[kind] = {"accuracy": None, "skipped": why}
            continue
        scores[kind]["temperature"] = fit_temperature(held_out)
        scores[kind]["calibration_images"] = int(sum(len(codes) for _, codes in held_out))
    return scores


def choose_model(scores: dict[str, dict[str, Any]]) -> str:
    """The candidate with the best held-out accuracy; ties go to the cheaper one (order of :data:`CANDIDATES`).
    When none could be scored (a tiny plate), the network: the study's model."""
    scored = [(kind, s["accuracy"]) for kind, s in scores.items() if s.get("accuracy") is not None]
    if not scored:
        return NETWORK
    best = max(accuracy for _, accuracy in scored)
    return min((kind for kind, accuracy in scored if accuracy == best), key=CANDIDATES.index)


def _scores_text(scores: dict[str, dict[str, Any]], leave_out: str | None = None) -> str:
    """'measured 1.000, deep 0.958' — the held-out accuracy of every scored candidate but ``leave_out``."""
    return ", ".join(
        f"{kind} {s['accuracy']:.3f}"
        for kind, s in scores.items()
        if kind != leave_out and s.get("accuracy") is not None
    )


def describe_choice(choice: dict[str, Any]) -> str:
    """One sentence: which model predicts and why."""
    scores = choice["scores"]
    chosen = choice["auto"]
    if scores.get(chosen, {}).get("accuracy") is None:
        return (
            f"`predict` uses the {chosen} model by default (auto): no model could be scored on held-out non-test "
            "images (too few wells per class)"
        )
    others = _scores_text(scores, leave_out=chosen)
    return (
        f"`predict` uses the {chosen} model by default (auto): {scores[chosen]['accuracy']:.3f} image accuracy on "
        f"{choice['scored_on']}" + (f", against {others}" if others else "") + "; the test side was not read."
    )


def test_blocks(metrics: RunMetrics, model: str, vote_name: str) -> dict[str, Scores]:
    """A candidate's test-side scores per level: the network's ``vote_name`` vote, or the profile model's (soft)
    vote; levels it was not scored at are absent."""
    if model == NETWORK:
        voted = {level: metrics.network(level, vote_name) for level in LEVELS}
    else:
        scores = metrics.profile_models.get(model, ModelScores())
        voted = {level: scores.level(level) for level in LEVELS}
    return {level: block for level, block in voted.items() if block is not None}


def call_probability(metrics: RunMetrics, model: str) -> float | None:
    """The mean probability of a candidate's image calls on the test side (the soft vote's, whichever vote heads
    the network's numbers: a majority vote's scores are counts), or None where ``metrics`` has none."""
    soft = metrics.network("image", "soft") if model == NETWORK else test_blocks(metrics, model, "soft").get("image")
    return None if soft is None else soft.mean_probability


def auto_summary(choice: dict[str, Any], metrics: RunMetrics, vote_name: str) -> ModelChoice:
    """The auto model's validation scores (which chose it) beside its test accuracy per level (scored after the
    choice, never used by it)."""
    chosen = choice["auto"]
    test = {level: block.accuracy for level, block in test_blocks(metrics, chosen, vote_name).items()}
    sure = call_probability(metrics, chosen)
    scored = _scores_text(choice["scores"])
    sentence = f"The auto model is {chosen} (" + (
        f"chosen on {choice['scored_on']}: {scored})" if scored else "nothing could be scored on held-out images)"
    )
    sentence += f"; on the test side it scores {test['image']:.3f} per image" if "image" in test else ""
    sentence += (
        f", its calls made with a mean probability of {sure:.3f}" if "image" in test and sure is not None else ""
    )
    return ModelChoice(
        model=chosen,
        scored_on=choice["scored_on"],
        validation={kind: s.get("accuracy") for kind, s in choice["scores"].items()},
        validation_images={kind: s.get("images") for kind, s in choice["scores"].items()},
        calibration_images={kind: s.get("calibration_images") for kind, s in choice["scores"].items()},
        test=test,
        sentence=sentence,
    )


def fit_profile_models(
    tables: dict[str, pd.DataFrame],
    labels: pd.Series,
    sides: pd.Series,
    temperatures: dict[str, float] | None = None,
) -> dict[str, dict]:
    """A profile model per kind fitted on the non-test images (exactly what `evaluate` scores), carrying the
    temperature its held-out images fitted (:func:`profile_validation_scores`; 1 where none is given); none for a
    kind whose images cannot fit one (a single class, or no more images than classes). ``tables`` are indexed by
    image id, as ``labels`` and ``sides`` are."""
    models = {}
    for kind, table in tables.items():
        fit = table[(sides.reindex(table.index) != TEST).to_numpy()]
        if not why_no_features_model(labels.loc[fit.index]):
            models[kind] = fit_features_model(
                fit, labels.loc[fit.index].astype(str).to_numpy(), kind, (temperatures or {}).get(kind, 1.0)
            )
    return models


def fitted_temperatures(scores: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each profile kind's temperature from its held-out ``scores`` (:func:`profile_validation_scores`), where one
    was fitted."""
    return {kind: score["temperature"] for kind, score in scores.items() if "temperature" in score}


def network_validation_score(
    bundle_path: Path,
    store: CropStore,
    parts: Iterable[pd.DataFrame],
    sides: pd.Series,
    labels: pd.Series,
    evaluation: EvaluationConfig,
    device: Any,
) -> dict[str, Any]:
    """The network of the bundle at ``bundle_path``: its image accuracy on the validation side (cells voted as
    `evaluate` votes them; the bundle is loaded only where there is one); ``parts`` the cells plate by plate (one
    plate's table held at a time), ``sides`` and ``labels`` indexed by image id."""
    from cellresponse.learning.inference import predict_cells  # here: the run report reads this module without torch

    skipped = {"accuracy": None, "skipped": "no validation side: the network's only held-out images are the test side"}
    on_side = set(sides.index[sides == VALIDATION].astype(str))
    if not on_side:
        return skipped
    bundle = load_bundle(bundle_path)
    scored = on_side & set(labels.index[labels.astype(str).isin(bundle.encoder.classes)].astype(str))

    def validation_votes(part: pd.DataFrame) -> Votes | None:
        """The plate's validation images voted (no image spans two plates): a plate's calls held, not a screen's."""
        part = part[part["image_id"].isin(scored)]
        if not len(part):
            return None
        probs = predict_cells(bundle, store, part, evaluation.batch_size, device=device)
        return vote(part["image_id"].to_numpy(), probs, evaluation.vote)

    votes = [v for v in one_at_a_time(parts, validation_votes) if v is not None]
    if not votes:
        return skipped
    groups, scores = merged_votes(votes, len(bundle.encoder.classes))
    predicted = np.asarray(bundle.encoder.classes)[scores.argmax(1)]
    truth = labels.loc[groups].astype(str).to_numpy()
    return {"accuracy": float(np.mean(predicted == truth)), "images": len(groups)}


def auto_choice(scores: dict[str, dict[str, Any]], sides: pd.Series) -> dict[str, Any]:
    """The ``auto`` model of every candidate's held-out ``scores`` (the profile kinds' and the network's), with
    what scored them: the validation side of ``sides`` (image id → side), or grouped cross-validation without one."""
    validation_images = int((sides == VALIDATION).sum())
    scored_on = (
        f"the validation side ({validation_images} images)"
        if validation_images
        else "grouped cross-validation over the training side (no validation side; the network not scored)"
    )
    return {"auto": choose_model(scores), "scored_on": scored_on, "scores": scores}

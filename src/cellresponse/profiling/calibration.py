"""How far the references' mechanism calls can be trusted: leave-one-compound-out over the references themselves.

Each reference compound's fields, wells and treatments are queried against the other compounds' treatments, exactly
as a new compound is (matching.py) — in a mechanism space fitted without it where ``moa_call`` is made there — so
the temperature of ``moa_probability`` says how often such a call was right on compounds the references lacked, and
the novelty threshold (the ``references.novelty_quantile`` of the best similarity a known compound reaches among
the other compounds of its mechanism) is read from the same table. The query plate is never read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from cellresponse.profiling.matching import finite_scores, mechanism_probabilities, moa_similarities
from cellresponse.profiling.mechanism_space import (
    MIN_MECHANISMS,
    MechanismSpace,
    compound_folds,
    fit_mechanism_space,
    held_out_spaces,
)
from cellresponse.profiling.references import LEVELS, References, level_table, treatment_table
from cellresponse.profiling.similarity import cosine_similarity

log = logging.getLogger(__name__)

# Bounds of the similarity temperature: cosine similarities of profiles differ by a few hundredths to tenths
# between mechanisms, so useful temperatures lie far below 1.
TEMPERATURE_BOUNDS = (1e-3, 1.0)


HeldOut = tuple[dict[str, int], dict[int, MechanismSpace | None]]  # mechanism_space.held_out_spaces


def held_out_similarity(units: pd.DataFrame, treatments: pd.DataFrame, held_out: HeldOut) -> np.ndarray:
    """Per unit and reference treatment, their cosine in the mechanism space fitted without the unit's compound
    (its fold's compounds; :func:`mechanism_space.held_out_spaces`): ``-inf`` for the fold's own treatments, and
    for every treatment where the fold left too few mechanisms for a space."""
    folds, spaces = held_out
    unit_fold = np.array([folds[str(c)] for c in units["compound"]])
    treatment_fold = np.array([folds[str(c)] for c in treatments["compound"]])
    out = np.full((len(units), len(treatments)), -np.inf)
    for fold, space in spaces.items():
        rows = unit_fold == fold
        if space is None or not rows.any():
            continue
        similarity = space.similarity(units.loc[rows], treatments)
        out[rows] = np.where(treatment_fold[None, :] != fold, similarity, -np.inf)
    return out


def leave_one_compound_out(references: References, level: str, held_out: HeldOut | None = None) -> pd.DataFrame:
    """Every reference unit of ``level`` (field, well or treatment) queried against the treatments of the other
    compounds: per unit its compound and mechanism, the mechanism called (its nearest other-compound treatment's),
    the best similarity, the best similarity among its own mechanism's other compounds and the per-mechanism best
    similarities (``scores``, in ``moas`` order, as the calibration reads them). With ``held_out`` spaces the call
    and the scores come from the mechanism space fitted without the unit's compound; the similarities the novelty
    threshold reads stay the profile cosine's."""
    features = references.features
    treatments = treatment_table(references.fields, features)
    units = level_table(references.fields, features, level)
    similarity = cosine_similarity(units[features].to_numpy(), treatments[features].to_numpy())
    other_compound = units["compound"].to_numpy(object)[:, None] != treatments["compound"].to_numpy(object)[None, :]
    similarity = np.where(other_compound, similarity, -np.inf)
    out = pd.DataFrame({"compound": units["compound"].to_numpy(), "best_similarity": similarity.max(axis=1)})
    if references.has_moa:
        moas = sorted(treatments["moa"].dropna().astype(str).unique())
        treatment_moa = treatments["moa"].astype(str).to_numpy()
        profile_scores = moa_similarities(similarity, treatment_moa, moas)
        scores = profile_scores
        if held_out is not None:
            scores = moa_similarities(held_out_similarity(units, treatments, held_out), treatment_moa, moas)
        truth = units["moa"].astype(str).to_numpy()
        out["moa"] = truth
        out["moa_call"] = np.asarray(moas, dtype=object)[scores.argmax(axis=1)]
        out["same_moa_similarity"] = score_of(profile_scores, moas, truth)
        out["truth_score"] = score_of(scores, moas, truth)
        out["scores"] = list(scores)
    return out


def score_of(scores: np.ndarray, moas: list[str], truth: np.ndarray) -> np.ndarray:
    """Each row's score at its true mechanism (``-inf`` where that mechanism has no column)."""
    column = pd.Index(moas).get_indexer(pd.Index(truth))
    known = column >= 0
    out = np.full(len(truth), -np.inf)
    out[known] = scores[np.flatnonzero(known), column[known]]
    return out


def fit_similarity_temperature(scores: np.ndarray, truth: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``softmax(scores / T)`` at the true
    column (temperature scaling, Guo et al. 2017), within :data:`TEMPERATURE_BOUNDS`; mechanisms without a
    reference (``-inf``) take no probability."""
    scores = finite_scores(scores)
    rows = np.arange(len(truth))

    def mean_nll(log_t: float) -> float:
        return float(-log_softmax(scores / np.exp(log_t), axis=1)[rows, truth].mean())

    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    best = minimize_scalar(mean_nll, bounds=(low, high), method="bounded")
    return float(np.exp(best.x))


def calibration_of(loco: pd.DataFrame, moas: list[str], quantile: float) -> dict[str, Any]:
    """One level's calibration from its leave-one-compound-out table: the temperature, the novelty threshold (the
    ``quantile`` of the best similarity a unit reaches among the other compounds of its mechanism), and how often
    the call was right there (accuracy, and the mean probability it claimed once tempered)."""
    scorable = loco.iloc[:0]
    if "moa" in loco:
        scorable = loco[np.isfinite(loco["same_moa_similarity"]) & np.isfinite(loco["truth_score"])]
    if scorable.empty:
        return {"units": 0, "skipped": "no reference compound shares its mechanism with another compound"}
    scores = np.vstack(list(scorable["scores"]))
    truth = pd.Index(moas).get_indexer(pd.Index(scorable["moa"]))
    temperature = fit_similarity_temperature(scores, truth)
    probability = mechanism_probabilities(scores, temperature).max(axis=1)
    right = (scorable["moa_call"] == scorable["moa"]).to_numpy()
    return {
        "units": len(scorable),
        "accuracy": float(right.mean()),
        "mean_probability": float(probability.mean()),
        "temperature": round(temperature, 5),
        "novelty_quantile": quantile,
        "novelty_threshold": float(np.quantile(scorable["same_moa_similarity"], quantile)),
    }


def calibrate(references: References, quantile: float) -> dict[str, dict[str, Any]]:
    """Leave-one-compound-out calibration of every level (:func:`calibration_of`); without a mechanism column,
    each level says why there is none."""
    if not references.has_moa:
        why = "the references have no mechanism column: nearest treatments and activity only, no moa_call"
        return {level: {"units": 0, "skipped": why} for level in LEVELS}
    moas = sorted(references.fields["moa"].dropna().astype(str).unique())
    return {level: calibration_of(leave_one_compound_out(references, level), moas, quantile) for level in LEVELS}


def calibrated(references: References, quantile: float, setting: str) -> References:
    """``references`` calibrated (every level, :func:`calibration_of`) in the space where ``moa_call`` is made —
    ``references.moa_space``: ``profile`` (the profiles' cosine), ``discriminant`` (the mechanism space,
    mechanism_space.py) or ``auto``: the mechanism space where its leave-one-compound-out calls, each compound scored
    in a space fitted without it, are right on more of the references' own fields than the profile cosine's. The
    novelty threshold is the profile cosine's in every case."""
    profile = calibrate(references, quantile)
    plain = replace(references, calibration=profile, mechanism_space=None)
    plain.moa_space = {"setting": setting, "used": "profile", "why": "the profile cosine (moa_space: profile)"}
    if setting == "profile":
        return plain
    fields, features = references.fields, references.features
    mechanisms = int(fields["moa"].dropna().astype(str).nunique()) if references.has_moa else 0
    profile_accuracy = profile["field"].get("accuracy")
    if mechanisms < MIN_MECHANISMS or profile_accuracy is None:
        plain.moa_space["why"] = (
            f"the profile cosine: a mechanism space needs {MIN_MECHANISMS} mechanisms and compounds that share one "
            f"(the references have {mechanisms} mechanisms)"
        )
        return plain
    moa = fields["moa"].astype(object).where(fields["moa"].notna(), None).to_numpy()
    values = fields[features].to_numpy(np.float64)
    compounds = fields["compound"].astype(str).to_numpy()
    log.info(
        "references (%s): scoring the mechanism-discriminant call — one space per left-out compound (%d fits on %d "
        "fields × %d columns)",
        references.kind,
        len(set(compound_folds(compounds).values())),
        len(fields),
        len(features),
    )
    held_out = held_out_spaces(values, compounds, moa, features)
    moas = sorted(fields["moa"].dropna().astype(str).unique())
    discriminant = {
        level: calibration_of(leave_one_compound_out(references, level, held_out), moas, quantile) for level in LEVELS
    }
    space_accuracy = discriminant["field"].get("accuracy")
    scored = {"profile_accuracy": profile_accuracy, "discriminant_accuracy": space_accuracy}
    if space_accuracy is None:  # no fold left a space: nothing to call with
        plain.moa_space.update(scored, why="the profile cosine: no compound could be left out of a mechanism space")
        return plain
    if setting == "auto" and space_accuracy <= profile_accuracy:
        why = (f"the profile cosine: leave-one-compound-out calls right on {profile_accuracy:.3f} of reference "
               f"fields, a mechanism space's on {space_accuracy:.3f}")  # fmt: skip
        plain.moa_space.update(scored, why=why)
        return plain
    labelled = np.asarray(pd.notna(moa), dtype=bool)
    space = fit_mechanism_space(values[labelled], moa[labelled], features)
    assert space is not None, "the folds fitted spaces, so every reference has enough mechanisms for one"
    done = replace(references, calibration=discriminant, mechanism_space=space)
    done.moa_space = {"setting": setting, "used": "discriminant", **scored,
                      "why": f"the mechanism-discriminant space ({space.scalings.shape[1]} directions): leave-one-"
                             f"compound-out calls right on {space_accuracy:.3f} of reference fields, the profile "
                             f"cosine's on {profile_accuracy:.3f}"}  # fmt: skip
    return done


def in_moa_space(references: References, setting: str, quantile: float) -> References:
    """The bundle's ``references`` with ``moa_call`` made where ``references.moa_space`` (``setting``) asks and
    ``novel`` below the ``references.novelty_quantile`` (``quantile``) threshold: as stored where the bundle was
    calibrated with both, else calibrated again from its reference fields now (seconds) — a bundle made before
    mechanism spaces gets one, ``profile`` goes back to the cosine, another quantile moves the novelty threshold.
    One line says so."""
    stored = references.moa_space.get("setting")
    stored_quantile = stored_novelty_quantile(references)
    if stored == setting and stored_quantile in (None, quantile):
        return references
    started = time.perf_counter()
    done = calibrated(references, quantile, setting)
    was = [f"with moa_space {stored}" if stored else "before mechanism spaces"]
    if stored_quantile not in (None, quantile):
        was.append(f"novelty_quantile {stored_quantile:g}")
    log.info(
        "references: the bundle's were calibrated %s; references.moa_space: %s, novelty_quantile: %g calibrated them "
        "again (%.1f s; retrain to keep it in the bundle): moa_call in %s",
        " and ".join(was),
        setting,
        quantile,
        time.perf_counter() - started,
        done.moa_space["why"],
    )
    return done


def stored_novelty_quantile(references: References) -> float | None:
    """The novelty quantile the references' calibration was made with (None where no level was calibrated)."""
    for level in LEVELS:
        if (q := references.calibration.get(level, {}).get("novelty_quantile")) is not None:
            return float(q)
    return None

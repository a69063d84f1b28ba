"""Reference profiles: which known treatments a new one resembles, which mechanism follows and how sure that is,
and "novel" when nothing matches — the open-world answer of ``predict``.

A bundle keeps its training treatments' per-field profiles, normalised (:class:`Normalization`): the references.
A query — a field, a well or a treatment of a new plate, normalised the same way — is compared with every reference
treatment's consensus profile (the mean of its wells) by cosine similarity:

``nearest_k``        the k most similar reference treatments, with their mechanism and similarity;
``moa_call``         the mechanism of the nearest reference (Ljosa et al. 2013's not-same-compound nearest
                     neighbour, as a call) — nearest in the references' mechanism-discriminant space where that
                     calls more of their own compounds right (mechanism_space.py, ``references.moa_space``);
                     ``moa_probability`` the softmax over mechanisms of each mechanism's best similarity divided by
                     a temperature;
``novel``            the best similarity below the novelty threshold: the query is no closer to any reference than a
                     known compound is, at worst, to the other compounds of its own mechanism. A novel query keeps
                     its nearest list but gets no ``moa_call``.

Temperature and threshold come from leave-one-compound-out over the references themselves (:func:`calibrate`):
each reference compound's fields, wells and treatments are queried against the other compounds' treatments,
exactly as a new compound is — so a probability says how often such a call was right on compounds the references
lacked, and the query plate is never read.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from cellresponse.config import ReferencesConfig
from cellresponse.errors import InputError
from cellresponse.input.controls import control_kinds, is_negative, is_positive
from cellresponse.input.io import atomic_path, write_json, write_parquet
from cellresponse.profiling.batch_correction import apply_spherize, confounded, fit_spherize, harmony
from cellresponse.profiling.mechanism_space import (
    MIN_MECHANISMS,
    MechanismSpace,
    compound_folds,
    fit_mechanism_space,
    held_out_spaces,
    load_space,
    save_space,
)
from cellresponse.profiling.profile_benchmarks import cosine_similarity
from cellresponse.profiling.well_profiles import select_features

log = logging.getLogger(__name__)

LEVELS = ("field", "well", "treatment")
# Metadata of a reference or query table (the per-field table every level is aggregated from).
META = ("image_id", "plate", "well", "treatment", "compound", "moa", "batch")
# Bounds of the similarity temperature: cosine similarities of profiles differ by a few hundredths to tenths
# between mechanisms, so useful temperatures lie far below 1.
TEMPERATURE_BOUNDS = (1e-3, 1.0)
# Over a handful of wells, thousands of features correlate near ±1 by chance (their matrix has rank ≤ wells) and a
# correlation threshold would keep almost nothing (the tiny demo: a compound no longer matched itself); BBBC021-moa's
# references have 55 wells a replicate.
CORRELATION_MIN_WELLS = 20


@dataclass(frozen=True)
class Normalization:
    """How a per-image profile becomes a reference-comparable one: for each kept column,
    ``(value - center) / scale * weight`` — pycytominer's ``standardize`` (a StandardScaler fitted on the
    ``samples`` wells), written as parameters because the bundle must carry them to new plates; ``weight`` gives
    each block of the ``both`` kind the same say (1/√columns, as the profile stage combines them)."""

    columns: list[str]
    center: list[float]
    scale: list[float]
    weight: list[float]
    samples: str  # "negative controls" or "all wells": what the references were standardised to
    scope: str  # "plate" or "experiment"

    def values(self, table: pd.DataFrame) -> np.ndarray:
        """The kept columns of ``table`` as float64, a missing value taken as the references' center."""
        x = table[self.columns].to_numpy(np.float64)
        return np.where(np.isfinite(x), x, np.asarray(self.center))

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """The kept columns of ``table`` standardised by these parameters and weighted (the references' frame)."""
        return (self.values(table) - np.asarray(self.center)) / np.asarray(self.scale) * np.asarray(self.weight)


@dataclass
class References:
    """The normalised reference fields (:data:`META` columns, then the normalisation's columns), how they were
    normalised, which profile kind they are, the metadata columns they were named from and the
    leave-one-compound-out calibration per level."""

    fields: pd.DataFrame
    normalization: Normalization
    kind: str
    columns: dict[str, Any]
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    # profiles.batch_correction as the references were built: {"method": none | spherize | harmony, "note": ...};
    # sphering keeps its map (``sphere``) for new plates, Harmony re-fits on references and new plate together
    batch_correction: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    sphere: dict[str, np.ndarray] | None = None
    # where moa_call is made (calibrated): {"setting": auto | discriminant | profile, "used": ..., "why": ...}
    # and the discriminant space where it is used (None: the profile cosine, as bundles before it)
    moa_space: dict[str, Any] = field(default_factory=lambda: {"setting": "profile", "used": "profile"})
    mechanism_space: MechanismSpace | None = None

    @property
    def features(self) -> list[str]:
        return self.normalization.columns

    @property
    def has_moa(self) -> bool:
        return self.columns.get("moa") is not None and self.fields["moa"].notna().any()

    def describe(self) -> dict[str, Any]:
        """What ``bundle/references.json`` keeps beside the fields table."""
        return {
            "kind": self.kind,
            "columns": self.columns,
            "normalization": asdict(self.normalization),
            "calibration": self.calibration,
            "batch_correction": self.batch_correction,
            "moa_space": self.moa_space,
            "treatments": int(self.fields["treatment"].nunique()),
            "compounds": int(self.fields["compound"].nunique()),
            "fields": len(self.fields),
        }


def control_flags(controls: pd.Series | None, image_ids: pd.Series) -> np.ndarray:
    """Per image of ``image_ids``, whether :func:`negative_controls` marked it (all False without controls)."""
    if controls is None:
        return np.zeros(len(image_ids), bool)
    return controls.reindex(image_ids.astype(str)).fillna(False).to_numpy(bool)


def standardization(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler's parameters of the rows (scale 1 where a column is constant or empty)."""
    center = np.nanmean(values, axis=0) if len(values) else np.zeros(values.shape[1])
    scale = np.nanstd(values, axis=0) if len(values) else np.ones(values.shape[1])
    center = np.where(np.isfinite(center), center, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return center, scale


def mean_by(table: pd.DataFrame, keys: list[str], features: list[str]) -> pd.DataFrame:
    """The mean of ``features`` per group of ``keys``, with the first value of every other :data:`META` column
    and the group's size in ``count``."""
    grouped = table.groupby(keys, sort=True, dropna=False)
    means = grouped[features].mean()
    others = [c for c in META if c in table.columns and c not in keys]
    first = grouped[others].first() if others else pd.DataFrame(index=means.index)
    return pd.concat([first, grouped.size().rename("count"), means], axis=1).reset_index()


def well_table(fields: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Fields → one profile per plate and well (the mean of its fields)."""
    return mean_by(fields.drop(columns=["image_id"], errors="ignore"), ["plate", "well"], features)


def treatment_table(fields: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Fields → one consensus profile per treatment: the mean of its wells, as pycytominer aggregates wells into
    treatments (a well with more fields weighs no more than one with fewer)."""
    wells = well_table(fields, features)
    return mean_by(wells.drop(columns=["plate", "well", "count"]), ["treatment"], features)


def level_table(fields: pd.DataFrame, features: list[str], level: str) -> pd.DataFrame:
    """The units of a level: each field, each well or each treatment."""
    if level == "field":
        return fields.reset_index(drop=True)
    if level == "well":
        return well_table(fields, features)
    if level == "treatment":
        return treatment_table(fields, features)
    raise ValueError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")


def fit_normalization(
    wells: pd.DataFrame,
    columns: list[str],
    samples: np.ndarray,
    samples_name: str,
    blocks: dict[str, list[str]],
    feature_selection: Sequence[str],
) -> Normalization:
    """The standardisation of the reference wells to their ``samples`` wells (pooled over plates: the frame a new
    plate without controls is put in), the columns pycytominer's ``feature_select`` keeps after it
    (``feature_selection``: ``references.feature_selection``, by default variance threshold, no empty columns, one
    of each pair correlated over 0.9),
    and the block weights (1/√kept columns of each block)."""
    center, scale = standardization(wells.loc[samples, columns].to_numpy(np.float64))
    normalized = pd.DataFrame((wells[columns].to_numpy(np.float64) - center) / scale, columns=columns)
    normalized = normalized.fillna(0.0)
    _, kept = select_features(normalized, columns, usable_selection(feature_selection, len(wells)))
    position = {c: i for i, c in enumerate(columns)}
    weight = {}
    for block in blocks.values():
        members = [c for c in block if c in set(kept)]
        weight.update({c: 1.0 / math.sqrt(len(members)) if len(blocks) > 1 else 1.0 for c in members})
    return Normalization(
        columns=kept,
        center=[float(center[position[c]]) for c in kept],
        scale=[float(scale[position[c]]) for c in kept],
        weight=[weight[c] for c in kept],
        samples=samples_name,
        scope="experiment",
    )


def usable_selection(operations: Sequence[str], wells: int) -> list[str]:
    """``operations`` without ``correlation_threshold`` where there are fewer than :data:`CORRELATION_MIN_WELLS`
    wells to correlate features over (and a log line saying so)."""
    if "correlation_threshold" not in operations or wells >= CORRELATION_MIN_WELLS:
        return list(operations)
    log.info("references: %d wells, too few to drop correlated features (needs %d)", wells, CORRELATION_MIN_WELLS)
    return [o for o in operations if o != "correlation_threshold"]


def sample_standardization(raw: np.ndarray, fields: pd.DataFrame, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler's parameters of the wells that the ``rows`` fields belong to (each well the mean of its
    fields, as the references' normalisation was fitted on wells), and how many wells that was."""
    wells = pd.DataFrame(raw[rows]).groupby(group_of(fields[rows])).mean()
    return (*standardization(wells.to_numpy()), len(wells))


def group_of(fields: pd.DataFrame) -> np.ndarray:
    return (fields["plate"].astype(str) + "/" + fields["well"].astype(str)).to_numpy()


def normalized_fields(
    fields: pd.DataFrame, normalization: Normalization, samples: pd.Series | None = None, per_plate: bool = True
) -> pd.DataFrame:
    """The :data:`META` columns of ``fields`` and their normalised profiles. With ``samples`` (a boolean per field:
    it belongs to a sample well, e.g. a negative control) each plate — or the whole table, unless ``per_plate`` —
    is standardised to its own sample wells, as pycytominer normalises a plate to its controls; a plate with
    fewer than two sample wells is standardised to the pooled samples. Without, the normalisation's own
    parameters (the references' frame)."""
    meta = fields[[c for c in META if c in fields.columns]].reset_index(drop=True)
    if samples is None:
        values = normalization.transform(fields)
    else:
        raw = normalization.values(fields)
        samples = samples.to_numpy(bool)
        *pooled, _ = sample_standardization(raw, fields, samples)
        groups = fields["plate"].astype(str).to_numpy() if per_plate else np.zeros(len(fields), dtype=object)
        values = np.zeros_like(raw)
        for group in pd.unique(groups):
            rows = groups == group
            center, scale, wells = sample_standardization(raw, fields, rows & samples)
            if wells < 2:
                center, scale = pooled
            values[rows] = (raw[rows] - center) / scale * np.asarray(normalization.weight)
    table = pd.DataFrame(values, columns=normalization.columns)
    return pd.concat([meta, table], axis=1)


def moa_similarities(
    similarity: np.ndarray, reference_moa: np.ndarray, moas: list[str], allowed: np.ndarray | None = None
) -> np.ndarray:
    """Per query and mechanism, the best similarity among that mechanism's references (``-inf`` where it has none,
    or none ``allowed``: a ``(queries, references)`` mask)."""
    out = np.full((similarity.shape[0], len(moas)), -np.inf)
    for j, moa in enumerate(moas):
        members = reference_moa == moa
        if not members.any():
            continue
        masked = np.where(members[None, :] & (True if allowed is None else allowed), similarity, -np.inf)
        out[:, j] = masked.max(axis=1)
    return out


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
    column = pd.Index(moas).get_indexer(truth)
    known = column >= 0
    out = np.full(len(truth), -np.inf)
    out[known] = scores[np.flatnonzero(known), column[known]]
    return out


def fit_similarity_temperature(scores: np.ndarray, truth: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``softmax(scores / T)`` at the true
    column (temperature scaling, Guo et al. 2017), within :data:`TEMPERATURE_BOUNDS`; mechanisms without a
    reference (``-inf``) take no probability."""
    scores = np.where(np.isfinite(scores), scores, -1e3)
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
    scores = np.vstack(scorable["scores"].to_numpy())
    truth = pd.Index(moas).get_indexer(scorable["moa"])
    temperature = fit_similarity_temperature(scores, truth)
    probability = softmax(np.where(np.isfinite(scores), scores, -1e3) / temperature, axis=1).max(axis=1)
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


def nearest_columns(similarity: np.ndarray, treatments: pd.DataFrame, k: int) -> pd.DataFrame:
    """``nearest_1`` … ``nearest_k``: the most similar reference treatments, each with its mechanism
    (``nearest_i_moa``) and cosine similarity (``nearest_i_similarity``)."""
    k = min(k, similarity.shape[1])
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    names = treatments["treatment"].astype(str).to_numpy(object)
    moas = treatments["moa"].to_numpy(object) if "moa" in treatments else np.full(len(treatments), None)
    columns: dict[str, Any] = {}
    for i in range(k):
        picked = order[:, i]
        columns[f"nearest_{i + 1}"] = names[picked]
        columns[f"nearest_{i + 1}_moa"] = moas[picked]
        columns[f"nearest_{i + 1}_similarity"] = np.take_along_axis(similarity, picked[:, None], 1)[:, 0]
    return pd.DataFrame(columns)


def match(
    queries: pd.DataFrame, references: References, level: str, neighbours: int, exclude: pd.Series | None = None
) -> pd.DataFrame:
    """The answer for each query unit of ``level`` (rows of normalised profiles in the references' columns): its
    nearest reference treatments, ``best_similarity``, ``novel``, ``moa_call`` and ``moa_probability`` (NA for a
    novel query, and where the references have no mechanism or the level no calibration). ``exclude`` names,
    per query, a compound whose references it may not match (the leave-one-compound-out benchmarks)."""
    features = references.features
    treatments = treatment_table(references.fields, features)
    similarity = cosine_similarity(queries[features].to_numpy(), treatments[features].to_numpy())
    if exclude is not None:
        barred = exclude.astype(str).to_numpy(object)[:, None] == treatments["compound"].astype(str).to_numpy(object)
        similarity = np.where(barred, -np.inf, similarity)
    out = nearest_columns(similarity, treatments, neighbours)
    out.insert(0, "best_similarity", similarity.max(axis=1))
    space = references.mechanism_space
    if space is not None:  # the call is made in the mechanism space; nearest lists and novelty stay the cosine's
        similarity = space.similarity(queries, treatments)
        if exclude is not None:
            similarity = np.where(barred, -np.inf, similarity)
    calibration = references.calibration.get(level, {})
    out["novel"] = pd.array([pd.NA] * len(out), dtype="boolean")
    out["moa_call"] = pd.array([None] * len(out), dtype="string")
    out["moa_probability"] = np.nan
    if "temperature" not in calibration:
        return out
    moas = sorted(treatments["moa"].dropna().astype(str).unique())
    scores = moa_similarities(similarity, treatments["moa"].astype(str).to_numpy(), moas)
    probability = softmax(np.where(np.isfinite(scores), scores, -1e3) / calibration["temperature"], axis=1)
    novel = out["best_similarity"].to_numpy() < calibration["novelty_threshold"]
    out["novel"] = pd.array(novel, dtype="boolean")
    out["moa_call"] = pd.array(np.where(novel, None, np.asarray(moas, dtype=object)[scores.argmax(1)]), dtype="string")
    out["moa_probability"] = np.where(novel, np.nan, probability.max(axis=1))
    return out


def profile_fields(blocks: dict[str, pd.DataFrame], meta: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Per-image profile blocks (index image_id; ``measured`` and/or ``deep``) joined to the image metadata
    (index image_id; :data:`META` columns), images with every block only; and each block's columns."""
    columns = {name: list(table.columns) for name, table in blocks.items()}
    joined = pd.concat([t.set_axis(t.index.astype(str)) for t in blocks.values()], axis=1, join="inner")
    meta = meta.set_axis(meta.index.astype(str))
    fields = meta.drop(columns=["image_id"], errors="ignore").join(joined, how="inner")
    return fields.rename_axis("image_id").reset_index().copy(), columns


def build_references(
    blocks: dict[str, pd.DataFrame],
    meta: pd.DataFrame,
    controls: pd.Series | None,
    kind: str,
    columns: dict[str, Any],
    settings: ReferencesConfig,
    *,
    per_plate: bool = True,
    batch_correction: str = "none",
    seed: int = 0,
) -> References:
    """References of one profile ``kind`` from the training images: ``blocks`` its per-image profiles, ``meta``
    each image's :data:`META` columns (index image_id), ``controls`` a boolean per image marking negative controls
    (None: the images have none). Profiles are standardised to the control wells — per plate unless
    ``per_plate`` is False — or, without controls, to all wells across the experiment (a plate may hold one
    treatment); the controls themselves are normalisation samples, not references. ``batch_correction``
    (``spherize`` or ``harmony``; batches from ``meta``'s ``batch`` column) follows (batch_correction.py).
    ``settings`` gives the feature selection and the novelty quantile; calibrated by leave-one-compound-out
    (:func:`calibrate`), in the batch-corrected space."""
    fields, block_columns = profile_fields(blocks, meta)
    everything = [c for names in block_columns.values() for c in names]
    fields[everything] = fields[everything].astype(np.float64).replace([np.inf, -np.inf], np.nan)
    fields[everything] = fields[everything].fillna(fields[everything].mean()).fillna(0.0)
    fields = fields.copy()  # one block per dtype, not a column each
    is_control = control_flags(controls, fields["image_id"])
    wells = well_table(fields, everything)
    sample_wells = pd.Series(group_of(wells)).isin(set(group_of(fields[is_control]))).to_numpy()
    # One control well cannot give a scale (its standard deviation is 0): every feature would keep its raw units,
    # and a 0-1 intensity would weigh nothing beside an area in pixels. Under two, standardise to all wells.
    to_controls = sample_wells.sum() >= 2
    if not to_controls:
        sample_wells = np.ones(len(wells), bool)
    name = "negative controls" if to_controls else "all wells"
    normalization = fit_normalization(wells, everything, sample_wells, name, block_columns, settings.feature_selection)
    if to_controls:
        normalized = normalized_fields(fields, normalization, pd.Series(is_control), per_plate)
        normalization = Normalization(**{**asdict(normalization), "scope": "plate" if per_plate else "experiment"})
    else:
        normalized = normalized_fields(fields, normalization)
    references = References(normalized[~is_control].reset_index(drop=True), normalization, kind, columns)
    if batch_correction == "spherize":
        # fitted on the control fields where there are enough, as JUMP spheres on its negative controls
        fit = normalized[is_control] if is_control.sum() > 2 else references.fields
        references.sphere = fit_spherize(fit[normalization.columns].to_numpy(np.float64))
        references.fields[normalization.columns] = apply_spherize(
            references.fields[normalization.columns].to_numpy(np.float64), references.sphere
        )
        references.batch_correction = {"method": "spherize", "fitted_on": len(fit)}
    elif batch_correction == "harmony":
        references.batch_correction = {"method": "harmony", "batches": int(references.fields["batch"].nunique())}
    compared = in_batch_corrected_space(references, None, seed)[0]  # as a new plate will meet them
    done = calibrated(compared, settings.novelty_quantile, settings.moa_space)
    references.calibration, references.moa_space = done.calibration, done.moa_space
    references.mechanism_space = done.mechanism_space
    return references


def batch_corrected(
    references: References, queries: pd.DataFrame, controls: pd.Series | None, quantile: float, seed: int
) -> tuple[References, pd.DataFrame]:
    """A new plate's normalised fields and the references, both batch-corrected as the references were
    (:func:`in_batch_corrected_space`); after a joint Harmony fit the references are calibrated again. A new plate
    whose batches are its compounds (one compound, no controls) is not put through Harmony: it is compared with the
    uncorrected references, calibrated again uncorrected, and it says so."""
    harmony_on = references.batch_correction.get("method") == "harmony"
    flags = control_flags(controls, queries["image_id"])
    if harmony_on and confounded(query_batches(queries), queries["compound"], flags):
        log.warning(
            "harmony: the new plate's batches hold one compound each and no negative control — aligning them "
            "would align the treatments, so the new plate and the references are compared without it"
        )
        plain = replace(references, batch_correction={"method": "none", "skipped": "harmony: confounded plate"})
        return calibrated(plain, quantile, references.moa_space.get("setting", "profile")), queries
    corrected, queries = in_batch_corrected_space(references, queries, seed)
    if corrected is not references:
        log.info("harmony: references and the new plate corrected together; calibration fitted again on them")
        corrected = calibrated(corrected, quantile, references.moa_space.get("setting", "profile"))
    return corrected, queries


def query_batches(queries: pd.DataFrame) -> pd.Series:
    """A new plate's batch per field: its ``batch`` column (image_meta), else its plate."""
    return queries["batch" if "batch" in queries.columns else "plate"].astype(str)


def batch_method(meta: pd.DataFrame, controls: pd.Series | None, method: str) -> tuple[str, str | None]:
    """``profiles.batch_correction`` for references named by ``meta`` (:func:`image_meta`), or ``none`` and why
    where their batches are confounded with compounds (batch_correction.confounded)."""
    if method == "none" or not confounded(meta["batch"], meta["compound"], control_flags(controls, meta.index)):
        return method, None
    return "none", f"batch correction {method} skipped — the batches are confounded with compounds"


def in_batch_corrected_space(
    references: References, queries: pd.DataFrame | None, seed: int
) -> tuple[References, pd.DataFrame | None]:
    """The references (and normalised ``queries``) as they are compared: sphered queries put through the
    references' map; with Harmony, both re-fitted together (the query's plates as batches of their own) into
    principal components — a new plate moves the references too, so their calibration is fitted again by the
    caller (:func:`calibrate`). The queries' batches are their ``batch`` column (else their plate), apart from
    every reference batch. Unchanged without batch correction."""
    method = references.batch_correction.get("method", "none")
    features = references.features
    if method == "spherize" and queries is not None:
        queries = queries.copy()
        queries[features] = apply_spherize(queries[features].to_numpy(np.float64), references.sphere)
    if method != "harmony":
        return references, queries
    parts = [references.fields] + ([queries] if queries is not None else [])
    values = np.vstack([part[features].to_numpy(np.float64) for part in parts])
    batches = references.fields["batch"].astype(str).tolist()
    if queries is not None:
        batches += ("new " + query_batches(queries)).tolist()
    if len(set(batches)) < 2:
        return references, queries  # one batch: nothing to align (the references of a single plate or batch)
    corrected = harmony(values, np.asarray(batches), seed)
    names = [f"harmony_{i + 1}" for i in range(corrected.shape[1])]
    frame = Normalization(names, [0.0] * len(names), [1.0] * len(names), [1.0] * len(names),
                          references.normalization.samples, references.normalization.scope)  # fmt: skip
    n = len(references.fields)

    def rebuilt(part: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
        meta = part[[c for c in META if c in part.columns]].reset_index(drop=True)
        return pd.concat([meta, pd.DataFrame(rows, columns=names)], axis=1)

    harmonized = replace(references, fields=rebuilt(references.fields, corrected[:n]), normalization=frame)
    return harmonized, (rebuilt(queries, corrected[n:]) if queries is not None else None)


def query_normalization(references: References, has_controls: bool, setting: str) -> tuple[str, str]:
    """How a new plate's profiles are normalised before they meet the references, and why: ``controls`` (to its own
    negative controls, per plate, as the references were), else ``references`` (the references' own parameters);
    ``self`` (to all its own wells) only when asked."""
    if setting != "auto":
        return setting, f"references.query_normalization: {setting} (config)"
    if references.normalization.samples == "negative controls" and has_controls:
        return "controls", "the new plate normalised to its own negative controls, as the references were"
    if references.normalization.samples == "negative controls":
        return "references", (
            "the new plate has no negative controls: normalised with the references' control parameters (a plate "
            "effect the controls would remove stays)"
        )
    # Standardising a plate of many treatments to itself (`self`), as the references were to theirs, was measured
    # and not adopted: unseen compounds' mechanism right on 0.882 / 0.909 of fields / wells against 0.914 / 0.927
    # with the references' parameters (BBBC021-moa, references replicate 1 → queries 2; unseen_compounds.py).
    return "references", (
        "normalised with the references' parameters (no negative controls; they were standardised to all their wells)"
    )


def normalize_query(
    fields: pd.DataFrame, controls: pd.Series | None, references: References, mode: str
) -> pd.DataFrame:
    """A new plate's per-image profiles (:func:`profile_fields`) as normalised fields in the references' columns
    (``mode`` from :func:`query_normalization`)."""
    missing = [c for c in references.features if c not in fields.columns]
    if missing:
        raise ValueError(f"the new images lack {len(missing)} reference profile columns, e.g. {missing[:3]}")
    if mode == "references":
        return normalized_fields(fields, references.normalization)
    if mode == "controls":
        flags = control_flags(controls, fields["image_id"])
        return normalized_fields(fields, references.normalization, pd.Series(flags), per_plate=True)
    return normalized_fields(fields, references.normalization, pd.Series(np.ones(len(fields), bool)), per_plate=False)


def query_fields(
    blocks: dict[str, pd.DataFrame],
    meta: pd.DataFrame,
    controls: pd.Series | None,
    left_out: pd.Index,
    references: References,
    mode: str,
    quantile: float,
    seed: int,
) -> tuple[References, pd.DataFrame, pd.DataFrame]:
    """A new plate's per-image profile ``blocks`` made comparable with the references: the raw fields
    (:func:`profile_fields`, less the images ``left_out`` — positive controls, which are not queries), normalised
    (:func:`normalize_query`, ``mode`` from :func:`query_normalization`) and batch-corrected with the references
    (:func:`batch_corrected`). Returns the references as compared (recalibrated after a joint correction), the raw
    fields (activity is measured on them) and the normalised ones."""
    raw, _ = profile_fields(blocks, meta)
    if len(left_out):
        raw = raw[~raw["image_id"].isin(left_out)].reset_index(drop=True)
    fields = normalize_query(raw, controls, references, mode)
    references, fields = batch_corrected(references, fields, controls, quantile, seed)
    return references, raw, fields


DEEP_PREFIX = "emb_"  # embeddings.PREFIX: the columns of a mean embedding


def kind_blocks(kind: str, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A per-image profile table of ``kind`` (profiles.image_profiles) split into its blocks: ``measured`` (cell
    feature statistics) and ``deep`` (mean embedding, ``emb_`` columns), each normalised on its own."""
    deep = [c for c in table.columns if c.startswith(DEEP_PREFIX)]
    measured = [c for c in table.columns if not c.startswith(DEEP_PREFIX)]
    blocks = {"measured": table[measured], "deep": table[deep]}
    return {name: block for name, block in blocks.items() if block.shape[1]}


def choose_kind(candidates: dict[str, References]) -> tuple[str, str]:
    """The kind whose leave-one-compound-out mechanism calls were right most often on the references' own fields
    (fields: four times the units of wells on BBBC021), ties to the cheaper kind (the order given); and why."""
    scored = {
        kind: refs.calibration.get("field", {}).get("accuracy")
        for kind, refs in candidates.items()
        if refs.calibration.get("field", {}).get("accuracy") is not None
    }
    if not scored:
        kind = next(iter(candidates))
        return kind, f"{kind} (no mechanism to score the kinds by)"
    best = max(scored.values())
    kind = next(k for k, v in scored.items() if v == best)
    listed = ", ".join(f"{k} {v:.3f}" for k, v in scored.items())
    return kind, f"{kind}: mechanism right on {best:.3f} of reference fields, leave-one-compound-out ({listed})"


def save_references(folder: str | Path, references: References) -> None:
    """``references.parquet`` (the normalised reference fields) and ``references.json`` (everything else)."""
    folder = Path(folder)
    write_parquet(folder / "references.parquet", references.fields)
    write_json(folder / "references.json", references.describe())
    if references.sphere is not None:
        with atomic_path(folder / "references_sphere.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{k: v.astype(np.float32) for k, v in references.sphere.items()})
    space_file = folder / "references_mechanism_space.npz"
    if references.mechanism_space is not None:
        save_space(space_file, references.mechanism_space)
    elif space_file.is_file():
        space_file.unlink()  # a space of references saved here before: not these references'


def load_references(folder: str | Path) -> References | None:
    """The references a bundle keeps, or None for a bundle made before it kept any."""
    folder = Path(folder)
    if not (folder / "references.json").is_file() or not (folder / "references.parquet").is_file():
        return None
    described = json.loads((folder / "references.json").read_text())
    space = load_space(folder / "references_mechanism_space.npz")
    # a bundle made before mechanism spaces names no setting: predict calibrates it again (in_moa_space)
    moa_space = described.get("moa_space", {"used": "profile", "why": "the profile cosine"})
    if moa_space["used"] == "discriminant" and space is None:
        raise InputError(
            f"{folder}: the references were calibrated in a mechanism space, but references_mechanism_space.npz is "
            "missing — copy the whole bundle folder, or retrain"
        )
    return References(
        fields=pd.read_parquet(folder / "references.parquet"),
        normalization=Normalization(**described["normalization"]),
        kind=described["kind"],
        columns=described["columns"],
        calibration=described["calibration"],
        batch_correction=described.get("batch_correction", {"method": "none"}),
        sphere=dict(np.load(sphere)) if (sphere := folder / "references_sphere.npz").is_file() else None,
        moa_space=moa_space,
        mechanism_space=space,
    )


def image_meta(
    images: pd.DataFrame, treatment: list[str], compound: str | None, moa: str | None, batch: str | None = None
) -> pd.DataFrame:
    """Per image (index image_id) the :data:`META` columns references and queries are named by: plate, well, the
    treatment (the ``treatment`` columns' values joined by `` @ ``), the compound (the treatment where there is no
    compound column), the mechanism (None where there is no mechanism column) and the batch (the ``batch``
    column's value, else the plate)."""
    table = images.assign(Metadata_Plate=images["plate"].astype(str), Metadata_Well=images["well"].astype(str))
    name = table[treatment].astype(str).agg(" @ ".join, axis=1)
    return pd.DataFrame(
        {
            "plate": table["plate"].astype(str).to_numpy(),
            "well": table["well"].astype(str).to_numpy(),
            "treatment": name.to_numpy(),
            "compound": (table[compound].astype(str) if compound in table.columns else name).to_numpy(),
            "moa": table[moa].astype(str).to_numpy() if moa in table.columns else None,
            "batch": table[batch if batch in table.columns else "plate"].astype(str).to_numpy(),
        },
        index=table["image_id"].astype(str).to_numpy(),
    )


def negative_controls(images: pd.DataFrame, columns: list[str | None], control: str) -> pd.Series | None:
    """Per image (index image_id) whether it is a negative control (controls.py: JUMP's ``control_type`` /
    ``pert_type``, or any of ``columns`` — the label, the compound column — equal to ``control``,
    ``input.control_label``); None where no image is."""
    flags = is_negative(control_kinds(images, columns, control))
    if not flags.any():
        return None
    return pd.Series(flags, index=images["image_id"].astype(str).to_numpy())


def positive_controls(images: pd.DataFrame, columns: list[str | None], control: str) -> pd.Index:
    """The image ids of positive controls (``control_type`` ``poscon*``): neither references nor queries unless
    ``input.positive_controls: include``."""
    return pd.Index(images["image_id"].astype(str).to_numpy()[is_positive(control_kinds(images, columns, control))])


def calibration_summary(references: References) -> str:
    """One line: what the references hold and how their leave-one-compound-out calls fared."""
    fields = references.fields
    line = (
        f"references: {references.kind} profiles of {fields['treatment'].nunique()} treatments "
        f"({fields['compound'].nunique()} compounds, {len(fields)} fields)"
    )
    parts = []
    for level in ("field", "well"):
        c = references.calibration.get(level, {})
        if c.get("accuracy") is not None:
            parts.append(
                f"{level}s {c['accuracy']:.3f} at mean probability {c['mean_probability']:.2f} "
                f"(novel below similarity {c['novelty_threshold']:.2f})"
            )
    if parts:
        where = references.moa_space.get("why", "the profile cosine")
        return line + "; mechanism right, leave-one-compound-out, on " + ", ".join(parts) + f"; called in {where}"
    skipped = references.calibration.get("field", {}).get("skipped")
    return line + (f"; {skipped}" if skipped else "")

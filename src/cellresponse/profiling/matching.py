"""A query against the references: its nearest reference treatments, its mechanism call with a probability, and
"novel" when nothing matches (references.py holds what is matched against; calibration.py how the temperature and
the novelty threshold were fitted).

A query — a field, a well or a treatment of a new plate, normalised as the references were — is compared with
every reference treatment's consensus profile (the mean of its wells) by cosine similarity:

``nearest_k``        the k most similar reference treatments, with their mechanism and similarity;
``moa_call``         the mechanism of the nearest reference (Ljosa et al. 2013's not-same-compound nearest
                     neighbour, as a call) — nearest in the references' mechanism-discriminant space where that
                     calls more of their own compounds right (mechanism_space.py, ``references.moa_space``);
                     ``moa_probability`` the softmax over mechanisms of each mechanism's best similarity divided by
                     a temperature;
``novel``            the best similarity below the novelty threshold: the query is no closer to any reference than a
                     known compound is, at worst, to the other compounds of its own mechanism. A novel query keeps
                     its nearest list but gets no ``moa_call``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from cellresponse.profiling.references import References, treatment_table
from cellresponse.profiling.similarity import cosine_similarity

# A mechanism without a reference (score -inf) gets this score instead: no probability, and no NaN in the softmax.
MISSING_SCORE = -1e3


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


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """Per-mechanism scores with a mechanism that has no reference (``-inf``) at :data:`MISSING_SCORE`."""
    return np.where(np.isfinite(scores), scores, MISSING_SCORE)


def mechanism_probabilities(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(scores / temperature)`` over the mechanisms of each row (:func:`moa_similarities` scores)."""
    return softmax(finite_scores(scores) / temperature, axis=1)


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
    probability = mechanism_probabilities(scores, calibration["temperature"])
    novel = out["best_similarity"].to_numpy() < calibration["novelty_threshold"]
    out["novel"] = pd.array(novel, dtype="boolean")
    calls = np.asarray(moas, dtype=object)[scores.argmax(1)]
    calls[novel] = None
    out["moa_call"] = pd.array(calls, dtype="string")
    out["moa_probability"] = np.where(novel, np.nan, probability.max(axis=1))
    return out

"""A new plate made comparable with the references: normalised to its own negative controls or with the
references' parameters (``references.query_normalization``), sphered with the references' map or corrected with
them by Harmony (the references then calibrated again), positive controls left out — and the batch-corrected space
references and new plates meet in (:func:`in_batch_corrected_space`, where reference_building calibrates them too).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import overload

import numpy as np
import pandas as pd

from cellresponse.profiling.batch_correction import apply_spherize, confounded, harmony
from cellresponse.profiling.calibration import calibrated
from cellresponse.profiling.references import (
    META,
    Normalization,
    References,
    control_flags,
    normalized_fields,
    profile_fields,
)

log = logging.getLogger(__name__)


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
    """A new plate's per-image profiles (references.profile_fields) as normalised fields in the references' columns
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
    (references.profile_fields, less the images ``left_out`` — positive controls, which are not queries), normalised
    (:func:`normalize_query`, ``mode`` from :func:`query_normalization`) and batch-corrected with the references
    (:func:`batch_corrected`). Returns the references as compared (recalibrated after a joint correction), the raw
    fields (activity is measured on them) and the normalised ones."""
    raw, _ = profile_fields(blocks, meta)
    if len(left_out):
        raw = raw[~raw["image_id"].isin(left_out)].reset_index(drop=True)
    fields = normalize_query(raw, controls, references, mode)
    references, fields = batch_corrected(references, fields, controls, quantile, seed)
    return references, raw, fields


def batch_corrected(
    references: References, queries: pd.DataFrame, controls: pd.Series | None, quantile: float, seed: int
) -> tuple[References, pd.DataFrame]:
    """A new plate's normalised fields and the references, both batch-corrected as the references were
    (:func:`in_batch_corrected_space`); after a joint Harmony fit the references are calibrated again.
    A new plate whose batches are its compounds (one compound, no controls) is not put through Harmony: it is
    compared with the uncorrected references, calibrated again uncorrected, and it says so."""
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


@overload
def in_batch_corrected_space(
    references: References, queries: pd.DataFrame, seed: int
) -> tuple[References, pd.DataFrame]: ...
@overload
def in_batch_corrected_space(references: References, queries: None, seed: int) -> tuple[References, None]: ...
def in_batch_corrected_space(
    references: References, queries: pd.DataFrame | None, seed: int
) -> tuple[References, pd.DataFrame | None]:
    """The references (and normalised ``queries``) as they are compared: sphered queries put through the
    references' map; with Harmony, both re-fitted together (the query's plates as batches of their own) into
    principal components — a new plate moves the references too, so their calibration is fitted again by the
    caller (calibration.calibrated). The queries' batches are their ``batch`` column (else their plate), apart from
    every reference batch. Unchanged without batch correction."""
    method = references.batch_correction.get("method", "none")
    features = references.features
    if method == "spherize" and queries is not None:
        if references.sphere is None:
            raise ValueError("references sphered without their sphering map: rebuild the bundle (cellresponse train)")
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

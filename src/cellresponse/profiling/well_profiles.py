"""Well and treatment profiles in pycytominer's conventions: ``Metadata_*`` columns, then feature columns.

    cells ─ aggregate (per plate and well) ─ normalize (to controls, per plate or across the experiment)
          ─ feature_select ─ aggregate (per treatment: the consensus profile)

The steps are pycytominer's own (``aggregate``, ``normalize``, ``feature_select``); this module chooses their
arguments. Per-plate normalisation is the field's default, but when plates are confounded with treatments (a plate
holds one or two treatments, as most BBBC021-moa plates do) it subtracts the treatment's own effect: then profiles
are normalised across the experiment instead, and the profile stage says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellresponse.config import ProfilesConfig
from cellresponse.errors import InputError
from cellresponse.input.controls import CONTROL_KIND
from cellresponse.input.controls import TREATMENT as TREATMENT_KIND
from cellresponse.input.plate import MIN_COMPOUNDS_PER_PLATE, compounds_per_plate, compounds_per_plate_phrase

log = logging.getLogger(__name__)

TREATMENT = "Metadata_Treatment"
PLATE, WELL = "Metadata_Plate", "Metadata_Well"
FEATURE_SELECTION = ("variance_threshold", "drop_na_columns")


def metadata_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("Metadata_")]


def treatment_names(images: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """One treatment name per image from the columns that define a treatment (``compound @ concentration``);
    the columns must exist (``plate.check_columns`` says which is missing)."""
    return images[list(columns)].astype(str).agg(" @ ".join, axis=1)


def _constant_metadata(table: pd.DataFrame, strata: list[str]) -> pd.DataFrame:
    """Per group of ``strata``: every ``Metadata_*`` column that is constant within each group, and the group
    size (``Metadata_Count``)."""
    grouped = table[metadata_columns(table)].groupby(strata, sort=True)
    counts = grouped.nunique(dropna=False)
    constant = [c for c in counts.columns if (counts[c] <= 1).all()]
    meta = grouped[constant].first().reset_index() if constant else grouped.size().reset_index()[strata]
    meta["Metadata_Count"] = grouped.size().to_numpy()
    return meta


def well_profiles(fields: pd.DataFrame, features: list[str], operation: str = "mean") -> pd.DataFrame:
    """Fields (or cells) → one profile per plate and well (pycytominer ``aggregate``), with every ``Metadata_*``
    column that is constant within a well and the number of fields (``Metadata_Count``)."""
    strata = [PLATE, WELL]
    # pycytominer is imported in the functions that call it: train, evaluate and predict reach this module through
    # the profile stage without calling them (with copairs, 0.5 s of import time saved in train, 2026-11-26).
    from pycytominer import aggregate

    # .copy(): one block per dtype; a table joined from many parts made pycytominer's groupby warn (PerformanceWarning)
    profiles = aggregate(fields.copy(), strata=strata, features=features, operation=operation)
    return _constant_metadata(fields, strata).merge(profiles, on=strata, how="inner")


def normalization_scope(
    wells: pd.DataFrame, setting: str, compound: str, treated: pd.Series | None = None
) -> tuple[str, str]:
    """``plate``, ``experiment`` or ``none``, and why. ``auto`` avoids per-plate normalisation where plates are
    confounded with compounds (a plate holding one or two compounds would be normalised to itself)."""
    if setting != "auto":
        return setting, f"normalize: {setting} (config)"
    if compound not in wells.columns:
        compound = TREATMENT
    per_plate = compounds_per_plate(wells, PLATE, compound, treated)
    if per_plate < MIN_COMPOUNDS_PER_PLATE:
        return "experiment", (
            f"plates are confounded with compounds ({compounds_per_plate_phrase(per_plate)}): per-plate "
            "normalisation would erase the treatment signal, so profiles are normalised across the experiment"
        )
    return "plate", f"per-plate normalisation ({compounds_per_plate_phrase(per_plate)})"


def normalize_profiles(
    wells: pd.DataFrame,
    features: list[str],
    scope: str,
    control_query: str | None = None,
    method: str = "standardize",
    epsilon: float = 1e-6,
) -> pd.DataFrame:
    """Normalise the profiles with pycytominer ``normalize`` to the control wells (``control_query``) or to all
    wells, within each plate or across the experiment: ``standardize`` (each feature to mean 0, sd 1) or
    ``spherize`` (ZCA-cor whitening: correlated features decorrelated, as JUMP treats deep profiles)."""
    if scope == "none":
        return wells
    from pycytominer import normalize

    samples = control_query or "all"
    meta = [c for c in wells.columns if c not in features]

    def standardize(part: pd.DataFrame) -> pd.DataFrame:
        chosen = samples if samples == "all" or len(part.query(samples)) >= 2 else "all"
        return normalize(
            part, features=features, meta_features=meta, samples=chosen, method=method, spherize_epsilon=epsilon
        )

    if scope == "plate":
        parts = [standardize(part) for _, part in wells.groupby(PLATE, sort=False)]
        out = pd.concat(parts).loc[wells.index]
    else:
        out = standardize(wells)
    return out[wells.columns]


def select_features(
    wells: pd.DataFrame, features: list[str], operations: Sequence[str] = FEATURE_SELECTION
) -> tuple[pd.DataFrame, list[str]]:
    """pycytominer ``feature_select`` with ``operations`` in turn, each on the features the ones before kept (as
    ``feature_select`` runs them); returns the table and the features kept. ``correlation_threshold`` is
    :func:`correlated_features`, which drops the same features with memory of the correlation matrix's size."""
    if not operations:
        return wells, features
    from pycytominer import feature_select

    kept = list(features)
    for operation in operations:
        if operation == "correlation_threshold":
            dropped = set(correlated_features(wells, kept))
        elif operation == "variance_threshold" and not (wells[kept].max() > wells[kept].min()).any():
            # every feature constant: said here for every caller (scikit-learn's VarianceThreshold, which tells
            # constant features by their range too, would stop with a bare ValueError)
            raise InputError(
                f"no profile feature varies across the {len(wells)} wells (the same fields under several names?): "
                "nothing to compare them on"
            )
        else:
            selected = feature_select(wells, features=kept, operation=[operation])
            dropped = set(kept) - set(selected.columns)
        kept = [c for c in kept if c not in dropped]
    return wells.drop(columns=[c for c in features if c not in set(kept)]), kept


# pycytominer's feature_select default for correlation_threshold (with its default method, Pearson's)
CORRELATION_THRESHOLD = 0.9


def correlated_features(
    wells: pd.DataFrame, features: list[str], threshold: float = CORRELATION_THRESHOLD
) -> list[str]:
    """The features pycytominer's ``correlation_threshold`` excludes, by its rule: of each pair correlated above
    ``threshold``, the one with the larger sum of absolute correlations to all features (its ranking, pandas'
    sort). pycytominer lists every pair in a long table first — 398 MB for 1,800 features, 1.6 GB for 4,000
    (quadratic, `benchmarks/feature_selection_memory.py`) — where this keeps the matrix and the pairs above it."""
    values = wells[features]
    array = values.to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant feature correlates as NaN, never above
        if np.isfinite(array).all():  # as pycytominer chooses: numpy, or pandas' pairwise-complete where values miss
            correlation = pd.DataFrame(np.corrcoef(array.T), index=features, columns=features)
        else:
            correlation = values.corr(method="pearson")
    del array
    ranked = correlation.abs().sum().sort_values().index  # low first: the later of a pair is dropped
    rank = ranked.get_indexer(pd.Index(features))
    above = np.tril(correlation.to_numpy() > threshold, k=-1)  # pair (a, b): a the later feature, as stacked
    later, earlier = np.nonzero(above)
    dropped = np.where(rank[later] > rank[earlier], later, earlier)
    return [features[i] for i in sorted(set(dropped.tolist()))]


def treatment_profiles(wells: pd.DataFrame, features: list[str], operation: str = "mean") -> pd.DataFrame:
    """Wells → one consensus profile per treatment (pycytominer ``aggregate``), with the ``Metadata_*`` columns
    constant within each treatment (compound, mechanism, …) and the number of wells (``Metadata_Count``)."""
    from pycytominer import aggregate

    profiles = aggregate(wells.copy(), strata=[TREATMENT], features=features, operation=operation)
    meta = _constant_metadata(wells.drop(columns=["Metadata_Count"], errors="ignore"), [TREATMENT])
    return meta.merge(profiles, on=TREATMENT, how="inner")


def combine_blocks(blocks: Sequence[pd.DataFrame], names: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Normalised profile blocks (same rows) side by side, each scaled by 1/√features so that every block weighs
    the same in a cosine or Euclidean comparison; feature columns get the block name as prefix."""
    scaled = []
    for block, name in zip(blocks, names, strict=True):
        values = block.to_numpy(np.float64) / np.sqrt(max(block.shape[1], 1))
        scaled.append(pd.DataFrame(values, columns=[f"{name}__{c}" for c in block.columns], index=block.index))
    combined = pd.concat(scaled, axis=1)
    return combined, list(combined.columns)


def normalized_wells(
    table: pd.DataFrame,
    features: list[str],
    meta: pd.DataFrame,
    profiles: ProfilesConfig,
    compound: str | None,
    control_query: str | None,
    method: str = "standardize",
) -> tuple[pd.DataFrame, list[str], str]:
    """Fields (``table``: image_id and ``features``; ``meta``: each image's ``Metadata_*`` columns) → wells
    (``profiles.aggregate``), normalised (``method``: standardize or spherize; to the ``control_query`` wells where
    there are any, per plate unless ``profiles.normalize`` says otherwise or plates are confounded with the
    ``compound`` column's values) and feature-selected; returns the wells, the features kept and the sentence
    saying how they were normalised."""
    fields = meta.merge(table, on="image_id", how="inner").copy()
    wells = well_profiles(fields.drop(columns=["image_id"]), features, profiles.aggregate)
    treated = wells[CONTROL_KIND] == TREATMENT_KIND if CONTROL_KIND in wells.columns else None
    compound = compound if compound is not None and compound in wells.columns else TREATMENT
    scope, why = normalization_scope(wells, profiles.normalize, compound, treated)
    wells[features] = wells[features].fillna(wells[features].mean()).fillna(0.0)
    wells = normalize_profiles(wells, features, scope, control_query, method=method)
    wells, features = select_features(wells, features)
    return wells, features, why


def combined_profiles(
    measured: pd.DataFrame, measured_features: list[str], deep: pd.DataFrame, deep_features: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """The ``both`` kind: each well's normalised measured and deep blocks side by side, weighted equally."""
    keys = [PLATE, WELL]
    deep = deep.copy().set_index(keys).loc[measured.set_index(keys).index].reset_index()  # copy: one block
    blocks = [measured[measured_features].reset_index(drop=True), deep[deep_features].reset_index(drop=True)]
    block, features = combine_blocks(blocks, ["measured", "deep"])
    return pd.concat([measured.drop(columns=measured_features).reset_index(drop=True), block], axis=1), features


EMBEDDING_COLUMN = (
    "Cells_Embedding_"  # a deep profile's columns in the written profiles (emb_0001 → Cells_Embedding_0001)
)


def cellprofiler_prefixed(table: pd.DataFrame, features: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The profile table with its feature columns under CellProfiler's compartment prefix, so that pycytominer's
    ``normalize`` / ``feature_select`` infer them without a list: every measure here is of the cell object
    (``Cells_``; the nucleus is the cell's DNA-bright part, not a second object), an embedding column
    ``Cells_Embedding_<i>``; the ``both`` kind's block names (``measured__`` / ``deep__``) are dropped."""
    renamed = {}
    for column in features:
        bare = column.removeprefix("measured__").removeprefix("deep__")
        renamed[column] = EMBEDDING_COLUMN + bare[4:] if bare.startswith("emb_") else f"Cells_{bare}"
    return table.rename(columns=renamed), [renamed[c] for c in features]

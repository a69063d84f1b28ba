"""``cellresponse profile``: well and treatment profiles of each kind — ``measured`` (cells.parquet's features),
``deep`` (the embeddings) and ``both`` (each block normalised, weighted equally) — in pycytominer's conventions
(aggregation.py), and the profile-level benchmarks (retrieval.py): not-same-compound MoA accuracy and mAP of
replicate and MoA retrieval.

Writes ``RUN/profiles/<kind>_wells.parquet``, ``RUN/profiles/<kind>_treatments.parquet`` and
``RUN/profiles/metrics.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import MOA_COLUMNS, Config
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.embedding_tables import mean_embeddings
from cellresponse.input.controls import NEGATIVE, POSITIVE, control_kinds, describe_controls
from cellresponse.input.controls import TREATMENT as TREATMENT_KIND
from cellresponse.input.io import write_json, write_parquet
from cellresponse.input.plate import check_columns
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.batch_correction import corrected_profiles
from cellresponse.profiling.profile_benchmarks import nsc_accuracy, nsc_not_computed, nsc_summary, retrieval_map
from cellresponse.profiling.profile_models import plate_by_plate_feature_table
from cellresponse.profiling.well_profiles import (
    PLATE,
    TREATMENT,
    WELL,
    cellprofiler_prefixed,
    combine_blocks,
    normalization_scope,
    normalize_profiles,
    select_features,
    treatment_names,
    treatment_profiles,
    well_profiles,
)
from cellresponse.provenance import made_by

log = logging.getLogger(__name__)

CONTROL_KIND = "Metadata_control_kind"  # negcon / poscon / trt per image (controls.py)


def image_metadata(images: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Per image: ``image_id``, ``Metadata_Plate``/``Metadata_Well`` (from plate/well), the treatment name and
    every ``Metadata_*`` column."""
    meta = images[["image_id"] + [c for c in images.columns if c.startswith("Metadata_")]].copy()
    meta[PLATE] = images["plate"].astype(str).to_numpy()
    meta[WELL] = images["well"].astype(str).to_numpy()
    columns = config.treatment_columns(meta.columns)
    check_columns(meta, columns, "treatment", "profiles.treatment")
    meta[TREATMENT] = treatment_names(meta, columns).to_numpy()
    compound = config.compound_column(meta.columns)
    meta[CONTROL_KIND] = control_kinds(meta, [config.input.label, compound], config.input.control_label).to_numpy()
    return meta


def measured_image_table(run: RunFolder, images: pd.DataFrame) -> pd.DataFrame:
    """The measured per-image table, built plate by plate from ``cells.parquet``'s per-plate parts, so that a
    screen never holds more than one plate's cells."""
    columns = feature_columns(run.cell_columns())
    plates = (
        run.read_cells(["image_id", *columns], image_ids=ids)
        for _, ids in images.groupby("plate", sort=False)["image_id"]
    )
    return plate_by_plate_feature_table(plates, columns)


def image_tables(run: RunFolder, kinds: list[str], images: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Per image, the profile each kind starts from: ``measured`` = the distribution of every measured cell
    feature over the field's cells (mean, sd, 5/25/50/75/95th percentiles, cell count: profiles.py), ``deep`` =
    the mean embedding of the field's cells. Fields are then aggregated into wells."""
    tables = {}
    if {"measured", "both"} & set(kinds):
        table = measured_image_table(run, images)
        tables["measured"] = (table.rename_axis("image_id").reset_index(), list(table.columns))
    if {"deep", "both"} & set(kinds):
        means = mean_embeddings(run, images["image_id"].tolist())
        tables["deep"] = (means.rename_axis("image_id").reset_index(), list(means.columns))
    return tables


def normalized_wells(
    table: pd.DataFrame,
    features: list[str],
    meta: pd.DataFrame,
    config: Config,
    control_query: str | None,
    method: str = "standardize",
) -> tuple[pd.DataFrame, list[str], str]:
    """Fields → wells (aggregate), normalised (``method``: standardize or spherize, to the controls where there
    are any, per plate unless plates are confounded with compounds) and feature-selected; returns the wells, the
    features kept and the sentence saying how they were normalised."""
    fields = meta.merge(table, on="image_id", how="inner").copy()
    wells = well_profiles(fields.drop(columns=["image_id"]), features, config.profiles.aggregate)
    treated = wells[CONTROL_KIND] == TREATMENT_KIND if CONTROL_KIND in wells.columns else None
    compound = config.compound_column(wells.columns) or TREATMENT
    scope, why = normalization_scope(wells, config.profiles.normalize, compound, treated)
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


def without_controls(table: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The treated rows: negative controls (controls.py) are not queries of a benchmark, nor positive controls
    unless ``input.positive_controls: include``."""
    if CONTROL_KIND not in table.columns:
        label = config.input.label
        return table[table[label].astype(str) != config.input.control_label] if label in table.columns else table
    kept = [TREATMENT_KIND] + ([POSITIVE] if config.input.positive_controls == "include" else [])
    return table[table[CONTROL_KIND].isin(kept).to_numpy()]


def mechanism_benchmark_skipped(moa: str | None, compound: str, columns: Iterable[str]) -> str | None:
    """Why NSC accuracy and MoA retrieval cannot run on treatments with these ``columns`` (None: they can)."""
    if moa is None:
        return f"no mechanism column (looked for {', '.join(MOA_COLUMNS)}) — name it with --set profiles.moa=COLUMN"
    if moa == compound:
        # Every other treatment of the same mechanism would count as the same compound: NSC would be 0 by design.
        return (
            f"the compound column is the mechanism column ({moa}) — name the compound column with "
            "--set profiles.compound=COLUMN (and the treatment with profiles.treatment)"
        )
    missing = sorted({moa, compound} - set(columns))
    if missing:
        return (
            f"columns {missing} not in the metadata — name the MoA and compound columns with "
            "--set profiles.moa=COLUMN --set profiles.compound=COLUMN"
        )
    return None


def evaluate_profiles(
    wells: pd.DataFrame, treatments: pd.DataFrame, features: list[str], config: Config
) -> dict[str, Any]:
    """NSC (and NSCB) MoA accuracy on treatment profiles; mAP of replicate retrieval (wells) and MoA retrieval
    (treatments). A benchmark whose columns are missing is skipped with the reason."""
    batch = config.profiles.batch
    out: dict[str, Any] = {}
    treated = without_controls(treatments, config)
    moa, compound = config.moa_column(treated.columns), config.compound_column(treated.columns) or TREATMENT
    skipped = mechanism_benchmark_skipped(moa, compound, treated.columns)
    if skipped:
        out["nsc"] = {"skipped": skipped}
    else:
        x = treated[features].to_numpy()
        out["nsc"] = nsc_accuracy(x, treated[moa].to_numpy(), treated[compound].to_numpy())
        if batch and batch in treated.columns:
            out["nscb"] = nsc_accuracy(x, treated[moa], treated[compound], treated[batch].to_numpy())
        out["map_moa"] = retrieval_map(treated[[moa, compound]], x, [moa], [compound], [moa], [moa], seed=config.seed)
        out["moa_column"], out["compound_column"] = moa, compound
    queries = without_controls(wells, config)
    out["map_replicates"] = retrieval_map(
        queries[[TREATMENT, PLATE, WELL]],
        queries[features].to_numpy(),
        [TREATMENT],
        [],
        [TREATMENT],
        [TREATMENT],
        seed=config.seed,
    )
    return out


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Profiles of every kind in ``profiles.kinds`` and their benchmarks."""
    started = time.perf_counter()
    p = config.profiles
    images = run.read_images()
    meta = image_metadata(images, config)
    log.info("controls: %s", describe_controls(meta[CONTROL_KIND], meta, config.input.control_label))
    has_controls = (meta[CONTROL_KIND] == NEGATIVE).any()
    control_query = f"{CONTROL_KIND} == '{NEGATIVE}'" if has_controls else None
    tables = image_tables(run, p.kinds, images)
    normalized: dict[str, tuple[pd.DataFrame, list[str]]] = {}
    notes = set()
    for kind, (table, features) in tables.items():
        wells, kept, why = normalized_wells(table, features, meta, config, control_query)
        normalized[kind] = (wells, kept)
        notes.add(why)
    if "both" in p.kinds:
        normalized["both"] = combined_profiles(*normalized["measured"], *normalized["deep"])
    for kind, (wells, features) in normalized.items():
        controls = (wells[CONTROL_KIND] == NEGATIVE).to_numpy()
        fit_rows = controls if has_controls else np.ones(len(wells), bool)
        compound = config.compound_column(wells.columns)
        corrected = corrected_profiles(
            wells, features, p.batch_correction, p.batch, compound, fit_rows, config.seed, controls
        )
        normalized[kind] = corrected[:2]
        notes.add(corrected[2])
    for note in sorted(notes):
        log.log(logging.WARNING if "confounded" in note else logging.INFO, note)
    metrics: dict[str, Any] = {"normalization": sorted(notes), "kinds": {}}
    not_computed: set[str] = set()
    for kind in p.kinds:
        wells, features = cellprofiler_prefixed(*normalized[kind])
        treatments = treatment_profiles(wells, features, p.aggregate)
        write_parquet(run.profile_path(kind, "wells"), wells)
        write_parquet(run.profile_path(kind, "treatments"), treatments)
        result = evaluate_profiles(wells, treatments, features, config)
        metrics["kinds"][kind] = {
            "features": len(features),
            "wells": len(wells),
            "treatments": len(treatments),
            **result,
        }
        why = nsc_not_computed(result.get("nsc", {}))
        if why:
            not_computed.add(why)
        log.info(
            "%s profiles: %d wells, %d treatments, %d features; %s; replicate mAP %s",
            kind,
            len(wells),
            len(treatments),
            len(features),
            "NSC not computed" if why else nsc_summary(result.get("nsc", {})),
            f"{result['map_replicates'].get('mean_average_precision', float('nan')):.3f}",
        )
    for why in sorted(not_computed):  # said once, not once per kind
        log.info("NSC MoA accuracy not computed: %s", why)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_json(run.profile_metrics, {**metrics, "made_by": made_by()})
    run.record_stage("profile", {"kinds": p.kinds, "seconds": metrics["seconds"]})
    return metrics

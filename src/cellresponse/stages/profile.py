"""``cellresponse profile``: well and treatment profiles of each kind — ``measured`` (cells.parquet's features),
``deep`` (the embeddings) and ``both`` (each block normalised, weighted equally) — in pycytominer's conventions
(``profiling.well_profiles``), and the profile-level benchmarks (``profiling.profile_benchmarks``): not-same-compound
MoA accuracy and mAP of replicate and MoA retrieval.

Writes ``RUN/profiles/<kind>_wells.parquet``, ``RUN/profiles/<kind>_treatments.parquet`` and
``RUN/profiles/metrics.json`` (``evaluation.run_metrics.ProfileMetrics``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config
from cellresponse.evaluation.run_metrics import ProfileKindScores, ProfileMetrics
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.embedding_tables import mean_embeddings
from cellresponse.input.controls import CONTROL_KIND, NEGATIVE, control_kinds, describe_controls
from cellresponse.input.io import write_json, write_parquet
from cellresponse.input.plate import check_columns
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.batch_correction import corrected_profiles
from cellresponse.profiling.profile_benchmarks import benchmark_profiles
from cellresponse.profiling.profile_models import plate_by_plate_feature_table
from cellresponse.profiling.well_profiles import (
    PLATE,
    TREATMENT,
    WELL,
    cellprofiler_prefixed,
    combined_profiles,
    normalized_wells,
    treatment_names,
    treatment_profiles,
)
from cellresponse.provenance import made_by

log = logging.getLogger(__name__)


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


def image_tables(
    run: RunFolder, kinds: Sequence[str], images: pd.DataFrame
) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Per image, the profile each kind starts from: ``measured`` = the distribution of every measured cell
    feature over the field's cells (mean, sd, 5/25/50/75/95th percentiles, cell count:
    profiling/profile_models.py), ``deep`` = the mean embedding of the field's cells. Fields are then aggregated
    into wells."""
    tables = {}
    if {"measured", "both"} & set(kinds):
        table = measured_image_table(run, images)
        tables["measured"] = (table.rename_axis("image_id").reset_index(), list(table.columns))
    if {"deep", "both"} & set(kinds):
        means = mean_embeddings(run, images["image_id"].tolist())
        tables["deep"] = (means.rename_axis("image_id").reset_index(), list(means.columns))
    return tables


def controls_of(config: Config) -> tuple[str, str | None, str]:
    """The arguments of :func:`without_controls`: the label, the control label and whether positive controls are
    queries."""
    return config.input.label, config.input.control_label, config.input.positive_controls


def evaluate_profiles(
    wells: pd.DataFrame, treatments: pd.DataFrame, features: list[str], config: Config
) -> dict[str, Any]:
    """The profile benchmarks of one kind (:func:`benchmark_profiles`) with the run's columns and controls."""
    return benchmark_profiles(
        wells,
        treatments,
        features,
        moa=config.moa_column(treatments.columns),
        compound=config.compound_column(treatments.columns) or TREATMENT,
        batch=config.profiles.batch,
        controls=controls_of(config),
        seed=config.seed,
    )


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> ProfileMetrics:
    """Profiles of every kind in ``profiles.kinds`` and their benchmarks."""
    started = time.perf_counter()
    p = config.profiles
    images = run.read_images()
    meta = image_metadata(images, config)
    log.info("controls: %s", describe_controls(meta[CONTROL_KIND], meta, config.input.control_label))
    has_controls = (meta[CONTROL_KIND] == NEGATIVE).any()
    control_query = f"{CONTROL_KIND} == '{NEGATIVE}'" if has_controls else None
    tables = image_tables(run, p.kinds, images)
    compound = config.compound_column(meta.columns)
    normalized: dict[str, tuple[pd.DataFrame, list[str]]] = {}
    notes = set()
    for kind, (table, features) in tables.items():
        wells, kept, why = normalized_wells(table, features, meta, p, compound, control_query)
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
    kinds: dict[str, ProfileKindScores] = {}
    for kind in p.kinds:
        wells, features = cellprofiler_prefixed(*normalized[kind])
        treatments = treatment_profiles(wells, features, p.aggregate)
        write_parquet(run.profile_path(kind, "wells"), wells)
        write_parquet(run.profile_path(kind, "treatments"), treatments)
        result = evaluate_profiles(wells, treatments, features, config)
        sizes = {"features": len(features), "wells": len(wells), "treatments": len(treatments)}
        kinds[kind] = scores = ProfileKindScores.from_json({**sizes, **result})
        replicate_map = scores.map_replicates.mean_average_precision if scores.map_replicates else None
        log.info(
            "%s profiles: %d wells, %d treatments, %d features; %s; replicate mAP %.3f",
            kind,
            len(wells),
            len(treatments),
            len(features),
            "NSC not computed" if scores.nsc is None or scores.nsc.not_computed else scores.nsc.summary(),
            float("nan") if replicate_map is None else replicate_map,
        )
    metrics = ProfileMetrics(sorted(notes), kinds, round(time.perf_counter() - started, 2), made_by())
    for why in metrics.not_computed():  # said once, not once per kind
        log.info("NSC MoA accuracy not computed: %s", why)
    write_json(run.profile_metrics, metrics.to_json())
    run.record_stage("profile", {"kinds": p.kinds, "seconds": metrics.seconds})
    return metrics

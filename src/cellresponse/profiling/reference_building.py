"""The references built from a run's training images: per-field profiles standardised to the negative controls
(per plate) or to all wells, feature-selected, batch-corrected where asked (sphering, Harmony; skipped where
batches are compounds) and calibrated (calibration.py) in the space where a new plate will meet them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import WELL_TREATMENT, Config, ReferencesConfig
from cellresponse.errors import InputError
from cellresponse.profiling.batch_correction import apply_spherize, batch_column, confounded, fit_spherize
from cellresponse.profiling.calibration import calibrated
from cellresponse.profiling.matching import match
from cellresponse.profiling.queries import in_batch_corrected_space, query_fields, query_normalization
from cellresponse.profiling.references import (
    Normalization,
    References,
    calibration_summary,
    choose_kind,
    control_flags,
    fit_normalization,
    group_of,
    image_controls,
    image_meta,
    kind_blocks,
    level_table,
    normalized_fields,
    profile_fields,
    well_table,
)

log = logging.getLogger(__name__)


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
    each image's references.META columns (index image_id), ``controls`` a boolean per image marking negative controls
    (None: the images have none). Profiles are standardised to the control wells — per plate unless
    ``per_plate`` is False — or, without controls, to all wells across the experiment (a plate may hold one
    treatment); the controls themselves are normalisation samples, not references. ``batch_correction``
    (``spherize`` or ``harmony``; batches from ``meta``'s ``batch`` column) follows (batch_correction.py).
    ``settings`` gives the feature selection and the novelty quantile; calibrated by leave-one-compound-out
    (calibration.calibrated), in the batch-corrected space."""
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


# Mechanisms withheld in turn by withheld_mechanism_novelty: all of BBBC021-moa's 6 (about 1 s each with both
# kinds of profile); a seeded sample of a JUMP plate's hundreds of targets, so that train is not held up by them.
MAX_WITHHELD_MECHANISMS = 12


def withheld_mechanism_novelty(
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
) -> dict[str, Any]:
    """How often ``novel`` catches a mechanism the references lack, read on the references themselves: each
    mechanism withheld in turn (all its compounds; at most :data:`MAX_WITHHELD_MECHANISMS`, a seeded sample), the
    references rebuilt from the rest as :func:`build_references` builds them (the same arguments) — in the profile
    cosine, which novelty reads whatever ``moa_space`` is — and the withheld wells queried as a new plate's are
    (query_fields, matching.match): the share of its wells flagged novel. The query plate is never read; the figure
    is the same-replicate view of the benchmark in ``benchmarks/unseen_compounds.py``, which queries another
    replicate."""
    is_control = pd.Series(control_flags(controls, meta.index), index=meta.index)
    mechanisms = sorted(meta.loc[~is_control, "moa"].dropna().astype(str).unique())
    if len(mechanisms) < 3:
        return {"skipped": f"{len(mechanisms)} mechanisms: withholding one leaves too few to call"}
    chosen = mechanisms
    if len(mechanisms) > MAX_WITHHELD_MECHANISMS:
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(mechanisms, MAX_WITHHELD_MECHANISMS, replace=False).tolist())
    in_profile = settings.model_copy(update={"moa_space": "profile"})
    shares = {}
    for moa in chosen:
        withheld = (meta["moa"].astype(str) == moa).to_numpy()
        kept, asked = meta.index[~withheld], meta.index[withheld | is_control.to_numpy()]
        try:
            references = build_references(
                {name: block.loc[block.index.intersection(kept)] for name, block in blocks.items()},
                meta.loc[kept], controls, kind, columns, in_profile,
                per_plate=per_plate, batch_correction=batch_correction, seed=seed,
            )  # fmt: skip
        except InputError as error:  # train runs this after the network: a figure must not cost the bundle
            log.info("novelty check: references without %s cannot be built (%s); left out", moa, error)
            continue
        if "temperature" not in references.calibration.get("well", {}):
            continue  # the rest has no mechanism of two compounds: nothing is ever called, or flagged
        mode, _ = query_normalization(references, bool(is_control.any()), settings.query_normalization)
        references, _, fields = query_fields(
            {name: block.loc[block.index.intersection(asked)] for name, block in blocks.items()},
            meta.loc[asked], controls, pd.Index([]), references, mode, settings.novelty_quantile, seed,
        )  # fmt: skip
        units = level_table(fields, references.features, "well")
        units = units[units["moa"].astype(str) == moa].reset_index(drop=True)
        shares[moa] = float(match(units, references, "well", 1)["novel"].fillna(False).mean())
    if not shares:
        return {"skipped": "withholding any mechanism left references that could not be built or call nothing"}
    return {
        "quantile": settings.novelty_quantile,
        "level": "well",
        "mechanisms": shares,
        "of": len(mechanisms),
        "mean": float(np.mean(list(shares.values()))),
    }


def batch_method(meta: pd.DataFrame, controls: pd.Series | None, method: str) -> tuple[str, str | None]:
    """``profiles.batch_correction`` for references named by ``meta`` (references.image_meta), or ``none`` and why
    where their batches are confounded with compounds (batch_correction.confounded)."""
    if method == "none" or not confounded(meta["batch"], meta["compound"], control_flags(controls, meta.index)):
        return method, None
    return "none", f"batch correction {method} skipped — the batches are confounded with compounds"


def build_reference_kinds(
    tables: dict[str, pd.DataFrame], images: pd.DataFrame, keep: pd.Index, config: Config
) -> tuple[References | None, dict[str, References]]:
    """A bundle's references: the profiles of each kind (``tables``, per image) of the images in ``keep`` (the
    non-test side; positive controls left out unless ``input.positive_controls: include``) grouped by treatment,
    the kind ``references.kind`` names or (``auto``) the one whose leave-one-compound-out mechanism calls were
    right most often (None where there are no profiles); and every kind built, which the bundle keeps too, so
    ``predict --set references.kind=KIND`` can trade the choice for speed without retraining."""
    columns = [*images.columns, *WELL_TREATMENT]
    compound, moa = config.compound_column(columns), config.moa_column(columns)
    treatment = config.treatment_columns(columns)
    meta = image_meta(images, treatment, compound, moa, batch_column(columns, config.profiles.batch, "plate"))
    controls, positives = image_controls(images, compound, config)
    method, why = batch_method(meta, controls, config.profiles.batch_correction)
    if why:
        log.warning("references: %s", why)
    keep = keep.difference(positives)
    described = {"treatment": treatment, "compound": compound, "moa": moa, "control": config.input.control_label}
    r = config.references
    candidates = {}
    for kind, table in tables.items():
        if r.kind not in ("auto", kind):
            continue
        rows = table.index.intersection(keep)
        arguments = (kind_blocks(kind, table.loc[rows]), meta.loc[rows], controls, kind, described, r)
        per_plate = config.profiles.normalize != "experiment"
        try:
            candidates[kind] = build_references(
                *arguments, per_plate=per_plate, batch_correction=method, seed=config.seed
            )
        except InputError as error:
            log.warning("references: no %s references — %s", kind, error)
            continue
        if candidates[kind].has_moa:  # the same references, each mechanism withheld in turn
            candidates[kind].novelty_check = withheld_mechanism_novelty(
                *arguments, per_plate=per_plate, batch_correction=method, seed=config.seed
            )
    if not candidates:
        return None, {}
    kind, why = choose_kind(candidates)
    log.info("reference kind %s", why)
    log.info(calibration_summary(candidates[kind]))
    if others := [k for k in candidates if k != kind]:
        log.info(
            "the bundle keeps the %s references too: predict --set references.kind=KIND answers with them "
            "(measured ones need no embedding)",
            " and ".join(others),
        )
    return candidates[kind], candidates

"""What ``predict`` answers for every treatment, well and field of a new plate — the open-world question:

* is it active (distinguishable from the plate's negative controls: activity.py),
* which reference treatments does it resemble (``nearest_1`` … ``nearest_k``: matching.py),
* which mechanism follows and how sure that is (``moa_call``, ``moa_probability``, calibrated leave-one-compound-out
  on the references), and
* ``novel`` when its best match is no closer than a known compound's to the other compounds of its mechanism.

:func:`answer_plate` takes a new plate's image table and per-image profile blocks and finds its treatments,
controls, normalisation and batches as the settings say; :func:`answer` takes normalised per-field profiles
(queries.normalize_query). Both return plain tables; the predict stage reads the images, writes the tables and
logs the summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import pandas as pd

from cellresponse.config import COMPOUND_COLUMNS, WELL_TREATMENT, Config
from cellresponse.input.controls import where_controls_were_sought
from cellresponse.profiling.activity import COLUMNS as ACTIVITY_COLUMNS
from cellresponse.profiling.activity import phenotypic_activity
from cellresponse.profiling.batch_correction import batch_column
from cellresponse.profiling.calibration import in_moa_space
from cellresponse.profiling.matching import match
from cellresponse.profiling.queries import query_fields, query_normalization
from cellresponse.profiling.references import (
    Normalization,
    References,
    control_flags,
    image_controls,
    image_meta,
    level_table,
    normalized_fields,
    novelty_check_phrase,
)

log = logging.getLogger(__name__)

# The answer columns a well's row of well_predictions.parquet gets (beside its treatment's name).
WELL_COLUMNS = (
    "active",
    "activity_q",
    "activity_level",
    "best_similarity",
    "nearest_1",
    "nearest_1_moa",
    "nearest_1_similarity",
    "moa_call",
    "moa_probability",
    "novel",
)
# How a row of treatment_calls.parquet reads, left to right, after the treatment's names (the nearest list follows).
ANSWER_ORDER = (
    "active",
    "activity_q",
    "activity_p",
    "activity_map",
    "activity_level",
    "moa_call",
    "moa_probability",
    "novel",
    "best_similarity",
)
FIELD_COLUMNS = ("best_similarity", "nearest_1", "nearest_1_similarity", "moa_call", "moa_probability", "novel")


@dataclass(frozen=True)
class Answers:
    """The answer tables: one row per treatment, per well and per field, and the activity note (why the activity
    columns are empty, where they are)."""

    treatments: pd.DataFrame
    wells: pd.DataFrame
    fields: pd.DataFrame
    activity_note: str | None


def activity_table(
    raw_fields: pd.DataFrame, normalization: Normalization, controls: pd.Series | None, fdr: float, seed: int
) -> tuple[pd.DataFrame, str | None]:
    """Each treatment's activity against the plate's negative controls, the profiles (``normalization``'s columns,
    weights and selection) standardised to those controls per plate (as JUMP scores activity), or an empty table
    and why."""
    columns = ["treatment", *ACTIVITY_COLUMNS]
    if controls is None:
        return pd.DataFrame(columns=columns), "no negative controls among these images"
    flags = control_flags(controls, raw_fields["image_id"])
    if flags.all():
        return pd.DataFrame(columns=columns), "every image is a negative control, so there is no treatment to score"
    profiles = normalized_fields(raw_fields, normalization, pd.Series(flags), per_plate=True)
    return phenotypic_activity(profiles, normalization.columns, pd.Series(flags), fdr, seed), None


def unit_names(units: pd.DataFrame) -> pd.DataFrame:
    """The units' names (treatment, compound, and plate/well or image where the level has them) and, where the new
    images carry a mechanism, that mechanism (``moa``: read against ``moa_call``)."""
    keep = [c for c in ("image_id", "plate", "well", "treatment", "compound", "moa", "count") if c in units.columns]
    named = units[keep].rename(columns={"count": "fields"} if "plate" in keep else {"count": "wells"})
    if "moa" in named and named["moa"].isna().all():
        named = named.drop(columns=["moa"])
    return named.reset_index(drop=True)


def answer(
    fields: pd.DataFrame,
    raw_fields: pd.DataFrame,
    references: References,
    controls: pd.Series | None,
    neighbours: int,
    fdr: float,
    seed: int = 0,
    normalization: Normalization | None = None,
) -> Answers:
    """The answer tables for normalised query ``fields`` (and the same fields before normalisation, ``raw_fields``,
    for the activity test): activity per treatment, nearest references, mechanism and novelty at each level. A
    negative control's rows carry ``control = True`` and no activity. ``normalization`` makes ``raw_fields``
    profiles for the activity test: the bundle's (the references' own by default; after a joint batch correction
    theirs names its components, which a raw field does not have)."""
    features = references.features
    control_of = control_flags(controls, fields["image_id"])
    activity, note = activity_table(raw_fields, normalization or references.normalization, controls, fdr, seed)
    control_treatments = set(fields.loc[control_of, "treatment"].astype(str))
    out = {}
    for level in ("treatment", "well", "field"):
        units = level_table(fields, features, level)
        called = match(units, references, level, neighbours)
        names = unit_names(units).rename(columns={"moa": references.columns.get("moa") or "moa"})
        names.insert(list(names.columns).index("treatment") + 1, "control", names["treatment"].isin(control_treatments))
        answered = pd.concat([names, called], axis=1).merge(activity, on="treatment", how="left")
        answered["active"] = answered["active"].astype("boolean")
        first = [*names.columns, *ANSWER_ORDER]
        out[level] = answered[first + [c for c in answered.columns if c not in first]]
    return Answers(out["treatment"], out["well"], out["field"], note)


def summary(answers: Answers, references: References) -> str:
    """The treatment calls in one line: how many treatments, how many active, novel and called, the most frequent
    mechanisms, how often such calls were right on the references left out, how often ``novel`` caught a mechanism
    they lacked and, where the new images carry the mechanism (the references' ``moa`` column), how often they
    were right here."""
    calibration, moa_column = references.calibration, references.columns.get("moa")
    t = answers.treatments[~answers.treatments["control"]]
    active = int(t["active"].fillna(False).sum())
    novel = int(t["novel"].fillna(False).sum())
    calls = t["moa_call"].dropna().value_counts()
    line = f"{len(t)} treatments: "
    line += (
        f"{active} active (q < FDR), {int(t['active'].notna().sum()) - active} not"
        if answers.activity_note is None
        else f"activity not scored — {answers.activity_note}"
    )
    line += f"; {novel} novel; {int(t['moa_call'].notna().sum())} called"
    if len(calls):
        line += " — " + ", ".join(f"{name} ({n})" for name, n in calls.head(5).items())
    well = calibration.get("well", {})
    if well.get("skipped"):
        line += f"; no moa_call: {well['skipped']}"
    if well.get("accuracy") is not None:
        line += (
            f"; such calls were right on {well['accuracy']:.3f} of reference wells left out "
            f"({well['units']} wells, mean probability {well['mean_probability']:.2f})"
        )
    if novelty := novelty_check_phrase(references.novelty_check, calibration):
        line += f"; novelty: {novelty}"
    agreement = calls_matching_given(t, moa_column)
    if agreement is not None:
        line += f"; these images carry a mechanism: called right on {agreement[0]:.3f} of called treatments"
    return line


def calls_matching_given(treatments: pd.DataFrame, given: str | None) -> tuple[float, int] | None:
    """Where new images carry their mechanism (column ``given``), the share of the called ``treatments`` whose
    ``moa_call`` is it, and how many were called; None where there is no such column, no call, or no called
    treatment carries a mechanism."""
    called = treatments[treatments["moa_call"].notna()]
    if not given or given not in treatments or called.empty or not called[given].notna().any():
        return None
    return float((called["moa_call"] == called[given]).mean()), len(called)


@dataclass(frozen=True)
class PlateAnswer:
    """A new plate's answer (:func:`answer_plate`) with what it was compared in: the normalised query ``fields``,
    the per-image names (``meta``: treatment, compound, mechanism, batch) and the ``references`` as compared
    (calibrated in ``references.moa_space``, batch-corrected with the plate where the bundle's were)."""

    answers: Answers
    fields: pd.DataFrame
    meta: pd.DataFrame
    references: References


def query_columns(table: pd.DataFrame, config: Config, moa: str | None) -> tuple[list[str], str | None, str | None]:
    """The new images' treatment columns (a missing one said in one line: each well is then its own treatment),
    compound column and mechanism column (the references', where the new images carry it)."""
    columns = [*table.columns, *WELL_TREATMENT]
    treatment = config.treatment_columns(columns)
    if not config.profiles.treatment and treatment == list(WELL_TREATMENT):
        log.info(
            "no compound column among these images (looked for %s; --set profiles.treatment=[COLUMN,...] names "
            "one): each well is its own treatment",
            ", ".join(COMPOUND_COLUMNS),
        )
    missing = [c for c in treatment if c not in columns]
    if missing:
        log.warning(
            "treatment column(s) %s are not in these images: each well is its own treatment (--set "
            "profiles.treatment=[COLUMN,...] names them)",
            missing,
        )
        treatment = list(WELL_TREATMENT)
    compound = config.compound_column(columns)
    moa = moa if moa in table.columns else config.moa_column(table.columns)
    return treatment, compound if compound in table.columns else None, moa


def plate_meta(table: pd.DataFrame, references: References, config: Config) -> tuple[pd.DataFrame, str | None]:
    """Per new image its treatment, compound, mechanism and batch names (references.image_meta) as the settings
    find them, and the compound column; a batch column the references were corrected by but these images lack is
    said in one line (each plate is then a batch)."""
    treatment, compound, moa = query_columns(table, config, references.columns.get("moa"))
    batch = batch_column(table.columns, config.profiles.batch, "plate")
    if references.batch_correction.get("method", "none") != "none" and batch not in table.columns:
        log.warning("the new images have no %s column (the references' batches): each plate is taken as a batch", batch)
    return image_meta(table, treatment, compound, moa, batch), compound


def answer_plate(
    blocks: dict[str, pd.DataFrame], table: pd.DataFrame, references: References, config: Config
) -> PlateAnswer:
    """A new plate's open-world answer: its image ``table``'s per-image profile ``blocks`` (measured statistics and
    / or mean embeddings, the columns the bundle's ``references`` hold) normalised to its negative controls or with
    the references' parameters (``references.query_normalization``), positive controls left out, batch-corrected
    with the references where they were, and answered at every level (:func:`answer`). Each choice is logged in
    one line; empty activity columns say why."""
    r = config.references
    references = in_moa_space(references, r.moa_space, r.novelty_quantile)
    meta, compound = plate_meta(table, references, config)
    controls, positives = image_controls(table, compound, config)
    mode, why = query_normalization(references, controls is not None, r.query_normalization)
    log.info(why)
    if len(positives):
        log.info("%d positive-control fields are not queries (input.positive_controls: include)", len(positives))
    profile_columns = references.normalization  # the activity test's, whatever batch correction does below
    references, raw, fields = query_fields(
        blocks, meta, controls, positives, references, mode, r.novelty_quantile, config.seed
    )
    answers = answer(fields, raw, references, controls, r.neighbours, r.activity_fdr, config.seed, profile_columns)
    if answers.activity_note:
        # the whole reason, with where the controls were looked for, travels with the answer: predict's summary
        # line (:func:`summary`, its one mention in the log) and the report say the same
        sought = where_controls_were_sought(table, (config.input.label, compound), config.input.control_label)
        answers = replace(answers, activity_note=f"{answers.activity_note} ({sought})")
    return PlateAnswer(answers, fields, meta, references)

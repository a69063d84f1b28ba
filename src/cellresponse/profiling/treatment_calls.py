"""What ``predict`` answers for every treatment, well and field of a new plate — the open-world question:

* is it active (distinguishable from the plate's negative controls: activity.py),
* which reference treatments does it resemble (``nearest_1`` … ``nearest_k``: references.py),
* which mechanism follows and how sure that is (``moa_call``, ``moa_probability``, calibrated leave-one-compound-out
  on the references), and
* ``novel`` when its best match is no closer than a known compound's to the other compounds of its mechanism.

These functions take normalised per-field profiles (references.normalize_query) and return plain tables; the
predict stage reads the images, writes the tables and logs the summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from cellresponse.profiling.activity import COLUMNS as ACTIVITY_COLUMNS
from cellresponse.profiling.activity import phenotypic_activity
from cellresponse.profiling.references import (
    Normalization,
    References,
    control_flags,
    level_table,
    match,
    normalized_fields,
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
        return pd.DataFrame(columns=columns), "no negative controls among these images: activity not computed"
    flags = control_flags(controls, raw_fields["image_id"])
    if flags.all():
        return pd.DataFrame(columns=columns), "every image is a negative control: no treatment to score"
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
        names.insert(names.columns.get_loc("treatment") + 1, "control", names["treatment"].isin(control_treatments))
        answered = pd.concat([names, called], axis=1).merge(activity, on="treatment", how="left")
        answered["active"] = answered["active"].astype("boolean")
        first = [*names.columns, *ANSWER_ORDER]
        out[level] = answered[first + [c for c in answered.columns if c not in first]]
    return Answers(out["treatment"], out["well"], out["field"], note)


def summary(answers: Answers, calibration: dict, moa_column: str | None = None) -> str:
    """The treatment calls in one line: how many treatments, how many active, novel and called, the most frequent
    mechanisms, how often such calls were right on the references left out and, where the new images carry the
    mechanism (``moa_column``), how often they were right here."""
    t = answers.treatments[~answers.treatments["control"]]
    active = int(t["active"].fillna(False).sum())
    novel = int(t["novel"].fillna(False).sum())
    calls = t["moa_call"].dropna().value_counts()
    line = f"{len(t)} treatments: "
    line += (
        f"{active} active (q < FDR), {int(t['active'].notna().sum()) - active} not"
        if answers.activity_note is None
        else answers.activity_note
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
    given = moa_column if moa_column in t else None
    if given and t["moa_call"].notna().any():
        right = (t["moa_call"] == t[given])[t["moa_call"].notna()]
        line += f"; these images carry a mechanism: called right on {float(right.mean()):.3f} of called treatments"
    return line

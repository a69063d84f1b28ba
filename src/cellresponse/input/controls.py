"""Which wells are controls, by JUMP's names: ``pert_type`` (``trt`` / ``control``) and ``control_type``
(``negcon``; ``poscon_cp``, ``poscon_orf``, ``poscon_diverse`` …), with or without the ``Metadata_`` prefix; and, as
the override that also serves plates without those columns, a label or compound equal to ``input.control_label``.

Negative controls are what normalisation and activity compare with; positive controls are neither references nor
queries unless ``input.positive_controls: include``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

NEGATIVE, POSITIVE, TREATMENT = "negcon", "poscon", "trt"
CONTROL_TYPE = ("Metadata_control_type", "control_type")
PERT_TYPE = ("Metadata_pert_type", "pert_type")
# The column the profile stage adds: each image's or well's kind (negcon / poscon / trt).
CONTROL_KIND = "Metadata_control_kind"


def first_column(table: pd.DataFrame, candidates: Iterable[str]) -> str | None:
    return next((c for c in candidates if c in table.columns), None)


def control_kinds(table: pd.DataFrame, label_columns: Iterable[str | None], control_label: str | None) -> pd.Series:
    """Per row ``negcon``, ``poscon`` or ``trt``: ``control_type`` first (``negcon*`` / ``poscon*``), then
    ``pert_type`` (``control`` without a control type is a negative control, as a solvent well is), then any of
    ``label_columns`` equal to ``control_label``."""
    kinds = pd.Series(TREATMENT, index=table.index, dtype=object)
    control_type = first_column(table, CONTROL_TYPE)
    pert_type = first_column(table, PERT_TYPE)
    typed = pd.Series("", index=table.index)
    if control_type is not None:
        typed = table[control_type].fillna("").astype(str).str.strip().str.lower()
        kinds[typed.str.startswith(NEGATIVE).to_numpy()] = NEGATIVE
        kinds[typed.str.startswith(POSITIVE).to_numpy()] = POSITIVE
    if pert_type is not None:
        pert = table[pert_type].fillna("").astype(str).str.strip().str.lower()
        untyped = ~typed.str.startswith((NEGATIVE, POSITIVE))
        kinds[((pert == "control") & untyped).to_numpy()] = NEGATIVE
        kinds[pert.str.startswith(NEGATIVE).to_numpy()] = NEGATIVE
        kinds[pert.str.startswith(POSITIVE).to_numpy()] = POSITIVE
    if control_label is not None:
        for column in dict.fromkeys(c for c in label_columns if c and c in table.columns):
            kinds[(table[column].astype(str) == str(control_label)).to_numpy()] = NEGATIVE
    return kinds


def type_columns(table: pd.DataFrame) -> list[str]:
    """JUMP's control-type and perturbation-type columns that ``table`` has, in the order :func:`control_kinds`
    reads them."""
    return [c for c in (first_column(table, CONTROL_TYPE), first_column(table, PERT_TYPE)) if c]


def describe_controls(kinds: pd.Series, table: pd.DataFrame, control_label: str | None) -> str:
    """One line: how many rows are negative and positive controls, and by which columns."""
    how = " / ".join(type_columns(table)) + (f" and {control_label!r} (input.control_label)" if control_label else "")
    counts = kinds.value_counts()
    return (
        f"{int(counts.get(NEGATIVE, 0))} negative and {int(counts.get(POSITIVE, 0))} positive control rows "
        f"(by {how.strip(' and') or 'nothing'})"
    )


def where_controls_were_sought(table: pd.DataFrame, label_columns: Iterable[str | None], control_label: str) -> str:
    """Where :func:`control_kinds` looked for negative controls in ``table``, for a line saying it found none: the
    JUMP type columns the table has and the ``label_columns`` equal to ``control_label`` — or that it has none of
    the label columns to look in."""
    typed = " / ".join(type_columns(table))
    named = list(dict.fromkeys(c for c in label_columns if c))
    present = [c for c in named if c in table.columns]
    if present:
        labelled = f"{' or '.join(present)} = {control_label}, input.control_label"
        return f"looked for {typed} and {labelled}" if typed else f"looked for {labelled}"
    absent = f"no {' or '.join(named) or 'label'} column to find {control_label} (input.control_label) in"
    return f"looked for {typed}; {absent}" if typed else f"these images have {absent}"


def is_negative(kinds: pd.Series) -> np.ndarray:
    return (kinds == NEGATIVE).to_numpy()


def is_positive(kinds: pd.Series) -> np.ndarray:
    return (kinds == POSITIVE).to_numpy()

"""The references: a bundle's training treatments as normalised per-field profiles — what a new compound is
compared with (matching.py), how sure a call is (calibration.py), how they are built (reference_building.py) and
how a new plate is made comparable with them (queries.py).

Here: the :class:`References` and their :class:`Normalization` (pycytominer's ``standardize`` written as
parameters a bundle carries to new plates), the field, well and treatment tables every level is aggregated to, the
per-image names (treatment, compound, mechanism, batch) and negative / positive controls of an image table, the
profile kind chosen, the bundle's files (``references.parquet``, ``references.json`` and the mechanism space) and
the one-line summary of their calibration.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.input.controls import control_kinds, is_negative, is_positive
from cellresponse.input.io import atomic_path, write_json, write_parquet
from cellresponse.profiling.mechanism_space import MechanismSpace, load_space, save_space
from cellresponse.profiling.well_profiles import select_features

log = logging.getLogger(__name__)

LEVELS = ("field", "well", "treatment")

# Metadata of a reference or query table (the per-field table every level is aggregated from).
META = ("image_id", "plate", "well", "treatment", "compound", "moa", "batch")

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
    # how often ``novel`` catches a mechanism the references lack (reference_building.withheld_mechanism_novelty):
    # {"quantile", "level", "mechanisms": {moa: share of its units flagged}, "mean"}, or {"skipped": why}; {} in a
    # bundle made before it
    novelty_check: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return self.normalization.columns

    @property
    def has_moa(self) -> bool:
        return self.columns.get("moa") is not None and bool(self.fields["moa"].notna().any())

    def describe(self) -> dict[str, Any]:
        """What ``bundle/references.json`` keeps beside the fields table."""
        return {
            "kind": self.kind,
            "columns": self.columns,
            "normalization": asdict(self.normalization),
            "calibration": self.calibration,
            "batch_correction": self.batch_correction,
            "moa_space": self.moa_space,
            "novelty_check": self.novelty_check,
            "treatments": int(self.fields["treatment"].nunique()),
            "compounds": int(self.fields["compound"].nunique()),
            "fields": len(self.fields),
        }


def control_flags(controls: pd.Series | None, image_ids: pd.Series | pd.Index) -> np.ndarray:
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


def sample_standardization(
    raw: np.ndarray, fields: pd.DataFrame, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
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
        in_sample = samples.to_numpy(bool)
        *pooled, _ = sample_standardization(raw, fields, in_sample)
        groups = fields["plate"].astype(str).to_numpy() if per_plate else np.zeros(len(fields), dtype=object)
        values = np.zeros_like(raw)
        for group in pd.unique(groups):
            rows = groups == group
            center, scale, wells = sample_standardization(raw, fields, rows & in_sample)
            if wells < 2:
                center, scale = pooled
            values[rows] = (raw[rows] - center) / scale * np.asarray(normalization.weight)
    table = pd.DataFrame(values, columns=normalization.columns)
    return pd.concat([meta, table], axis=1)


def profile_fields(blocks: dict[str, pd.DataFrame], meta: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Per-image profile blocks (index image_id; ``measured`` and/or ``deep``) joined to the image metadata
    (index image_id; :data:`META` columns), images with every block only; and each block's columns."""
    columns = {name: list(table.columns) for name, table in blocks.items()}
    joined = pd.concat([t.set_axis(t.index.astype(str)) for t in blocks.values()], axis=1, join="inner")
    meta = meta.set_axis(meta.index.astype(str))
    fields = meta.drop(columns=["image_id"], errors="ignore").join(joined, how="inner")
    return fields.rename_axis("image_id").reset_index().copy(), columns


DEEP_PREFIX = "emb_"  # features.embedding_tables.PREFIX: the columns of a mean embedding


def kind_blocks(kind: str, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A per-image profile table of ``kind`` (profile_models.image_profiles) split into its blocks: ``measured`` (cell
    feature statistics) and ``deep`` (mean embedding, ``emb_`` columns), each normalised on its own."""
    deep = [c for c in table.columns if c.startswith(DEEP_PREFIX)]
    measured = [c for c in table.columns if not c.startswith(DEEP_PREFIX)]
    blocks = {"measured": table[measured], "deep": table[deep]}
    return {name: block for name, block in blocks.items() if block.shape[1]}


def choose_kind(candidates: dict[str, References]) -> tuple[str, str]:
    """The kind whose leave-one-compound-out mechanism calls were right most often on the references' own fields
    (fields: four times the units of wells on BBBC021), ties to the cheaper kind (the order given); and why."""
    scored = {
        kind: float(accuracy)
        for kind, refs in candidates.items()
        if (accuracy := refs.calibration.get("field", {}).get("accuracy")) is not None
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
        novelty_check=described.get("novelty_check", {}),
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


def image_controls(images: pd.DataFrame, compound: str | None, config: Config) -> tuple[pd.Series | None, pd.Index]:
    """An image table's negative controls (:func:`negative_controls`, named by the label or the ``compound``
    column and ``input.control_label``) and the positive controls to leave out of references and queries
    (:func:`positive_controls`; none where ``input.positive_controls: include``)."""
    named, control = [config.input.label, compound], config.input.control_label
    positives = pd.Index([])
    if config.input.positive_controls == "exclude":
        positives = positive_controls(images, named, control)
    return negative_controls(images, named, control), positives


def novelty_check_phrase(check: dict[str, Any], calibration: dict[str, dict[str, Any]]) -> str | None:
    """How often ``novel`` caught a mechanism the references lacked (:attr:`References.novelty_check`), in words;
    None where the references keep no such check, or their novelty quantile is no longer the one it was read at."""
    shares = check.get("mechanisms")
    if not shares or check.get("quantile") != calibration.get("well", {}).get("novelty_quantile"):
        return None
    sampled = f" (a sample of {check['of']})" if check.get("of", len(shares)) > len(shares) else ""
    never = [moa for moa, share in shares.items() if share == 0]
    spread = f"from {min(shares.values()):.2f} to {max(shares.values()):.2f}"
    if never:
        spread += "; never " + ", ".join(never[:3]) + (f" and {len(never) - 3} more" if len(never) > 3 else "")
    return (
        f"when each of the references' {len(shares)} mechanisms{sampled} was withheld from them in turn, "
        f"{check['mean']:.2f} of its wells on average were flagged novel ({spread}); a treatment not flagged novel "
        "may still act by a mechanism the references lack"
    )


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
        line += "; mechanism right, leave-one-compound-out, on " + ", ".join(parts) + f"; called in {where}"
        novelty = novelty_check_phrase(references.novelty_check, references.calibration)
        return line + (f"; novelty: {novelty}" if novelty else "")
    skipped = references.calibration.get("field", {}).get("skipped")
    return line + (f"; {skipped}" if skipped else "")

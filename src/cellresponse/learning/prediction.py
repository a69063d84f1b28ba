"""What predicting a new plate with a bundle needs before the network runs, and a profile model's calls: the
channels and crop settings the plate must share with the bundle, the settings a user may change, which model predicts
(``auto``: the bundle's choice), which references answer and which cell features and embeddings they need, the
embedding window the bundle's deep profiles were cut with; and a profile model's image and well predictions from
per-image profiles. No torch here: a prediction by a profile model starts without it (the trained network on the
cells' crops: ``inference``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from cellresponse.config import Config, apply_overrides
from cellresponse.errors import InputError
from cellresponse.evaluation.prediction_tables import well_votes, write_image_predictions, write_well_predictions
from cellresponse.features.crops import changed_settings, compounds_and_treated
from cellresponse.input.io import write_json
from cellresponse.input.plate import MIN_COMPOUNDS_PER_PLATE, compounds_per_plate, compounds_per_plate_phrase
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.bundle import MODEL_CHOICES, NETWORK, Bundle
from cellresponse.learning.encoders import Scaler
from cellresponse.profiling.profile_models import (
    features_model_probabilities,
    image_profiles,
    profile_cell_columns,
    require_cell_features,
)
from cellresponse.profiling.references import DEEP_PREFIX, References

log = logging.getLogger(__name__)

# Settings a user may change for prediction: how it runs, not what the model sees.
RUNTIME_KEYS = (
    "runtime.",
    "input.join",
    "input.label",
    "input.control_label",
    "training.accelerator",
    "references.kind",
    "references.moa_space",
    "references.novelty_quantile",
    "references.query_normalization",
    "references.activity_fdr",
    "references.neighbours",
    "profiles.treatment",
    "profiles.compound",
)
# Names of earlier versions: `--model cnn` is the network, `--model features` the measured-profile model.
MODEL_ALIASES = {"cnn": NETWORK, "features": "measured"}
# New cells whose mean area is this many times the training cells' (or as many times smaller) were imaged at another
# scale: a 2x change of magnification or binning is 4x in area, while the 18 compounds of BBBC021-moa move a
# compound's mean cell area 0.55-1.61x the plate set's (the walk-through's run, 2026-12-07). The BBBC021 cells
# tiled at full resolution (790 px fields) average 5.6x the area of the 256-px BBBC021-moa fields' cells.
CELL_AREA_RATIO_LIMIT = 2.5
# The cell area as the study's measurement and CellProfiler's name it.
AREA_COLUMNS = ("area", "AreaShape_Area")


def check_compatible(bundle_channels: list[str], names: list[str], bundle_crops: dict, crop_settings: dict) -> None:
    """The images must have the bundle's channels (same names, same order) and the same crop settings."""
    if list(bundle_channels) != list(names):
        raise InputError(
            f"the model was trained on channels {list(bundle_channels)}, these images have {list(names)} — "
            "predict needs the same channels in the same order: give a load_data.csv whose FileName_Orig<name> "
            "columns carry the model's names (a Phenix folder names its channels ch1, ch2, …)"
        )
    changed = changed_settings(bundle_crops, crop_settings)
    if changed:
        raise InputError(f"crop settings differ from the model bundle's in {changed}; use the bundle's settings")


def cell_scale_note(trained_area: float, new_area: float | None) -> str | None:
    """A line when the new cells' mean area is more than :data:`CELL_AREA_RATIO_LIMIT` times the mean area of the
    cells the bundle was trained on, or as many times smaller; None when it is not, or either is unknown."""
    if new_area is None or not (new_area > 0 and trained_area > 0):
        return None
    ratio = new_area / trained_area
    if 1 / CELL_AREA_RATIO_LIMIT <= ratio <= CELL_AREA_RATIO_LIMIT:
        return None
    return (
        f"these cells average {new_area:.0f} px², {ratio:.2g}× the {trained_area:.0f} px² of the cells the bundle "
        "was trained on: images at another magnification, binning or resolution are measured on another scale, so "
        "their profiles do not meet the references' (expect novel calls) and the model's calls are not to be "
        "trusted — predict images taken as the training images were"
    )


def scale_note(bundle: Bundle, out: RunFolder, image_ids: Iterable[str]) -> str | None:
    """:func:`cell_scale_note` for the new cells in ``out`` against the training cells' mean area (the bundle's
    scaler keeps it), read one column a plate at a time; None where either lacks a cell area."""
    column = next((c for c in AREA_COLUMNS if c in bundle.scaler.columns and c in out.cell_columns()), None)
    if column is None:
        return None
    trained = float(bundle.scaler.mean[bundle.scaler.columns.index(column)])
    # pooled over the plates as the training cells' mean was (Scaler.fit_parts; 0 without cells: no note)
    new = Scaler.fit_parts(out.cell_parts(image_ids, [column]), [column]).mean[0]
    return cell_scale_note(trained, new)


def fix_intensity_scales(out: RunFolder, bundle: Bundle) -> None:
    """Where the bundle's training run scaled intensities across its experiment (plates confounded with compounds),
    the new plates are scaled with that one scale, not with their own: written to ``out``'s
    ``intensity_scales.json``, which the crops and embed stages read. A bundle scaled per plate removes the file."""
    fixed = bundle.meta.get("intensity_scales")
    if fixed:
        write_json(out.bundle_scales, fixed)
    else:
        out.bundle_scales.unlink(missing_ok=True)


def own_scale_note(bundle: Bundle, images: pd.DataFrame, config: Config, scaled: bool) -> str | None:
    """A line where the bundle scales intensities per plate and the new plates hold too few compounds for that
    (a part of a plate, one compound a plate): each plate's scale, measured on its own images, is then its
    compounds' and hides what they do to brightness. None where nothing reads the scales (``scaled`` False: the
    measured model with measured references), the bundle fixed one scale, or the plates are mixed enough."""
    if not scaled or bundle.meta.get("intensity_scales"):
        return None
    compound, treated = compounds_and_treated(images, config)
    if compound is None:
        return None  # nothing to tell the design by
    per_plate = compounds_per_plate(images, "plate", compound, treated)
    if per_plate >= MIN_COMPOUNDS_PER_PLATE:  # the rule intensity_scope applies
        return None
    return (
        f"these plates hold few compounds each ({compounds_per_plate_phrase(per_plate)}), and the bundle scales "
        "intensities per plate: each plate's scale comes from its own images, so it partly absorbs what its "
        "compounds do to brightness, and the network's calls and the deep references' read it — predict whole "
        "plates where you can (or use --model measured with --set references.kind=measured, which read no scale)"
    )


def prediction_config(bundle_config: Config, overrides: list[str]) -> Config:
    """The bundle's settings with ``overrides`` of the runtime keys; the network runs where this machine allows
    (``training.accelerator=auto``) — the machine it was trained on does not bind the one it predicts on."""
    for text in overrides:
        if not text.startswith(RUNTIME_KEYS):
            raise InputError(
                f"--set {text}: predict takes the bundle's settings; only "
                + ", ".join(k.rstrip(".") + ("*" if k.endswith(".") else "") for k in RUNTIME_KEYS)
                + " may change"
            )
    return apply_overrides(bundle_config, ["training.accelerator=auto", *overrides], "model bundle")


def resolve_model(requested: str, bundle: Bundle, bundle_path: str | Path) -> str:
    """The model to run: ``auto`` → the bundle's recorded choice; a profile model the bundle lacks is an error."""
    name = MODEL_ALIASES.get(requested, requested)
    if name not in MODEL_CHOICES:
        raise InputError(f"unknown model {requested!r}; choose one of: {', '.join(MODEL_CHOICES)}")
    if name == "auto":
        if bundle.choice is None:
            log.info("%s records no model choice (an earlier version): the network predicts", bundle_path)
            return NETWORK
        name = bundle.choice["auto"]
        log.info("model auto: %s, the best on %s", name, bundle.choice["scored_on"])
    if name != NETWORK and name not in bundle.profile_models:
        kinds = ", ".join(bundle.profile_models) or "none"
        raise InputError(f"{bundle_path} has no {name} profile model (it has: {kinds}); use --model network")
    return name


def chosen_references(bundle: Bundle, kind: str) -> References | None:
    """The bundle's references of ``kind`` (references.kind; ``auto`` the kind train chose), with a line saying
    what another kind than the chosen one costs in leave-one-compound-out accuracy."""
    references = bundle.references_of(kind)
    if references is not None and bundle.references is not None and references is not bundle.references:

        def accuracy(refs: References) -> str:
            return f"{refs.calibration.get('field', {}).get('accuracy', float('nan')):.3f}"

        log.info(
            "references: %s profiles (references.kind), not the %s that train chose — mechanism right on %s of "
            "reference fields left out against %s",
            references.kind,
            bundle.references.kind,
            accuracy(references),
            accuracy(bundle.references),
        )
    return references


def embedding_config(config: Config, bundle: Bundle) -> Config:
    """The bundle's embedding settings with the training run's window fixed, so new cells are cut as the
    profile model's were (the default window follows each run's median cell diameter)."""
    window = (bundle.meta.get("embedding") or {}).get("window")
    if not window:
        return config
    return apply_overrides(config, [f"embedding.crop_size={window}"], "model bundle")


def predict_with_profiles(
    kind: str, bundle: Bundle, meta: pd.DataFrame, blocks: dict[str, pd.DataFrame], out: RunFolder, config: Config
) -> list[Path]:
    """Image predictions of one of the bundle's profile models from the new images' per-image profile ``blocks``
    (the predict stage's ``profile_blocks``; no crops)."""
    model = bundle.profile_models[kind]
    measured = blocks.get("measured")
    measured = None if measured is None else measured_of(measured, model_cell_columns(model))
    features = image_profiles(kind, measured, blocks.get("deep"))
    probs = features_model_probabilities(model, features)
    table = meta.loc[features.index].reset_index()
    e, grouping = config.evaluation, bundle.label_grouping
    write_image_predictions(
        out.image_predictions, table, probs, model["classes"], e, config.input.label, kind, grouping
    )
    validation = (bundle.choice or {}).get("scores", {}).get(kind)
    votes = well_votes(table, probs, e.vote)
    write_well_predictions(
        out.well_predictions, votes, meta.reset_index(), model["classes"], e, kind, validation, grouping
    )
    log.info("predicted %d images with the %s profile model", len(features), kind)
    return [out.image_predictions, out.well_predictions]


def model_cell_columns(model: dict) -> list[str]:
    """The cell feature columns a profile model's per-image statistics are made of."""
    return model.get("cell_columns") or profile_cell_columns(model["columns"])


def measured_of(table: pd.DataFrame, cell_columns: list[str]) -> pd.DataFrame:
    """The per-image statistics of ``cell_columns`` (and the cell count) out of a table made of more cell columns:
    the same table profile_models.plate_by_plate_feature_table gives for them alone (its missing values are filled
    column by column)."""
    keep = set(cell_columns)
    return table[[c for c in table.columns if "__" not in c or c.rsplit("__", 1)[0] in keep]]


def reference_needs(bundle: Bundle, out: RunFolder) -> tuple[list[str], bool] | None:
    """The cell feature columns and whether the embeddings are needed to answer with the bundle's references; None
    (said in one line) where the bundle keeps none or the new cells lack their features."""
    references = bundle.references
    if references is None:
        log.warning(
            "this bundle keeps no reference profiles (made before they were kept, or train found none to keep: its "
            "log says why): no activity, nearest references or mechanism calls — retrain it (cellresponse train RUN "
            "--overwrite) to get them"
        )
        return None
    cell_columns = profile_cell_columns(references.features)
    try:
        require_cell_features(out.cell_columns(), cell_columns, "the bundle's references")
    except InputError as error:
        log.warning("%s — no activity, nearest references or mechanism calls this time", error)
        return None
    return cell_columns, embeds_cells(references)


def embeds_cells(references: References | None) -> bool:
    """Whether answering with ``references`` embeds the new cells: they hold mean embeddings (deep or both)."""
    return references is not None and any(c.startswith(DEEP_PREFIX) for c in references.features)

"""``cellresponse predict``: new images or plates through a model bundle — segmented, measured and cropped with the
bundle's settings — into cell and image predictions (no labels needed).

Outputs in ``DIR/predictions/``:

``cell_predictions.parquet``   cell_id, image_id, plate, well, predicted_label, probability,
                               top5_labels, top5_probabilities
                               (with ``--model network``, or ``auto`` when the network was chosen)
``image_predictions.parquet``  the image's columns (image_id, plate, well, site, Metadata_*), ``model`` (which
                               model predicted), predicted_label, probability, top5_labels, top5_probabilities
                               (the network's cells voted as in the bundle's ``evaluation.vote``)
``well_predictions.parquet``   plate, well, images, model, the Metadata_* columns every image of the well shares,
                               predicted_label, probability, top5_labels, top5_probabilities — one call per
                               well: the network's cells, or a profile model's images, voted the same way —
                               and the open-world answer of its treatment and profile (calls.WELL_COLUMNS)
``treatment_calls.parquet``    one row per treatment of the new images (calls.py): activity against the plate's
                               negative controls (activity_map, activity_p, activity_q, active), the nearest
                               reference treatments (nearest_1 … nearest_k with _moa and _similarity), moa_call,
                               moa_probability and novel — from the bundle's reference profiles

``--model auto`` (the default) uses the model the bundle recorded as best on the validation side
(``bundle/choice.json``); ``measured``, ``deep`` and ``both`` the profile models (no crops; ``deep`` and ``both``
embed the cells with the bundle's embedding settings), ``network`` the trained network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from cellresponse.config import WELL_TREATMENT, Config, apply_overrides
from cellresponse.devices import device_name, inference_device
from cellresponse.errors import InputError
from cellresponse.evaluation.prediction_tables import (
    add_columns,
    well_votes,
    write_image_predictions,
    write_well_predictions,
)
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.crop_store import CropStore
from cellresponse.features.crops import changed_settings
from cellresponse.features.crops import crop_settings as crop_settings_of
from cellresponse.features.embedding_tables import mean_embeddings
from cellresponse.input.io import write_parquet
from cellresponse.input.plate import ImageSource, channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.bundle import MODEL_CHOICES, NETWORK, Bundle, find_bundle, load_bundle, predict_plates
from cellresponse.profiling.batch_correction import batch_column
from cellresponse.profiling.profile_models import (
    features_model_probabilities,
    image_profiles,
    plate_by_plate_feature_table,
    profile_cell_columns,
    require_cell_features,
)
from cellresponse.profiling.references import (
    DEEP_PREFIX,
    References,
    image_meta,
    in_moa_space,
    level_table,
    negative_controls,
    positive_controls,
    query_fields,
    query_normalization,
)
from cellresponse.profiling.treatment_calls import FIELD_COLUMNS, WELL_COLUMNS, Answers, answer, summary
from cellresponse.reporting.treatment_report import CellSource, build_treatment_report
from cellresponse.stages import stage_module

log = logging.getLogger(__name__)

# Settings a user may change for prediction: how it runs, not what the model sees.
RUNTIME_KEYS = (
    "runtime.",
    "input.join",
    "input.label",
    "input.control_label",
    "training.accelerator",
    "references.kind",
    "references.query_normalization",
    "references.activity_fdr",
    "references.neighbours",
    "profiles.treatment",
    "profiles.compound",
)
MODELS = MODEL_CHOICES
# Names of earlier versions: `--model cnn` is the network, `--model features` the measured-profile model.
MODEL_ALIASES = {"cnn": NETWORK, "features": "measured"}


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
    if name not in MODELS:
        raise InputError(f"unknown model {requested!r}; choose one of: {', '.join(MODELS)}")
    if name == "auto":
        if bundle.choice is None:
            log.info("%s records no model choice (an earlier version): the network predicts", bundle_path)
            return NETWORK
        name = bundle.choice["auto"]
        log.info("model auto: %s (best on %s)", name, bundle.choice["scored_on"])
    if name != NETWORK and name not in bundle.profile_models:
        kinds = ", ".join(bundle.profile_models) or "none"
        raise InputError(f"{bundle_path} has no {name} profile model (it has: {kinds}); use --model network")
    return name


def chosen_references(bundle: Bundle, kind: str) -> References | None:
    """The bundle's references of ``kind`` (references.kind; ``auto`` the kind train chose), with a line saying
    what another kind than the chosen one costs in leave-one-compound-out accuracy."""
    references = bundle.references_of(kind)
    if references is not bundle.references:

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
    (:func:`profile_blocks`; no crops)."""
    model = bundle.profile_models[kind]
    measured = blocks.get("measured")
    features = image_profiles(kind, measured_of(measured, model_cell_columns(model)), blocks.get("deep"))
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


def measured_of(table: pd.DataFrame | None, cell_columns: list[str]) -> pd.DataFrame | None:
    """The per-image statistics of ``cell_columns`` (and the cell count) out of a table made of more cell columns:
    the same table :func:`plate_by_plate_feature_table` gives for them alone (its missing values are filled column
    by column)."""
    if table is None:
        return None
    keep = set(cell_columns)
    return table[[c for c in table.columns if "__" not in c or c.rsplit("__", 1)[0] in keep]]


def profile_blocks(
    bundle: Bundle, image_ids: pd.Index, needs: tuple[list[str], bool], out: RunFolder, config: Config, progress: bool
) -> dict[str, pd.DataFrame]:
    """The new images' per-image profile blocks, made once for the profile model and the references: the measured
    statistics of the cell features in ``needs[0]`` and, where ``needs[1]``, the mean embeddings (the cells
    embedded as the bundle's profiles were)."""
    cell_columns, deep = needs
    blocks = {}
    if cell_columns:
        parts = out.cell_parts(image_ids, ["image_id", *cell_columns])
        blocks["measured"] = plate_by_plate_feature_table(parts, cell_columns, in_image_order=True)
    if deep:
        stage_module("embed").run(out, embedding_config(config, bundle), progress=progress)
        blocks["deep"] = mean_embeddings(out, out.images_with_cells(image_ids))
    return blocks


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
    return cell_columns, any(c.startswith(DEEP_PREFIX) for c in references.features)


def query_columns(table: pd.DataFrame, config: Config, moa: str | None) -> tuple[list[str], str | None, str | None]:
    """The new images' treatment columns (a missing one said in one line: each well is then its own treatment),
    compound column and mechanism column (the references', where the new images carry it)."""
    columns = [*table.columns, *WELL_TREATMENT]
    treatment = config.treatment_columns(columns)
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


def answer_open_world(
    plan: PredictionPlan, out: RunFolder, blocks: dict[str, pd.DataFrame], needs: tuple[list[str], bool]
) -> list[Path]:
    """Each treatment's, well's and field's open-world answer (calls.py) from the bundle's references and the new
    images' profile ``blocks`` (:func:`profile_blocks`, made for ``needs``, :func:`reference_needs`):
    ``treatment_calls.parquet`` and the answer columns added to the well and image predictions."""
    bundle, config, table = plan.bundle, plan.config, plan.images
    references = in_moa_space(bundle.references, config.references.moa_space, config.references.novelty_quantile)
    cell_columns, deep = needs
    blocks = {
        **({"measured": measured_of(blocks["measured"], cell_columns)} if cell_columns else {}),
        **({"deep": blocks["deep"]} if deep else {}),
    }
    treatment, compound, moa = query_columns(table, config, references.columns.get("moa"))
    batch = batch_column(table.columns, config.profiles.batch, "plate")
    if references.batch_correction.get("method", "none") != "none" and batch not in table.columns:
        log.warning("the new images have no %s column (the references' batches): each plate is taken as a batch", batch)
    meta = image_meta(table, treatment, compound, moa, batch)
    controls = negative_controls(table, [config.input.label, compound], config.input.control_label)
    r = config.references
    mode, why = query_normalization(references, controls is not None, r.query_normalization)
    log.info(why)
    positives = pd.Index([])
    if config.input.positive_controls == "exclude":
        positives = positive_controls(table, [config.input.label, compound], config.input.control_label)
        if len(positives):
            log.info("%d positive-control fields are not queries (input.positive_controls: include)", len(positives))
    profile_columns = references.normalization  # the activity test's, whatever batch correction does below
    references, raw, fields = query_fields(
        blocks, meta, controls, positives, references, mode, r.novelty_quantile, config.seed
    )
    answers = answer(fields, raw, references, controls, r.neighbours, r.activity_fdr, config.seed, profile_columns)
    if answers.activity_note:
        named = " or ".join(dict.fromkeys(c for c in (config.input.label, compound) if c))
        log.warning(
            "%s (negative controls: %s = %s, input.control_label)",
            answers.activity_note,
            named,
            config.input.control_label,
        )
    write_parquet(out.treatment_calls, answers.treatments)
    report = open_world_report(plan, out, answers, fields, meta, references)
    add_columns(out.well_predictions, answers.wells, ["plate", "well"], WELL_COLUMNS)
    add_columns(out.image_predictions, answers.fields, ["image_id"], FIELD_COLUMNS)
    log.info(summary(answers, references.calibration, references.columns.get("moa")))
    log.info("report: %s", report)
    return [out.treatment_calls, report]


def reference_cells(plan: PredictionPlan, columns: list[str]) -> CellSource | None:
    """The training run's images and its reference fields' cells (``columns`` of them, read when a strip needs
    them), where the run folder is still around the bundle (crops of the references' cells for the report); None
    otherwise."""
    references = plan.bundle.references
    root = find_bundle(plan.bundle_path).parent.parent
    run = RunFolder(root)
    if not (run.images.is_file() and run.cells.exists()):
        return None
    images = run.read_images()
    named = references.columns
    try:
        meta = image_meta(images, named["treatment"], named.get("compound"), named.get("moa"))
    except KeyError:
        return None
    fields = set(references.fields["image_id"].astype(str))

    def cells_of(image_ids: set[str]) -> pd.DataFrame:
        return run.read_cells(columns, image_ids=image_ids & fields)

    return CellSource(images, cells_of, meta["treatment"], channel_names(images))


def open_world_report(
    plan: PredictionPlan,
    out: RunFolder,
    answers: Answers,
    fields: pd.DataFrame,
    meta: pd.DataFrame,
    references: References,
) -> Path:
    """``DIR/report/index.html``: the treatment calls in pictures (treatment_report.py) — ``references`` and the
    new ``fields`` as they were compared (batch-corrected together, where the bundle's were); the cells of its
    strips read a treatment at a time."""
    features = feature_columns(out.cell_columns())
    columns = ["image_id", "centroid_x", "centroid_y", *features]

    def cells_of(image_ids: set[str]) -> pd.DataFrame:
        return out.read_cells(columns, image_ids=image_ids)

    query = CellSource(plan.images, cells_of, meta["treatment"], channel_names(plan.images))
    side = int((plan.bundle.meta.get("embedding") or {}).get("window") or 48)
    strips = (query, reference_cells(plan, columns), features, side)
    treatments = level_table(fields, references.features, "treatment")
    return build_treatment_report(
        out.report, answers.treatments, references, treatments, strips, plan.config.input.pixel_size_um
    )


@dataclass(frozen=True)
class PredictionPlan:
    """What ``prepare`` checked before any image work: the bundle, its settings, the model and the device."""

    bundle: Bundle
    config: Config
    model: str
    device: torch.device
    images: pd.DataFrame  # the image table prepare wrote and checked
    bundle_path: Path  # where the bundle was given (its training run's folder may be around it)


def prepare(
    bundle_path: str | Path,
    out: RunFolder,
    source: ImageSource,
    *,
    overrides: list[str] | None = None,
    model: str = "auto",
) -> PredictionPlan:
    """Load the bundle, resolve the model and device, write the image table and check its channels and crop
    settings against the bundle's — every refusal comes here, before segmentation."""
    bundle = load_bundle(bundle_path)
    config = prediction_config(bundle.config, overrides or [])
    bundle = replace(bundle, references=chosen_references(bundle, config.references.kind))
    device = inference_device(config.training.accelerator)
    model = resolve_model(model, bundle, bundle_path)
    stage_module("images").run(out, config, source=source)
    table = out.read_images()
    names = channel_names(table)
    check_compatible(bundle.channels, names, bundle.crop_settings, crop_settings_of(config, names))
    return PredictionPlan(bundle, config, model, device, table, Path(bundle_path))


def predict_with_network(plan: PredictionPlan, out: RunFolder, *, overwrite: bool, progress: bool) -> list[Path]:
    """The bundle's network on the new cells, a plate at a time: each plate's cell predictions written as a row
    group of ``cell_predictions.parquet`` and voted into its images and wells before the next plate is read."""
    bundle, config, device = plan.bundle, plan.config, plan.device
    require_cell_features(out.cell_columns(), bundle.scaler.columns, "the bundle's network (its tabular branch)")
    stage_module("crops").run(out, config, overwrite=overwrite, progress=progress)
    meta = plan.images.set_index("image_id")
    e, classes, grouping = config.evaluation, bundle.encoder.classes, bundle.label_grouping
    log.info("the network predicts %d cells on %s", out.count_cells(), device_name(device))

    def with_wells(cells: pd.DataFrame) -> pd.DataFrame:
        return cells.assign(plate=cells["image_id"].map(meta["plate"]), well=cells["image_id"].map(meta["well"]))

    plates = map(with_wells, out.cell_parts(meta.index, ["cell_id", "image_id", "label", *bundle.scaler.columns]))
    called = predict_plates(bundle, CropStore(out.crops), plates, out.cell_predictions, e, progress, device)
    n_cells, (groups, scores), well_calls = called
    image_table = meta.loc[groups].reset_index()
    write_image_predictions(
        out.image_predictions, image_table, scores, classes, e, config.input.label, NETWORK, grouping
    )
    validation = (bundle.choice or {}).get("scores", {}).get(NETWORK)
    write_well_predictions(
        out.well_predictions, well_calls, meta.reset_index(), classes, e, NETWORK, validation, grouping
    )
    log.info("predicted %d cells in %d images", n_cells, len(groups))
    return [out.cell_predictions, out.image_predictions, out.well_predictions]


def predict_images(
    plan: PredictionPlan, out: RunFolder, *, overwrite: bool = False, progress: bool = True
) -> list[Path]:
    """Segment, measure (and embed or crop) the prepared images and predict them; returns the files written. The
    cells are read a plate at a time, so a screen of new plates holds one plate's cells at once."""
    stage_module("segment").run(out, plan.config, overwrite=overwrite, progress=progress)
    stage_module("measure").run(out, plan.config, overwrite=overwrite, progress=progress)
    if not out.count_cells():
        raise InputError("no cells were found in these images — nothing to predict")
    if stale := out.clear_predictions():
        log.info(
            "removed an earlier prediction's calls from %s (%s)", out.predictions, ", ".join(p.name for p in stale)
        )
    needs = reference_needs(plan.bundle, out)
    if plan.model == NETWORK:
        written = predict_with_network(plan, out, overwrite=overwrite, progress=progress)
        blocks = profile_blocks(plan.bundle, image_ids(plan), needs, out, plan.config, progress) if needs else {}
    else:
        blocks = model_and_reference_blocks(plan, out, needs, progress)
        meta = plan.images.set_index("image_id")
        written = predict_with_profiles(plan.model, plan.bundle, meta, blocks, out, plan.config)
    return written + (answer_open_world(plan, out, blocks, needs) if needs else [])


def image_ids(plan: PredictionPlan) -> pd.Index:
    """The new images' ids, in the image table's order."""
    return pd.Index(plan.images["image_id"])


def model_and_reference_blocks(
    plan: PredictionPlan, out: RunFolder, needs: tuple[list[str], bool] | None, progress: bool
) -> dict[str, pd.DataFrame]:
    """The per-image profile blocks of the new images that the profile model and the references need, made once
    (the cells read and the statistics computed a single time, the cells embedded at most once)."""
    model = plan.bundle.profile_models[plan.model]
    columns = model_cell_columns(model)
    require_cell_features(out.cell_columns(), columns, f"the bundle's {plan.model} profile model")
    reference_columns, reference_deep = needs or ([], False)
    union = list(dict.fromkeys([*columns, *reference_columns]))
    deep = plan.model != "measured" or reference_deep
    return profile_blocks(plan.bundle, image_ids(plan), (union, deep), out, plan.config, progress)


def run(
    bundle_path: str | Path,
    out: RunFolder,
    source: ImageSource,
    *,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model: str = "auto",
) -> list[Path]:
    """Predict the images of ``source`` with a bundle into ``out``; returns the files written."""
    plan = prepare(bundle_path, out, source, overrides=overrides, model=model)
    return predict_images(plan, out, overwrite=overwrite, progress=progress)

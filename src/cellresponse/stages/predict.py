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
                               and the open-world answer of its treatment and profile (treatment_calls.WELL_COLUMNS)
``treatment_calls.parquet``    one row per treatment of the new images (profiling/treatment_calls.py): activity
                               against the plate's negative controls (activity_map, activity_p, activity_q,
                               active), the nearest reference treatments (nearest_1 … nearest_k with _moa and
                               _similarity), moa_call, moa_probability and novel — from the bundle's reference
                               profiles

``--model auto`` (the default) uses the model the bundle recorded as best on the validation side
(``bundle/choice.json``); ``measured``, ``deep`` and ``both`` the profile models (no crops; ``deep`` and ``both``
embed the cells with the bundle's embedding settings), ``network`` the trained network.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.evaluation.prediction_tables import add_columns
from cellresponse.features.crops import crop_settings as crop_settings_of
from cellresponse.features.embedding_tables import mean_embeddings
from cellresponse.input.io import write_parquet
from cellresponse.input.plate import ImageSource, channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.bundle import NETWORK, Bundle, find_bundle, load_bundle, load_network
from cellresponse.learning.prediction import (
    check_compatible,
    chosen_references,
    embedding_config,
    embeds_cells,
    fix_intensity_scales,
    measured_of,
    model_cell_columns,
    own_scale_note,
    predict_with_profiles,
    prediction_config,
    reference_needs,
    resolve_model,
    scale_note,
)
from cellresponse.profiling.profile_models import plate_by_plate_feature_table, require_cell_features
from cellresponse.profiling.treatment_calls import FIELD_COLUMNS, WELL_COLUMNS, answer_plate, summary
from cellresponse.reporting.treatment_report import prediction_report
from cellresponse.stages import stage_module

# torch (and MONAI) are imported where the network or the embedder runs, never for a prediction by the measured
# profile model with measured references: on the walk-through's new plate, already segmented, that prediction took
# 12.7-12.9 s with them loaded (2026-12-07), most of it importing torch and MONAI and building the network.
if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


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


def answer_open_world(
    plan: PredictionPlan,
    out: RunFolder,
    blocks: dict[str, pd.DataFrame],
    needs: tuple[list[str], bool],
    warnings: list[str],
) -> list[Path]:
    """Each treatment's, well's and field's open-world answer (treatment_calls.answer_plate) from the bundle's
    references and the new images' profile ``blocks`` (:func:`profile_blocks`, made for ``needs``,
    prediction.reference_needs): ``treatment_calls.parquet``, the answer columns added to the well and image
    predictions, and the report (``warnings`` at its top)."""
    cell_columns, deep = needs
    blocks = {
        **({"measured": measured_of(blocks["measured"], cell_columns)} if cell_columns else {}),
        **({"deep": blocks["deep"]} if deep else {}),
    }
    assert plan.bundle.references is not None, "needs (prediction.reference_needs) come from the references"
    plate = answer_plate(blocks, plan.images, plan.bundle.references, plan.config)
    answers, references = plate.answers, plate.references
    write_parquet(out.treatment_calls, answers.treatments)
    window = int((plan.bundle.meta.get("embedding") or {}).get("window") or 48)
    training_run = RunFolder(find_bundle(plan.bundle_path).parent.parent)  # the run the bundle was trained in
    pixel_size = plan.config.input.pixel_size_um
    report = prediction_report(out, plan.images, plate, training_run, window, pixel_size, warnings)
    add_columns(out.well_predictions, answers.wells, ["plate", "well"], WELL_COLUMNS)
    add_columns(out.image_predictions, answers.fields, ["image_id"], FIELD_COLUMNS)
    log.info(summary(answers, references))
    log.info("report: %s", report)
    return [out.treatment_calls, report]


@dataclass(frozen=True)
class PredictionPlan:
    """What ``prepare`` checked before any image work: the bundle, its settings, the model and the device."""

    bundle: Bundle
    config: Config
    model: str
    device: torch.device | None  # where the network and the embedder run; None when neither does
    images: pd.DataFrame  # the image table prepare wrote and checked
    bundle_path: Path  # where the bundle was given (its training run's folder may be around it)


def prepare(
    bundle_path: str | Path,
    out: RunFolder,
    source: ImageSource,
    *,
    overrides: list[str] | None = None,
    model: str = "auto",
    overwrite: bool = False,
) -> PredictionPlan:
    """Load the bundle, resolve the model and device, write the image table and check its channels and crop
    settings against the bundle's — every refusal comes here, before segmentation. The network is loaded only when
    it predicts, and the device resolved only when the network or the embedder will run."""
    bundle = load_bundle(bundle_path, network=False)
    config = prediction_config(bundle.config, overrides or [])
    bundle = replace(bundle, references=chosen_references(bundle, config.references.kind))
    model = resolve_model(model, bundle, bundle_path)
    device = None
    if model != "measured" or embeds_cells(bundle.references):
        from cellresponse.devices import inference_device

        device = inference_device(config.training.accelerator)  # a GPU asked for and absent: refused here
    elif config.training.accelerator != "auto":
        log.info(
            "training.accelerator=%s: nothing in this prediction runs on it (the measured profile model and "
            "measured references need neither the network nor the embedder)",
            config.training.accelerator,
        )
    if model == NETWORK:
        bundle = replace(bundle, model=load_network(bundle_path, bundle.meta, bundle.config))
    if out.images.exists() and not out.holds_a_prediction:
        raise InputError(
            f"{out.root} holds a run, not a prediction: predict would replace its image table, masks, cells and "
            "report — give --out a new folder (or an earlier prediction's, to predict there again)"
        )
    # the folder's record first: an interrupted prediction is resumed into it, and other verbs know it for one
    out.record_stage("predict", {"bundle": str(find_bundle(bundle_path).resolve()), "model": model})
    stage_module("images").run(out, config, source=source, overwrite=overwrite)
    fix_intensity_scales(out, bundle)
    table = out.read_images()
    names = channel_names(table)
    check_compatible(bundle.channels, names, bundle.crop_settings, crop_settings_of(config, names))
    return PredictionPlan(bundle, config, model, device, table, Path(bundle_path))


def predict_with_network(plan: PredictionPlan, out: RunFolder, *, overwrite: bool, progress: bool) -> list[Path]:
    """The bundle's network on the new cells (inference.network_predictions), after their crops are cut."""
    from cellresponse.devices import device_name
    from cellresponse.learning.inference import network_predictions

    require_cell_features(out.cell_columns(), plan.bundle.scaler.columns, "the bundle's network (its tabular branch)")
    stage_module("crops").run(out, plan.config, overwrite=overwrite, progress=progress)
    assert plan.device is not None, "prepare resolves the device wherever the network predicts"
    log.info("the network predicts %d cells on %s", out.count_cells(), device_name(plan.device))
    meta = plan.images.set_index("image_id")
    return network_predictions(plan.bundle, meta, out, plan.config, progress, plan.device)


def predict_images(
    plan: PredictionPlan, out: RunFolder, *, overwrite: bool = False, progress: bool = True
) -> list[Path]:
    """Segment, measure (and embed or crop) the prepared images and predict them; returns the files written. The
    cells are read a plate at a time, so a screen of new plates holds one plate's cells at once. ``logs/predict.json``
    records which bundle and model made the calls."""
    started = time.perf_counter()
    stage_module("segment").run(out, plan.config, overwrite=overwrite, progress=progress)
    stage_module("measure").run(out, plan.config, overwrite=overwrite, progress=progress)
    if not out.count_cells():
        raise InputError("no cells were found in these images — nothing to predict")
    scaled = plan.model != "measured" or embeds_cells(plan.bundle.references)
    notes = [
        scale_note(plan.bundle, out, image_ids(plan)),
        own_scale_note(plan.bundle, plan.images, plan.config, scaled),
    ]
    warnings = [note for note in notes if note]
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
    written += answer_open_world(plan, out, blocks, needs, warnings) if needs else []
    for warning in warnings:  # last, beside the summary of the calls it qualifies
        log.warning(warning)
    record = {"bundle": str(find_bundle(plan.bundle_path).resolve()), "model": plan.model, "images": len(plan.images)}
    out.record_stage("predict", {**record, "seconds": round(time.perf_counter() - started, 2)})
    return written


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
    plan = prepare(bundle_path, out, source, overrides=overrides, model=model, overwrite=overwrite)
    return predict_images(plan, out, overwrite=overwrite, progress=progress)

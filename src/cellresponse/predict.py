"""Predict new images or plates with a model bundle: segment, measure and crop them with the bundle's
settings, then write cell and image predictions (no labels needed).

Outputs in ``DIR/predictions/``:

``cell_predictions.parquet``   cell_id, image_id, plate, well, predicted_label, probability,
                               top5_labels, top5_probabilities
``image_predictions.parquet``  (also with ``--model features``: the bundle's features-only model, no crops)
                               the image's columns (image_id, plate, well, site, Metadata_*),
                               predicted_label, probability, top5_labels, top5_probabilities
                               (soft or majority vote as in the bundle's ``evaluation.vote``)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cellresponse.config import Config, apply_overrides
from cellresponse.errors import InputError
from cellresponse.io import RunFolder, read_parquet

log = logging.getLogger(__name__)

# Settings a user may change for prediction: how it runs, not what the model sees.
RUNTIME_KEYS = ("runtime.", "input.join", "input.label")


def check_compatible(bundle_channels: list[str], names: list[str], bundle_crops: dict, crops: dict) -> None:
    """The images must have the bundle's channels (same names, same order) and the same crop settings."""
    if list(bundle_channels) != list(names):
        raise InputError(
            f"the model was trained on channels {list(bundle_channels)}, these images have {list(names)} — "
            "predict needs the same channels in the same order (rename the load_data columns to match)"
        )
    if bundle_crops != crops:
        changed = sorted(k for k in set(bundle_crops) | set(crops) if bundle_crops.get(k) != crops.get(k))
        raise InputError(f"crop settings differ from the model bundle's in {changed}; use the bundle's settings")


def prediction_config(bundle_config: Config, overrides: list[str]) -> Config:
    for text in overrides:
        if not text.startswith(RUNTIME_KEYS):
            raise InputError(f"--set {text}: predict takes the bundle's settings; only runtime.* may change")
    return apply_overrides(bundle_config, overrides, "model bundle")


def predict_plates(
    bundle_path: str | Path,
    out: RunFolder,
    images_dir: str | Path | None = None,
    load_data: str | Path | None = None,
    metadata: list[str | Path] | None = None,
    plate: str | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model: str = "cnn",
) -> list[Path]:
    from cellresponse import pipeline
    from cellresponse.bundle import load_bundle, predict_probabilities
    from cellresponse.evaluation import vote, write_predictions
    from cellresponse.plate import channel_names
    from cellresponse.store import CropStore

    bundle = load_bundle(bundle_path)
    config = prediction_config(bundle.config, overrides or [])
    table = pipeline.stage_images(out, config, images_dir, load_data, metadata, plate)
    names = channel_names(table)
    check_compatible(bundle.channels, names, bundle.crop_settings, pipeline.crop_settings(config, names))
    if model == "features" and bundle.features_model is None:
        raise InputError(f"{bundle_path} has no features-only model (features_model.json); use --model cnn")
    pipeline.stage_segment(out, config, overwrite=overwrite, progress=progress)
    pipeline.stage_measure(out, config, overwrite=overwrite, progress=progress)
    cells = read_parquet(out.cells)
    if cells.empty:
        raise InputError("no cells were found in these images — nothing to predict")
    meta = table.set_index(table["image_id"].astype(str))
    if model == "features":
        return [predict_with_features(bundle.features_model, cells, meta, out, config)]
    pipeline.stage_crops(out, config, overwrite=overwrite, progress=progress)
    cells["plate"] = cells["image_id"].astype(str).map(meta["plate"])
    cells["well"] = cells["image_id"].astype(str).map(meta["well"])
    store = CropStore(out.crops)
    probs = predict_probabilities(
        bundle.model,
        store,
        store.rows_for(cells["cell_id"].astype(str)),
        bundle.scaler.transform(cells),
        config,
        progress=progress,
    )
    classes = bundle.encoder.classes
    top_k = config.evaluation.top_k
    out.predictions.mkdir(parents=True, exist_ok=True)
    cell_path = out.predictions / "cell_predictions.parquet"
    image_path = out.predictions / "image_predictions.parquet"
    write_predictions(cell_path, cells[["cell_id", "image_id", "plate", "well"]], probs, classes, top_k)
    groups, scores = vote(cells["image_id"].astype(str).to_numpy(), probs, config.evaluation.vote)
    write_image_predictions(image_path, meta.loc[groups].reset_index(drop=True), scores, classes, config)
    log.info("predicted %d cells in %d images", len(cells), len(groups))
    return [cell_path, image_path]


def write_image_predictions(path: Path, images, scores: np.ndarray, classes: list[str], config: Config) -> None:
    from cellresponse.evaluation import write_predictions

    keep = [c for c in images.columns if not c.startswith(("FileName_", "PathName_"))]
    write_predictions(path, images[keep], scores, classes, config.evaluation.top_k)
    label = config.input.label
    if label in images.columns:  # labelled images (e.g. a held-out plate): say how it went
        predicted = np.asarray(classes, dtype=object)[scores.argmax(1)]
        accuracy = float(np.mean(images[label].astype(str).to_numpy() == predicted))
        log.info("these images carry %s: image accuracy %.3f (%d images)", label, accuracy, len(images))


def predict_with_features(model: dict, cells, meta, out: RunFolder, config: Config) -> Path:
    """Image predictions of the bundle's features-only model (no crops, no network)."""
    from cellresponse.evaluation import features_model_probabilities, image_feature_table, profile_cell_columns

    features = image_feature_table(cells, model.get("cell_columns") or profile_cell_columns(model["columns"]))
    probs = features_model_probabilities(model, features)
    path = out.predictions / "image_predictions.parquet"
    out.predictions.mkdir(parents=True, exist_ok=True)
    write_image_predictions(path, meta.loc[features.index].reset_index(drop=True), probs, model["classes"], config)
    log.info("predicted %d images with the features-only model", len(features))
    return path

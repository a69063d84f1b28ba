"""``cellresponse predict``: new images or plates through a model bundle — segmented, measured and cropped with the
bundle's settings — into cell and image predictions (no labels needed).

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
import pandas as pd

from cellresponse.bundle import load_bundle, predict_cells
from cellresponse.config import Config, apply_overrides
from cellresponse.errors import InputError
from cellresponse.io import write_parquet
from cellresponse.metrics import prediction_table, vote
from cellresponse.plate import ImageSource, channel_names
from cellresponse.profiles import features_model_probabilities, image_feature_table, profile_cell_columns
from cellresponse.runfolder import RunFolder
from cellresponse.stages import crops, images, measure, segment
from cellresponse.store import CropStore

log = logging.getLogger(__name__)

# Settings a user may change for prediction: how it runs, not what the model sees.
RUNTIME_KEYS = ("runtime.", "input.join", "input.label")
MODELS = ("cnn", "features")


def check_compatible(bundle_channels: list[str], names: list[str], bundle_crops: dict, crop_settings: dict) -> None:
    """The images must have the bundle's channels (same names, same order) and the same crop settings."""
    if list(bundle_channels) != list(names):
        raise InputError(
            f"the model was trained on channels {list(bundle_channels)}, these images have {list(names)} — "
            "predict needs the same channels in the same order (rename the load_data columns to match)"
        )
    if bundle_crops != crop_settings:
        changed = sorted(
            k for k in set(bundle_crops) | set(crop_settings) if bundle_crops.get(k) != crop_settings.get(k)
        )
        raise InputError(f"crop settings differ from the model bundle's in {changed}; use the bundle's settings")


def prediction_config(bundle_config: Config, overrides: list[str]) -> Config:
    for text in overrides:
        if not text.startswith(RUNTIME_KEYS):
            raise InputError(f"--set {text}: predict takes the bundle's settings; only runtime.* may change")
    return apply_overrides(bundle_config, overrides, "model bundle")


def write_image_predictions(
    path: Path, table: pd.DataFrame, scores: np.ndarray, classes: list[str], config: Config
) -> None:
    """Image predictions with the image table's columns (file paths left out); logs the accuracy when the
    images carry the label (e.g. a held-out plate)."""
    keep = [c for c in table.columns if not c.startswith(("FileName_", "PathName_"))]
    write_parquet(path, prediction_table(table[keep], scores, classes, config.evaluation.top_k))
    label = config.input.label
    if label in table.columns:
        predicted = np.asarray(classes, dtype=object)[scores.argmax(1)]
        accuracy = float(np.mean(table[label].astype(str).to_numpy() == predicted))
        log.info("these images carry %s: image accuracy %.3f (%d images)", label, accuracy, len(table))


def predict_with_features(model: dict, cells: pd.DataFrame, meta: pd.DataFrame, out: RunFolder, config: Config) -> Path:
    """Image predictions of the bundle's features-only model (no crops, no network)."""
    features = image_feature_table(cells, model.get("cell_columns") or profile_cell_columns(model["columns"]))
    probs = features_model_probabilities(model, features)
    table = meta.loc[features.index].reset_index()
    write_image_predictions(out.image_predictions, table, probs, model["classes"], config)
    log.info("predicted %d images with the features-only model", len(features))
    return out.image_predictions


def run(
    bundle_path: str | Path,
    out: RunFolder,
    source: ImageSource,
    *,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model: str = "cnn",
) -> list[Path]:
    """Predict the images of ``source`` with a bundle into ``out``; returns the files written."""
    bundle = load_bundle(bundle_path)
    config = prediction_config(bundle.config, overrides or [])
    images.run(out, config, source=source)
    table = out.read_images()
    names = channel_names(table)
    check_compatible(bundle.channels, names, bundle.crop_settings, crops.crop_settings(config, names))
    if model == "features" and bundle.features_model is None:
        raise InputError(f"{bundle_path} has no features-only model (features_model.json); use --model cnn")
    segment.run(out, config, overwrite=overwrite, progress=progress)
    measure.run(out, config, overwrite=overwrite, progress=progress)
    cells = out.read_cells()
    if cells.empty:
        raise InputError("no cells were found in these images — nothing to predict")
    meta = table.set_index("image_id")
    if model == "features":
        return [predict_with_features(bundle.features_model, cells, meta, out, config)]
    crops.run(out, config, overwrite=overwrite, progress=progress)
    cells["plate"] = cells["image_id"].map(meta["plate"])
    cells["well"] = cells["image_id"].map(meta["well"])
    e = config.evaluation
    probs = predict_cells(bundle, CropStore(out.crops), cells, batch_size=e.batch_size, progress=progress)
    classes = bundle.encoder.classes
    write_parquet(
        out.cell_predictions, prediction_table(cells[["cell_id", "image_id", "plate", "well"]], probs, classes, e.top_k)
    )
    groups, scores = vote(cells["image_id"].to_numpy(), probs, e.vote)
    write_image_predictions(out.image_predictions, meta.loc[groups].reset_index(), scores, classes, config)
    log.info("predicted %d cells in %d images", len(cells), len(groups))
    return [out.cell_predictions, out.image_predictions]

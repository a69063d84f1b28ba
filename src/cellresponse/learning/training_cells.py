"""The cells the network trains and validates on: each labelled cell's side of the split, its class code, its
standardised feature row and its row in the crop store, with the training caps applied."""

from __future__ import annotations

import logging

import pandas as pd

from cellresponse.config import TrainingConfig
from cellresponse.errors import InputError
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.crop_store import CropStore
from cellresponse.learning.encoders import LabelEncoder, Scaler, count_nonfinite
from cellresponse.learning.splits import TEST, TRAIN, VALIDATION, cap_cells
from cellresponse.learning.training import CellSet

log = logging.getLogger(__name__)


def sided_cells(cells: pd.DataFrame, sides: pd.DataFrame, images: pd.DataFrame, label: str) -> pd.DataFrame:
    """The cells of the split's images with their ``side`` and ``true_label``."""
    side_of = dict(zip(sides["image_id"], sides["side"], strict=True))
    label_of = dict(zip(images["image_id"], images[label], strict=True))
    cells = cells[cells["image_id"].isin(side_of)].copy()
    cells["side"] = cells["image_id"].map(side_of)
    cells["true_label"] = cells["image_id"].map(label_of)
    return cells


def cell_sets(
    cells: pd.DataFrame,
    sides: pd.DataFrame,
    images: pd.DataFrame,
    label: str,
    training: TrainingConfig,
    seed: int,
    store: CropStore,
) -> tuple[LabelEncoder, Scaler, CellSet, CellSet, str]:
    """Encoder and scaler fitted on the training side, and the training and validation cell sets (validation = the
    test side when the split kept none; its classes never trained on left out, as they cannot be scored); the
    caps of ``training.max_cells_per_image`` / ``max_cells_per_class`` applied."""
    cells = sided_cells(cells, sides, images, label)
    train = cells[cells["side"] == TRAIN]
    if train.empty:
        raise InputError("the training side has no cells — check the split settings and the segmentation")
    encoder = LabelEncoder.fit(train["true_label"])
    columns = feature_columns(cells.columns)
    bad = count_nonfinite(cells, columns)
    if bad:
        log.warning("%d NaN/infinite feature values replaced by the training mean", bad)
    scaler = Scaler.fit(train, columns)
    val_side = VALIDATION if (cells["side"] == VALIDATION).any() else TEST
    val = cells[cells["side"] == val_side]
    if val.empty:
        raise InputError("no validation cells: the split left no validation or test images")
    val = val[encoder.transform(val["true_label"]) >= 0]
    if training.max_cells_per_image is not None or training.max_cells_per_class is not None:
        before = len(train)
        train = cap_cells(train, "true_label", training.max_cells_per_image, training.max_cells_per_class, seed)
        val = cap_cells(val, "true_label", training.max_cells_per_image, None, seed)
        log.info(
            "cell cap (training.max_cells_per_image %s, max_cells_per_class %s): training on %d of %d cells",
            training.max_cells_per_image,
            training.max_cells_per_class,
            len(train),
            before,
        )

    def to_set(part: pd.DataFrame) -> CellSet:
        return CellSet(
            rows=store.rows_for(part["cell_id"]),
            features=scaler.transform(part),
            targets=encoder.transform(part["true_label"]),
        )

    return encoder, scaler, to_set(train), to_set(val), val_side

"""A per-image features table a user already has — CellProfiler's ``Image.csv`` joined to its metadata, say — read
as cellresponse's own image table beside a matrix of numeric features, for ``cellresponse evaluate --features``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cellresponse.errors import InputError
from cellresponse.input.plate import read_table

log = logging.getLogger(__name__)

PLATE_COLUMNS = ("plate", "Metadata_Plate")
WELL_COLUMNS = ("well", "Metadata_Well")
# Identifiers and metadata, not measurements; CellProfiler's cell count stays a feature.
NOT_FEATURES = ("Metadata_", "ImageNumber", "Image_Count")
KEPT_COUNT = "Image_Count_Cells"


def read_feature_table(path: str | Path, label: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(images, features)`` of the table at ``path``: one image per labelled row, ids ``img0``, ``img1``, …,
    with its plate, well, ``Metadata_*`` columns and ``label``; its numeric feature columns indexed by those ids,
    NaN and infinite values replaced by the column's mean (said in one line). Plate and well columns are required,
    for the grouped splits."""
    table = read_table(Path(path))
    if label not in table.columns:
        raise InputError(f"{path}: label column {label!r} not found; columns: {list(table.columns)[:20]}")
    table = table[table[label].notna()].reset_index(drop=True)
    plate_column = next((c for c in PLATE_COLUMNS if c in table.columns), None)
    well_column = next((c for c in WELL_COLUMNS if c in table.columns), None)
    if plate_column is None or well_column is None:
        raise InputError(f"{path}: needs plate and well columns (Metadata_Plate, Metadata_Well) for grouped splits")
    images = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(len(table))],
            "plate": table[plate_column].astype(str),
            "well": table[well_column].astype(str),
        }
    )
    for column in table.columns:
        if column.startswith("Metadata_") and column not in images:
            images[column] = table[column].to_numpy()
    images[label] = table[label].astype(str).to_numpy()
    numeric = [c for c in table.select_dtypes("number").columns if not c.startswith(NOT_FEATURES) or c == KEPT_COUNT]
    if not numeric:
        raise InputError(f"{path}: no numeric feature columns")
    features = table[numeric].replace([np.inf, -np.inf], np.nan)
    bad = int(features.isna().to_numpy().sum())
    if bad:
        log.warning("%d NaN/infinite values in %s replaced by column means", bad, path)
    features = features.fillna(features.mean()).fillna(0.0)
    features.index = pd.Index(images["image_id"])
    return images, features

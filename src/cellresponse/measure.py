"""Single-cell measurement with scikit-image ``regionprops_table`` (the study's feature set).

Columns of ``cells.parquet`` (one row per cell):

``image_id``, ``CoreFileName``, ``label``     which image and which mask label
``area``, ``convex_area``, ``perimeter``, ``eccentricity``, ``major_axis_length``, ``minor_axis_length``,
``orientation``, ``solidity``, ``extent``      shape (px, radians)
``mean_intensity``, ``min_intensity``, ``max_intensity``  on the segmentation input (median of channels 1-3)
``centroid_y``, ``centroid_x``                 position (px; the study's centroid split in two)
``bbox_min_row``, ``bbox_min_col``, ``bbox_max_row``, ``bbox_max_col``  bounding box (max exclusive)
``Intensity_MeanIntensity_<Ch>``, ``Intensity_MinIntensity_<Ch>``, ``Intensity_MaxIntensity_<Ch>``
                                               optional, per channel in ``measurement.intensity_channels``

Cells with perimeter 0 (single pixels and one-pixel lines) are dropped, as in the study.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

PROPERTIES = (
    "label",
    "area",
    "area_convex",
    "perimeter",
    "eccentricity",
    "intensity_mean",
    "intensity_min",
    "intensity_max",
    "axis_major_length",
    "axis_minor_length",
    "orientation",
    "solidity",
    "extent",
    "centroid",
    "bbox",
)
RENAMES = {
    "area_convex": "convex_area",
    "intensity_mean": "mean_intensity",
    "intensity_min": "min_intensity",
    "intensity_max": "max_intensity",
    "axis_major_length": "major_axis_length",
    "axis_minor_length": "minor_axis_length",
    "centroid-0": "centroid_y",
    "centroid-1": "centroid_x",
    "bbox-0": "bbox_min_row",
    "bbox-1": "bbox_min_col",
    "bbox-2": "bbox_max_row",
    "bbox-3": "bbox_max_col",
}
# The per-cell features the model's table branch and the baselines use (position and ids excluded:
# where a cell sits in the field says nothing about its treatment).
FEATURES = (
    "area",
    "convex_area",
    "perimeter",
    "eccentricity",
    "mean_intensity",
    "min_intensity",
    "max_intensity",
    "major_axis_length",
    "minor_axis_length",
    "orientation",
    "solidity",
    "extent",
)
COLUMNS = (
    "image_id",
    "CoreFileName",
    *(RENAMES.get(p, p) for p in PROPERTIES if p not in ("centroid", "bbox")),
)


def empty_cells_table(extra_channels: tuple[str, ...] = ()) -> pd.DataFrame:
    columns = [
        *COLUMNS,
        "centroid_y",
        "centroid_x",
        "bbox_min_row",
        "bbox_min_col",
        "bbox_max_row",
        "bbox_max_col",
    ]
    for name in extra_channels:
        columns += [f"Intensity_{k}Intensity_{name}" for k in ("Mean", "Min", "Max")]
    table = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    table["image_id"] = table["image_id"].astype(object)
    table["CoreFileName"] = table["CoreFileName"].astype(object)
    table["label"] = table["label"].astype("int64")
    return table


def measure_cells(
    labels: np.ndarray,
    intensity: np.ndarray,
    image_id: str = "",
    core_file_name: str = "",
    channels: Mapping[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, int]:
    """Measure every labelled cell; returns the table and the number of perimeter-0 cells dropped."""
    channels = dict(channels or {})
    if labels.max() == 0:
        return empty_cells_table(tuple(channels)), 0
    props = regionprops_table(labels.astype(np.int32, copy=False), intensity_image=intensity, properties=PROPERTIES)
    table = pd.DataFrame(props).rename(columns=RENAMES)
    for name, image in channels.items():
        extra = regionprops_table(
            labels.astype(np.int32, copy=False),
            intensity_image=image,
            properties=("intensity_mean", "intensity_min", "intensity_max"),
        )
        table[f"Intensity_MeanIntensity_{name}"] = extra["intensity_mean"]
        table[f"Intensity_MinIntensity_{name}"] = extra["intensity_min"]
        table[f"Intensity_MaxIntensity_{name}"] = extra["intensity_max"]
    keep = table["perimeter"] > 0
    dropped = int((~keep).sum())
    table = table[keep].reset_index(drop=True)
    table.insert(0, "CoreFileName", core_file_name)
    table.insert(0, "image_id", image_id)
    return table, dropped

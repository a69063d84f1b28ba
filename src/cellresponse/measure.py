"""Single-cell measurement with scikit-image ``regionprops_table`` (the study's feature set).

Columns of ``cells.parquet`` (one row per cell):

``image_id``, ``CoreFileName``, ``label``     which image and which mask label
``area``, ``convex_area``, ``perimeter``, ``eccentricity``, ``major_axis_length``, ``minor_axis_length``,
``orientation``, ``solidity``, ``extent``      shape (px, radians)
``mean_intensity``, ``min_intensity``, ``max_intensity``  on the segmentation input (median of channels 1-3)
``centroid_y``, ``centroid_x``                 position (px; the study's centroid split in two)
``bbox_min_row``, ``bbox_min_col``, ``bbox_max_row``, ``bbox_max_col``  bounding box (max exclusive)
Per channel in ``measurement.intensity_channels`` (CellProfiler's names, raw image units):

``Intensity_MeanIntensity_<Ch>``, ``Intensity_MinIntensity_<Ch>``, ``Intensity_MaxIntensity_<Ch>``
``Intensity_StdIntensity_<Ch>``, ``Intensity_IntegratedIntensity_<Ch>``  spread and sum over the cell
``Intensity_MeanIntensityEdge_<Ch>``           mean on the cell's outline pixels (cortical stain, e.g. actin)
``Intensity_MeanIntensityCore_<Ch>``           mean inside the outline (the cell mean when nothing is inside)
``Texture_MeanGradient_<Ch>``                  mean Sobel gradient magnitude over the cell (fibres, speckles)

With a nuclear channel (``segmentation.nuclear_channel``) and ``measurement.compartments``, the nucleus
is taken as the cell's DNA-bright part (pixels above the cell's mean DNA intensity), which needs no
second segmentation and holds for cells of 15 px:

``AreaShape_NuclearFraction``                  nucleus area / cell area
``Intensity_MeanIntensityNucleus_<Ch>``, ``Intensity_MeanIntensityCytoplasm_<Ch>``
                                               mean in each compartment (the cell mean where one is empty)

Cells with perimeter 0 (single pixels and one-pixel lines) are dropped, as in the study.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from skimage.filters import sobel
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries

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
# Prefixes of the per-channel and compartment columns, all of them features too.
FEATURE_PREFIXES = ("Intensity_", "Texture_", "AreaShape_")
CHANNEL_MEASURES = (
    "Intensity_MeanIntensity",
    "Intensity_MinIntensity",
    "Intensity_MaxIntensity",
    "Intensity_StdIntensity",
    "Intensity_IntegratedIntensity",
    "Intensity_MeanIntensityEdge",
    "Intensity_MeanIntensityCore",
    "Texture_MeanGradient",
)
COMPARTMENT_MEASURES = ("Intensity_MeanIntensityNucleus", "Intensity_MeanIntensityCytoplasm")
COLUMNS = (
    "image_id",
    "CoreFileName",
    *(RENAMES.get(p, p) for p in PROPERTIES if p not in ("centroid", "bbox")),
)


def cell_ids(image_ids: pd.Series | str, labels: pd.Series) -> pd.Series:
    """Cell ids, ``<image_id>#<label>`` (the key of cells.parquet, the crop store and the embeddings)."""
    prefix = image_ids.astype(str) if isinstance(image_ids, pd.Series) else image_ids
    return prefix + "#" + labels.astype(int).astype(str)


def feature_columns(columns: Iterable[str]) -> list[str]:
    """The feature columns among a cell table's ``columns`` (what the network's table branch and the
    features-only model read): the study's shape/intensity features, then the per-channel and compartment
    ones in sorted order; ids, label, centroid and bbox are not features."""
    columns = list(columns)
    extra = sorted(c for c in columns if c.startswith(FEATURE_PREFIXES))
    return [c for c in FEATURES if c in columns] + extra


def channel_columns(channels: tuple[str, ...], compartments: bool = False) -> list[str]:
    """The per-channel (and compartment) column names :func:`measure_cells` writes, in order."""
    columns = ["AreaShape_NuclearFraction"] if compartments and channels else []
    measures = CHANNEL_MEASURES + (COMPARTMENT_MEASURES if compartments else ())
    for name in channels:
        columns += [f"{measure}_{name}" for measure in measures]
    return columns


def empty_cells_table(extra_channels: tuple[str, ...] = (), compartments: bool = False) -> pd.DataFrame:
    columns = [
        *COLUMNS,
        "centroid_y",
        "centroid_x",
        "bbox_min_row",
        "bbox_min_col",
        "bbox_max_row",
        "bbox_max_col",
    ]
    columns += channel_columns(tuple(extra_channels), compartments)
    table = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    table["image_id"] = table["image_id"].astype(object)
    table["CoreFileName"] = table["CoreFileName"].astype(object)
    table["label"] = table["label"].astype("int64")
    return table


@dataclass(frozen=True)
class LabelPixels:
    """The labelled pixels of a label image, found once for many per-label means: their flat positions, their
    labels and the pixel count of each label 0..n-1 (0 for the background: it is not among them). A mean then
    costs one gather and one bincount over the labelled pixels, not two bincounts over the whole field."""

    where: np.ndarray
    labels: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, n: int) -> LabelPixels:
        flat = labels.ravel()
        where = np.flatnonzero(flat)
        values = flat[where].astype(np.intp)
        return cls(where, values, np.bincount(values, minlength=n)[:n])

    def gather(self, image: np.ndarray) -> np.ndarray:
        return image.ravel()[self.where].astype(np.float64, copy=False)

    def means_of(self, gathered: np.ndarray) -> np.ndarray:
        """Per-label mean of values already gathered at the labelled pixels (0 where a label has none)."""
        n = len(self.counts)
        return np.bincount(self.labels, weights=gathered, minlength=n)[:n] / np.maximum(self.counts, 1)

    def means(self, image: np.ndarray) -> np.ndarray:
        return self.means_of(self.gather(image))

    def extremes_of(self, gathered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-label minimum and maximum of gathered values (+inf / -inf where a label has no pixels)."""
        n = len(self.counts)
        low, high = np.full(n, np.inf), np.full(n, -np.inf)
        np.minimum.at(low, self.labels, gathered)
        np.maximum.at(high, self.labels, gathered)
        return low, high


def cell_regions(labels: np.ndarray, cell: LabelPixels, nucleus: np.ndarray | None = None) -> dict[str, LabelPixels]:
    """Each cell's pixels and its parts, computed once per image and shared by all its channels: ``cell`` (given:
    :meth:`LabelPixels.of` ``labels``), ``edge`` (outline pixels), ``core`` (the rest) and, given ``nucleus``,
    ``nucleus`` and ``cytoplasm``."""
    n = len(cell.counts)
    edge_pixels = find_boundaries(labels, mode="inner")
    regions = {
        "cell": cell,
        "edge": LabelPixels.of(np.where(edge_pixels, labels, 0), n),
        "core": LabelPixels.of(np.where(edge_pixels, 0, labels), n),
    }
    if nucleus is not None:
        regions["nucleus"] = LabelPixels.of(np.where(nucleus, labels, 0), n)
        regions["cytoplasm"] = LabelPixels.of(np.where(nucleus, 0, labels), n)
    return regions


def channel_measures(image: np.ndarray, regions: dict[str, LabelPixels]) -> dict[str, np.ndarray]:
    """Mean/min/max, spread, outline/inside, texture and (with nucleus/cytoplasm ``regions``) compartment means of
    one channel for labels 1..max (index ``i`` is label ``i + 1``); ``regions`` from :func:`cell_regions`."""
    cell = regions["cell"]
    values = cell.gather(image)
    mean, area = cell.means_of(values), cell.counts
    low, high = cell.extremes_of(values)
    mean_sq = cell.means_of(values * values)
    edge = regions["edge"].means(image)
    core, core_area = regions["core"].means(image), regions["core"].counts
    out = {
        "Intensity_MeanIntensity": mean,
        "Intensity_MinIntensity": low,
        "Intensity_MaxIntensity": high,
        "Intensity_StdIntensity": np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)),
        "Intensity_IntegratedIntensity": mean * area,
        "Intensity_MeanIntensityEdge": edge,
        "Intensity_MeanIntensityCore": np.where(core_area > 0, core, mean),
        "Texture_MeanGradient": cell.means(sobel(image.astype(np.float64, copy=False))),
    }
    if "nucleus" in regions:
        inside, outside = regions["nucleus"], regions["cytoplasm"]
        out["Intensity_MeanIntensityNucleus"] = np.where(inside.counts > 0, inside.means(image), mean)
        out["Intensity_MeanIntensityCytoplasm"] = np.where(outside.counts > 0, outside.means(image), mean)
    return {k: v[1:] for k, v in out.items()}


def nucleus_pixels(cell: LabelPixels, dna: np.ndarray) -> np.ndarray:
    """Each cell's DNA-bright part: pixels brighter than the cell's mean DNA intensity."""
    values = cell.gather(dna)
    bright = np.zeros(dna.size, dtype=bool)
    bright[cell.where] = values > cell.means_of(values)[cell.labels]
    return bright.reshape(dna.shape)


def measure_cells(
    labels: np.ndarray,
    intensity: np.ndarray,
    image_id: str = "",
    core_file_name: str = "",
    channels: Mapping[str, np.ndarray] | None = None,
    nuclear_channel: str | None = None,
) -> tuple[pd.DataFrame, int]:
    """Measure every labelled cell; returns the table and the number of perimeter-0 cells dropped.

    ``channels`` are measured per cell (see the module docstring); ``nuclear_channel`` names the one
    of them whose bright part is the nucleus, adding the compartment columns.
    """
    channels = dict(channels or {})
    if nuclear_channel is not None and nuclear_channel not in channels:
        raise ValueError(f"nuclear channel {nuclear_channel!r} is not among the measured channels {list(channels)}")
    compartments = nuclear_channel is not None
    if labels.max() == 0:
        return empty_cells_table(tuple(channels), compartments), 0
    labels = labels.astype(np.int32, copy=False)
    props = regionprops_table(labels, intensity_image=intensity, properties=PROPERTIES)
    table = pd.DataFrame(props).rename(columns=RENAMES)
    # regionprops lists present labels only; the bincount measures are indexed by label value.
    present = table["label"].to_numpy() - 1
    cell = LabelPixels.of(labels, int(labels.max()) + 1) if channels else None
    nucleus = None
    if compartments:
        nucleus = nucleus_pixels(cell, channels[nuclear_channel])
        table["AreaShape_NuclearFraction"] = cell.means(nucleus)[1:][present]
    regions = cell_regions(labels, cell, nucleus) if channels else {}
    for name, image in channels.items():
        for measure, values in channel_measures(image, regions).items():
            table[f"{measure}_{name}"] = values[present]
    measured = channel_columns(tuple(channels), compartments)  # documented order, as in empty_cells_table
    table = table[[c for c in table.columns if c not in measured] + measured]
    keep = table["perimeter"] > 0
    dropped = int((~keep).sum())
    table = table[keep].reset_index(drop=True)
    table.insert(0, "CoreFileName", core_file_name)
    table.insert(0, "image_id", image_id)
    return table, dropped

"""Single-cell measurement with scikit-image ``regionprops_table`` (the study's feature set; the properties of
the inertia tensor are found for all cells at once, to the same values: :func:`inertia_measures`).

Columns of ``cells.parquet`` (one row per cell):

``image_id``, ``CoreFileName``, ``label``     which image and which mask label
``area``, ``convex_area``, ``perimeter``, ``eccentricity``, ``major_axis_length``, ``minor_axis_length``,
``orientation``, ``solidity``, ``extent``      shape (px, radians)
``mean_intensity``, ``min_intensity``, ``max_intensity``  on the segmentation input (median of channels 1-3)
``centroid_y``, ``centroid_x``                 position (px; the study's centroid split in two)
``bbox_min_row``, ``bbox_min_col``, ``bbox_max_row``, ``bbox_max_col``  bounding box (max exclusive)
Per channel in ``measurement.intensity_channels``. Columns named as CellProfiler names a measurement hold what
CellProfiler computes (checked against ``cp_measure``, CellProfiler's own code, on real fields:
tests/features/test_cellprofiler_names.py), on CellProfiler's intensity scale (0-1: raw counts over the image type's
maximum, or the illumination-corrected image); columns starting ``CR_`` are cellresponse's own measures, named so
that nobody takes them for CellProfiler's:

``Intensity_MeanIntensity_<Ch>``, ``Intensity_MinIntensity_<Ch>``, ``Intensity_MaxIntensity_<Ch>``
``Intensity_StdIntensity_<Ch>``, ``Intensity_IntegratedIntensity_<Ch>``  spread and sum over the cell
``Intensity_MeanIntensityEdge_<Ch>``           mean on the cell's outline pixels (cortical stain, e.g. actin)
``CR_MeanIntensityCore_<Ch>``                  mean inside the outline (the cell mean when nothing is inside)
``CR_MeanGradient_<Ch>``                       mean Sobel gradient magnitude over the cell (fibres, speckles)

With ``measurement.extended`` (in the spirit of CellProfiler's MeasureTexture, MeasureObjectIntensityDistribution,
MeasureColocalization and MeasureObjectNeighbors; ``measurement.set: cellprofiler`` adds CellProfiler's own):

``CR_Texture_{Contrast,Homogeneity,AngularSecondMoment,Correlation,Entropy}_<Ch>_3``
                                               Haralick features of the cell's grey-level co-occurrence at 3 px,
                                               averaged over four directions, on 8 grey levels spanning the
                                               cell's own range (so a plate's brightness does not move them);
                                               homogeneity is MATLAB's, Σ p / (1 + |i − j|)
``CR_RingFraction_<Ch>_<k>of4``                fraction of the cell's intensity in ring k of 4, from the cell's
                                               centre-most pixels (1) to its outline (4) — not CellProfiler's
                                               FracAtD, whose rings are scaled by the distance to the centre
``Correlation_Correlation_<A>_<B>``            Pearson correlation of two channels over the cell's pixels
                                               (CellProfiler's MeasureColocalization)
``CR_NumberOfNeighbors_2``                     cells within 2 px of the cell's outline (needs no channel)

With a nuclear channel (``segmentation.nuclear_channel``) and ``measurement.compartments``, the nucleus
is taken as the cell's DNA-bright part (pixels above the cell's mean DNA intensity), which needs no
second segmentation and holds for cells of 15 px:

``CR_NuclearFraction``                         nucleus area / cell area
``CR_MeanIntensityNucleus_<Ch>``, ``CR_MeanIntensityCytoplasm_<Ch>``
                                               mean in each compartment (the cell mean where one is empty)

Cells with perimeter 0 (single pixels and one-pixel lines) are dropped, as in the study.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries

from cellresponse.input.illumination import unit_scale

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
# The properties of PROPERTIES that come from each region's inertia tensor: :func:`inertia_measures` finds them
# for all cells at once (regionprops_table spent 85 of its 330 ms on them in a field of 335 cells, one tensor
# and one eigen-decomposition a cell); the rest come from regionprops_table itself.
INERTIA_PROPERTIES = ("eccentricity", "axis_major_length", "axis_minor_length", "orientation")
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
# Prefixes of the per-channel and compartment columns, all of them features too (measurement.set: cellprofiler
# adds AreaShape_, Texture_, Granularity_ and RadialDistribution_ columns: cellprofiler_set.py).
FEATURE_PREFIXES = (
    "Intensity_",
    "Correlation_",
    "CR_",
    "AreaShape_",
    "Texture_",
    "Granularity_",
    "RadialDistribution_",
)
# The per-channel measures that are CellProfiler's MeasureObjectIntensity (equal to cp_measure's), then our own.
CELLPROFILER_INTENSITY = (
    "Intensity_MeanIntensity",
    "Intensity_MinIntensity",
    "Intensity_MaxIntensity",
    "Intensity_StdIntensity",
    "Intensity_IntegratedIntensity",
    "Intensity_MeanIntensityEdge",
)
CHANNEL_MEASURES = (*CELLPROFILER_INTENSITY, "CR_MeanIntensityCore", "CR_MeanGradient")
COMPARTMENT_MEASURES = ("CR_MeanIntensityNucleus", "CR_MeanIntensityCytoplasm")
# The extended measurement's settings, CellProfiler's defaults where it has one (texture scale 3, four rings).
TEXTURE_SCALE = 3
TEXTURE_LEVELS = 8  # per cell: 64 co-occurrence bins stay filled in cells of a few hundred pixels
TEXTURE_MEASURES = ("Contrast", "Homogeneity", "AngularSecondMoment", "Correlation", "Entropy")
RADIAL_BINS = 4
NEIGHBOUR_DISTANCE = 2
NEIGHBOURS_COLUMN = f"CR_NumberOfNeighbors_{NEIGHBOUR_DISTANCE}"
# What the extended measurement's columns start with (to set them apart, e.g. in benchmarks/features_ablation.py).
EXTENDED_PREFIXES = (
    "CR_RingFraction_",
    "Correlation_",
    "CR_NumberOfNeighbors_",
    *(f"CR_Texture_{m}_" for m in TEXTURE_MEASURES),
)
# The columns of PROPERTIES as a cell table names them, in regionprops_table's order (centroid and bbox last).
PROPERTY_COLUMNS = (
    *(RENAMES.get(p, p) for p in PROPERTIES if p not in ("centroid", "bbox")),
    *(RENAMES[f"{p}-{i}"] for p, axes in (("centroid", 2), ("bbox", 4)) for i in range(axes)),
)
COLUMNS = ("image_id", "CoreFileName", *PROPERTY_COLUMNS)


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


def channel_columns(channels: tuple[str, ...], compartments: bool = False, extended: bool = False) -> list[str]:
    """The per-channel (compartment, extended) column names :func:`measure_cells` writes, in order."""
    columns = ["CR_NuclearFraction"] if compartments and channels else []
    columns += [NEIGHBOURS_COLUMN] if extended else []
    measures = CHANNEL_MEASURES + (COMPARTMENT_MEASURES if compartments else ())
    for name in channels:
        columns += [f"{measure}_{name}" for measure in measures]
        if extended:
            columns += [f"CR_Texture_{measure}_{name}_{TEXTURE_SCALE}" for measure in TEXTURE_MEASURES]
            columns += [f"CR_RingFraction_{name}_{k}of{RADIAL_BINS}" for k in range(1, RADIAL_BINS + 1)]
    if extended:
        columns += [f"Correlation_Correlation_{a}_{b}" for a, b in channel_pairs(channels)]
    return columns


def channel_pairs(channels: Iterable[str]) -> list[tuple[str, str]]:
    """Each unordered pair of channels once, in the channels' order."""
    names = list(channels)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def empty_cells_table(
    extra_channels: tuple[str, ...] = (), compartments: bool = False, extended: bool = False
) -> pd.DataFrame:
    columns = [*COLUMNS, *channel_columns(tuple(extra_channels), compartments, extended)]
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


ChannelPixels = tuple[np.ndarray, np.ndarray, np.ndarray]  # gathered values, per-label minimum and maximum


def inertia_measures(cell: LabelPixels, width: int) -> dict[str, np.ndarray]:
    """``regionprops``' :data:`INERTIA_PROPERTIES` of every label value 0..n-1 of a label image ``width`` px wide
    (its formulas: the inertia tensor of the label's pixels, its eigenvalues in closed form), from per-label sums
    over ``cell``'s pixels; values equal regionprops' to rounding. A label without pixels gets 0."""
    rows, cols = np.divmod(cell.where, width)
    d_row = rows - cell.means_of(rows.astype(np.float64))[cell.labels]
    d_col = cols - cell.means_of(cols.astype(np.float64))[cell.labels]
    n = len(cell.counts)
    # regionprops' tensor [[a, b], [b, c]]: a from the column spread, c from the row spread
    a, c, b = cell.means_of(d_col * d_col), cell.means_of(d_row * d_row), -cell.means_of(d_row * d_col)
    middle, spread = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
    large, small = np.maximum(middle + spread, 0.0), np.maximum(middle - spread, 0.0)
    eccentricity = np.sqrt(1.0 - np.divide(small, large, out=np.ones(n), where=large > 0))
    # a == c: regionprops' own choice of ±π/4 (atan2 would give 0 or ±π/2 for b == 0)
    orientation = np.where(a - c == 0, np.where(b < 0, np.pi / 4, -np.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
    return {
        "eccentricity": np.where(large > 0, eccentricity, 0.0),
        "axis_major_length": 4 * np.sqrt(large),
        "axis_minor_length": 4 * np.sqrt(small),
        "orientation": orientation,
    }


def channel_pixels(image: np.ndarray, cell: LabelPixels) -> ChannelPixels:
    """One channel's values at ``cell``'s pixels and each label's minimum and maximum of them: found once per
    channel and shared by :func:`channel_measures` and :func:`extended_measures`."""
    values = cell.gather(image)
    return (values, *cell.extremes_of(values))


SOBEL_SMOOTH = np.array([0.25, 0.5, 0.25], np.float32)
SOBEL_EDGE = np.array([1.0, 0.0, -1.0], np.float32)


def sobel_magnitude(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude, ``skimage.filters.sobel``'s (its kernels, reflected borders,
    sqrt((gx² + gy²) / 2)) to float32 rounding, from four 1-D passes in float32: its two 3×3 convolutions in
    float64 took 28 ms of a 1080-px channel, this 13 ms."""
    values = image.astype(np.float32, copy=False)
    rows = ndimage.correlate1d(values, SOBEL_EDGE, axis=0, mode="reflect")
    rows = ndimage.correlate1d(rows, SOBEL_SMOOTH, axis=1, mode="reflect")
    cols = ndimage.correlate1d(values, SOBEL_SMOOTH, axis=0, mode="reflect")
    cols = ndimage.correlate1d(cols, SOBEL_EDGE, axis=1, mode="reflect")
    rows *= rows
    cols *= cols
    rows += cols
    rows *= np.float32(0.5)
    return np.sqrt(rows, out=rows)


def channel_measures(
    image: np.ndarray, regions: dict[str, LabelPixels], pixels: ChannelPixels | None = None
) -> dict[str, np.ndarray]:
    """Mean/min/max, spread, outline/inside, texture and (with nucleus/cytoplasm ``regions``) compartment means of
    one channel for labels 1..max (index ``i`` is label ``i + 1``); ``regions`` from :func:`cell_regions`,
    ``pixels`` from :func:`channel_pixels` (found here when not given)."""
    cell = regions["cell"]
    values, low, high = pixels if pixels is not None else channel_pixels(image, cell)
    mean, area = cell.means_of(values), cell.counts
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
        "CR_MeanIntensityCore": np.where(core_area > 0, core, mean),
        "CR_MeanGradient": cell.means(sobel_magnitude(image)),
    }
    if "nucleus" in regions:
        inside, outside = regions["nucleus"], regions["cytoplasm"]
        out["CR_MeanIntensityNucleus"] = np.where(inside.counts > 0, inside.means(image), mean)
        out["CR_MeanIntensityCytoplasm"] = np.where(outside.counts > 0, outside.means(image), mean)
    return {k: v[1:] for k, v in out.items()}


def shifted_overlap(image: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The two views of ``image`` that pair each pixel with the one ``(dy, dx)`` away (both inside the field)."""
    height, width = image.shape
    top, bottom = max(0, -dy), height - max(0, dy)
    left, right = max(0, -dx), width - max(0, dx)
    return image[top:bottom, left:right], image[top + dy : bottom + dy, left + dx : right + dx]


def per_cell_levels(pixels: ChannelPixels, cell: LabelPixels, levels: int = TEXTURE_LEVELS) -> np.ndarray:
    """Grey levels 0..levels-1 of a channel's gathered values (:func:`channel_pixels`), each cell's range spread
    over all of them."""
    values, low, high = pixels
    low, high = low[cell.labels], high[cell.labels]
    span = np.where(high > low, high - low, 1.0)
    return np.clip(((values - low) / span * levels).astype(np.intp), 0, levels - 1)


def cooccurrence_pairs(
    labels: np.ndarray, cell: LabelPixels, scale: int = TEXTURE_SCALE
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each of the four directions (0°, 45°, 90°, 135°, ``scale`` px along each axis as in CellProfiler), the
    pixel pairs that lie in one cell: the two pixels as indices into ``cell``'s gathered values, and the cell's
    label. Found once per image, shared by its channels."""
    rank = np.full(labels.size, -1, dtype=np.intp)
    rank[cell.where] = np.arange(len(cell.where))
    rank = rank.reshape(labels.shape)
    pairs = []
    for dy, dx in ((0, scale), (scale, scale), (scale, 0), (scale, -scale)):
        label_a, label_b = shifted_overlap(labels, dy, dx)
        inside = (label_a == label_b) & (label_a > 0)
        first, second = shifted_overlap(rank, dy, dx)
        pairs.append((first[inside], second[inside], label_a[inside].astype(np.intp)))
    return pairs


def cooccurrence_texture(
    grey: np.ndarray,
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n: int,
    levels: int = TEXTURE_LEVELS,
) -> dict[str, np.ndarray]:
    """Haralick features of each cell's symmetric grey-level co-occurrence matrix, the matrices of the directions
    in ``pairs`` (:func:`cooccurrence_pairs`) averaged, for label values 0..n-1. ``grey`` holds the grey level of
    each gathered pixel (:func:`per_cell_levels`); pairs that leave the cell are not counted, and a cell with none
    gets 0 everywhere."""
    bins = levels * levels
    matrices = np.zeros((n, levels, levels))
    for first, second, label in pairs:
        index = label * bins + grey[first] * levels + grey[second]
        counts = np.bincount(index, minlength=n * bins).reshape(n, levels, levels).astype(np.float64)
        counts += counts.transpose(0, 2, 1)  # symmetric: a pair counts both ways
        total = counts.sum(axis=(1, 2), keepdims=True)
        matrices += counts / np.maximum(total, 1.0)
    p = matrices / len(pairs)
    i, j = np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij")
    mean_i, mean_j = (p * i).sum(axis=(1, 2)), (p * j).sum(axis=(1, 2))
    centred_i, centred_j = i - mean_i[:, None, None], j - mean_j[:, None, None]
    sd_i = np.sqrt((p * centred_i**2).sum(axis=(1, 2)))
    sd_j = np.sqrt((p * centred_j**2).sum(axis=(1, 2)))
    covariance = (p * centred_i * centred_j).sum(axis=(1, 2))
    log_p = np.log2(np.where(p > 0, p, 1.0))
    return {
        "Contrast": (p * (i - j) ** 2).sum(axis=(1, 2)),
        "Homogeneity": (p / (1.0 + np.abs(i - j))).sum(axis=(1, 2)),
        "AngularSecondMoment": (p * p).sum(axis=(1, 2)),
        "Correlation": np.divide(covariance, sd_i * sd_j, out=np.zeros(n), where=sd_i * sd_j > 0),
        "Entropy": -(p * log_p).sum(axis=(1, 2)),
    }


def radial_rings(cell: LabelPixels, core: np.ndarray, bins: int = RADIAL_BINS) -> np.ndarray:
    """The ring (0..bins-1) of each of ``cell``'s pixels: its distance to the cell's outline relative to the
    cell's largest such distance, ring 0 holding the centre-most pixels and the last the outline. ``core`` marks
    the pixels inside the outlines (the outline itself is distance 1)."""
    distance = ndimage.distance_transform_edt(core).ravel()[cell.where] + 1.0
    deepest = np.zeros(len(cell.counts))
    np.maximum.at(deepest, cell.labels, distance)
    relative = 1.0 - distance / np.maximum(deepest[cell.labels], 1.0)  # 0 at the centre-most pixels
    # The outline (distance 1) belongs to the last ring whatever the cell's depth.
    rings = np.clip((relative * bins).astype(np.intp), 0, bins - 1)
    return np.where(distance <= 1.0, bins - 1, rings)


def radial_fractions(values: np.ndarray, cell: LabelPixels, rings: np.ndarray, bins: int = RADIAL_BINS) -> np.ndarray:
    """Fraction of each cell's intensity in each ring (``rings`` from :func:`radial_rings`), shape (labels, bins);
    0 where a cell has no intensity."""
    n = len(cell.counts)
    sums = np.bincount(cell.labels * bins + rings, weights=values, minlength=n * bins).reshape(n, bins)
    total = sums.sum(axis=1, keepdims=True)
    return np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)


def pixel_correlations(gathered: Mapping[str, np.ndarray], cell: LabelPixels) -> dict[tuple[str, str], np.ndarray]:
    """Pearson correlation of each pair of gathered channels (:func:`channel_pairs`) over each cell's pixels, 0 where
    either channel is flat in the cell. Each channel is centred on its cell means once, not once per pair."""
    centred, sd = {}, {}
    for name, values in gathered.items():
        mean = cell.means_of(values)
        centred[name] = values - mean[cell.labels]
        sd[name] = np.sqrt(cell.means_of(centred[name] ** 2))
        sd[name][sd[name] <= 1e-12 * (1.0 + np.abs(mean))] = 0.0  # round-off of a constant channel, not a spread
    out = {}
    for first, second in channel_pairs(gathered):
        spread = sd[first] * sd[second]
        covariance = cell.means_of(centred[first] * centred[second])
        out[first, second] = np.divide(covariance, spread, out=np.zeros_like(spread), where=spread > 0)
    return out


def neighbour_counts(
    labels: np.ndarray, distance: int = NEIGHBOUR_DISTANCE, outline: LabelPixels | None = None
) -> np.ndarray:
    """For each label value, how many other cells come within ``distance`` px (a square neighbourhood) of it.

    Only outline pixels are looked from (``outline``: each cell's pixels with another value among their four
    neighbours, :func:`cell_regions`' ``edge``; found here when not given): of the closest pixels of two cells one
    is always on its cell's outline, so the count is the whole field's, from a tenth of its pixels."""
    n = int(labels.max()) + 1
    if outline is None:
        outline = LabelPixels.of(np.where(find_boundaries(labels, mode="inner"), labels, 0), n)
    height, width = labels.shape
    rows, cols = np.divmod(outline.where, width)
    flat = labels.ravel()
    pairs = []
    for dy in range(-distance, distance + 1):
        for dx in range(-distance, distance + 1):
            inside = (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
            own = outline.labels[inside]
            other = flat[outline.where[inside] + dy * width + dx].astype(np.intp)
            touching = (other != own) & (other > 0)
            pairs.append((own[touching], other[touching]))
    first = np.concatenate([a for a, _ in pairs]).astype(np.int64)
    second = np.concatenate([b for _, b in pairs]).astype(np.int64)
    if not len(first):
        return np.zeros(n)
    # Each touching pair once, as one number (a row-wise np.unique sorts far slower on crowded fields).
    keys = np.unique(np.minimum(first, second) * n + np.maximum(first, second))
    return np.bincount(np.concatenate([keys // n, keys % n]), minlength=n).astype(np.float64)


def extended_measures(
    labels: np.ndarray, channels: Mapping[str, ChannelPixels], regions: dict[str, LabelPixels]
) -> dict[str, np.ndarray]:
    """The ``measurement.extended`` columns (module docstring) for labels 1..max (index ``i`` is label ``i + 1``);
    ``channels`` maps each measured channel's name to its :func:`channel_pixels`, ``regions`` from
    :func:`cell_regions`."""
    cell = regions["cell"]
    n = len(cell.counts)
    out = {NEIGHBOURS_COLUMN: neighbour_counts(labels, outline=regions["edge"])}
    if not channels:  # neighbours need no channel; rings and pairs serve only the per-channel columns
        return {k: v[1:] for k, v in out.items()}
    core = np.zeros(labels.size, dtype=bool)
    core[regions["core"].where] = True
    rings = radial_rings(cell, core.reshape(labels.shape))
    pairs = cooccurrence_pairs(labels, cell)
    gathered = {name: pixels[0] for name, pixels in channels.items()}
    for name, pixels in channels.items():
        for measure, value in cooccurrence_texture(per_cell_levels(pixels, cell), pairs, n).items():
            out[f"CR_Texture_{measure}_{name}_{TEXTURE_SCALE}"] = value
        fractions = radial_fractions(gathered[name], cell, rings)
        for k in range(RADIAL_BINS):
            out[f"CR_RingFraction_{name}_{k + 1}of{RADIAL_BINS}"] = fractions[:, k]
    for (first, second), value in pixel_correlations(gathered, cell).items():
        out[f"Correlation_Correlation_{first}_{second}"] = value
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
    extended: bool = False,
) -> tuple[pd.DataFrame, int]:
    """Measure every labelled cell; returns the table and the number of perimeter-0 cells dropped.

    ``channels`` are measured per cell (see the module docstring); ``nuclear_channel`` names the one
    of them whose bright part is the nucleus, adding the compartment columns; ``extended`` adds texture,
    radial distribution, colocalisation and neighbour columns.
    """
    # CellProfiler's scale: an integer image over its type's maximum (a corrected image is already on it)
    channels = {name: unit_scale(image) for name, image in (channels or {}).items()}
    if nuclear_channel is not None and nuclear_channel not in channels:
        raise ValueError(f"nuclear channel {nuclear_channel!r} is not among the measured channels {list(channels)}")
    compartments = nuclear_channel is not None
    if labels.max() == 0:
        return empty_cells_table(tuple(channels), compartments, extended), 0
    labels = labels.astype(np.int32, copy=False)
    regionprops = [p for p in PROPERTIES if p not in INERTIA_PROPERTIES]
    table = pd.DataFrame(regionprops_table(labels, intensity_image=intensity, properties=regionprops))
    # regionprops lists present labels only; the bincount measures are indexed by label value.
    present = table["label"].to_numpy() - 1
    cell = LabelPixels.of(labels, int(labels.max()) + 1)
    inertia = {name: values[1:][present] for name, values in inertia_measures(cell, labels.shape[1]).items()}
    table = pd.concat([table, pd.DataFrame(inertia, index=table.index)], axis=1)
    table = table.rename(columns=RENAMES)[list(PROPERTY_COLUMNS)]
    nucleus, columns = None, {}
    if nuclear_channel is not None:
        nucleus = nucleus_pixels(cell, channels[nuclear_channel])
        columns["CR_NuclearFraction"] = cell.means(nucleus)[1:]
    regions = cell_regions(labels, cell, nucleus) if channels or extended else {}
    pixels = {name: channel_pixels(image, cell) for name, image in channels.items()}
    for name, image in channels.items():
        for measure, values in channel_measures(image, regions, pixels[name]).items():
            columns[f"{measure}_{name}"] = values
    if extended:
        columns.update(extended_measures(labels, pixels, regions))
    measured = channel_columns(tuple(channels), compartments, extended)  # documented order, as in empty_cells_table
    # One concat, not a column at a time: with five channels there are over a hundred columns.
    ids = pd.DataFrame({"image_id": image_id, "CoreFileName": core_file_name}, index=table.index)
    table = pd.concat([ids, table, pd.DataFrame({c: columns[c][present] for c in measured})], axis=1)
    keep = table["perimeter"] > 0
    return table[keep].reset_index(drop=True), int((~keep).sum())

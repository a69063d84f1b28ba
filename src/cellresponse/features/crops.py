"""Per-cell crops: a 4-channel "mask" crop and a 4-channel "flow" crop around each cell's bbox.

Recipes (``crops.recipe``):

``mask_flow`` (the study)
    image channels 0-3: segmentation input, this cell's mask, other cells' masks, segmentation input × this mask
    flow channels 4-7:  flow dY, flow dX, cell probability, flow magnitude
``fluorescence``
    image channels 0-3: four named fluorescence channels (``crops.fluorescence_channels``; fewer are repeated)
    flow channels 4-7:  as above

Every channel is mapped to [0, 1] before it is stored as uint8 (intensities between per-plate percentiles, or
experiment-wide ones where plates are confounded with compounds (``input.intensity_scale``); flows (v + 1) / 2;
Cellpose probabilities through a sigmoid), so the model's "mean 0.5 / std 0.5" normalisation is the study's
``ToTensor + Normalize``.

Crops are square (the bbox's longer side, plus ``crops.padding``), zero-padded at the image edge, and
stored at ``crops.store_size``; the model input size (``crops.size``, 224 in the study) is reached by
resizing whole batches on the device, because storing 224 px crops would take ~40 GB per 100 k cells.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from skimage.transform import resize

from cellresponse.config import Config
from cellresponse.input.channels import apply_recipe, load_stack, resolve_channel
from cellresponse.input.controls import TREATMENT, control_kinds
from cellresponse.input.plate import MIN_COMPOUNDS_PER_PLATE, compounds_per_plate, compounds_per_plate_phrase
from cellresponse.input.transforms import DISPLAY_PERCENTILES, IMAGE_CHANNELS

CHANNELS = 2 * IMAGE_CHANNELS  # the image half, then the flow half
MASK_FLOW_NAMES = ("segmentation_input", "cell_mask", "other_masks", "input_x_mask")
FLOW_NAMES = ("flow_dy", "flow_dx", "cell_probability", "flow_magnitude")


def square_boxes(bboxes: np.ndarray, padding: float = 0.0) -> np.ndarray:
    """Square boxes ``(top, left, side)`` centred on each ``(min_row, min_col, max_row, max_col)`` bbox."""
    bboxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    height = bboxes[:, 2] - bboxes[:, 0]
    width = bboxes[:, 3] - bboxes[:, 1]
    side = np.ceil(np.maximum(height, width) * (1.0 + padding)).astype(np.int64)
    side = np.maximum(side, 1)
    centre_r = (bboxes[:, 0] + bboxes[:, 2]) / 2.0
    centre_c = (bboxes[:, 1] + bboxes[:, 3]) / 2.0
    top = np.floor(centre_r - side / 2.0).astype(np.int64)
    left = np.floor(centre_c - side / 2.0).astype(np.int64)
    return np.stack([top, left, side], axis=1)


def cut_square(planes: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """``planes[:, top:top+side, left:left+side]`` with zeros where the square leaves the image."""
    n, height, width = planes.shape
    out = np.zeros((n, side, side), dtype=planes.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + side, height), min(left + side, width)
    if r1 > r0 and c1 > c0:
        out[:, r0 - top : r1 - top, c0 - left : c1 - left] = planes[:, r0:r1, c0:c1]
    return out


@functools.lru_cache(maxsize=2048)
def _resize_matrix(side: int, size: int) -> np.ndarray:
    """The ``(size, side)`` matrix of scikit-image's 1-D resize (bilinear, anti-aliased when shrinking).

    Bilinear zoom and the Gaussian anti-aliasing filter are both separable and linear, so resizing each axis is
    a matrix product; the matrix is the resize of the identity along one axis (the other keeps its size, so it
    is neither zoomed nor filtered). Cached: a plate's crops come in a few hundred sides.
    """
    identity = np.eye(side, dtype=np.float64)
    matrix = resize(identity, (size, side), order=1, anti_aliasing=side > size, preserve_range=True)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def resize_square(crop: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(C, s, s)`` crop to ``(C, size, size)``: scikit-image's ``resize`` (bilinear; anti-aliased when
    shrinking) as two matrix products, equal to it within 1e-6 and ~8× faster on 8-channel crops."""
    crop = crop.astype(np.float32, copy=False)
    if crop.shape[1] == size:
        return crop
    matrix = _resize_matrix(crop.shape[1], size)
    return matrix @ crop @ matrix.T


def cell_crops(
    labels: np.ndarray,
    cell_labels: np.ndarray | Sequence[int],
    bboxes: np.ndarray,
    image_planes: np.ndarray,
    flows01: np.ndarray,
    store_size: int,
    padding: float = 0.0,
    recipe: str = "mask_flow",
) -> np.ndarray:
    """Crops of every listed cell as uint8 ``(N, 8, store_size, store_size)``.

    ``image_planes``: ``(1, H, W)`` segmentation input in [0, 1] for ``mask_flow``, or ``(4, H, W)``
    fluorescence channels in [0, 1] for ``fluorescence``; ``flows01``: ``transforms.flow_planes`` output.
    """
    cell_labels = np.asarray(cell_labels, dtype=np.int64)
    out = np.zeros((len(cell_labels), CHANNELS, store_size, store_size), dtype=np.uint8)
    if len(cell_labels) == 0:
        return out
    planes = np.concatenate([image_planes.astype(np.float32), flows01.astype(np.float32)])
    labels = labels.astype(np.int64, copy=False)
    for i, (label, (top, left, side)) in enumerate(zip(cell_labels, square_boxes(bboxes, padding), strict=True)):
        lab = cut_square(labels[None], top, left, side)[0]
        cut = cut_square(planes, top, left, side)
        this = (lab == label).astype(np.float32)
        if recipe == "mask_flow":
            seg = cut[0]
            other = ((lab > 0) & (lab != label)).astype(np.float32)
            crop = np.stack([seg, this, other, seg * this, *cut[1:5]])
        else:
            crop = cut
        out[i] = np.round(np.clip(resize_square(crop, store_size), 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


SCALE_SAMPLE_IMAGES = 8  # images per plate whose percentiles set the plate's intensity scale
EXPERIMENT_SAMPLE_IMAGES = 64  # at most this many, spread over the plates, set an experiment-wide scale


def crop_planes(config: Config, names: list[str]) -> list[str]:
    """What the image half of a crop is built from: the segmentation input or named channels."""
    if config.crops.recipe == "mask_flow":
        return ["segmentation_input"]
    chosen = list(config.crops.fluorescence_channels)
    if not chosen:
        chosen = names[:4]
    for name in chosen:
        resolve_channel(names, name)  # unknown names fail here, once, with the list of channels
    return [chosen[i % len(chosen)] for i in range(4)]


def raw_planes(stack: np.ndarray, planes: list[str], names: list[str], config: Config) -> np.ndarray:
    """The image-half planes of one field, in raw intensity units."""
    out = []
    for plane in planes:
        if plane == "segmentation_input":
            out.append(apply_recipe(stack, config.segmentation.input, names))
        else:
            out.append(stack[resolve_channel(names, plane)].astype(np.float32))
    return np.stack(out)


def intensity_scope(
    table: pd.DataFrame, setting: str, compound: str | None, treated: np.ndarray | None = None
) -> tuple[str, str]:
    """``plate`` or ``experiment``, and why. ``auto`` scales across the experiment where the image table's plates
    are confounded with compounds (``treated`` leaves the controls out of the count), as profile normalisation
    does: there a plate's scale would be its compound's and erase what the compound does to brightness."""
    if setting != "auto":
        return setting, f"input.intensity_scale: {setting}"
    if compound is None or compound not in table.columns:
        return "plate", "intensity scaled per plate (no compound column to tell whether plates hold one each)"
    per_plate = compounds_per_plate(table, "plate", compound, treated)
    if per_plate < MIN_COMPOUNDS_PER_PLATE:
        return "experiment", (
            f"intensity scaled across the experiment: plates are confounded with compounds "
            f"({compounds_per_plate_phrase(per_plate)}), and a per-plate scale would erase what a compound does to "
            "brightness"
        )
    return "plate", f"intensity scaled per plate ({compounds_per_plate_phrase(per_plate)})"


def compounds_and_treated(table: pd.DataFrame, config: Config) -> tuple[str | None, np.ndarray]:
    """The image table's compound column (``config.compound_column``; None where it has none) and which rows are
    treatments, not controls (input.controls.control_kinds) — what :func:`intensity_scope` counts per plate."""
    compound = config.compound_column(table.columns)
    kinds = control_kinds(table, [compound, config.input.label], config.input.control_label)
    return compound, (kinds == TREATMENT).to_numpy()


def _sampled_percentiles(
    plate: str,
    plate_rows: list[dict],
    count: int,
    names: list[str],
    planes: list[str],
    config: Config,
    seed: int,
    percentiles: tuple[float, float],
) -> list[np.ndarray]:
    """The low and high ``percentiles`` of each plane in ``count`` of the plate's images, drawn by a generator
    seeded with ``seed`` and the plate's name from its rows in image-id order."""
    ordered = sorted(plate_rows, key=lambda row: str(row["image_id"]))
    rng = np.random.default_rng([seed, zlib.crc32(plate.encode())])
    picks = rng.choice(len(ordered), size=min(count, len(ordered)), replace=False)
    found = []
    for i in sorted(picks):
        raw = raw_planes(load_stack(ordered[i], names), planes, names, config)
        found.append(np.percentile(raw.reshape(len(planes), -1), list(percentiles), axis=1))
    return found


def plate_scales(
    rows: list[dict],
    names: list[str],
    planes: list[str],
    config: Config,
    seed: int = 0,
    percentiles: tuple[float, float] = DISPLAY_PERCENTILES,
    scope: str = "plate",
) -> dict[str, list[list[float]]]:
    """Per plate and plane, the low and high intensity ``percentiles``, medians over a few sampled images; with
    ``scope="experiment"`` one scale, the medians over a sample of every plate's images, given to every plate.

    Per-plate (not per-image) scaling keeps a compound's effect on brightness visible to the model
    while absorbing plate-to-plate gain differences, as plate normalisation does in profiling. A plate's sample
    depends only on ``seed``, the plate's name and its image ids, so a plate is scaled the same in a training run
    and in a prediction of that plate alone, whatever other plates either holds and in whatever order.
    """
    by_plate: dict[str, list[dict]] = {}
    for row in rows:
        by_plate.setdefault(str(row["plate"]), []).append(row)
    count = SCALE_SAMPLE_IMAGES
    if scope == "experiment":  # a sample from every plate, at most EXPERIMENT_SAMPLE_IMAGES in all
        count = max(1, min(SCALE_SAMPLE_IMAGES, EXPERIMENT_SAMPLE_IMAGES // max(len(by_plate), 1)))
    sampled = {
        plate: _sampled_percentiles(plate, plate_rows, count, names, planes, config, seed, percentiles)
        for plate, plate_rows in by_plate.items()
    }
    if scope == "experiment":
        pooled = np.median([q for found in sampled.values() for q in found], axis=0).T.tolist()
        return {plate: pooled for plate in sampled}
    return {plate: np.median(found, axis=0).T.tolist() for plate, found in sampled.items()}


def crop_settings(config: Config, names: list[str]) -> dict[str, Any]:
    """What makes two crop stores compatible (compared by ``predict`` against a model bundle)."""
    planes = crop_planes(config, names)
    image_names = list(MASK_FLOW_NAMES) if config.crops.recipe == "mask_flow" else planes
    return {
        "recipe": config.crops.recipe,
        "store_size": config.crops.store_size,
        "padding": config.crops.padding,
        "planes": planes,
        "channels": [*image_names, *FLOW_NAMES],
        "segmentation_input": config.segmentation.input.model_dump(),
    }


def changed_settings(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two :func:`crop_settings` (a key on one side only counts)."""
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))

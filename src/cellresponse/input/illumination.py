"""Illumination correction as CellProfiler does it: one function per plate and channel, each image divided by it.

CellProfiler's ``CorrectIlluminationCalculate`` with the settings of JUMP's illumination pipelines ("Regular"
intensities, all images of the plate, median filter smoothing, rescaled by the robust minimum) averages the plate's
images of a channel, smooths the average with a large median filter and divides it by its robust minimum (the 2 %
point of its positive values, everything below raised to it), so the function is ≥ 1 and a corrected image is never
brighter than the raw one. ``CorrectIlluminationApply`` ("Divide") divides each image, on CellProfiler's intensity
scale (0–1, the raw count over the image type's maximum), by the function.

The functions come from the load_data's ``FileName_Illum<Ch>`` / ``PathName_Illum<Ch>`` columns (JUMP's
``load_data_with_illum.csv``; CellProfiler's ``.npy`` files) or are computed here (:func:`illumination_function`)
and saved in the run folder; :func:`corrected_stack` applies whichever the image table names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from cellresponse.errors import InputError
from cellresponse.input.io import read_tiff

ILLUM_FILE, ILLUM_PATH = "FileName_Illum", "PathName_Illum"
ROBUST_MINIMUM = 0.02  # CellProfiler's robust-minimum rescaling: the 2 % point of the function's positive values
JUMP_FILTER_SIZE = 500  # px: the median filter of JUMP's CorrectIlluminationCalculate
MIN_IMAGES = 50  # a plate's mean image is its illumination only over many fields (JUMP averages hundreds)
SMOOTHING_SIDE = 108  # px: the average is median-filtered at about this side (1080 / 10), then interpolated back


def illumination_channels(table: pd.DataFrame | Mapping, names: Iterable[str]) -> list[str]:
    """The channels (of ``names``) for which the image table names an illumination function."""
    columns = set(table.columns if isinstance(table, pd.DataFrame) else table.keys())
    return [n for n in names if f"{ILLUM_FILE}{n}" in columns and f"{ILLUM_PATH}{n}" in columns]


def illumination_path(row: Mapping, name: str) -> Path | None:
    """The illumination file of channel ``name`` for an image-table row (None where the row names none)."""
    file, folder = row.get(f"{ILLUM_FILE}{name}"), row.get(f"{ILLUM_PATH}{name}")
    if file is None or folder is None or pd.isna(file) or pd.isna(folder) or not str(file):
        return None
    return Path(str(folder)) / str(file)


def row_functions(row: Mapping, names: Iterable[str]) -> list[Path]:
    """The illumination file of each channel an image-table row names; an empty cell is an :class:`InputError`."""
    paths = []
    for name in names:
        path = illumination_path(row, name)
        if path is None:
            raise InputError(f"image {row.get('image_id', '?')} names no illumination function for {name} (empty cell)")
        paths.append(path)
    return paths


def check_function(function: np.ndarray, path: Path | str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The function as float32, or an :class:`InputError` naming the file: not 2-D, another shape than the
    images, non-finite values, or zeros and negatives (a division by them would blow the image up)."""
    function = np.squeeze(np.asarray(function))
    if function.ndim != 2:
        raise InputError(f"illumination function {path} has shape {function.shape}; expected one 2-D plane")
    if shape is not None and function.shape != tuple(shape):
        raise InputError(f"illumination function {path} has shape {function.shape}; the images are {tuple(shape)}")
    if not np.isfinite(function).all():
        raise InputError(f"illumination function {path} holds NaN or infinite values")
    if (function <= 0).any():
        raise InputError(f"illumination function {path} holds zeros or negative values: it divides the image")
    return function.astype(np.float32, copy=False)


@lru_cache(maxsize=32)
def read_function(path: str) -> np.ndarray:
    """One CellProfiler illumination function (``.npy``; a TIFF works too), checked (:func:`check_function`).
    Cached: every image of a plate divides by the same few files."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"illumination function not found: {file} (named by the image table's {ILLUM_FILE} columns)")
    try:
        values = np.load(file, allow_pickle=False) if file.suffix == ".npy" else read_tiff(file)
    except (ValueError, OSError) as error:
        raise InputError(f"illumination function {file} cannot be read: {error}") from error
    return check_function(values, file)


def check_illumination(table: pd.DataFrame, names: list[str], shape: tuple[int, ...] | None) -> int:
    """Every illumination file the table names, read and checked once (before any image work); returns how many.
    A table naming functions for some channels only is refused: correcting part of a stack would skew ratios."""
    named = illumination_channels(table, names)
    if not named:
        return 0
    if len(named) != len(names):
        missing = [n for n in names if n not in named]
        raise InputError(f"the image table names illumination functions for {named} but not for {missing}")
    columns = [c for n in named for c in (f"{ILLUM_FILE}{n}", f"{ILLUM_PATH}{n}")] + ["image_id"]
    paths = {str(path) for row in table[columns].to_dict("records") for path in row_functions(row, named)}
    for path in sorted(paths):
        check_function(read_function(path), path, shape)
    return len(paths)


def unit_scale(image: np.ndarray) -> np.ndarray:
    """An image on CellProfiler's intensity scale: an integer image over its type's maximum (255 for 8-bit, 65535
    for 16-bit), a float image as it is."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32, copy=False)


def corrected_stack(stack: np.ndarray, functions: list[np.ndarray]) -> np.ndarray:
    """A ``(C, H, W)`` stack on CellProfiler's scale divided by one function per channel (CorrectIlluminationApply,
    "Divide")."""
    if len(functions) != len(stack):
        raise InputError(f"{len(functions)} illumination functions for {len(stack)} channels")
    return np.stack([unit_scale(plane) / function for plane, function in zip(stack, functions, strict=True)])


def smooth_median(image: np.ndarray, size: int, side: int = SMOOTHING_SIDE) -> np.ndarray:
    """A median filter of ``size`` px, run on the image block-averaged to about ``side`` px and interpolated back:
    a function this smooth loses nothing, and a 500-px median filter at full size takes minutes per channel."""
    factor = max(1, int(np.ceil(max(image.shape) / side)))
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    small = image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    # A window wider than the field (500 px on a 128-px tile) is capped at the field: reflected, it sees nothing more.
    window = max(1, min(round(size / factor), min(small.shape)))
    filtered = ndimage.median_filter(small, size=window, mode="reflect")
    zoom = (image.shape[0] / filtered.shape[0], image.shape[1] / filtered.shape[1])
    return ndimage.zoom(filtered, zoom, order=1, mode="nearest", grid_mode=True)


def rescale_robust_minimum(function: np.ndarray, fraction: float = ROBUST_MINIMUM) -> np.ndarray:
    """Divided by its robust minimum (values below it raised to it), as CellProfiler's "Rescale: Yes": ≥ 1."""
    positive = np.sort(function[function > 0].ravel())
    if not len(positive):
        raise InputError("the average image is empty (all zeros): no illumination function can be computed")
    minimum = positive[int(len(positive) * fraction)]
    return (np.maximum(function, minimum) / minimum).astype(np.float32)


def illumination_function(mean_image: np.ndarray, size: int = JUMP_FILTER_SIZE) -> np.ndarray:
    """The illumination function of a channel from the average of a plate's images (:func:`unit_scale` d)."""
    return rescale_robust_minimum(smooth_median(mean_image.astype(np.float64), size))


def average_images(stacks: Iterable[np.ndarray]) -> np.ndarray:
    """The mean ``(C, H, W)`` stack on CellProfiler's scale (:func:`unit_scale`), one image in memory at a time."""
    total, count = None, 0
    for stack in stacks:
        planes = unit_scale(stack).astype(np.float64)
        total = planes if total is None else total + planes
        count += 1
    if total is None:
        raise InputError("no images to average for an illumination function")
    return total / count


def illumination_plan(setting: str, named: bool, images_per_plate: pd.Series) -> tuple[str, str]:
    """What ``input.illumination`` does with this table: ``load_data`` (divide by the functions it names),
    ``compute`` or ``none``, and why. ``auto`` computes only where every plate has :data:`MIN_IMAGES` images or
    more: over a few fields the average is the cells' layout, not the illumination."""
    if setting == "none":
        return "none", "input.illumination: none"
    if setting == "compute":
        return "compute", "input.illumination: compute"
    if named:
        return "load_data", "the load_data names CellProfiler illumination functions"
    fewest = int(images_per_plate.min()) if len(images_per_plate) else 0
    if fewest >= MIN_IMAGES:
        return "compute", f"no functions named; every plate has {MIN_IMAGES}+ images, so one is computed per channel"
    return "none", (
        f"no functions named, and a plate has only {fewest} image{'s' if fewest != 1 else ''} (under {MIN_IMAGES} the "
        "average is the cells' layout, not the illumination); input.illumination: compute computes them anyway"
    )

"""Channel recipes: build one image (or a stack) from the channels of a field.

The study segments the per-pixel **median of the first three channels** (Mito, AGP, RNA in CPJUMP1).
Recipes are pure functions on a ``(C, H, W)`` stack; :func:`load_stack` reads a field's channels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import ChannelRecipe
from cellresponse.errors import InputError
from cellresponse.input.illumination import (
    check_function,
    corrected_stack,
    illumination_channels,
    read_function,
    row_functions,
)
from cellresponse.input.io import read_tiff
from cellresponse.input.plate import channel_names, channel_paths

log = logging.getLogger(__name__)

NUCLEAR_NAMES = ("dna", "dapi", "hoechst", "nuclei", "nucleus", "h33342")
# background_fraction of a nuclear stain is ~0.01-0.04, of a cytoplasmic stain in a dense field ~0.25 or more:
# ch5 is taken for something else only when it looks cytoplasmic and another channel clearly looks nuclear.
NOT_NUCLEAR_ABOVE = 0.2
NUCLEAR_BELOW = 0.1


def resolve_channel(names: Sequence[str], wanted: int | str) -> int:
    """Position of ``wanted`` among ``names``: an index, or a name compared case-insensitively with
    ``Orig``/``ch`` prefixes ignored (``DNA`` matches ``OrigDNA``; ``5`` or ``ch5`` matches ``ch5``)."""
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit() and wanted not in names):
        index = int(wanted)
        if not 0 <= index < len(names):
            raise InputError(f"channel index {index} is out of range: the images have {len(names)} channels {names}")
        return index

    def norm(text: str) -> str:
        text = str(text).lower()
        return text[4:] if text.startswith("orig") else text

    for i, name in enumerate(names):
        if norm(name) == norm(str(wanted)):
            return i
    raise InputError(f"channel {wanted!r} not found; the images have channels {list(names)}")


def background_fraction(image: np.ndarray) -> float:
    """How dark the typical pixel is relative to the bright objects: (p50 - p5) / (p99.5 - p5).

    Nuclear stains give ~0.01-0.04 (mostly dark background between nuclei); cytoplasmic stains of a
    dense field give ~0.25 or more.
    """
    p5, p50, p995 = np.percentile(image, [5, 50, 99.5])
    return float((p50 - p5) / (p995 - p5)) if p995 > p5 else 1.0


def find_nuclear_channel(
    names: Sequence[str],
    setting: str | None = "auto",
    stack: np.ndarray | None = None,
    not_nuclear_above: float = NOT_NUCLEAR_ABOVE,
    nuclear_below: float = NUCLEAR_BELOW,
) -> int | None:
    """The nuclear (DNA) channel: the configured one, else by name (DNA/DAPI/Hoechst), else Phenix ch5.

    CPJUMP1 puts Hoechst in ch5, but Phenix exports of other experiments differ: when ``stack`` is
    given and ch5 shows no dark background while another channel clearly does, that channel is used
    and a warning names it (set ``segmentation.nuclear_channel`` to silence the guess).
    """
    if setting is None or setting == "none":
        return None
    if setting != "auto":
        return resolve_channel(names, setting)
    for i, name in enumerate(names):
        if any(key in name.lower() for key in NUCLEAR_NAMES):
            return i
    lowered = [n.lower() for n in names]
    if "ch5" not in lowered:
        return None
    chosen = lowered.index("ch5")
    if stack is not None:
        fractions = [background_fraction(channel) for channel in stack]
        darkest = int(np.argmin(fractions))
        if fractions[chosen] > not_nuclear_above and fractions[darkest] < nuclear_below:
            log.warning(
                "ch5 does not look like a nuclear stain here (background fraction %.2f); using %s (%.2f) — "
                "set segmentation.nuclear_channel to choose",
                fractions[chosen],
                names[darkest],
                fractions[darkest],
            )
            chosen = darkest
    return chosen


def recipe_channels(recipe: ChannelRecipe, names: Sequence[str]) -> list[int | str]:
    """The channels a recipe reads from these images: its own list, except that the default (the study's first
    three) takes the channels there are on a plate with fewer — a nuclei-only or two-channel plate segments with
    the default recipe. A list the user gave is kept as given (a channel that is not there is then an error)."""
    default = ChannelRecipe().channels
    if list(recipe.channels) == default and len(names) < len(default):
        return list(range(len(names)))
    return list(recipe.channels)


# Up to this many channels the median is taken by elementwise min/max (a partial selection sort over whole
# images): np.median along the channel axis sorts each pixel's short strided column and took 150 ms for three
# 1080-px CPJUMP1 channels where min/max takes 3 ms, in each of segment, measure and crops.
SELECTION_MEDIAN_MAX_CHANNELS = 9


def channel_median(stack: np.ndarray) -> np.ndarray:
    """Per-pixel median over the channels of a ``(C, H, W)`` stack: the same values as ``np.median(stack,
    axis=0)`` (NaN propagates; an even count averages the two middle values)."""
    n = len(stack)
    if n > SELECTION_MEDIAN_MAX_CHANNELS:
        return np.median(stack, axis=0)
    if not np.issubdtype(stack.dtype, np.floating):
        stack = stack.astype(np.float64)  # as np.median: integers give float64
    rows = list(stack)
    for i in range(n // 2 + 1):  # afterwards rows[0..n//2] hold the n//2 + 1 smallest values in order
        for j in range(i + 1, n):
            rows[i], rows[j] = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
    if n % 2:
        return rows[n // 2].copy() if n == 1 else rows[n // 2]
    return np.mean([rows[n // 2 - 1], rows[n // 2]], axis=0)


def apply_recipe(stack: np.ndarray, recipe: ChannelRecipe, names: Sequence[str]) -> np.ndarray:
    """Apply a recipe to a ``(C, H, W)`` stack: a 2-D image (median/mean/max/single) or a stack."""
    if stack.ndim != 3:
        raise ValueError(f"expected a (C, H, W) stack, got shape {stack.shape}")
    indices = [resolve_channel(names, c) for c in recipe_channels(recipe, names)]
    if not indices:
        raise InputError("a channel recipe needs at least one channel")
    chosen = stack[indices].astype(np.float32, copy=False)
    if recipe.kind == "median":
        return channel_median(chosen)
    if recipe.kind == "mean":
        return chosen.mean(axis=0)
    if recipe.kind == "max":
        return chosen.max(axis=0)
    if recipe.kind == "single":
        if len(indices) != 1:
            raise InputError(f"recipe 'single' takes one channel, got {recipe.channels}")
        return chosen[0]
    return chosen  # "stack"


def load_stack(row: pd.Series | Mapping[Any, Any], names: Sequence[str] | None = None) -> np.ndarray:
    """Read the channels of one field into a ``(C, H, W)`` array, checking shapes and dtypes agree; where the row
    names illumination functions (``FileName_Illum<Ch>``), the stack is corrected by them (illumination.py)."""
    fields = dict(row)  # a table row or a records dict alike
    if names is None:
        names = channel_names(pd.DataFrame([fields]))
    images = []
    paths = channel_paths(fields, list(names))
    for path in paths:
        image = read_tiff(path)
        if image.ndim == 3 and 1 in image.shape:
            image = np.squeeze(image)
        if image.ndim != 2:
            raise InputError(f"{path} has shape {image.shape}; expected one 2-D plane per channel file")
        images.append(image)
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        detail = ", ".join(f"{p.name}: {img.shape}" for p, img in zip(paths, images, strict=True))
        raise InputError(f"channels of one image differ in shape ({detail})")
    dtypes = {img.dtype for img in images}
    if len(dtypes) > 1:
        detail = ", ".join(f"{p.name}: {img.dtype}" for p, img in zip(paths, images, strict=True))
        raise InputError(f"channels of one image differ in dtype ({detail})")
    stack = np.stack(images)
    named = illumination_channels(fields, names)
    if not named:
        return stack
    # The image table names CellProfiler illumination functions (a load_data_with_illum.csv, or computed by the
    # images stage): the stack comes back on CellProfiler's 0-1 scale, divided by them.
    functions = [check_function(read_function(str(p)), p, stack.shape[1:]) for p in row_functions(fields, names)]
    return corrected_stack(stack, functions)

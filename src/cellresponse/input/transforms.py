"""Transforms of pixel values, as Cellpose's ``transforms`` module holds them: percentile scaling, flow planes,
and the network's batch preparation and augmentation.

Percentile ranges are named here, once: display and crop scaling use :data:`DISPLAY_PERCENTILES` (1st–99.8th, the
usual "auto contrast"); the offline segmentation normalises with :data:`SEGMENTATION_PERCENTILES` (0.5th–99.8th),
whose lower end keeps the dim edge of cells out of the background on sparse fields.

The batch functions take and return torch tensors; torch itself is imported inside them because it costs ~2 s
to import and the per-image stages (segment, measure, crops) use this module without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DISPLAY_PERCENTILES = (1.0, 99.8)
SEGMENTATION_PERCENTILES = (0.5, 99.8)

# Channel layout of a stored crop: 4 image channels, then 4 flow channels (crops.py); the flow vectors sit at
# positions 0 and 1 of the flow half, so flips and transposes must move them too.
IMAGE_CHANNELS = 4
FLOW_DY, FLOW_DX = 0, 1


def normalize_percentile(
    image: np.ndarray, low: float = DISPLAY_PERCENTILES[0], high: float = DISPLAY_PERCENTILES[1]
) -> np.ndarray:
    """Scale to [0, 1] between two percentiles of the image (robust to hot pixels)."""
    image = image.astype(np.float32, copy=False)
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def to_unit(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map intensities to [0, 1] between two fixed values (e.g. per-plate percentiles)."""
    if high <= low:
        return np.zeros(image.shape, dtype=np.float32)
    return np.clip((image.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def flow_planes(flows: np.ndarray, probability_is_logit: bool) -> np.ndarray:
    """The four flow channels in [0, 1]: dY, dX, cell probability, flow magnitude."""
    dy, dx, prob = flows[0].astype(np.float32), flows[1].astype(np.float32), flows[2].astype(np.float32)
    if probability_is_logit:  # Cellpose returns the cell probability as a logit
        prob = 1.0 / (1.0 + np.exp(-np.clip(prob, -30, 30)))
    magnitude = np.sqrt(dy**2 + dx**2)
    return np.stack(
        [
            np.clip((dy + 1.0) / 2.0, 0, 1),
            np.clip((dx + 1.0) / 2.0, 0, 1),
            np.clip(prob, 0, 1),
            np.clip(magnitude, 0, 1),
        ]
    )


def prepare_batch(
    crops: torch.Tensor, size: int, mean: float = 0.5, std: float = 0.5, channels_last: bool = True
) -> torch.Tensor:
    """The network's input contract: uint8 ``(B, 8, S, S)`` → float ``(B, 8, size, size)``, scaled to [0, 1],
    resized (bilinear) and normalised with ``mean``/``std`` (the study's 0.5 / 0.5)."""
    import torch  # lazily: see the module docstring
    import torch.nn.functional as F

    x = crops.float().div_(255.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips and transposes (all 8 symmetries of the square), per crop, on stored values.

    The flow vectors turn with the image: a horizontal flip negates dX, a vertical flip dY, a
    transpose swaps them. Values are stored as (v + 1) / 2 in [0, 1] (uint8: × 255), so negation
    is ``top - value`` and exact on uint8.
    """
    import torch  # lazily: see the module docstring

    top = 255 if x.dtype == torch.uint8 else 1.0
    flips = torch.rand(x.shape[0], 3, generator=generator).lt(0.5).to(x.device)
    dy, dx = IMAGE_CHANNELS + FLOW_DY, IMAGE_CHANNELS + FLOW_DX
    x = x.clone()
    sel = flips[:, 0]
    if sel.any():  # horizontal flip
        x[sel] = x[sel].flip(-1)
        x[sel, dx] = top - x[sel, dx]
    sel = flips[:, 1]
    if sel.any():  # vertical flip
        x[sel] = x[sel].flip(-2)
        x[sel, dy] = top - x[sel, dy]
    sel = flips[:, 2]
    if sel.any():  # transpose
        order = [*range(IMAGE_CHANNELS), dx, dy, *range(IMAGE_CHANNELS + 2, x.shape[1])]
        x[sel] = x[sel].transpose(-1, -2)[:, order]
    return x

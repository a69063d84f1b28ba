"""Figures (PNG): the study's Figure 1 panel (original, outlines, masks, flows) and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt
import numpy as np
from skimage import segmentation

from cellresponse.channels import normalize_percentile
from cellresponse.io import atomic_path


def flow_to_rgb(flows: np.ndarray) -> np.ndarray:
    """Cellpose's flow colouring: hue = direction, brightness = magnitude."""
    dy, dx = flows[0], flows[1]
    angle = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi)
    magnitude = np.sqrt(dy**2 + dx**2)
    magnitude = np.clip(magnitude / (np.percentile(magnitude, 99) + 1e-6), 0, 1)
    hsv = np.stack([angle, np.ones_like(angle), magnitude], axis=-1)
    return matplotlib.colors.hsv_to_rgb(hsv)


def label_to_rgb(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    palette = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    palette[0] = 0
    return palette[labels]


def figure1(image: np.ndarray, labels: np.ndarray, flows: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Save the four-panel figure for one field: original, outlines, masks, flows."""
    shown = normalize_percentile(image)
    outlined = segmentation.mark_boundaries(np.dstack([shown] * 3), labels, color=(1, 0.2, 0.2), mode="inner")
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = [
        (shown, "original (segmentation input)", "gray"),
        (outlined, f"outlines ({int(labels.max())} cells)", None),
        (label_to_rgb(labels), "masks", None),
        (flow_to_rgb(flows), "flows (hue = direction)", None),
    ]
    for ax, (data, name, cmap) in zip(axes, panels, strict=True):
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path

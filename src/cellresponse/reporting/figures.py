"""Figures (PNG): the study's Figure 1 panel (original, outlines, masks, flows), training curves and the
confusion matrix.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas directly: no pyplot state,
no backend switch (importing this module changes nothing in matplotlib's global setup), never a window.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox
from skimage import segmentation

from cellresponse.input.io import atomic_path
from cellresponse.input.transforms import normalize_percentile

MAX_CONFUSION_CLASSES = 25


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | Path, dpi: int) -> Path:
    """Write ``figure`` as a PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    return path


def flow_to_rgb(flows: np.ndarray) -> np.ndarray:
    """Cellpose's flow colouring: hue = direction, brightness = magnitude."""
    dy, dx = flows[0].astype(np.float32), flows[1].astype(np.float32)
    angle = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi)
    magnitude = np.sqrt(dy**2 + dx**2)
    magnitude = np.clip(magnitude / (np.percentile(magnitude, 99) + 1e-6), 0, 1)
    hsv = np.stack([angle, np.ones_like(angle), magnitude], axis=-1)
    return hsv_to_rgb(hsv)


def label_to_rgb(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    palette = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    palette[0] = 0
    return palette[labels]


def figure1(image: np.ndarray, labels: np.ndarray, flows: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Save the four-panel figure for one field: original, outlines, masks, flows."""
    shown = normalize_percentile(image)
    outlined = segmentation.mark_boundaries(np.dstack([shown] * 3), labels, color=(1, 0.2, 0.2), mode="inner")
    fig = new_figure(16, 4.4)
    axes = fig.subplots(1, 4)
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
    return save_png(fig, path, dpi=80)


def scale_bar_length(width: int) -> int:
    """A round length (px) of about a fifth of the image width: 10, 20, 50, 100, 200, …"""
    target = max(width / 5, 1)
    steps = [m * 10**e for e in range(0, 5) for m in (1, 2, 5)]
    return int(max(s for s in steps if s <= target) if target >= 1 else 1)


def add_scale_bar(ax: Any, width: int, height: int, pixel_size_um: float | None = None) -> None:
    """A white bar at the bottom right, labelled in µm when the pixel size is known, else in pixels."""
    length = scale_bar_length(width)
    x0, y0 = width * 0.95 - length, height * 0.93
    ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=4, solid_capstyle="butt")
    label = f"{length * pixel_size_um:g} µm" if pixel_size_um else f"{length} px"
    ax.text(x0 + length / 2, y0 - height * 0.03, label, color="white", ha="center", va="bottom", fontsize=11)


def treatment_panels(
    panels: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, pixel_size_um: float | None = None
) -> Path:
    """One row per treatment (title, segmentation input, cell labels): the field and its cell outlines side by
    side, with a scale bar — the control first, then the treatments that differ most from it."""
    rows = len(panels)
    fig = new_figure(10, 4.6 * rows)
    axes = np.atleast_2d(fig.subplots(rows, 2))
    for (title, image, labels), row in zip(panels, axes, strict=True):
        shown = normalize_percentile(image)
        outlined = segmentation.mark_boundaries(np.dstack([shown] * 3), labels, color=(1, 0.2, 0.2), mode="inner")
        for ax, data, name in ((row[0], shown, "field"), (row[1], outlined, f"{int(labels.max())} cells")):
            ax.imshow(data, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
            ax.set_title(f"{title} — {name}", fontsize=12)
            ax.axis("off")
            add_scale_bar(ax, image.shape[1], image.shape[0], pixel_size_um)
    fig.tight_layout()
    return save_png(fig, path, dpi=90)


def plot_history(history: list[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure(9, 3.2)
    axes = fig.subplots(1, 2)
    for key, style in (("train", "-o"), ("val", "-s")):
        axes[0].plot(epochs, [h[f"{key}_loss"] for h in history], style, label=key)
        axes[1].plot(epochs, [h[f"{key}_accuracy"] for h in history], style, label=key)
    axes[0].set(xlabel="epoch", ylabel="loss (label-smoothed CE)")
    axes[1].set(xlabel="epoch", ylabel="accuracy (cells)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_confusion(
    labels: list[str], counts: list[list[int]], path: Path, title: str, max_classes: int = MAX_CONFUSION_CLASSES
) -> Path:
    """Row-normalised confusion matrix of ``counts`` (rows true, columns called, both in ``labels`` order; at most
    ``max_classes``: the most frequent true classes)."""
    matrix = np.asarray(counts, dtype=float)
    if len(labels) > max_classes:  # the most frequent true classes only
        keep = np.argsort(-matrix.sum(1), kind="stable")[:max_classes]
        keep = np.sort(keep)
        matrix, labels = matrix[np.ix_(keep, keep)], [labels[i] for i in keep]
        title += f" (top {max_classes} classes)"
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = min(10.0, 3.0 + 0.4 * len(labels))  # readable at the page's width, whatever the class count
    fig = new_figure(size + 1.5, size)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    font = 10 if len(labels) <= 12 else 8
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=font)
    ax.set_yticks(range(len(labels)), labels, fontsize=font)
    ax.set_xlabel("predicted", fontsize=11)
    ax.set_ylabel("true", fontsize=11)
    ax.set_title(title, fontsize=12)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:  # white on dark cells, black on light ones
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=font, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


# Where a point's name may go, tried in turn: up-right, up-left, down-right, down-left of the point (points).
LABEL_OFFSETS = ((4, 4, "left", "bottom"), (-4, 4, "right", "bottom"), (4, -4, "left", "top"), (-4, -4, "right", "top"))


def place_labels(
    fig: Figure,
    ax: Axes,
    xy: np.ndarray,
    names: list[str],
    order: Iterable[int],
    others: np.ndarray | None = None,
    over_markers: Iterable[int] = (),
) -> int:
    """Name the points ``xy`` in ``order`` (the most important first), each at the first of
    :data:`LABEL_OFFSETS` where it covers no name already placed, no other marker (``xy`` and ``others``, data
    coordinates; the points in ``over_markers`` may cover markers, so that they are named even in a crowd) and
    stays inside the axes; a name that fits nowhere is left out. Returns how many were left out. Call after the
    layout is final: the boxes are measured in the figure's pixels."""
    renderer = cast(FigureCanvasAgg, fig.canvas).get_renderer()  # every figure here is drawn on Agg (new_figure)
    frame = ax.get_window_extent(renderer)
    points = ax.transData.transform(np.vstack([xy, others]) if others is not None and len(others) else xy)
    half = 4.5 * fig.dpi / 72  # a marker's half width in pixels (the crosses are ~9 points wide)
    placed: list[Bbox] = []
    left_out = 0
    crowd_ok = set(over_markers)
    for i in order:
        markers = points[:0] if i in crowd_ok else np.delete(points, i, axis=0)  # the others' markers
        for dx, dy, ha, va in LABEL_OFFSETS:
            text = ax.annotate(
                names[i], tuple(xy[i]), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha=ha, va=va
            )
            box = text.get_window_extent(renderer).expanded(1.04, 1.15)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            covers = (
                (markers[:, 0] + half > box.x0)
                & (markers[:, 0] - half < box.x1)
                & (markers[:, 1] + half > box.y0)
                & (markers[:, 1] - half < box.y1)
            )
            if inside and not covers.any() and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            text.remove()
        else:
            left_out += 1
    return left_out


def profile_map(
    references: tuple[np.ndarray, list[str]],
    queries: tuple[np.ndarray, list[str], list[bool]],
    path: str | Path,
    axis_names: tuple[str, str] = ("PC 1", "PC 2"),
) -> Path:
    """A map of treatment profiles: ``references`` (2-D positions, mechanism of each) coloured by mechanism, the
    new treatments (positions, names, novel flags) marked black (novel ones red) and named where a name fits
    without covering another (novel ones first); the figure says how many names it left out."""
    (ref_xy, ref_groups), (query_xy, query_names, novel) = references, queries
    query_xy = np.asarray(query_xy, dtype=float).reshape(-1, 2)
    fig = new_figure(9, 6.5)
    ax = fig.subplots()
    groups = sorted(set(ref_groups))
    colours = [hsv_to_rgb((i / max(len(groups), 1), 0.65, 0.85)) for i in range(len(groups))]
    for group, colour in zip(groups, colours, strict=True):
        chosen = np.asarray(ref_groups) == group
        ax.scatter(ref_xy[chosen, 0], ref_xy[chosen, 1], s=36, color=colour, alpha=0.75, label=group)
    flags = np.asarray(novel, dtype=bool)
    for mask, marker_colour in ((~flags, "black"), (flags, "red")):
        ax.scatter(query_xy[mask, 0], query_xy[mask, 1], marker="X", s=90, color=marker_colour)
    ax.scatter([], [], marker="X", color="black", label="new treatment")
    ax.scatter([], [], marker="X", color="red", label="new, novel")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    ax.margins(0.08)  # room for the names of points at the edge
    fig.tight_layout()
    order = sorted(range(len(query_names)), key=lambda i: (not flags[i], i))
    others = np.asarray(ref_xy, dtype=float)
    left_out = place_labels(fig, ax, query_xy, list(query_names), order, others, np.flatnonzero(flags))
    if left_out:
        note = f"{left_out} of {len(query_names)} names left out where they would overlap (all in the table below)"
        ax.text(0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.35")
    return save_png(fig, path, dpi=90)


def similarity_heatmap(matrix: np.ndarray, rows: list[str], columns: list[str], path: str | Path) -> Path:
    """New treatments (rows) against reference treatments (columns): cosine similarity, in the order given."""
    fig = new_figure(min(2.5 + 0.22 * len(columns), 16), min(2.0 + 0.22 * len(rows), 14))
    ax = fig.subplots()
    shown = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    fig.colorbar(shown, ax=ax, label="cosine similarity", shrink=0.6)
    fig.tight_layout()
    return save_png(fig, path, dpi=90)


def cell_strips(rows: list[tuple[str, list[np.ndarray]]], path: str | Path, pixel_size_um: float | None = None) -> Path:
    """Rows of cell crops (RGB, same side), each row titled, drawn as one mosaic (one image, not a panel per crop:
    a hundred panels cost matplotlib seconds); a scale bar on the first crop of each row."""
    side = max(crop.shape[0] for _, crops in rows for crop in crops)
    width = max(len(crops) for _, crops in rows)
    gap, title = max(side // 12, 2), max(side // 3, 12)
    mosaic = np.ones((len(rows) * (side + title), width * (side + gap), 3), np.float32)
    for r, (_, crops) in enumerate(rows):
        top = r * (side + title) + title
        for c, crop in enumerate(crops):
            left = c * (side + gap)
            mosaic[top : top + crop.shape[0], left : left + crop.shape[1]] = crop[..., :3]
    fig = new_figure(min(1.1 * width + 0.4, 12), min(1.1 * len(rows) * (side + title) / side + 0.3, 40))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    length = scale_bar_length(side)
    label = f"{length * pixel_size_um:g} µm" if pixel_size_um else f"{length} px"
    for r, (name, _) in enumerate(rows):
        top = r * (side + title)
        ax.text(2, top + title * 0.8, name, fontsize=8, va="bottom")
        y = top + title + side * 0.92
        ax.plot([side * 0.95 - length, side * 0.95], [y, y], color="white", linewidth=2.5, solid_capstyle="butt")
        ax.text(side * 0.95 - length / 2, y - side * 0.04, label, color="white", fontsize=6, ha="center", va="bottom")
    return save_png(fig, path, dpi=90)


def plot_illumination(functions: dict[str, dict[str, np.ndarray]], path: str | Path, plates: int = 3) -> Path:
    """The illumination functions of up to ``plates`` plates (rows) and every channel (columns), each with its own
    colour scale (they are ≥ 1: the brightest corner of the field is 1)."""
    shown = list(functions)[:plates]
    channels = list(functions[shown[0]])
    figure = new_figure(2.2 * len(channels), 2.0 * len(shown) + 0.3)
    for row, plate in enumerate(shown):
        for col, channel in enumerate(channels):
            axis = figure.add_subplot(len(shown), len(channels), row * len(channels) + col + 1)
            function = functions[plate][channel]
            image = axis.imshow(function, cmap="viridis")
            figure.colorbar(image, ax=axis, fraction=0.046, pad=0.02)
            axis.set_title(f"{plate} · {channel}\nmax/min {function.max() / function.min():.2f}", fontsize=7)
            axis.set_axis_off()
    figure.tight_layout()
    return save_png(figure, path, dpi=90)

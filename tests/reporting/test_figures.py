"""The figures' own rules, checked on the figure objects (no image comparison)."""

from __future__ import annotations

import itertools

import numpy as np

from cellresponse.reporting.figures import new_figure, place_labels


def test_map_names_never_overlap_and_novel_treatments_are_named_first():
    """55 treatments in two crowds (the walk-through's new plate has 55): the names placed never overlap one
    another or leave the axes, every name left out is counted, and the novel ones (allowed over markers) are all
    named however crowded."""
    rng = np.random.default_rng(0)
    xy = np.vstack([rng.normal(0.5, 0.2, size=(30, 2)), rng.normal(-1, 0.3, size=(25, 2))])
    names = [f"compound-{i} @ {rng.choice([0.1, 1.0, 3.0])}" for i in range(len(xy))]
    novel = np.arange(0, len(xy), 11)
    fig = new_figure(9, 6.5)
    ax = fig.subplots()
    ax.scatter(xy[:, 0], xy[:, 1])
    fig.tight_layout()
    order = [*novel, *(i for i in range(len(xy)) if i not in novel)]
    left_out = place_labels(fig, ax, xy, names, order, rng.normal(size=(40, 2)), novel)
    renderer = fig.canvas.get_renderer()
    texts = ax.texts
    assert 0 < left_out < len(xy) and len(texts) == len(xy) - left_out
    boxes = [t.get_window_extent(renderer) for t in texts]
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert {names[i] for i in novel} <= {t.get_text() for t in texts}


def test_a_few_names_are_all_placed():
    fig = new_figure(6, 4)
    ax = fig.subplots()
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    ax.scatter(xy[:, 0], xy[:, 1])
    ax.margins(0.2)
    fig.tight_layout()
    assert place_labels(fig, ax, xy, ["a", "b", "c"], range(3)) == 0 and len(ax.texts) == 3

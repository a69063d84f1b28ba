"""Tallies of calls made a plate at a time (issue 36): merged, they score exactly as one table of every test cell's
probabilities does, and they keep a few numbers a cell instead of its probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.evaluation.call_tallies import merge_tallies, tally_cells
from cellresponse.evaluation.classification import classification_metrics, network_test_scores, tally_scores
from cellresponse.evaluation.votes import LEVELS, vote

CLASSES = ["a", "b", "c", "d", "e"]


def screen_cells(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three plates of four wells of three images each; every well one label (one label, ``z``, the model lacks),
    probabilities with exact ties in some rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for plate in ("P2", "P1", "P3"):  # not sorted: the parts come in the image table's order
        for well in range(4):
            label = rng.choice([*CLASSES[:4], "z"])
            for site in range(3):
                for _ in range(rng.integers(1, 9)):
                    rows.append((plate, f"w{well}", f"{plate}-w{well}-s{site}", label))
    cells = pd.DataFrame(rows, columns=["plate", "well", "image_id", "true_label"])
    probs = rng.dirichlet(np.ones(len(CLASSES)), len(cells)).astype(np.float32)
    probs[::7] = 0.2  # ties everywhere: first class wins, top-k takes the first columns
    return cells, probs


def test_tallies_of_each_plate_merged_score_as_the_whole_table():
    cells, probs = screen_cells()
    parts = []
    for plate in ("P2", "P1", "P3"):
        mine = (cells["plate"] == plate).to_numpy()
        parts.append(tally_cells(cells[mine].reset_index(drop=True), probs[mine], CLASSES, 3, LEVELS))
    merged = tally_scores(merge_tallies(parts), CLASSES, 3)
    assert merged == network_test_scores(cells, probs, CLASSES, 3)

    # and as scikit-learn's metrics of the strings (classification_metrics) and one vote over every cell give them
    called = np.asarray(CLASSES)[probs.argmax(1)]
    assert merged["cell"] == classification_metrics(cells["true_label"], called, probs, CLASSES, 3)
    assert merged["cell"]["n"] == len(cells) and 0 < merged["cell"]["accuracy"] < 1
    for level in LEVELS[:2]:
        tally = merge_tallies(parts).levels[level]
        keys = cells["image_id"] if level == "image" else cells["plate"] + "/" + cells["well"]
        for method in ("soft", "majority"):
            groups, scores = vote(keys.to_numpy(), probs, method)
            assert tally.groups.tolist() == groups.tolist()
            np.testing.assert_array_equal(tally.scores(method), scores)
    assert "skipped" in merged["plate"]  # plates mix labels: no plate vote
    assert merged["well"]["soft_vote"]["n"] == 12 and merged["image"]["soft_vote"]["n"] == 36


def test_a_tally_keeps_a_few_numbers_a_cell():
    cells, probs = screen_cells(1)
    tally = tally_cells(cells, probs, CLASSES, 3, LEVELS)
    per_cell = tally.true_codes.nbytes + tally.called.nbytes + tally.in_top.nbytes
    assert per_cell == 9 * len(cells)  # two int32 codes and a boolean, whatever the number of classes
    assert tally.labels.tolist() == sorted(set(cells["true_label"]))
    assert len(tally) == len(cells)


def test_parts_that_share_a_group_are_refused():
    cells, probs = screen_cells()
    half = len(cells) // 2
    first = tally_cells(cells.iloc[:half].reset_index(drop=True), probs[:half], CLASSES, 3, LEVELS)
    second = tally_cells(cells.iloc[half:].reset_index(drop=True), probs[half:], CLASSES, 3, LEVELS)
    with pytest.raises(ValueError, match="in two parts"):
        merge_tallies([first, second])

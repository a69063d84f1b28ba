"""The verdicts that compare the network with the features-only baseline and the frozen embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.learning.baselines import (
    cell_features_baseline,
    chosen_training_rows,
    compare_with_baseline,
    compare_with_embeddings,
    sanity_check,
    split_summary,
)
from cellresponse.learning.splits import TEST
from tests.conftest import run_metrics


def _verdict_metrics(network: float, features: float, deep: float, **more):
    return run_metrics(
        image={"soft_vote": {"accuracy": network, "n": 220}},
        baseline_features={"image": {"accuracy": features, "n": 220}},
        profile_models={"deep": {"image": {"accuracy": deep, "n": 220}}},
        **more,
    )


@pytest.mark.parametrize(
    ("network", "other", "baseline_says", "embeddings_say"),
    [
        (0.982, 0.977, "are level at image level (0.982 vs 0.977)", "is level with the frozen ImageNet embeddings"),
        (0.927, 0.977, "beats the CNN at image level (0.977 vs 0.927)", "adds nothing over the frozen ImageNet"),
        (0.990, 0.950, "The CNN beats the features-only baseline", "adds to the frozen embeddings"),
    ],
)
def test_the_verdicts_say_which_model_is_better_and_when_the_difference_is_within_the_margin(
    network, other, baseline_says, embeddings_say
):
    metrics = _verdict_metrics(network, other, other)
    assert baseline_says in compare_with_baseline(metrics, "soft")
    embeddings = compare_with_embeddings(metrics, "soft")
    assert embeddings_say in embeddings and f"({network:.3f} vs {other:.3f}" in embeddings
    if network > other:  # a network ahead by a hair is never said to add "nothing"
        assert "nothing" not in embeddings
    no_deep = run_metrics(image=metrics.image.to_json())
    assert compare_with_embeddings(no_deep, "soft") == ""  # no deep model: no sentence


def test_the_baseline_verdict_does_not_ask_for_what_predict_already_does():
    metrics = _verdict_metrics(0.966, 1.000, 0.943)
    assert "--model measured" in compare_with_baseline(metrics, "soft")
    chosen = compare_with_baseline(_verdict_metrics(0.966, 1.000, 0.943, auto={"model": "measured"}), "soft")
    assert "predict already uses it" in chosen and "--model measured" not in chosen
    both = _verdict_metrics(0.966, 1.000, 0.943, auto={"model": "both"})
    assert "--model measured" in compare_with_baseline(both, "soft")


def screen_cells(plates: int = 3, images: int = 8, cells: int = 40) -> list[pd.DataFrame]:
    """A screen's split cells, one table a plate, with labels whose features differ (so the models learn)."""
    rng = np.random.default_rng(3)
    parts = []
    for plate in range(plates):
        image_ids = np.repeat([f"P{plate}_{i}" for i in range(images)], cells)
        labels = np.repeat([("DMSO", "a", "b", "c")[i % 4] for i in range(images)], cells)
        shift = {"DMSO": [0.0, 0.0, 0.0], "a": [2.0, 0.0, 0.0], "b": [0.0, 2.0, 0.0], "c": [0.0, 0.0, 2.0]}
        values = rng.normal(size=(len(image_ids), 3)) + np.array([shift[label] for label in labels])
        values[::17, 1] = np.inf
        part = pd.DataFrame(values, columns=FEATURES)
        part.insert(0, "image_id", image_ids)
        part["true_label"], part["plate"], part["well"] = labels, f"P{plate}", image_ids
        parts.append(part)
    return parts


FEATURES = ["AreaShape_Area", "Intensity_MeanIntensity_DNA", "Texture_Contrast_DNA"]


def test_single_cell_baselines_read_plate_by_plate_give_the_whole_tables_figures():
    parts = screen_cells()
    whole = pd.concat(parts, ignore_index=True)
    image_ids = whole["image_id"].unique()
    sides = pd.Series(np.where(np.arange(len(image_ids)) % 3 == 0, TEST, "train"), index=image_ids)
    for cap in (10_000, 300):  # every training cell, then a seeded sample of them
        by_plate = cell_features_baseline(lambda: iter(parts), FEATURES, sides, 7, 3, max_train=cap)
        at_once = cell_features_baseline(lambda: [whole], FEATURES, sides, 7, 3, max_train=cap)
        assert by_plate == at_once and by_plate["image"]["accuracy"] > 0.5
        split = split_summary(lambda: iter(parts), sides)  # read once by a caller running both: the same figures
        assert cell_features_baseline(lambda: iter(parts), FEATURES, sides, 7, 3, cap, split=split) == by_plate
        check = sanity_check(lambda: iter(parts), FEATURES, sides, "DMSO", 7, max_train=cap)
        assert check == sanity_check(lambda: [whole], FEATURES, sides, "DMSO", 7, max_train=cap)
        assert check["n"] == int((whole["image_id"].map(sides) == TEST).sum()) and check["balanced_accuracy"] > 0.6
    # the sample is the rows DataFrame.sample draws from the whole training side, in its order
    train = whole[whole["image_id"].map(sides) != TEST]
    chosen = np.random.RandomState(7).choice(len(train), 300, replace=False)
    rows = chosen_training_rows(lambda: iter(parts), sides, chosen, FEATURES)
    expected = train.sample(300, random_state=7)[FEATURES].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, expected)
    assert sanity_check(lambda: iter(parts), FEATURES, sides.replace(TEST, "train"), "DMSO")["skipped"]

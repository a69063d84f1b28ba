"""The verdicts that compare the network with the features-only baseline and the frozen embeddings."""

from __future__ import annotations

import pytest

from cellresponse.learning.baselines import compare_with_baseline, compare_with_embeddings
from tests.conftest import run_metrics


def _verdict_metrics(network: float, features: float, deep: float, **more):
    return run_metrics(
        image={"soft_vote": {"accuracy": network}},
        baseline_features={"image": {"accuracy": features}},
        profile_models={"deep": {"image": {"accuracy": deep}}},
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
    assert compare_with_embeddings(run_metrics(image=metrics.image), "soft") == ""  # no deep model: no sentence


def test_the_baseline_verdict_does_not_ask_for_what_predict_already_does():
    metrics = _verdict_metrics(0.966, 1.000, 0.943)
    assert "--model measured" in compare_with_baseline(metrics, "soft")
    chosen = compare_with_baseline(_verdict_metrics(0.966, 1.000, 0.943, auto={"model": "measured"}), "soft")
    assert "predict already uses it" in chosen and "--model measured" not in chosen
    both = _verdict_metrics(0.966, 1.000, 0.943, auto={"model": "both"})
    assert "--model measured" in compare_with_baseline(both, "soft")

"""Where wrong calls go against the labels' groups (a compound mistaken for another of its mechanism)."""

from __future__ import annotations

from cellresponse.evaluation.label_groups import wrong_calls_sentence
from cellresponse.evaluation.run_metrics import Confusion
from tests.conftest import run_metrics


def test_the_report_says_where_the_auto_models_wrong_calls_go():
    pairs = [{"true": "simvastatin", "predicted": "mevinolin", "n": 11, "same_group": True}]
    image = {"n": 220, "wrong": 20, "wrong_within_group": 19, "share_within_group": 0.95, "group_accuracy": 0.995}
    metrics = run_metrics(
        label="Metadata_Compound",
        auto={"model": "both"},
        wrong_calls={"column": "Metadata_MoA", "models": {"both": {"image": {**image, "pairs": pairs}}}},
    )
    sentence = wrong_calls_sentence(metrics)
    assert "the both model (auto) called 20 wrongly; 19 of them (95%) named another Metadata_Compound" in sentence
    assert "right on 0.995 of images" in sentence and "simvastatin → mevinolin (11)" in sentence
    assert "finds the Metadata_MoA" in sentence
    scattered = {**image, "wrong_within_group": 5, "share_within_group": 0.25, "pairs": pairs}
    metrics = run_metrics(
        label="Metadata_Compound",
        auto={"model": "both"},
        wrong_calls={"column": "Metadata_MoA", "models": {"both": {"image": scattered}}},
    )
    assert "finds the" not in wrong_calls_sentence(metrics)  # errors across mechanisms: no such claim
    assert wrong_calls_sentence(run_metrics(label="x")) == ""


def test_group_accuracy_counts_calls_that_name_the_true_labels_group():
    from cellresponse.evaluation.classification import classification_metrics
    from cellresponse.evaluation.label_groups import group_accuracy

    groups = {"gefitinib": "EGFR", "erlotinib": "EGFR", "taxol": "TUBB"}
    true = ["gefitinib", "gefitinib", "taxol", "taxol", "dmso"]
    called = ["erlotinib", "taxol", "taxol", "gefitinib", "nocodazole"]  # right target, wrong, right, wrong, right
    confusion = Confusion(**classification_metrics(true, called, None, sorted(set(true + called)))["confusion"])
    assert group_accuracy(confusion, groups) == 0.6  # two labels with no group: the same group, "?"
    assert group_accuracy(confusion, {}) is None

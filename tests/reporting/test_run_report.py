"""The report of a run (reporting.run_report): each section says what its numbers mean."""

from __future__ import annotations

from dataclasses import replace

from cellresponse.evaluation.classification import classification_metrics
from cellresponse.evaluation.run_metrics import ClassScores, Confusion, SanityCheck, Scores, SplitReport
from cellresponse.reporting.run_report import (
    headline_of_the_predicting_model,
    never_predicted,
    sanity_meaning,
    section_calls_per_class,
)
from tests.conftest import run_metrics


def row(label: str, *numbers: object) -> str:
    """A table row as html_table writes it: the label as text, then numbers (right-aligned cells)."""
    return f"<td>{label}</td>" + "".join(f'<td class="n">{v}</td>' for v in numbers)


def test_the_report_says_what_a_sanity_check_and_a_never_predicted_class_mean():
    def meaning(accuracy: float, balanced: float, majority: float) -> str:
        return sanity_meaning(SanityCheck(accuracy=accuracy, balanced_accuracy=balanced, majority_rate=majority))

    below = meaning(0.950, 0.51, 0.952)
    assert "no better than chance" in below and "do not tell control from treated" in below
    assert "barely above chance" in meaning(0.95, 0.57, 0.95)
    # few controls: plain accuracy under the majority rate while the balanced accuracy shows a real difference
    few_controls = meaning(0.918, 0.672, 0.952)
    assert "differ (balanced accuracy 0.672" in few_controls and "do not tell" not in few_controls
    assert "told apart" in meaning(0.95, 0.9, 0.6)
    voted = Scores(n=8, accuracy=0.625, confusion=Confusion(["DMSO", "compound-05"], [[5, 0], [3, 0]]))
    assert never_predicted(voted) == ["compound-05 is never predicted: its 3 images were called DMSO most often."]


def test_a_benchmark_not_computed_says_why():
    from cellresponse.evaluation.run_metrics import NscScores, ProfileMetrics
    from cellresponse.reporting.run_report import section_profiles

    missing = {"skipped": "columns ['Metadata_target'] not in the metadata — name the MoA and compound columns"}
    assert NscScores.from_json(missing).summary() == f"NSC MoA accuracy not computed: {missing['skipped']}"
    lonely = NscScores(accuracy=float("nan"), chance_rate=float("nan"), n=0, skipped=6)
    assert "no treatment has another compound of the same MoA" in lonely.summary()
    assert NscScores(accuracy=0.9, chance_rate=0.2, n=10, skipped=0).summary().endswith("0.900 (chance 0.200)")
    profiles = ProfileMetrics.from_json({"kinds": {"measured": {"features": 5, "nsc": missing}}})
    html_text = "".join(section_profiles(profiles))
    assert "not computed: columns [&#x27;Metadata_target&#x27;] not in the metadata" in html_text


def test_the_report_says_when_plates_give_the_class_away():
    from cellresponse.reporting.run_report import section_split

    split = SplitReport(by="well", images={"train": 30, "test": 9}, plate_confounded_images=5)
    text = "".join(section_split(replace(split, plate_confounded_examples=["AZ138", "taxol"])))
    assert "5 of 9 test images sit on plates whose training images all carry the same label (e.g. AZ138, taxol)" in text
    assert "--split-column" in text
    assert "sit on plates" not in "".join(section_split(replace(split, plate_confounded_images=0)))


def test_a_skipped_sanity_check_says_why(tmp_path):
    from cellresponse.reporting.run_report import section_results

    metrics = {
        "image": {"soft_vote": {"accuracy": 0.9, "n": 10}},
        "chance_rate": 0.2,
        "majority_rate": 0.3,
        "sanity_check": {"skipped": "needs 'DMSO' and treated cells on both sides"},
    }
    text = "".join(section_results(run_metrics(**metrics), tmp_path))
    assert "Sanity check (control vs treated cells) not run: needs &#x27;DMSO&#x27; and treated cells" in text


def test_the_report_leads_with_the_model_predict_uses():
    # a biologist reads the first figure as what `predict` gives: the chosen profile model's, not the network's
    metrics = {
        "chance_rate": 0.056,
        "majority_rate": 0.127,
        "image": {"soft_vote": {"accuracy": 0.591, "n": 220}},
        "profile_models": {
            "measured": {
                "image": {"accuracy": 0.736, "n": 220, "mean_probability": 0.767},
                "well": {"accuracy": 0.745, "n": 55},
            }
        },
        "auto": {"model": "measured"},
    }
    lead = headline_of_the_predicting_model(run_metrics(**metrics))
    assert "uses the <b>measured</b> profile model" in lead and "<b>0.736</b> per image on 220 held-out" in lead
    assert "<b>0.745</b> per well (55 wells)" in lead and "mean probability of 0.767" in lead
    assert "0.591" not in lead
    # the network predicts (or an older run records no choice): its paragraph stays the headline
    assert headline_of_the_predicting_model(run_metrics(**{**metrics, "auto": {"model": "network"}})) == ""
    assert headline_of_the_predicting_model(run_metrics(**{k: v for k, v in metrics.items() if k != "auto"})) == ""


def test_the_confusion_matrix_and_per_class_table_are_the_predicting_models(tmp_path):
    # the report's per-class view must describe the calls `predict` makes: with a profile model as `auto`, its
    # confusion and per-class accuracy (the network's recall beside it), not the network's
    truth = ["a", "a", "b", "b", "c", "c"]
    profile = classification_metrics(truth, ["a", "a", "b", "b", "c", "b"], None, ["a", "b", "c"], 5)
    network = classification_metrics(truth, ["b", "a", "b", "b", "a", "a"], None, ["a", "b", "c"], 5)
    # the profile blocks in metrics.json keep only the matrix; derived per class, it matches scikit-learn's
    per_class = {label: ClassScores(**scores) for label, scores in profile["per_class"].items()}
    assert Confusion(**profile["confusion"]).per_class() == per_class
    profile_block = {k: v for k, v in profile.items() if k != "per_class"}
    metrics = {
        "image": {"soft_vote": network},
        "profile_models": {"measured": {"image": profile_block}},
        "auto": {"model": "measured"},
    }
    page = "".join(section_calls_per_class(run_metrics(**metrics), "soft", tmp_path))
    # with the grouping evaluate records, each class is named with its MoA (a class outside it: a dash)
    grouped = {**metrics, "label_grouping": {"column": "Metadata_MoA", "groups": {"a": "M1", "b": "M1"}}}
    grouped_page = "".join(section_calls_per_class(run_metrics(**grouped), "soft", tmp_path))
    assert "<th>class</th><th>Metadata_MoA</th><th>images</th>" in grouped_page
    assert (
        '<td>a</td><td>M1</td><td class="n">2</td><td class="n">1.000</td>' in grouped_page
        and '<td>c</td><td>—</td><td class="n">2</td>' in grouped_page
    )
    assert "the measured profile model, which <code>predict</code> uses" in page
    assert "<th>accuracy (recall), measured</th>" in page and "<th>accuracy (recall), network</th>" in page
    # class c: 1 of 2 right under the profile model, 0 under the network; a: 2 of 2 against 1 of 2
    assert row("c", 2, "0.500", "1.000", "0.000") in page
    assert row("a", 2, "1.000", "1.000", "0.500") in page
    assert "c is never predicted" not in page  # that is the network's failure, not the predicting model's
    # the network predicts: its own confusion, its never-predicted classes, no second recall column
    page = "".join(section_calls_per_class(run_metrics(**{**metrics, "auto": {"model": "network"}}), "soft", tmp_path))
    assert "which <code>predict</code> uses" not in page and page.count("accuracy (recall)") == 1
    assert "c is never predicted: its 2 images were called a most often." in page
    assert (tmp_path / "confusion_image.png").is_file()


def test_report_shows_top_k_whatever_k_is():
    """metrics.json keys the top-k accuracy as top<k> (evaluation.top_k); the report read "top5" only."""
    from cellresponse.reporting.run_report import metrics_rows
    from tests.conftest import run_metrics

    block = {"accuracy": 0.5, "balanced_accuracy": 0.5, "top3": 0.75, "n": 4}
    votes = {"majority_vote": block, "soft_vote": block}
    metrics = {"cell": {**block, "chance_rate": 0.1, "majority_rate": 0.2}, "image": votes}
    rows = metrics_rows(run_metrics(**metrics))
    assert [row[5] for row in rows] == [0.75, 0.75, 0.75]
    assert [row[3] for row in rows] == ["0.15–0.85"] * 3  # 2 of 4 right: the Wilson interval says how little that is

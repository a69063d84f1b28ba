"""What a new user meets first: refusals before any image work (with the near match), suggested commands that
work, the model found from a run folder, and a report that explains its numbers."""

from __future__ import annotations

import json

import pytest

from cellresponse.errors import InputError
from cellresponse.evaluation.classification import classification_metrics, per_class_from_confusion
from cellresponse.evaluation.label_groups import wrong_calls_sentence
from cellresponse.learning.baselines import compare_with_baseline, compare_with_embeddings
from cellresponse.learning.bundle import find_bundle
from cellresponse.reporting.run_report import (
    headline_of_the_predicting_model,
    never_predicted,
    sanity_meaning,
    section_calls_per_class,
)
from tests.conftest import run_cli, run_metrics


def test_a_misspelt_label_is_refused_before_segmentation_and_leaves_nothing(tiny_plates, tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "run", "--load-data", tiny_plates / "load_data.csv", "--label", "Metadata_pert_inam", "--out", run,
        "--workers", "0", "--no-progress", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "did you mean Metadata_pert_iname?" in result.stderr
    assert "segmentation backend" not in result.stderr  # the segment stage never started
    assert not run.exists()  # a refused command leaves no run folder behind


@pytest.mark.parametrize(
    "flags, near",
    [
        (["--split-column", "Metadata_Plat", "--test-values", "P1"], "Metadata_Plate"),
        (["--set", "profiles.batch=Metadata_Plat"], "Metadata_Plate"),
        (["--set", "profiles.moa=Metadata_targt"], "Metadata_target"),
    ],
)
def test_a_misspelt_split_or_profile_column_is_refused_before_segmentation(tiny_plates, tmp_path, flags, near):
    """Every column a command names is checked before any image work (a misspelt --split-column used to run
    segment, measure, crops and embed first)."""
    run = tmp_path / "run"
    result = run_cli(
        "run", "--load-data", tiny_plates / "load_data.csv", *flags, "--out", run, "--workers", "0",
        "--no-progress", check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"did you mean {near}?" in result.stderr
    assert "segmentation backend" not in result.stderr and not run.exists()


def test_a_misspelt_config_key_names_the_near_one(tiny_plates, tmp_path):
    result = run_cli("config", "show", "--set", "training.max_epoch=3", check=False)
    assert result.returncode == 2 and "did you mean training.max_epochs?" in result.stderr


def test_the_suggested_command_works(tiny_plates, tmp_path):
    run = tmp_path / "run"
    refused = run_cli("segment", run, "--no-progress", check=False)
    assert refused.returncode == 2
    suggestion = refused.stderr.split("run `")[1].split("`")[0]
    assert suggestion == f"cellresponse images (--images DIR | --load-data CSV) --out {run}"
    typed = suggestion.replace("(--images DIR | --load-data CSV)", f"--load-data {tiny_plates / 'load_data.csv'}")
    run_cli(*typed.split()[1:])
    assert (run / "images.parquet").is_file()


def test_the_bundle_is_found_from_the_run_folder_or_its_model_folder(tmp_path):
    bundle = tmp_path / "run" / "model" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text("{}")
    for given in (tmp_path / "run", tmp_path / "run" / "model", bundle):
        assert find_bundle(given) == bundle
    with pytest.raises(InputError, match="no model bundle"):
        find_bundle(tmp_path)


def test_the_report_says_what_a_sanity_check_and_a_never_predicted_class_mean():
    below = sanity_meaning({"accuracy": 0.950, "balanced_accuracy": 0.51, "majority_rate": 0.952})
    assert "no better than chance" in below and "do not tell control from treated" in below
    assert "barely above chance" in sanity_meaning({"accuracy": 0.95, "balanced_accuracy": 0.57, "majority_rate": 0.95})
    # few controls: plain accuracy under the majority rate while the balanced accuracy shows a real difference
    few_controls = sanity_meaning({"accuracy": 0.918, "balanced_accuracy": 0.672, "majority_rate": 0.952})
    assert "differ (balanced accuracy 0.672" in few_controls and "do not tell" not in few_controls
    assert "told apart" in sanity_meaning({"accuracy": 0.95, "balanced_accuracy": 0.9, "majority_rate": 0.6})
    voted = {"confusion": {"labels": ["DMSO", "compound-05"], "matrix": [[5, 0], [3, 0]]}}
    assert never_predicted(voted) == ["compound-05 is never predicted: its 3 images were called DMSO most often."]


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
    metrics.wrong_calls["models"]["both"]["image"] = scattered
    assert "finds the" not in wrong_calls_sentence(metrics)  # errors across mechanisms: no such claim
    assert wrong_calls_sentence(run_metrics(label="x")) == ""


def test_report_of_synthetic_plates_says_so_and_prints_learning_rates(tiny_demo):
    out, _ = tiny_demo
    report = (out / "run" / "report" / "index.html").read_text()
    assert "Synthetic data." in report.split("<h2>")[0]  # at the top, before the first section
    assert "<td>1.0e-03</td>" in report  # the cpu preset's learning rate, not 0.000
    assert json.loads((out / "run" / "logs" / "images.json").read_text())["synthetic"] is True
    assert "Training history (per epoch)" in report and "Table 1" not in report


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


def test_a_benchmark_not_computed_says_why():
    from cellresponse.profiling.profile_benchmarks import nsc_summary
    from cellresponse.reporting.run_report import section_profiles

    missing = {"skipped": "columns ['Metadata_target'] not in the metadata — name the MoA and compound columns"}
    assert nsc_summary(missing) == f"NSC MoA accuracy not computed: {missing['skipped']}"
    lonely = {"accuracy": float("nan"), "chance_rate": float("nan"), "n": 0, "skipped": 6}
    assert "no treatment has another compound of the same MoA" in nsc_summary(lonely)
    assert nsc_summary({"accuracy": 0.9, "chance_rate": 0.2, "n": 10, "skipped": 0}).endswith("0.900 (chance 0.200)")
    html_text = "".join(section_profiles({"kinds": {"measured": {"features": 5, "nsc": missing}}}))
    assert "not computed: columns [&#x27;Metadata_target&#x27;] not in the metadata" in html_text


def test_the_report_says_when_plates_give_the_class_away():
    from cellresponse.reporting.run_report import section_split

    split = {"by": "well", "images": {"train": 30, "test": 9}, "plate_confounded_images": 5}
    text = "".join(section_split({**split, "plate_confounded_examples": ["AZ138", "taxol"]}))
    assert "5 of 9 test images sit on plates whose training images all carry the same label (e.g. AZ138, taxol)" in text
    assert "--split-column" in text
    assert "sit on plates" not in "".join(section_split({**split, "plate_confounded_images": 0}))


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


def test_the_well_calls_are_summed_up_in_one_line():
    import pandas as pd

    from cellresponse.evaluation.prediction_tables import well_calls_summary

    calls = pd.DataFrame({"predicted_label": list("aaabbc"), "probability": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    assert (
        well_calls_summary(calls)
        == "6 wells called 3 ways — most often a (3), b (2), c (1); median probability of the call 0.65"
    )
    assert well_calls_summary(calls, shown=1).startswith("6 wells called 3 ways — most often a (3) and 2 more;")
    # how often the same model was right on the bundle's validation side, beside its (often near-1) probability
    checked = well_calls_summary(calls, validation={"accuracy": 0.717, "images": 60})
    assert checked.endswith("(on the bundle's validation side this model called 0.717 of 60 images right)")
    assert well_calls_summary(calls, validation={"accuracy": None, "skipped": "no validation side"}) == (
        well_calls_summary(calls)
    )
    # with the bundle's grouping, the calls read as what the called compounds do (a control has no target)
    calls["predicted_Metadata_MoA"] = ["statin", "statin", "statin", "Eg5", "Eg5", None]
    calls["probability_Metadata_MoA"] = [1.0, 0.9, 0.9, 0.8, 0.7, None]
    grouped = well_calls_summary(calls, validation={"accuracy": 0.717, "images": 60}, group_column="Metadata_MoA")
    assert grouped == checked + "; as Metadata_MoA: statin (3), Eg5 (2), median probability 0.90"


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
    assert per_class_from_confusion(profile["confusion"]) == profile["per_class"]
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
        "<td>a</td><td>M1</td><td>2</td><td>1.000</td>" in grouped_page
        and "<td>c</td><td>—</td><td>2</td>" in grouped_page
    )
    assert "the measured profile model, which <code>predict</code> uses" in page
    assert "<th>accuracy (recall), measured</th>" in page and "<th>accuracy (recall), network</th>" in page
    # class c: 1 of 2 right under the profile model, 0 under the network; a: 2 of 2 against 1 of 2
    assert "<td>c</td><td>2</td><td>0.500</td><td>1.000</td><td>0.000</td>" in page
    assert "<td>a</td><td>2</td><td>1.000</td><td>1.000</td><td>0.500</td>" in page
    assert "c is never predicted" not in page  # that is the network's failure, not the predicting model's
    # the network predicts: its own confusion, its never-predicted classes, no second recall column
    page = "".join(section_calls_per_class(run_metrics(**{**metrics, "auto": {"model": "network"}}), "soft", tmp_path))
    assert "which <code>predict</code> uses" not in page and page.count("accuracy (recall)") == 1
    assert "c is never predicted: its 2 images were called a most often." in page
    assert (tmp_path / "confusion_image.png").is_file()


def test_the_mechanism_column_is_found_or_the_reason_it_is_not_is_given():
    from cellresponse.config import load_config
    from cellresponse.profiling.profile_benchmarks import mechanism_benchmark_skipped

    auto = load_config()
    assert auto.moa_column(["Metadata_Compound", "Metadata_target", "Metadata_MoA"]) == "Metadata_MoA"
    assert auto.moa_column(["Metadata_Compound", "Metadata_target"]) == "Metadata_target"  # the study's CPJUMP1
    assert auto.moa_column(["Metadata_Compound"]) is None
    named = load_config(overrides=["profiles.moa=Metadata_pathway"])
    assert named.moa_column(["Metadata_MoA"]) == "Metadata_pathway"  # a named column is taken as named
    columns = ["Metadata_Compound", "Metadata_MoA"]
    assert "looked for Metadata_MoA, Metadata_moa, Metadata_target" in mechanism_benchmark_skipped(
        None, "Metadata_Compound", columns
    )
    assert "--set profiles.compound" in mechanism_benchmark_skipped("Metadata_MoA", "Metadata_MoA", columns)
    assert "['Metadata_pathway']" in mechanism_benchmark_skipped("Metadata_pathway", "Metadata_Compound", columns)
    assert mechanism_benchmark_skipped("Metadata_MoA", "Metadata_Compound", columns) is None


def test_a_mistyped_run_folder_is_said_not_to_exist(tmp_path):
    for verb in ("segment", "report", "train"):
        result = run_cli(verb, tmp_path / "runs" / "typo", "--no-progress", check=False)
        assert result.returncode == 2 and "does not exist — check the path" in result.stderr, result.stderr
        assert "run images first" not in result.stderr and "missing" not in result.stderr


def test_every_verb_accepts_no_progress():
    assert run_cli("config", "show", "--no-progress").stdout.startswith("seed:")


def test_every_output_says_what_made_it(tiny_demo):
    """Version, commit (where run from a clone) and date in every stage's log, config.yaml, metrics.json, the
    profiles' metrics, the bundle and the report — a number can be traced to the code that made it."""
    import json

    from cellresponse import __version__

    out, _ = tiny_demo
    run = out / "run"
    for path in (
        run / "logs" / "segment.json",
        run / "metrics.json",
        run / "profiles" / "metrics.json",
        run / "model" / "bundle" / "bundle.json",
    ):
        made = json.loads(path.read_text())["made_by"]
        assert made["cellresponse"] == __version__ and made["date"].startswith("20"), path
        assert "commit" in made
    assert (run / "config.yaml").read_text().startswith(f"# written by cellresponse {__version__}")
    assert f"Made by cellresponse {__version__}" in (run / "report" / "index.html").read_text()


def test_a_resumed_embed_says_there_was_nothing_to_embed(tiny_demo, tmp_path):
    import shutil

    demo, _ = tiny_demo
    run = tmp_path / "run"
    shutil.copytree(demo / "run", run)
    result = run_cli("embed", run, "--no-progress")
    printed = result.stdout + result.stderr
    assert "nothing to embed" in printed and "None cells/s" not in printed


def test_the_report_lists_what_each_test_image_was_called(tiny_demo):
    import pandas as pd

    out, _ = tiny_demo
    run = out / "run"
    page = (run / "report" / "index.html").read_text()
    assert "What each test image was called" in page
    calls = pd.read_parquet(run / "predictions" / "image_predictions.parquet")
    assert all(str(image_id) in page for image_id in calls["image_id"])


def test_train_alone_refuses_a_misspelt_reference_batch_column_before_training(tiny_plates, tmp_path):
    """profiles.batch with a batch correction names the references' batches; misspelt, it would fall back to the
    plate without a word — `train` on its own says so before any training."""
    run = tmp_path / "run"
    run_cli("images", "--load-data", tiny_plates / "load_data.csv", "--out", run, "--no-progress")
    result = run_cli(
        "train", run, "--set", "profiles.batch=Metadata_Plat", "--set", "profiles.batch_correction=harmony",
        "--no-progress", check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "did you mean Metadata_Plate?" in result.stderr
    assert not (run / "model").exists()

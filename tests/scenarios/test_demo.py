"""The README's main command, end to end on a tiny synthetic set."""

from __future__ import annotations

import json

import pandas as pd


def test_demo_end_to_end_on_a_tiny_synthetic_set(tiny_demo):
    out, stdout = tiny_demo
    report = out / "run" / "report" / "index.html"
    assert str(report) in stdout and report.stat().st_size > 10_000
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["split"]["by"] == "well" and metrics["split"]["leaky_classes"] == 0
    assert {"majority_vote", "soft_vote"} <= set(metrics["image"])
    assert metrics["baseline_features"]["image"]["n"] == metrics["image"]["soft_vote"]["n"] > 0
    for stage in ("images", "segment", "measure", "crops", "train", "evaluate"):
        assert (out / "run" / "logs" / f"{stage}.json").exists(), stage


def test_the_demo_tells_where_each_models_wrong_calls_go(tiny_demo):
    """The synthetic compounds share one gene target (DMSO has none): every model's wrong image calls are read
    against Metadata_target in metrics.json and the report."""
    out, _ = tiny_demo
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    grouped = metrics["wrong_calls"]
    assert grouped["column"] == "Metadata_target"
    assert set(grouped["models"]) == {"network", *metrics["profile_models"]}
    for name, levels in grouped["models"].items():
        block = metrics["image"]["soft_vote"] if name == "network" else metrics["profile_models"][name]["image"]
        image = levels["image"]
        assert image["n"] == block["n"] and image["wrong"] == round(block["n"] * (1 - block["accuracy"])), name
        assert image["group_accuracy"] >= block["accuracy"]
    report = (out / "run" / "report" / "index.html").read_text()
    assert "Where the wrong calls go" in report and "Metadata_target acc. (images)" in report
    # the test side's predictions name each call's gene target beside it, as predict's do
    images = pd.read_parquet(out / "run" / "predictions" / "image_predictions.parquet")
    targets = images.dropna(subset=["Metadata_target"]).drop_duplicates("Metadata_pert_iname")
    groups = dict(zip(targets["Metadata_pert_iname"], targets["Metadata_target"], strict=True))
    assert images["predicted_Metadata_target"].equals(images["predicted_label"].map(groups))
    assert metrics["label_grouping"] == {"column": "Metadata_target", "groups": groups}


def test_the_field_panels_rank_against_the_control_only_when_there_is_one(tiny_demo, tmp_path):
    from cellresponse.config import apply_overrides, load_config
    from cellresponse.input.runfolder import RunFolder
    from cellresponse.reporting.run_report import section_segmentation

    run = RunFolder(tiny_demo[0] / "run")
    config = load_config(run.config)
    with_control = "".join(section_segmentation(run, config, tmp_path))
    assert "the control and the most different treatments" in with_control
    no_control = apply_overrides(config, ["input.control_label=untreated"], "test")
    without = "".join(section_segmentation(run, no_control, tmp_path))
    assert "one field of each of" in without and "hold no untreated control" in without
    assert "ranked by the distance" not in without


def test_metrics_json_is_one_typed_record_and_an_older_one_still_gives_a_report(tiny_demo, tmp_path):
    import shutil

    from cellresponse.evaluation.run_metrics import RunMetrics
    from cellresponse.input.runfolder import RunFolder
    from tests.conftest import run_cli

    run = RunFolder(tiny_demo[0] / "run")
    stored = json.loads(run.metrics.read_text())
    record = RunMetrics.read(run.metrics)
    assert record is not None and record.to_json() == stored  # every key written is a field, and back
    assert record.label == stored["label"] and record.image.soft_vote is not None and record.image.soft_vote.n > 0
    # the profile stage's block too (also its own file), read by field
    profiles = record.profiles
    assert profiles is not None and profiles.to_json() == json.loads(run.profile_metrics.read_text())
    replicates = profiles.kinds["measured"].map_replicates
    assert (
        replicates is not None
        and replicates.groups == stored["profiles"]["kinds"]["measured"]["map_replicates"]["groups"]
    )
    old = tmp_path / "old"
    shutil.copytree(run.root, old)
    json_without = {k: v for k, v in stored.items() if k != "sanity_check"}
    (old / "metrics.json").write_text(json.dumps(json_without))
    run_cli("report", old, "--no-progress")
    page = (old / "report" / "index.html").read_text()
    assert "run `cellresponse evaluate RUN` again" in page and "Timings" in page

"""What a new user meets first: refusals before any image work (with the near match), suggested commands that
work, the model found from a run folder, and a report that explains its numbers."""

from __future__ import annotations

import json

import pytest

from cellresponse.errors import InputError
from cellresponse.learning.bundle import find_bundle
from tests.conftest import run_cli


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
    with pytest.raises(InputError, match="runs/mistyped does not exist"):  # a typo, not a run without a model
        find_bundle(tmp_path / "runs" / "mistyped")


def test_report_of_synthetic_plates_says_so_and_prints_learning_rates(tiny_demo):
    out, _ = tiny_demo
    report = (out / "run" / "report" / "index.html").read_text()
    assert "Synthetic data." in report.split("<h2>")[0]  # at the top, before the first section
    assert "<td>1.0e-03</td>" in report  # the cpu preset's learning rate, not 0.000
    assert json.loads((out / "run" / "logs" / "images.json").read_text())["synthetic"] is True
    assert "Training history (per epoch)" in report and "Table 1" not in report


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
    assert "loaded ImageNet weights" not in printed  # nothing to embed: the backbone is not even loaded


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


def test_a_prediction_and_a_training_run_are_never_written_over_by_each_other(tiny_demo, tiny_plates, tmp_path):
    """Three slips that lost work: `predict --out` naming the training run replaced its image table, masks, cells
    and report with the new plate's; `report DIR` on predict's folder replaced the prediction's page (what the new
    treatments do) with a run report. Both are refused now, before any image work, the files left as they were. A
    prediction interrupted before its calls still resumes into its own folder: predict records itself there (which
    bundle, which model) before its first image."""
    import shutil

    demo, _ = tiny_demo
    run = tmp_path / "run"  # a copy: the demo run is shared with other tests
    shutil.copytree(demo / "run", run)
    kept = {name: (run / name).read_bytes() for name in ("images.parquet", "report/index.html")}
    refused = run_cli("predict", run, "--load-data", tiny_plates / "load_data.csv", "--out", run, check=False)
    assert refused.returncode == 2 and "holds a run, not a prediction" in refused.stderr
    assert "segmentation backend" not in refused.stderr  # refused before any image work
    assert {name: (run / name).read_bytes() for name in kept} == kept

    out = tmp_path / "predicted"
    args = ("predict", run, "--load-data", tiny_plates / "load_data.csv", "--out", out, "--no-progress")
    run_cli(*args)
    record = json.loads((out / "logs" / "predict.json").read_text())
    assert record["bundle"] == str((run / "model" / "bundle").resolve()) and record["images"] > 0
    page = (out / "report" / "index.html").read_bytes()
    refused = run_cli("report", out, "--no-progress", check=False)
    assert refused.returncode == 2 and "holds a prediction" in refused.stderr and "overwrite" in refused.stderr
    assert (out / "report" / "index.html").read_bytes() == page
    # a prediction written before predict kept its record: told apart by its calls without a model
    (out / "logs" / "predict.json").rename(tmp_path / "predict.json")
    assert run_cli("report", out, "--no-progress", check=False).returncode == 2
    assert (out / "report" / "index.html").read_bytes() == page

    (tmp_path / "predict.json").rename(out / "logs" / "predict.json")
    shutil.rmtree(out / "predictions")  # interrupted after segmenting and measuring, before the calls
    assert "segmented 0 images" in run_cli(*args).stderr  # resumed, not refused
    assert (out / "predictions" / "image_predictions.parquet").is_file()


def test_a_run_keeps_its_image_table_unless_told_to_start_again(tiny_plates, tmp_path):
    """`images` (or `run`) on a run folder with another plate replaced the run's image table under its masks, cells
    and model; the same images again (a resumed command) are fine, other ones are refused unless --overwrite."""
    import pandas as pd

    run = tmp_path / "run"
    run_cli("images", "--load-data", tiny_plates / "load_data.csv", "--out", run, "--no-progress")
    held = pd.read_parquet(run / "images.parquet")
    run_cli("images", "--load-data", tiny_plates / "load_data.csv", "--out", run, "--no-progress")  # resumed
    fewer = tmp_path / "fewer.csv"
    table = pd.read_csv(tiny_plates / "load_data.csv")
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [str((tiny_plates / p).resolve()) for p in table[column]]
    table.head(2).to_csv(fewer, index=False)
    refused = run_cli("images", "--load-data", fewer, "--out", run, "--no-progress", check=False)
    assert refused.returncode == 2 and f"already holds an image table of {len(held)} images; these are 2" in (
        refused.stderr
    )
    assert len(pd.read_parquet(run / "images.parquet")) == len(held)
    run_cli("images", "--load-data", fewer, "--out", run, "--overwrite", "--no-progress")
    assert len(pd.read_parquet(run / "images.parquet")) == 2


def test_evaluate_features_never_writes_into_a_run_folder(tmp_path):
    """`evaluate --features TABLE --out RUN` replaced the run's own metrics.json (its evaluation, which the report
    reads) with the table's; a run folder is refused, a folder of its own is written."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [
        {"Metadata_Plate": plate, "Metadata_Well": f"A{w:02d}", "Metadata_Compound": f"c{w % 2}", "f1": rng.normal()}
        for plate in ("P1", "P2")
        for w in range(8)
    ]
    table = tmp_path / "Image.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"image_id": ["x"]}).to_parquet(run / "images.parquet")
    (run / "metrics.json").write_text('{"the run": "its own evaluation"}')
    args = ("evaluate", "--features", table, "--label", "Metadata_Compound", "--out")
    refused = run_cli(*args, run, check=False)
    assert refused.returncode == 2 and "holds a run" in refused.stderr
    assert json.loads((run / "metrics.json").read_text()) == {"the run": "its own evaluation"}
    run_cli(*args, tmp_path / "table-metrics")
    assert "image" in json.loads((tmp_path / "table-metrics" / "metrics.json").read_text())

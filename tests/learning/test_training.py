"""Training, resume, bundle, evaluation, prediction and the report on real BBBC021 fields (training as processes —
DDP, a kill, Ctrl-C — on the tiny demo: test_training_processes.py)."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from cellresponse.features.crop_store import CropStore
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.bundle import load_bundle
from cellresponse.learning.inference import predict_probabilities
from tests.conftest import BBBC021_TEST_PLATES, run_cli, shared


def _history(run: RunFolder) -> list[dict]:
    with open(run.model / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(bbbc021_cropped, tmp_path_factory):
    """One epoch, then a second call with --epochs 2 that must resume from last.ckpt, then evaluate (on a copy of
    the cropped run, which other test modules read)."""
    run = RunFolder(shutil.copytree(bbbc021_cropped, tmp_path_factory.mktemp("trained") / "run"))
    run_cli("train", run.root, "--epochs", "1", "--no-progress")
    first = _history(run)
    run_cli("train", run.root, "--epochs", "2", "--no-progress")
    run_cli("evaluate", run.root, "--no-progress")
    return run, first


def test_resume_continues_from_the_last_checkpoint(trained):
    run, first = trained
    history = _history(run)
    assert [int(h["epoch"]) for h in history] == [1, 2]
    assert history[0] == first[0]  # epoch 1 was not trained again
    checkpoint = torch.load(run.model / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1  # zero-based: the second epoch


def test_two_epochs_on_real_cells_beat_the_majority_rate(trained):
    run, _ = trained
    history = _history(run)
    split = json.loads((run.model / "split.json").read_text())
    assert split["by"] == "column" and split["images"]["test"] == 16
    metrics = json.loads(run.metrics.read_text())
    assert float(history[-1]["val_accuracy"]) > 0.6
    # held-out plates: image-level accuracy above always-the-most-common-class
    assert metrics["image"]["soft_vote"]["accuracy"] > metrics["majority_rate"]
    assert metrics["cell"]["accuracy"] > metrics["cell"]["majority_rate"]


def test_metrics_json_shape_baseline_and_sanity_check(trained):
    run, _ = trained
    m = json.loads(run.metrics.read_text())
    for level in ("image", "well"):
        for vote in ("majority_vote", "soft_vote"):
            assert {"accuracy", "balanced_accuracy", "top5", "n"} <= set(m[level][vote])
    assert m["image"]["soft_vote"]["n"] == 16 and m["well"]["soft_vote"]["n"] == 4
    assert m["chance_rate"] == 0.5 and 0.5 <= m["majority_rate"] < 1
    assert m["split"]["by"] == "column" and m["split"]["leaky_classes"] == 0
    assert "skipped" in m["plate"]  # test plates hold both treatments: no plate-level vote
    # the features-only baseline runs on the same 16 test images and separates the treatments
    assert m["baseline_features"]["image"]["n"] == 16
    assert m["baseline_features"]["image"]["accuracy"] >= 0.75
    sanity = m["sanity_check"]
    assert sanity["n"] == m["cell"]["n"] and sanity["balanced_accuracy"] > 0.6
    cells = pd.read_parquet(run.predictions / "cell_predictions.parquet")
    assert {"cell_id", "image_id", "true_label", "predicted_label", "top5_labels", "top5_probabilities"} <= set(cells)
    assert len(cells) == m["cell"]["n"]
    assert np.allclose([sum(p) for p in cells["top5_probabilities"]], 1.0, atol=1e-4)  # 2 classes: top-5 is all


def test_bundle_round_trip_gives_the_same_predictions(trained, tmp_path):
    run, _ = trained
    bundle = load_bundle(run.model / "bundle")
    assert bundle.encoder.classes == ["DMSO", "cyclohexamide"]
    store = CropStore(run.crops)
    cells = pd.read_parquet(run.cells).head(64)
    rows, feats = store.rows_for(cells), bundle.scaler.transform(cells)
    first = predict_probabilities(bundle.model, store, rows, feats, bundle.config)
    again = predict_probabilities(load_bundle(run.model / "bundle").model, store, rows, feats, bundle.config)
    np.testing.assert_allclose(first, again, atol=1e-6)
    checkpoint = torch.load(run.model / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, state[key]), key  # the bundle holds the best checkpoint's weights
    meta = json.loads((run.model / "bundle" / "bundle.json").read_text())
    assert meta["channels"] == ["DNA", "Tubulin", "Actin"] and meta["crop_settings"]["store_size"] == 32


def test_the_bundle_s_profile_models_carry_the_temperature_their_validation_side_fitted(trained):
    run, _ = trained
    bundle = load_bundle(run.model / "bundle")
    metrics = json.loads(run.metrics.read_text())
    assert bundle.choice["scored_on"].startswith("the validation side") and bundle.profile_models
    for kind, model in bundle.profile_models.items():
        fitted = bundle.choice["scores"][kind]["temperature"]
        assert model["temperature"] == fitted >= 1.0
        # evaluate scored the stored model, temperature and all, and says so beside its numbers
        assert metrics["profile_models"][kind]["temperature"] == fitted
        assert 0.0 < metrics["profile_models"][kind]["image"]["mean_probability"] <= 1.0


def test_predict_says_when_the_new_cells_were_imaged_at_another_scale(trained, tmp_path):
    # BBBC021-moa's fields are 256-px reductions of BBBC021 images; the bundle learnt from full-resolution cells
    run, _ = trained
    load_data = shared("bbbc021-moa", "load_data.csv")
    table = pd.read_csv(load_data).head(4)
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = str(load_data.parent / "images")
    table.to_csv(tmp_path / "smaller.csv", index=False)
    out = tmp_path / "predicted"
    result = run_cli("predict", run.model / "bundle", "--load-data", tmp_path / "smaller.csv", "--out", out,
                     "--model", "features", "--no-progress")  # fmt: skip
    said = result.stdout + result.stderr
    line = next(line for line in said.splitlines() if "px²" in line)
    ratio = float(line.split(" px², ")[1].split("×")[0])
    assert ratio < 1 / 2.5 and "another magnification, binning or resolution" in line
    # said, not refused: the calls are written all the same
    assert len(pd.read_parquet(out / "predictions" / "image_predictions.parquet")) == 4


def test_predict_on_held_out_plates(trained, tmp_path):
    run, _ = trained
    load_data = shared("bbbc021", "load_data.csv")
    table = pd.read_csv(load_data)
    table = table[table["Metadata_Plate"].isin(BBBC021_TEST_PLATES)]
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = str(load_data.parent / "images")
    table = table.drop(columns=["Metadata_Compound"])  # no labels needed
    csv_path = tmp_path / "new_plates.csv"
    table.to_csv(csv_path, index=False)
    truth = pd.read_csv(load_data).set_index(["Metadata_Plate", "Metadata_Well", "Metadata_Site"])["Metadata_Compound"]
    well_truth = pd.read_csv(load_data).groupby(["Metadata_Plate", "Metadata_Well"])["Metadata_Compound"].first()
    metrics = json.loads(run.metrics.read_text())
    # the bundle's features-only model, for data where it beats the network: same numbers as the baseline
    out = tmp_path / "predicted"
    run_cli("predict", run.model / "bundle", "--load-data", csv_path, "--out", out, "--model", "features", "--csv")
    images = pd.read_parquet(out / "predictions" / "image_predictions.parquet")
    keys = list(
        zip(images["Metadata_Plate"], images["Metadata_Well"], images["Metadata_Site"].astype(int), strict=True)
    )
    accuracy = float(np.mean(truth.loc[keys].to_numpy() == images["predicted_label"].to_numpy()))
    assert len(images) == 16 and not (out / "crops").exists()
    assert accuracy == pytest.approx(metrics["baseline_features"]["image"]["accuracy"])
    wells = pd.read_parquet(out / "predictions" / "well_predictions.parquet")
    called = well_truth.loc[list(zip(wells["Metadata_Plate"], wells["Metadata_Well"], strict=True))].to_numpy()
    assert (wells["model"] == "measured").all()
    for name, table in (("image", images), ("well", wells)):  # --csv: the same calls, readable by a spreadsheet
        copy = pd.read_csv(out / "predictions" / f"{name}_predictions.csv")
        assert copy["predicted_label"].tolist() == table["predicted_label"].tolist()
        assert copy["top5_labels"][0].split(";") == list(table["top5_labels"][0])
    assert not (out / "predictions" / "cell_predictions.csv").exists()
    assert float(np.mean(called == wells["predicted_label"].to_numpy())) == pytest.approx(
        metrics["baseline_features"]["well"]["accuracy"]
    )

    # the network, predicting into the same folder: its images are segmented and measured already (resumed)
    result = run_cli(
        "predict", run.model / "bundle", "--load-data", csv_path, "--out", out, "--model", "network", "--no-progress"
    )
    said = result.stdout + result.stderr
    assert "segmented 0 images (16 skipped as done)" in said
    assert "px²" not in said  # the held-out plates were imaged as the training plates: no word on their scale
    # the features model's calls and their CSV copies are gone: no file of the earlier prediction is left beside
    assert "removed an earlier prediction's calls" in said
    # the training plates hold cycloheximide beside DMSO: intensities were scaled across the experiment, and the
    # new plates' crops are cut with the bundle's one scale, not with their own
    fixed = load_bundle(run.model / "bundle", network=False).meta["intensity_scales"]["crops"]
    stored = json.loads((out / "crops" / "settings.json").read_text())
    assert stored["scope"] == "experiment" and all(scale == fixed for scale in stored["scales"].values())
    written = {p.name for p in (out / "predictions").iterdir()}
    assert written == {
        f"{n}.parquet" for n in ("cell_predictions", "image_predictions", "well_predictions", "treatment_calls")
    }
    images = pd.read_parquet(out / "predictions" / "image_predictions.parquet")
    assert len(images) == 16
    assert {"Metadata_Plate", "Metadata_Well", "predicted_label", "probability", "top5_labels"} <= set(images)
    keys = list(
        zip(images["Metadata_Plate"], images["Metadata_Well"], images["Metadata_Site"].astype(int), strict=True)
    )
    accuracy = float(np.mean(truth.loc[keys].to_numpy() == images["predicted_label"].to_numpy()))
    # the same images, the same model: the same image-level accuracy as `evaluate` reported
    assert accuracy == pytest.approx(metrics["image"]["soft_vote"]["accuracy"])
    # one call per well, the cells voted as evaluate votes them: the same well-level accuracy
    wells = pd.read_parquet(out / "predictions" / "well_predictions.parquet")
    assert len(wells) == images.groupby(["plate", "well"]).ngroups and wells["images"].sum() == 16
    assert {"plate", "well", "Metadata_Plate", "Metadata_Well", "model", "predicted_label"} <= set(wells)
    assert "Metadata_Site" not in wells  # differs between a well's images
    called = well_truth.loc[list(zip(wells["Metadata_Plate"], wells["Metadata_Well"], strict=True))].to_numpy()
    assert float(np.mean(called == wells["predicted_label"].to_numpy())) == pytest.approx(
        metrics["well"]["soft_vote"]["accuracy"]
    )


def test_predict_refuses_images_with_other_channels(trained, tmp_path):
    run, _ = trained
    load_data = shared("bbbc021", "load_data.csv")
    table = pd.read_csv(load_data).head(2)
    table = table.rename(columns={"FileName_OrigActin": "FileName_OrigMito", "PathName_OrigActin": "PathName_OrigMito"})
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = str(load_data.parent / "images")
    table.to_csv(tmp_path / "other.csv", index=False)
    result = run_cli(
        "predict", run.model / "bundle", "--load-data", tmp_path / "other.csv", "--out", tmp_path / "o", check=False
    )
    assert result.returncode == 2
    assert "trained on channels ['DNA', 'Tubulin', 'Actin']" in result.stderr and "Traceback" not in result.stderr
    assert "FileName_Orig<name>" in result.stderr  # says how to name the channels
    assert not (tmp_path / "o").exists()  # refused before any image work: no output folder left behind


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data.strip())
            self._in_h2 = False


def test_report_renders_with_its_figures(trained):
    run, _ = trained
    run_cli("report", run.root)
    page = (run.report / "index.html").read_text()
    parser = _Collect()
    parser.feed(page)
    assert {
        "Data",
        "Timings",
        "How good are the predictions?",
        "Training history (per epoch)",
        "Split",
        "Config",
    } <= set(parser.headings)
    # the heading names the model when `predict` uses a profile model ("… — the both profile model, which …")
    assert any(h.startswith("Confusion matrix (images)") for h in parser.headings)
    assert any(h.startswith("Per-class accuracy (images)") for h in parser.headings)
    assert "Segmentation: the control and the most different treatments" in parser.headings
    assert "Segmentation, step by step (the study's Figure 1)" in parser.headings
    assert len(parser.images) >= 4 and all(i["src"].startswith("data:image/png;base64,") for i in parser.images)
    assert (run.report / "training_curves.png").stat().st_size > 1000
    metrics = json.loads(run.metrics.read_text())
    assert f"{metrics['image']['soft_vote']['accuracy']:.3f}" in page and "features-only" in page


def test_evaluate_applies_evaluation_settings_and_refuses_model_settings(trained, tmp_path):
    """`evaluate --set evaluation.*` applies in full; a setting the model was trained with (crop size) is refused
    instead of being saved to config.yaml while the bundle's value is used."""
    run, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run.root, copy)
    config_before = (copy / "config.yaml").read_text()
    refused = run_cli("evaluate", copy, "--set", "crops.size=64", "--no-progress", check=False)
    assert refused.returncode == 2 and "crops.size: 32 → 64" in refused.stderr
    assert (copy / "config.yaml").read_text() == config_before
    if not torch.cuda.is_available():  # a GPU asked for where there is none: one line, before any work
        metrics_before = (copy / "metrics.json").read_bytes()
        no_gpu = run_cli("evaluate", copy, "--set", "training.accelerator=gpu", "--no-progress", check=False)
        assert no_gpu.returncode == 2 and "--set training.accelerator=cpu" in no_gpu.stderr
        assert "Traceback" not in no_gpu.stderr and (copy / "metrics.json").read_bytes() == metrics_before
    # where the network runs is not a model setting: evaluate takes it
    run_cli("evaluate", copy, *("--set", "evaluation.vote=majority", "--set", "evaluation.top_k=1"),
            *("--set", "training.accelerator=cpu", "--no-progress"))  # fmt: skip
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["headline_vote"] == "majority" and "top1" in metrics["cell"]
    assert json.loads((copy / "logs" / "evaluate.json").read_text())["device"] == "cpu"
    assert "evaluation:\n  vote: majority" in (copy / "config.yaml").read_text()

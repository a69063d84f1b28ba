"""Training, resume, bundle, evaluation, prediction and the report on real BBBC021 fields; DDP on CPU."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellresponse.config import load_config
from cellresponse.features.crop_store import CropStore
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.bundle import load_bundle, predict_probabilities
from tests.conftest import BBBC021_TEST_PLATES, run_cli, shared


def _history(run: RunFolder) -> list[dict]:
    with open(run.model / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(bbbc021_cropped):
    """One epoch, then a second call with --epochs 2 that must resume from last.ckpt, then evaluate."""
    run = RunFolder(bbbc021_cropped)
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
    # the features model's calls and their CSV copies are gone: no file of the earlier prediction is left beside
    assert "removed an earlier prediction's calls" in said
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


def untrained_copy(tiny_demo: tuple[Path, str], folder: Path) -> Path:
    """A copy of the demo's run folder (segmented, measured, cropped) without its model: a run to train anew."""
    shutil.copytree(tiny_demo[0] / "run", folder)
    shutil.rmtree(folder / "model")
    return folder


def test_ddp_two_processes_on_cpu(tiny_demo, tmp_path):
    """Lightning DDP with 2 CPU processes (gloo): both ranks train, rank 0 writes one bundle (the demo's run, its
    crops made, trained again)."""
    run = untrained_copy(tiny_demo, tmp_path / "ddp")
    result = run_cli(
        "train", run, "--epochs", "1", "--accelerator", "cpu", "--devices", "2", "--no-progress", "--workers", "0"
    )
    assert "process 0/2" in result.stderr and "process 1/2" in result.stderr  # both ranks fed their own share
    assert (run / "model" / "bundle" / "weights.safetensors").exists()
    with open(run / "model" / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    config = load_config(run / "config.yaml")
    assert config.training.devices == 2


def test_training_killed_mid_epoch_resumes_from_its_last_checkpoint(tiny_demo, tmp_path):
    run = untrained_copy(tiny_demo, tmp_path / "killed")
    small_batches = ["--set", "training.batch_size=4"]  # epochs long enough for a kill to land in one
    last = run / "model" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [sys.executable, "-m", "cellresponse.cli", "train", str(run), "--epochs", "3", "--no-progress", *small_batches],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not last.exists():
        time.sleep(0.01)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1  # epochs in the checkpoint
    done = _history(RunFolder(run))[:saved]
    assert 1 <= saved < 3, "the kill must land mid-training"
    run_cli("train", run, "--epochs", "3", "--no-progress", *small_batches)
    resumed = _history(RunFolder(run))
    assert [int(h["epoch"]) for h in resumed] == [1, 2, 3]
    assert resumed[:saved] == done  # checkpointed epochs were kept, not trained again


def test_batch_sampler_shards_shuffles_and_never_trains_on_one_cell():
    from cellresponse.learning.training import ShardedBatchSampler

    sampler = ShardedBatchSampler(129, 64, shuffle=True, seed=0)
    batches = list(sampler)
    assert [len(b) for b in batches] == [64, 64] and len(sampler) == 2  # the lone 129th cell waits an epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled per epoch, from the seed
    assert [len(b) for b in ShardedBatchSampler(129, 64, shuffle=False, seed=0)] == [64, 64, 1]  # validation: all
    ranks = [ShardedBatchSampler(12, 3, shuffle=True, seed=3, rank=r, world=2) for r in (0, 1)]
    shares = [[i for batch in r for i in batch] for r in ranks]
    # DDP: equal, disjoint shares of one permutation (the same number of steps on every rank)
    assert len(shares[0]) == len(shares[1]) == 6 and sorted(shares[0] + shares[1]) == list(range(12))


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


def test_embed_from_the_trained_network_writes_its_projection_layer(trained, tmp_path):
    """`embedding.source: network`: every cell's 256-number projection layer, per image, equal to the bundle's
    own forward pass up to the classifier."""
    from cellresponse.learning.bundle import predict_cells

    run, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run.root, copy)
    run_cli("embed", copy, "--set", "embedding.source=network", "--no-progress")
    cells = pd.read_parquet(copy / "cells.parquet")
    parts = sorted((copy / "embeddings").glob("*.parquet"))
    table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    columns = [c for c in table.columns if c.startswith("emb_")]
    assert len(columns) == 256 and len(table) == len(cells) and set(table["cell_id"]) == set(cells["cell_id"])
    bundle = load_bundle(copy / "model" / "bundle")
    first = cells.head(16)
    expected = predict_cells(bundle, CropStore(copy / "crops"), first, output="embedding")
    got = table.set_index("cell_id").loc[first["cell_id"], columns].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_trainer_takes_precision_and_determinism_from_the_config(tmp_path):
    """training.precision and training.deterministic reach Lightning (the GPU rates in the README depend on them)."""
    from cellresponse.learning.training import build_trainer

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        fast = load_config(None, None, ["training.precision=bf16-mixed", "training.deterministic=false"])
        trainer = build_trainer(fast, tmp_path / "checkpoints", tmp_path / "history.csv")
        assert trainer.precision == "bf16-mixed"
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark

        study = load_config()
        trainer = build_trainer(study, tmp_path / "checkpoints", tmp_path / "history.csv")
        assert trainer.precision == "32-true"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = False


def test_ctrl_c_in_train_says_how_to_resume_and_exits_130(tiny_demo, tmp_path):
    """Ctrl-C (SIGINT) while the network trains: the same line and exit status as the other stages (Lightning's
    own answer is exit 1 and nothing said), and the rerun resumes without a checkpoint-folder warning."""
    run = untrained_copy(tiny_demo, tmp_path / "run")
    command = [sys.executable, "-m", "cellresponse.cli", "train", str(run), "--no-progress"]
    # Ctrl-C reaches a foreground process whose SIGINT is at its default; a pytest started in the background of a
    # shell (`pytest &`) ignores SIGINT and its children would inherit that, so the child's is set to default first.
    default_sigint = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            default_sigint,
            *command,
            "--set",
            "training.max_epochs=200",
            "--set",
            "training.patience=200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "model" / "history.csv").exists() and process.poll() is None:
        time.sleep(0.2)
    if process.poll() is not None:
        pytest.skip("train finished before the interrupt could land")
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"train still running 120 s after Ctrl-C; its stderr ends:\n{stderr[-3000:]}")
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "rerun the same command to resume" in stderr
    assert not list((run / "model" / "training_cells").glob("*"))  # the interrupted process's sets removed
    resumed = run_cli("train", run, "--no-progress", "--set", "training.max_epochs=2")
    assert "exists and is not empty" not in resumed.stderr + resumed.stdout
    assert (run / "model" / "bundle" / "bundle.json").is_file()
    assert not (run / "model" / "training_cells").exists()

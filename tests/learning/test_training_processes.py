"""Training as processes on the tiny demo's run: DDP on two CPU processes, a kill mid-epoch and Ctrl-C (each
resumed), the batch sampler's shards, the trainer's settings, and the trained network's projection layer as an
embedding (real cells: test_training.py)."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellresponse.config import load_config
from cellresponse.features.crop_store import CropStore
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.bundle import load_bundle
from tests.conftest import run_cli


def _history(run: RunFolder) -> list[dict]:
    with open(run.model / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def untrained_copy(tiny_demo: tuple[Path, str], folder: Path) -> Path:
    """A copy of the demo's run folder (segmented, measured, cropped) without its model: a run to train anew."""
    shutil.copytree(tiny_demo[0] / "run", folder)
    shutil.rmtree(folder / "model")
    return folder


def test_ddp_two_processes_on_cpu(tiny_demo, tmp_path):
    """Lightning DDP with 2 CPU processes (gloo): both ranks train, rank 0 writes one bundle (the demo's run, its
    crops made, trained again)."""
    run = untrained_copy(tiny_demo, tmp_path / "ddp")
    result = run_cli(  # a process of its own: Lightning's DDP launcher starts rank 1 by rerunning the command line
        "train", run, "--epochs", "1", "--accelerator", "cpu", "--devices", "2", "--no-progress", "--workers", "0",
        process=True,
    )  # fmt: skip
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


def test_embed_from_the_trained_network_writes_its_projection_layer(tiny_demo, tmp_path):
    """`embedding.source: network`: every cell's 256-number projection layer, per image, equal to the bundle's
    own forward pass up to the classifier (the tiny demo's trained network: the wiring, not the cells, is tested)."""
    from cellresponse.learning.inference import predict_cells

    copy = tmp_path / "copy"
    shutil.copytree(tiny_demo[0] / "run", copy)
    # --overwrite: the demo's run holds the frozen network's embeddings
    run_cli("embed", copy, "--set", "embedding.source=network", "--overwrite", "--no-progress")
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
    resumed = run_cli("train", run, "--no-progress", "--set", "training.max_epochs=2", process=True)
    assert "exists and is not empty" not in resumed.stderr + resumed.stdout
    assert (run / "model" / "bundle" / "bundle.json").is_file()
    assert not (run / "model" / "training_cells").exists()

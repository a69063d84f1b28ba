"""Check: the network and the frozen embedder run on the GPU that `training.accelerator: auto` picks, and agree
with the CPU (`evaluate`, `embed`, `predict` and `train`'s validation score place the network this way).

Prints the device, the largest difference between the GPU's and the CPU's outputs (the study network's class
probabilities on random crops and table rows; the ImageNet Lite0 embedder's per-channel embeddings of random
windows) and the seconds each took on the GPU (the first call: cuDNN's set-up included), then the embedder's
cells a second at batch sizes 16 to 1,024 and their ratio to 16 (`embedding.batch_size`). Random inputs: placement and
agreement do not depend on them. Without a CUDA GPU it prints why and exits 0 (`--accelerator cpu` runs it
against the CPU itself: a check of the script, measuring nothing).

Usage: python benchmarks/gpu_inference.py [--cells 512] [--windows 8192] [--accelerator auto]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch

from cellresponse.config import Config
from cellresponse.devices import inference_device
from cellresponse.features.crop_store import CHANNELS
from cellresponse.learning.inference import predict_probabilities
from cellresponse.networks.embeddings import Embedder
from cellresponse.networks.model import CellResponseNet


class ArrayStore:
    """What `predict_probabilities` reads of a crop store: ``batch(rows)`` → uint8 ``(N, channels, side, side)``."""

    def __init__(self, crops: np.ndarray):
        self.crops = crops

    def batch(self, rows: np.ndarray) -> np.ndarray:
        return self.crops[rows]


def timed(function, device: torch.device):
    began = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=512)
    parser.add_argument("--accelerator", default="auto", help="as training.accelerator")
    parser.add_argument("--windows", type=int, default=8192, help="cells timed per batch size (embedder throughput)")
    args = parser.parse_args()
    device = inference_device(args.accelerator)
    if device.type == "cpu" and args.accelerator == "auto":
        print("skipped: torch sees no CUDA GPU here (training.accelerator auto → cpu)")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device: {device} ({name}), torch {torch.__version__}")
    rng = np.random.default_rng(0)
    config = Config()
    features = 10
    crops = rng.integers(0, 256, (args.cells, CHANNELS, config.crops.store_size, config.crops.store_size), np.uint8)
    table = rng.normal(size=(args.cells, features)).astype(np.float32)
    torch.manual_seed(0)
    model = CellResponseNet.from_config(features, 6, config.training, config.model, pretrained=False)
    rows = np.arange(args.cells)
    on_cpu = predict_probabilities(model, ArrayStore(crops), rows, table, config, device=torch.device("cpu"))
    on_gpu, seconds = timed(
        lambda: predict_probabilities(model, ArrayStore(crops), rows, table, config, device=device), device
    )
    print(
        f"network ({config.model.backbone}, {config.crops.size} px): ran on {next(model.parameters()).device}; "
        f"max |GPU − CPU| probability {np.abs(on_gpu - on_cpu).max():.1e}; same class for "
        f"{np.mean(on_gpu.argmax(1) == on_cpu.argmax(1)):.3f} of cells; {seconds:.2f} s"
    )
    e = config.embedding
    windows = rng.integers(0, 256, (args.cells // 2, 3, 48, 48), np.uint8)
    cpu_vectors = Embedder(e.backbone, e.pretrained, e.input_size, "per_channel", 128)(windows)
    gpu_vectors, seconds = timed(
        lambda: Embedder(e.backbone, e.pretrained, e.input_size, "per_channel", 128, device)(windows), device
    )
    print(
        f"embedder ({e.backbone}, {e.pretrained}, {e.input_size} px): "
        f"max |GPU − CPU| {np.abs(gpu_vectors - cpu_vectors).max():.2e} "
        f"of a largest value {np.abs(cpu_vectors).max():.2f} (TF32 convolutions on the GPU); {seconds:.2f} s"
    )
    embedder_throughput(config, device, rng, args.windows)
    return 0


def embedder_throughput(config: Config, device: torch.device, rng: np.random.Generator, n: int) -> None:
    """Cells a second through the frozen embedder (per channel, 3 channels, as the `finetune` preset embeds) at
    several batch sizes: whether `embedding.batch_size`'s CPU-tuned 16 holds a GPU back. The network alone: the
    windows are already cut (the embed stage cuts them in a reading thread on the CPU meanwhile)."""
    e = config.embedding
    windows = rng.integers(0, 256, (n, 3, 52, 52), np.uint8)  # BBBC021-moa's 52-px windows, resized to input_size
    rates = {}
    for batch in (16, 64, 256, 1024):
        embedder = Embedder(e.backbone, e.pretrained, e.input_size, "per_channel", batch, device)
        embedder(windows[: batch * 2])  # warm-up: cuDNN picks its kernels per shape
        _, seconds = timed(functools.partial(embedder, windows), device)
        rates[batch] = n / seconds
    print(
        f"embedder throughput ({e.backbone}, per channel × 3, {e.input_size} px, {n} cells): "
        + ", ".join(f"batch {b}: {r:.0f} cells/s ({r / rates[16]:.1f}×)" for b, r in rates.items())
    )


if __name__ == "__main__":
    raise SystemExit(main())

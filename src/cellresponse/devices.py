"""Where the network runs outside training (evaluate, predict, embed): the torch device for a Lightning-style
``training.accelerator`` value, so that a run trained on a GPU is also scored and embedded on it."""

from __future__ import annotations

import torch

from cellresponse.errors import InputError

GPU_NAMES = ("gpu", "cuda")


def inference_device(accelerator: str) -> torch.device:
    """``auto``: the first CUDA GPU when one is visible, else the CPU; ``cpu``; ``gpu``/``cuda``: the first CUDA
    GPU (an error when none is visible, before any work); ``mps``: Apple's GPU (likewise)."""
    name = accelerator.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in GPU_NAMES:
        if not torch.cuda.is_available():
            raise InputError(
                f"training.accelerator is {accelerator!r} but torch sees no CUDA GPU here — "
                f"rerun with --set training.accelerator=cpu (or auto)"
            )
        return torch.device("cuda")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("training.accelerator is 'mps' but this machine has no usable Apple GPU — use cpu or auto")
        return torch.device("mps")
    raise InputError(f"training.accelerator {accelerator!r} is not one of auto, cpu, gpu, cuda, mps")


def worker_device(device: torch.device, worker: int | None, gpus: int) -> torch.device:
    """The GPU a Dask worker runs the network on: worker ``i`` of a local cluster on GPU ``i mod gpus``, so that
    ``--workers N`` on a machine with N GPUs puts one worker on each. ``device`` unchanged on the CPU, with one GPU,
    outside a worker, or for a worker whose number is not known (a ``dask worker`` of a cluster, pinned to its GPU
    by ``CUDA_VISIBLE_DEVICES``, sees one)."""
    if device.type != "cuda" or worker is None or gpus < 2:
        return device
    return torch.device("cuda", worker % gpus)


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)``, ``cpu`` — for logs and stage records."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)

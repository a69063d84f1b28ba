"""Where the network runs outside training: `inference_device` reads `training.accelerator` as Lightning does."""

from __future__ import annotations

import pytest
import torch

from cellresponse.devices import device_name, inference_device
from cellresponse.errors import InputError


@pytest.mark.parametrize("visible", [True, False])
def test_auto_takes_the_gpu_exactly_when_torch_sees_one(monkeypatch, visible):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
    assert inference_device("auto") == torch.device("cuda" if visible else "cpu")
    assert inference_device("cpu") == torch.device("cpu")
    if visible:
        assert inference_device("gpu") == inference_device("CUDA") == torch.device("cuda")


def test_a_gpu_asked_for_where_there_is_none_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"no CUDA GPU.*--set training.accelerator=cpu"):
        inference_device("gpu")
    with pytest.raises(InputError, match="not one of auto, cpu, gpu, cuda, mps"):
        inference_device("tpu")


def test_the_device_is_named_for_logs():
    assert device_name(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert device_name(torch.device("cuda")).startswith("cuda:0 (")


def test_a_local_clusters_workers_spread_over_the_gpus_and_nothing_else_moves():
    from cellresponse.devices import worker_device

    cuda = torch.device("cuda")
    assert [str(worker_device(cuda, worker, 2)) for worker in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_device(cuda, 3, 1) == cuda  # one GPU (or a worker pinned to its own): the GPU it sees
    assert worker_device(cuda, None, 4) == cuda  # not a worker of a local cluster
    cpu = torch.device("cpu")
    assert worker_device(cpu, 1, 4) == cpu

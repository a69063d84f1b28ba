"""A whole plate on a small machine and on a real cluster (issue 17): failures under Dask print one line, plates
with fewer than three channels segment with the default recipe, and a `dask scheduler` with two `dask worker`
processes gives the in-process outputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellresponse.input.transforms import flow_planes
from cellresponse.learning.splits import cap_cells
from tests.conftest import run_cli, scheduler_address, shared

FIRST = "SYN0001/Images/r01c01f01p01-ch{}sk1fk1fl1.tiff"


def test_a_failed_image_under_dask_prints_only_the_error_line(tiny_plates, tmp_path):
    plates = tmp_path / "plates"
    shutil.copytree(tiny_plates, plates)
    run = tmp_path / "run"
    run_cli("images", "--load-data", plates / "load_data.csv", "--out", run)
    broken = plates / FIRST.format(2)
    broken.write_bytes(broken.read_bytes()[:300])
    # in a process of its own: the noise looked for is what Dask's loggers and a closing interpreter print
    result = run_cli("segment", run, "--workers", "2", "--no-progress", check=False, process=True)
    assert result.returncode == 2
    assert "is the file complete?" in result.stderr
    for noise in ("Traceback", "Exception ignored", "IOLoop is closed"):
        assert noise not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if "error" in line.lower()] == [
        result.stderr.strip().splitlines()[-1]
    ]


def nuclei_only_plate(folder) -> str:
    """The DSB2018 nuclei image as a one-channel CellProfiler load_data.csv (FileName_OrigDNA only)."""
    source = shared("segmentation", "stardist-dsb2018", "img2d.tif")
    folder.mkdir()
    shutil.copy(source, folder / "nuclei.tif")
    table = pd.DataFrame(
        {
            "Metadata_Plate": ["DSB"],
            "Metadata_Well": ["A01"],
            "Metadata_Site": [1],
            "FileName_OrigDNA": ["nuclei.tif"],
            "PathName_OrigDNA": [str(folder)],
        }
    )
    table.to_csv(folder / "load_data.csv", index=False)
    return str(folder / "load_data.csv")


def test_a_nuclei_only_plate_segments_with_the_default_recipe(tmp_path):
    load_data = nuclei_only_plate(tmp_path / "plate")
    run = tmp_path / "run"
    result = run_cli("run", "--load-data", load_data, "--out", run, "--until", "measure", "--workers", "0")
    assert "median of the 1 channel(s) these images have (DNA)" in result.stderr
    cells = pd.read_parquet(run / "cells.parquet")
    truth = tifffile.imread(shared("segmentation", "stardist-dsb2018", "mask2d.tif"))
    assert len(cells) > 0.7 * len(np.unique(truth[truth > 0]))  # the nuclei are found, not an empty mask

    # channels the user asked for that are not there stay an error
    asked = run_cli(
        "run", "--load-data", load_data, "--out", tmp_path / "asked", "--until", "segment", "--workers", "0",
        "--set", "segmentation.input.channels=[0,1]", check=False,
    )  # fmt: skip
    assert asked.returncode == 2 and "channel index 1 is out of range" in asked.stderr


def test_cap_cells_bounds_each_image_and_class_and_keeps_every_image():
    counts = {"i0": 200, "i1": 50, "i2": 10, "i3": 120}
    cells = pd.DataFrame(
        {
            "image_id": np.repeat(list(counts), list(counts.values())),
            "true_label": np.repeat(["a", "a", "b", "b"], list(counts.values())),
        }
    )
    capped = cap_cells(cells, "true_label", per_image=30, per_class=None, seed=0)
    assert capped["image_id"].value_counts().to_dict() == {"i0": 30, "i1": 30, "i2": 10, "i3": 30}
    both = cap_cells(cells, "true_label", per_image=30, per_class=40, seed=0)
    assert both["true_label"].value_counts().to_dict() == {"a": 40, "b": 40}
    assert set(both["image_id"]) <= set(capped["image_id"]) and both.index.isin(capped.index).all()
    again = cap_cells(cells, "true_label", per_image=30, per_class=40, seed=0)
    pd.testing.assert_frame_equal(both, again)  # seeded
    assert len(cap_cells(cells, "true_label", None, None, seed=0)) == len(cells)


@pytest.fixture()
def dask_cluster(tmp_path):
    """A real Dask cluster on localhost: `dask scheduler` and two `dask worker` processes (not a LocalCluster)."""
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(scheduler_file),
             "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        for _ in range(300):  # the workers read the address from the file: wait until it is written whole
            if scheduler_address(scheduler_file) is not None:
                break
            time.sleep(0.1)
        for _ in range(2):
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                     "--nthreads", "1", "--no-dashboard", "--no-nanny"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for process in reversed(started):  # workers first, then the scheduler
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # a worker may wait on a scheduler that is going away
                process.kill()
                process.wait()


def test_segment_and_measure_on_a_real_dask_cluster_equal_the_in_process_run(tiny_plates, tmp_path, dask_cluster):
    runs = {}
    for name, flags in (("local", ["--workers", "0"]), ("cluster", ["--scheduler", dask_cluster])):
        run = tmp_path / name
        run_cli("images", "--load-data", tiny_plates / "load_data.csv", "--out", run)
        for stage in ("segment", "measure"):
            run_cli(stage, run, *flags, "--no-progress")
        runs[name] = run
    local, cluster = runs["local"], runs["cluster"]
    masks = sorted(p.name for p in (local / "masks").glob("*.tif"))
    assert masks and masks == sorted(p.name for p in (cluster / "masks").glob("*.tif"))
    for name in masks:
        np.testing.assert_array_equal(
            tifffile.imread(local / "masks" / name), tifffile.imread(cluster / "masks" / name)
        )
    pd.testing.assert_frame_equal(pd.read_parquet(local / "cells.parquet"), pd.read_parquet(cluster / "cells.parquet"))


def test_flows_are_stored_at_the_precision_the_crops_need():
    """Flows are stored as float16: the crops' 8-bit flow planes come out the same as from float32, within one
    step, for Cellpose-like flows (unit vectors) and probability logits."""
    rng = np.random.default_rng(0)
    angle = rng.uniform(-np.pi, np.pi, (256, 256))
    flows = np.stack([np.sin(angle), np.cos(angle), rng.uniform(-12, 12, (256, 256))]).astype(np.float32)
    flows[:2] *= rng.uniform(0, 1, (256, 256))

    def eight_bit(f: np.ndarray) -> np.ndarray:
        return np.round(flow_planes(f, probability_is_logit=True) * 255).astype(np.int16)

    assert np.abs(eight_bit(flows) - eight_bit(flows.astype(np.float16))).max() <= 1


def test_segment_writes_float16_flows(tiny_plates, tmp_path):
    run = tmp_path / "run"
    run_cli("images", "--load-data", tiny_plates / "load_data.csv", "--out", run)
    run_cli("segment", run, "--workers", "0", "--no-progress")
    flows = sorted((run / "flows").glob("*.tif"))
    assert flows and all(tifffile.imread(path).dtype == np.float16 for path in flows)

"""Faults a cluster has, with real processes (no mocks): a Dask worker killed mid-stage on a real
``dask scheduler`` + ``dask worker`` cluster, a second command on a run folder another is writing, a disk that fills."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellresponse.input.io import read_tiff
from tests.conftest import run_cli, scheduler_address, synthetic_plates

DASK = Path(sys.executable).with_name("dask")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cellresponse.cli", *map(str, args)]


def written(folder: Path) -> dict[Path, int]:
    """Every output file of a run folder and when it was last written (the log and the lock aside)."""
    return {
        p: p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("cellresponse.log", ".lock")
    }


def test_a_second_command_on_a_busy_run_folder_is_refused(tiny_plates, tmp_path):
    out = tmp_path / "run"
    run_cli("images", "--load-data", tiny_plates / "load_data.csv", "--out", out, "--no-progress")
    before = written(out)
    # a real other process holds the run folder (as a running `cellresponse segment` would)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cellresponse.input.locks import folder_lock\n"
         f"with folder_lock({str(out)!r}, 'cellresponse segment RUN'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_cli("segment", out, "--workers", "0", "--no-progress", check=False)
        assert refused.returncode == 2
        lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "cellresponse segment RUN" in lines[0]
        assert not (out / "masks").exists()  # it changed nothing
        assert written(out) == before
        assert f"pid {holder.pid}" in (out / ".lock").read_text()  # the holder's lock untouched
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the killed holder's lock: no stale lock to remove by hand
    run_cli("segment", out, "--workers", "0", "--no-progress")
    assert len(list((out / "masks").glob("*.tif"))) == len(pd.read_parquet(out / "images.parquet"))


def test_a_full_disk_ends_in_one_line_and_leaves_no_partial_file(tiny_plates, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "run"
    for folder in (reference, out):
        run_cli("run", "--load-data", tiny_plates / "load_data.csv", "--out", folder, "--until", "segment",
                "--workers", "0", "--no-progress")  # fmt: skip
    run_cli("measure", reference, "--workers", "0", "--no-progress")
    parts = sorted((reference / "cells").glob("*.parquet"))
    limit = min(p.stat().st_size for p in parts) // 2  # no file may grow past half the smallest part

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run(cli("measure", out, "--workers", "0", "--no-progress"), preexec_fn=small_disk,
                          capture_output=True, text=True)  # fmt: skip
    assert full.returncode != 0
    lines = [line for line in full.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "disk is full" in lines[-1] and "Traceback" not in full.stderr
    assert not list(out.rglob("*.tmp")) and not (out / "cells.parquet").exists()
    assert not list((out / "cells").glob("*.parquet"))  # nothing partial for the rerun to trust
    run_cli("measure", out, "--workers", "0", "--no-progress")  # space again: the rerun completes
    pd.testing.assert_frame_equal(pd.read_parquet(out / "cells.parquet"), pd.read_parquet(reference / "cells.parquet"))


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_worker_killed_mid_stage_on_a_real_cluster(tmp_path_factory, tmp_path):
    spec = {"n_compounds": 5, "wells_per_compound": 2, "control_wells": 2, "sites": 2, "size": 384,
            "cells_per_image": 40, "cell_radius": 12, "seed": 11}  # fmt: skip
    plates = synthetic_plates(tmp_path_factory, "cluster_plates", **spec)
    reference, out = tmp_path / "reference", tmp_path / "run"
    run_cli("run", "--load-data", plates / "load_data.csv", "--out", reference, "--until", "segment",
            "--workers", "0", "--no-progress")  # fmt: skip
    run_cli("images", "--load-data", plates / "load_data.csv", "--out", out, "--no-progress")
    total = len(pd.read_parquet(out / "images.parquet"))
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "start_new_session": True}
    processes = [subprocess.Popen([str(DASK), "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                                   "--no-dashboard"], **quiet)]  # fmt: skip
    try:
        wait_for(lambda: scheduler_address(scheduler_file) is not None, 60, "the scheduler")
        address = scheduler_address(scheduler_file)
        for _ in range(2):
            processes.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-nanny",
                                               "--no-dashboard"], **quiet))  # fmt: skip
        stage = subprocess.Popen(cli("segment", out, "--scheduler", address, "--no-progress"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        masks = out / "masks"
        wait_for(lambda: masks.exists() and len(list(masks.glob("*.tif"))) >= 2, 180, "the first masks")
        done_at_kill = len(list(masks.glob("*.tif")))
        os.killpg(processes[1].pid, signal.SIGKILL)  # one worker dies mid-stage
        _, stderr = stage.communicate(timeout=600)
        assert stage.returncode == 0, stderr[-2000:]
        assert done_at_kill < total, "the stage finished before the kill: the plate is too small to test it"
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    names = sorted(p.name for p in (reference / "masks").glob("*.tif"))
    assert sorted(p.name for p in masks.glob("*.tif")) == names and len(names) == total
    for name in names:  # outputs equal an uninterrupted run's
        np.testing.assert_array_equal(read_tiff(masks / name), read_tiff(reference / "masks" / name))

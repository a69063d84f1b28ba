"""Shared fixtures: the real data in ../shared/data (skipped with a reason when absent) and tiny synthetic plates."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLRESPONSE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each process's share of the cores for the BLAS / OpenMP threads of torch in it and in the
    commands it starts. Left at torch's default (a thread per core in every process), two processes on two cores
    oversubscribe them: two `train --epochs 1` side by side took 102.8 s, against 39.3 s with one thread each
    (benchmarks/side_by_side.py, 2026-12-06). A variable already set is kept."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    threads = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, threads)


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (tests on real cells need ../shared/data)")
    return path


def made_once(tmp_path_factory, name: str, make: Callable[[Path], str]) -> tuple[Path, str]:
    """A session fixture's folder, made by ``make`` (which returns what it printed) once for the whole test run.
    Under pytest-xdist the first process that asks makes it in the run's common temporary folder and the others
    wait for it and reuse it (pytest-xdist's recipe for session fixtures: a file lock), instead of each process
    spending a minute on the same demo; in one process, a fresh folder as any session fixture."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        return folder, make(folder)
    folder = tmp_path_factory.getbasetemp().parent / name
    said = folder.with_name(f"{name}.said")
    with FileLock(f"{folder}.lock"):
        if not said.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            said.write_text(make(folder))  # written last: a make that failed leaves no mark, the next asker retries
    return folder, said.read_text()


def synthetic_plates(tmp_path_factory, name: str, **spec) -> Path:
    """Write synthetic plates (cellresponse.input.synth) into a fresh temporary folder."""
    from cellresponse.input.synth import SynthSpec, make_plates

    out = tmp_path_factory.mktemp(name)
    make_plates(out, SynthSpec(**spec))
    return out


TINY_PLATES = dict(
    n_compounds=3, wells_per_compound=1, control_wells=2, sites=2, size=128, cells_per_image=8, cell_radius=11, seed=3
)


@pytest.fixture(scope="session")
def tiny_plates(tmp_path_factory) -> Path:
    """Two small synthetic plates: 3 compounds + DMSO, 2 sites, 128 px (seconds to make)."""
    from cellresponse.input.synth import SynthSpec, make_plates

    def plates(folder: Path) -> str:
        make_plates(folder, SynthSpec(**TINY_PLATES))
        return ""

    folder, _ = made_once(tmp_path_factory, "tiny_plates", plates)
    return folder


def run_cli(*args: str, check: bool = True, process: bool = False) -> subprocess.CompletedProcess:
    """``cellresponse ARGS`` as a user types it: what it printed and the exit status the shell would see.

    By default through the CLI's ``main`` in this test process (the console script calls nothing else), with stdout
    and stderr captured and ``sys.argv`` the command's; the root logger, warning filters, ``logging.raiseExceptions``
    and ``sys.argv`` are put back afterwards, and an exception ``main`` lets through is printed as Python prints it,
    status 1. A fresh interpreter costs each command 6-10 s of torch, Lightning and MONAI imports, which a test
    process pays once. ``process=True`` starts ``python -m cellresponse.cli`` instead, for what only a process shows
    (what the libraries' own loggers print to the console, what is printed as the interpreter exits) and for a
    command that starts copies of itself (Lightning's DDP launcher reruns the command line: in a pytest-xdist worker,
    the worker's)."""
    argv = list(map(str, args))
    result = _run_cli_process(argv) if process else _run_cli_in_process(argv)
    if check and result.returncode != 0:
        raise AssertionError(f"cellresponse {' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    return result


def _run_cli_in_process(argv: list[str]) -> subprocess.CompletedProcess:
    from cellresponse.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level, raise_exceptions, command_line = list(root.handlers), root.level, logging.raiseExceptions, sys.argv
    sys.argv = ["cellresponse", *argv]  # as the console script sees it (a run folder's lock names the command)
    try:
        with _console_warnings(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help, --version, a bad flag
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()  # the run's log file
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.raiseExceptions = raise_exceptions
        sys.argv = command_line
    return subprocess.CompletedProcess(["cellresponse", *argv], code, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def _console_warnings() -> Iterator[None]:
    """Warnings as a fresh interpreter shows them (Python's default filters, printed to the current stderr), not
    recorded into pytest's summary under pytest's filters; put back on exit."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = _print_warning
        yield


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _run_cli_process(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellresponse.cli", *argv], capture_output=True, text=True)


@pytest.fixture(scope="session")
def tiny_demo(tiny_plates, tmp_path_factory) -> tuple[Path, str]:
    """`cellresponse demo` on the tiny plates, one epoch (shared by the tests that read its run and report):
    the output folder and what the command printed."""

    def demo(folder: Path) -> str:
        return run_cli(
            "demo", "--data", tiny_plates / "load_data.csv", "--out", folder / "demo", "--epochs", "1",
            "--workers", "0", "--set", "crops.store_size=32", "--set", "crops.size=32", "--no-progress",
        ).stdout  # fmt: skip

    folder, said = made_once(tmp_path_factory, "demo", demo)
    return folder / "demo", said


BBBC021_TEST_PLATES = ("Week4_27521", "Week4_27821")


@pytest.fixture(scope="session")
def bbbc021_cropped(tmp_path_factory) -> Path:
    """Real BBBC021 fields (DMSO vs cycloheximide) through images → segment → measure → crops, with a
    leave-plate-out split (train Week4_27481 + Week4_27801, test Week4_27521 + Week4_27821). Read only: a test
    that trains or writes into it works on a copy."""
    load_data = shared("bbbc021", "load_data.csv")

    def cropped(folder: Path) -> str:
        return run_cli(
            "run", "--load-data", load_data, "--preset", "cpu", "--label", "Metadata_Compound",
            "--split-column", "Metadata_Plate", "--test-values", *BBBC021_TEST_PLATES,
            "--set", "crops.store_size=32", "--set", "crops.size=32", "--out", folder / "run",
            "--until", "crops", "--no-progress",
        ).stdout  # fmt: skip

    folder, _ = made_once(tmp_path_factory, "bbbc021", cropped)
    return folder / "run"


def run_metrics(**given):
    """A ``RunMetrics`` record of ``given`` (as ``metrics.json`` holds it) and empty values for every other required
    field (the report's functions read records; a test names only the fields it is about)."""
    from cellresponse.evaluation.run_metrics import RunMetrics

    empty = {
        "label": "label", "classes": 0, "headline_vote": "soft", "cell": {}, "image": {}, "well": {}, "plate": {},
        "chance_rate": float("nan"), "majority_rate": float("nan"), "split": {"by": "well"}, "profile_models": {},
        "baseline_features": {}, "baseline_cell_features": {}, "sanity_check": {}, "verdict": "",
        "embeddings_verdict": "",
    }  # fmt: skip
    return RunMetrics.from_json({**empty, **given})


def scheduler_address(scheduler_file: Path) -> str | None:
    """The address in a Dask scheduler file; None until the scheduler has written it whole (it creates the file
    before it writes the address)."""
    try:
        return json.loads(scheduler_file.read_text())["address"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None

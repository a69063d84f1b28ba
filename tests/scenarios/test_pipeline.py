"""Segment and measure through the CLI, on real fields and synthetic plates: outputs, resume, Dask, failures."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellresponse.features.cell_features import FEATURES
from cellresponse.features.crop_store import CropStore
from tests.conftest import run_cli, shared, synthetic_plates

STAGE_FLAGS = ("--no-progress",)


def _images(run, **source):
    flag, value = next(iter(source.items()))
    run_cli("images", f"--{flag.replace('_', '-')}", value, "--out", run, "--set", "segmentation.backend=offline")


def test_real_fields_segmented_and_measured(tmp_path):
    """A BBBC021 field and a CPJUMP1 field through `segment` and `measure`."""
    csv = tmp_path / "two.csv"
    table = pd.read_csv(shared("bbbc021", "load_data.csv")).head(2)
    for c in [c for c in table.columns if c.startswith("PathName_")]:
        table[c] = str(shared("bbbc021", "images"))
    table.to_csv(csv, index=False)
    for name, source in (
        ("bbbc", {"load_data": csv}),
        ("jump", {"images": shared("cpjump1", "fields", "BR00117006-r01c01f01")}),
    ):
        run = tmp_path / name
        _images(run, **source)
        run_cli("segment", run, "--workers", "0", *STAGE_FLAGS)
        run_cli("measure", run, "--workers", "0", "--csv", *STAGE_FLAGS)
        images = pd.read_parquet(run / "images.parquet")
        cells = pd.read_parquet(run / "cells.parquet")
        for image_id in images["image_id"]:
            mask = tifffile.imread(run / "masks" / f"{image_id}.tif")
            flows = tifffile.imread(run / "flows" / f"{image_id}.tif")
            assert mask.dtype == np.uint32 and flows.shape == (3, *mask.shape) and flows.dtype == np.float16
            per_image = cells[cells["image_id"] == image_id]
            assert len(per_image) > 20
            assert set(per_image["label"]) <= set(np.unique(mask)) - {0}
            # centroid split: the labelled pixel at each centroid's rounded position mostly belongs to its cell
            ys, xs = per_image["centroid_y"].round().astype(int), per_image["centroid_x"].round().astype(int)
            assert (mask[ys, xs] == per_image["label"]).mean() > 0.8
        assert (cells["perimeter"] > 0).all()
        assert set(FEATURES) <= set(cells.columns) and cells["cell_id"].is_unique
        assert (run / "cells.csv").is_file()
        assert list((run / "figures").glob("*.png"))
        summary = pd.read_json(run / "logs" / "measure.json", typ="series")
        assert summary["cells"] == len(cells)


@pytest.fixture(scope="module")
def plate40(tmp_path_factory):
    return synthetic_plates(
        tmp_path_factory,
        "plate40",
        n_compounds=3,
        wells_per_compound=1,
        control_wells=2,
        sites=4,
        plates=2,
        size=160,
        cells_per_image=10,
        cell_radius=11,
        seed=5,
    )


def _prepared_run(tmp_path, plate40, name):
    run = tmp_path / name
    _images(run, load_data=plate40 / "load_data.csv")
    return run


def _masks(run):
    return {p.name: tifffile.imread(p) for p in sorted((run / "masks").glob("*.tif"))}


def _kill_midway(stage: str, run, outputs, pattern: str, total: int) -> dict[str, int]:
    """Start ``cellresponse <stage> RUN``, SIGKILL it once a few images are done, and return the finished
    outputs' mtimes. Skips (does not fail) when the machine finished every image before the kill landed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cellresponse.cli", stage, str(run), "--workers", "0", *STAGE_FLAGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(outputs.glob(pattern))) < 3 and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in outputs.glob(pattern)}
    if len(finished) >= total:
        pytest.skip(f"{stage} finished all {total} images before the kill landed (machine too fast for this test)")
    assert finished, f"{stage} wrote nothing in 120 s"
    return finished


def test_segment_killed_midway_resumes_to_the_uninterrupted_result(tmp_path, plate40):
    reference = _prepared_run(tmp_path, plate40, "reference")
    run_cli("segment", reference, "--workers", "0", *STAGE_FLAGS)
    total = len(pd.read_parquet(reference / "images.parquet"))
    run = _prepared_run(tmp_path, plate40, "killed")
    finished = _kill_midway("segment", run, run / "masks", "*.tif", total)
    run_cli("segment", run, "--workers", "0", *STAGE_FLAGS)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "masks").glob("*.tif") if p.name in finished} == finished
    assert not list((run / "masks").glob(".*.tmp"))
    resumed, expected = _masks(run), _masks(reference)
    assert resumed.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name])


def test_crops_killed_midway_resume_to_the_same_store(tmp_path, plate40):
    reference = _prepared_run(tmp_path, plate40, "reference")
    run = _prepared_run(tmp_path, plate40, "killed")
    for folder in (reference, run):
        run_cli("segment", folder, "--workers", "0", *STAGE_FLAGS)
        run_cli("measure", folder, "--workers", "0", *STAGE_FLAGS)
    pd.testing.assert_frame_equal(pd.read_parquet(run / "cells.parquet"), pd.read_parquet(reference / "cells.parquet"))
    run_cli("crops", reference, "--workers", "0", *STAGE_FLAGS)
    total = len(pd.read_parquet(reference / "images.parquet"))
    parts = run / "crops" / "parts"
    finished = _kill_midway("crops", run, parts, "*.crops", total)
    assert not (run / "crops" / "index.parquet").exists()
    run_cli("crops", run, "--workers", "0", *STAGE_FLAGS)
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("*.crops") if p.name in finished} == finished
    resumed, whole = CropStore(run / "crops"), CropStore(reference / "crops")
    np.testing.assert_array_equal(resumed.batch(np.arange(len(resumed))), whole.batch(np.arange(len(whole))))
    assert not list((run / "crops").rglob("*.npy"))  # no second copy of the crops
    pd.testing.assert_frame_equal(
        pd.read_parquet(run / "crops" / "index.parquet"), pd.read_parquet(reference / "crops" / "index.parquet")
    )


def test_dask_two_workers_match_in_process(tmp_path, plate40):
    serial = _prepared_run(tmp_path, plate40, "serial")
    run_cli("segment", serial, "--workers", "0", *STAGE_FLAGS)
    dask = _prepared_run(tmp_path, plate40, "dask")
    run_cli("segment", dask, "--workers", "2", *STAGE_FLAGS)
    run_cli("measure", dask, "--workers", "2", *STAGE_FLAGS)
    a, b = _masks(serial), _masks(dask)
    assert a.keys() == b.keys() and len(a) == 40
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    # the generator knows how many cells it drew: the offline backend finds them (touching cells may merge)
    truth = pd.read_csv(plate40 / "truth.csv")["true_cells"].sum()
    found = len(pd.read_parquet(dask / "cells.parquet"))
    assert abs(found - truth) <= 0.05 * truth, (found, truth)


def test_one_bad_image_stop_or_skip(tmp_path, plate40):
    plate = tmp_path / "plate"
    shutil.copytree(plate40, plate)
    broken = next((plate / "SYN0001" / "Images").glob("r*c*f01p01-ch2*.tiff"))
    broken.write_bytes(broken.read_bytes()[:200])  # truncated file
    run = tmp_path / "run"
    _images(run, load_data=plate / "load_data.csv")
    stop = run_cli("segment", run, "--workers", "0", *STAGE_FLAGS, check=False)
    assert stop.returncode == 2
    assert "segment failed on image" in stop.stderr and broken.name in stop.stderr
    errors = [line for line in stop.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stop.stderr and "TiffTag" not in stop.stderr
    skip = run_cli("segment", run, "--workers", "0", "--on-error", "skip", *STAGE_FLAGS, check=False)
    assert skip.returncode == 1
    failures = pd.read_csv(run / "logs" / "failures-segment.csv")
    assert len(failures) == 1 and broken.name in failures.loc[0, "error"]
    assert len(list((run / "masks").glob("*.tif"))) == 39


def test_stage_before_its_input_is_a_clear_error(tmp_path, plate40):
    run = _prepared_run(tmp_path, plate40, "early")
    result = run_cli("measure", run, "--workers", "0", *STAGE_FLAGS, check=False)
    assert result.returncode == 2 and "run `cellresponse segment" in result.stderr


def test_help_lists_every_verb_exactly():
    """The parser's verbs are exactly the documented ones, each with a help line in `--help` (a removed or
    renamed verb fails here; a substring of another word does not count)."""
    from cellresponse.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "verb")
    expected = {"synth", "images", "segment", "measure", "crops", "embed", "profile", "train", "evaluate", "predict"}
    expected |= {"report", "run"}
    assert set(subparsers.choices) == expected | {"demo", "config"}
    lines = run_cli("--help").stdout.splitlines()
    listed = {line.split()[0] for line in lines if line.startswith("    ") and not line.startswith("     ")}
    assert listed == set(subparsers.choices)


def test_chunk_size_balances_workers():
    from cellresponse.parallel import chunk_size

    assert chunk_size(3, 2) == 1
    assert chunk_size(40, 2) == 5
    assert chunk_size(4000, 2) == 8


def test_dask_leaves_this_process_environment_alone(tmp_path):
    """Dask's nanny applied the workers' OMP_NUM_THREADS=1 to the main process as well, so `run` then trained
    on one thread (torch reads it at import): half the speed on 2 cores, and other numbers than `train` alone."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, os\n"
        "from cellresponse.config import RuntimeConfig\n"
        "from cellresponse.parallel import map_images\n"
        "def task(row):\n"
        "    return {'omp': os.environ.get('OMP_NUM_THREADS')}\n"
        "if __name__ == '__main__':\n"
        "    before = dict(os.environ)\n"
        "    done, _ = map_images(task, [{'image_id': 'a'}], RuntimeConfig(workers=1), 'probe', progress=False)\n"
        "    changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "    print(json.dumps({'changed': changed, 'worker_omp': done[0].info['omp']}))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state == {"changed": [], "worker_omp": "1"}  # the workers still get one thread each


def test_measure_refuses_to_mix_settings_in_a_half_measured_run(tmp_path, plate40):
    run = _prepared_run(tmp_path, plate40, "mixed")
    run_cli("segment", run, "--workers", "0", *STAGE_FLAGS)
    run_cli("measure", run, "--workers", "0", *STAGE_FLAGS)
    parts = sorted((run / "cells").glob("*.parquet"))
    parts[0].unlink()  # a run stopped before its last image
    kept = {p.name: p.stat().st_mtime_ns for p in parts[1:]}
    other = ("--set", "measurement.extended=false")
    refused = run_cli("measure", run, "--workers", "0", *other, *STAGE_FLAGS, check=False)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr and "Traceback" not in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in parts[1:]} == kept and not parts[0].exists()  # nothing touched
    # Parts from before the settings were recorded: told apart by their columns.
    (run / "cells" / "settings.json").unlink()
    refused = run_cli("measure", run, "--workers", "0", *other, *STAGE_FLAGS, check=False)
    assert refused.returncode != 0 and "columns" in refused.stderr and "--overwrite" in refused.stderr
    run_cli("measure", run, "--workers", "0", *STAGE_FLAGS)  # the same settings as the parts: resumes
    assert any(c.startswith("CR_Texture_Contrast") for c in pd.read_parquet(run / "cells.parquet").columns)
    run_cli("measure", run, "--workers", "0", "--overwrite", *other, *STAGE_FLAGS)
    cells = pd.read_parquet(run / "cells.parquet")
    assert not [c for c in cells.columns if c.startswith(("CR_Texture_Contrast", "CR_RingFraction_"))]
    assert cells["image_id"].nunique() == len(parts)


def test_predict_help_names_every_setting_predict_accepts():
    """`predict --help` lists the `--set` keys predict takes (prediction.RUNTIME_KEYS): a key added there and not to
    the help (references.moa_space and novelty_quantile were missing) fails here."""
    from cellresponse.learning.prediction import RUNTIME_KEYS

    text = " ".join(run_cli("predict", "--help").stdout.split())  # argparse wraps lines
    for key in RUNTIME_KEYS:
        section, _, name = key.rstrip(".").partition(".")
        assert (name or f"{section}.*") in text, key

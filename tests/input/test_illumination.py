"""Illumination correction: CellProfiler's functions from a load_data, computed ones, and bad files refused early."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.config import load_config
from cellresponse.errors import InputError
from cellresponse.input.channels import load_stack
from cellresponse.input.illumination import average_images, illumination_function, read_function
from cellresponse.input.io import write_tiff
from cellresponse.input.plate import channel_names, read_load_data
from cellresponse.input.runfolder import RunFolder
from tests.conftest import run_cli


def vignette(side: int, strength: float = 0.45) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side]
    return 1 - strength * (((y - side / 2) / (side / 2)) ** 2 + ((x - side / 2) / (side / 2)) ** 2) / 2


def vignetted_fields(side: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """16-bit fields of bright round cells on a dim background, times :func:`vignette` (one channel each)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    fields = []
    for _ in range(count):
        image = np.full((side, side), 200.0)
        for y, x in rng.integers(0, side, (60, 2)):
            image[(yy - y) ** 2 + (xx - x) ** 2 < (side / 40) ** 2] += rng.uniform(1000, 3000)
        image = image * vignette(side) + rng.normal(0, 20, image.shape)
        fields.append(np.clip(image, 0, 65535).astype(np.uint16)[None])
    return fields


def test_computed_function_recovers_a_known_vignetting():
    """The issue's benchmark on a synthetic plate: within 5 % of the true vignetting (median over the field), at
    JUMP's filter-to-field ratio (500 px on 1080 px fields, here 125 on 270)."""
    function = illumination_function(average_images(vignetted_fields(270, 20))[0], size=125)
    assert function.min() == pytest.approx(1.0)  # rescaled by its robust minimum, as CellProfiler's "Rescale: Yes"
    truth = vignette(270)
    error = np.abs((function / np.median(function)) / (truth / np.median(truth)) - 1)
    assert np.median(error) < 0.05


def load_data_with_illum(tmp_path, functions: dict[str, np.ndarray]):
    """A two-channel load_data whose Illum columns name ``functions`` (saved as CellProfiler's .npy)."""
    rng = np.random.default_rng(1)
    rows = []
    for site in (1, 2):
        row = {"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": site}
        for name in ("DNA", "AGP"):
            file = f"r01c01f0{site}-{name}.tif"
            write_tiff(tmp_path / file, rng.integers(100, 4000, (64, 64), dtype=np.uint16))
            row |= {f"FileName_Orig{name}": file, f"PathName_Orig{name}": "."}
            row |= {f"FileName_Illum{name}": f"P1_Illum{name}.npy", f"PathName_Illum{name}": "illum"}
        rows.append(row)
    (tmp_path / "illum").mkdir(exist_ok=True)
    for name, function in functions.items():
        np.save(tmp_path / "illum" / f"P1_Illum{name}.npy", function)
    csv = tmp_path / "load_data_with_illum.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_load_data_functions_divide_each_channel_on_cellprofilers_scale(tmp_path):
    ramp = np.linspace(1.0, 2.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    csv = load_data_with_illum(tmp_path, {"DNA": ramp, "AGP": np.full((64, 64), 4.0)})
    table = read_load_data(csv)
    row = table.iloc[0].to_dict()
    corrected = load_stack(row, channel_names(table))
    raw = load_stack({k: v for k, v in row.items() if "Illum" not in k}, channel_names(table))
    assert corrected.dtype == np.float32
    np.testing.assert_allclose(corrected[0], raw[0] / 65535 / ramp, rtol=1e-5)
    np.testing.assert_allclose(corrected[1], raw[1] / 65535 / 4.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (np.zeros((64, 64)), "zeros"),
        (np.ones((32, 32)), "shape"),
        (np.full((64, 64), np.nan), "NaN"),
        (None, "not found"),
    ],
)
def test_a_bad_function_is_named_before_any_image_work(tmp_path, function, message):
    functions = {"DNA": np.ones((64, 64))} | ({} if function is None else {"AGP": function})
    csv = load_data_with_illum(tmp_path, functions)
    read_function.cache_clear()
    result = run_cli("images", "--load-data", csv, "--out", tmp_path / "run", "--no-progress", check=False)
    assert result.returncode != 0
    assert "P1_IllumAGP.npy" in result.stderr and message in result.stderr
    assert not (tmp_path / "run" / "images.parquet").exists()


def test_illumination_none_drops_the_functions(tmp_path):
    csv = load_data_with_illum(tmp_path, {"DNA": np.zeros((64, 64)), "AGP": np.zeros((64, 64))})
    out = tmp_path / "run"
    run_cli("images", "--load-data", csv, "--out", out, "--no-progress", "--set", "input.illumination=none")
    assert not any("Illum" in c for c in RunFolder(out).read_images().columns)


def test_computed_per_plate_saved_and_resumed(tiny_plates, tmp_path):
    out = tmp_path / "run"
    args = ("images", "--load-data", tiny_plates / "load_data.csv", "--out", out, "--no-progress")
    run_cli(*args, "--set", "input.illumination=compute")
    run = RunFolder(out)
    table = run.read_images()
    saved = sorted(run.illumination.glob("*/Illum*.npy"))
    assert len(saved) == table["plate"].nunique() * len(channel_names(table))
    assert all(np.load(p).min() == pytest.approx(1.0) for p in saved)
    row = table.iloc[0].to_dict()
    assert load_stack(row, channel_names(table)).dtype == np.float32  # divided on CellProfiler's scale
    stamps = [p.stat().st_mtime_ns for p in saved]
    run_cli(*args, "--set", "input.illumination=compute")  # the same images and filter: not computed again
    assert [p.stat().st_mtime_ns for p in saved] == stamps
    assert load_config().input.illumination == "auto"


def test_a_table_naming_functions_for_some_channels_only_is_refused(tmp_path):
    csv = load_data_with_illum(tmp_path, {"DNA": np.ones((64, 64)), "AGP": np.ones((64, 64))})
    table = pd.read_csv(csv).drop(columns=["FileName_IllumAGP", "PathName_IllumAGP"])
    table.to_csv(csv, index=False)
    result = run_cli("images", "--load-data", csv, "--out", tmp_path / "run", "--no-progress", check=False)
    assert result.returncode != 0 and "not for ['AGP']" in result.stderr
    with pytest.raises(InputError):
        from cellresponse.input.illumination import check_illumination

        check_illumination(read_load_data(csv), ["DNA", "AGP"], (64, 64))


def test_auto_computes_only_over_enough_images():
    from cellresponse.input.illumination import MIN_IMAGES, illumination_plan

    many, few = pd.Series([MIN_IMAGES, MIN_IMAGES + 3]), pd.Series([MIN_IMAGES, 12])
    assert illumination_plan("auto", True, few)[0] == "load_data"
    assert illumination_plan("auto", False, many)[0] == "compute"
    plan, why = illumination_plan("auto", False, few)
    assert plan == "none" and "12 images" in why and "input.illumination: compute" in why
    assert illumination_plan("compute", False, few)[0] == "compute"
    assert illumination_plan("none", True, many)[0] == "none"

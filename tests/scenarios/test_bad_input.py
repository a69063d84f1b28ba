"""Bad input, one row per case: each gives one clear line (what, where, how to fix), a non-zero exit
and leaves earlier outputs intact; cases that are not errors (an image without cells, unmatched
metadata, a single-image class, NaN features) are recorded and the run goes on."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from cellresponse.cli import main

FIRST = "SYN0001/Images/r01c01f01p01-ch{}sk1fk1fl1.tiff"


@dataclass
class Case:
    name: str
    setup: Callable[[Path, Path], list[str]]  # (plates copy, cropped run copy) -> argv
    exit_code: int
    message: str  # must appear in the one error line (or in the log for non-errors)


def _load_data(plates: Path) -> str:
    return str(plates / "load_data.csv")


def _images(plates: Path, run: Path, *extra: str) -> list[str]:
    return ["images", "--load-data", _load_data(plates), "--out", str(run.parent / "fresh"), *extra]


def _segment_after(mutate: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    def setup(plates: Path, run: Path) -> list[str]:
        assert main(_images(plates, run)) == 0
        mutate(plates)
        return ["segment", str(run.parent / "fresh"), "--workers", "0", "--no-progress"]

    return setup


def _missing_channel(plates: Path) -> None:
    (plates / FIRST.format(3)).unlink()


def _truncated(plates: Path) -> None:
    path = plates / FIRST.format(2)
    path.write_bytes(path.read_bytes()[:300])


def _not_a_tiff(plates: Path) -> None:
    (plates / FIRST.format(1)).write_text("this is not an image")


def _dtype_mismatch(plates: Path) -> None:
    path = plates / FIRST.format(4)
    tifffile.imwrite(path, tifffile.imread(path).astype(np.float32))


def _shape_mismatch(plates: Path) -> None:
    path = plates / FIRST.format(4)
    tifffile.imwrite(path, tifffile.imread(path)[:100, :100])


def _empty_field(plates: Path) -> None:
    for channel in range(1, 6):
        path = plates / FIRST.format(channel)
        tifffile.imwrite(path, np.full_like(tifffile.imread(path), 100))


def _edit_labels(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        table = pd.read_parquet(run / "images.parquet")
        edit(table).to_parquet(run / "images.parquet", index=False)

    return mutate


def _train_after(mutate: Callable[[Path], None], *extra: str) -> Callable[[Path, Path], list[str]]:
    def setup(plates: Path, run: Path) -> list[str]:
        mutate(run)
        return ["train", str(run), "--epochs", "1", "--no-progress", *extra]

    return setup


def _nan_features(run: Path) -> None:
    part = sorted((run / "cells.parquet").glob("*.parquet"))[0]  # one plate's part
    cells = pd.read_parquet(part)
    cells.loc[cells.index[:5], "solidity"] = np.nan
    cells.loc[cells.index[5:8], "eccentricity"] = np.inf
    cells.to_parquet(part, index=False)


def _single_image_class(table: pd.DataFrame) -> pd.DataFrame:
    table.loc[table.index[0], "Metadata_pert_iname"] = "lonely-compound"
    return table


def _metadata_mismatch(plates: Path, run: Path) -> list[str]:
    table = pd.read_csv(plates / "load_data.csv")
    meta = table[["Metadata_Plate", "Metadata_Well", "Metadata_pert_iname"]].drop_duplicates().iloc[1:]
    extra = pd.DataFrame([{"Metadata_Plate": "SYN0001", "Metadata_Well": "P24", "Metadata_pert_iname": "ghost"}])
    pd.concat([meta, extra]).to_csv(plates / "treatments.csv", index=False)
    table.drop(columns=["Metadata_pert_iname", "Metadata_target"]).to_csv(plates / "bare.csv", index=False)
    return [
        "images",
        "--load-data",
        str(plates / "bare.csv"),
        "--metadata",
        str(plates / "treatments.csv"),
        "--out",
        str(run.parent / "fresh"),
    ]


def _retrain_other_split(plates: Path, run: Path) -> list[str]:
    assert main(["train", str(run), "--epochs", "1", "--no-progress"]) == 0
    return ["train", str(run), "--split-by", "image", "--no-progress"]


CASES = [
    Case("missing channel file", lambda p, r: (_missing_channel(p), _images(p, r))[1], 2, "r01c01f01p01-ch3"),
    Case("missing file after the image table", _segment_after(_missing_channel), 2, "image file not found"),
    Case("truncated TIFF", _segment_after(_truncated), 2, "is the file complete?"),
    Case("file that is not a TIFF", _segment_after(_not_a_tiff), 2, "cannot read TIFF"),
    Case("dtype differs between channels", _segment_after(_dtype_mismatch), 2, "differ in dtype"),
    Case("shape differs between channels", _segment_after(_shape_mismatch), 2, "differ in shape"),
    Case("image without cells (not an error)", _segment_after(_empty_field), 0, ""),
    Case("metadata rows without images, images without metadata", _metadata_mismatch, 0, "without"),
    Case("label column missing", _train_after(lambda r: None, "--label", "Metadata_nope"), 2, "use --label"),
    Case(
        "label column empty",
        _train_after(_edit_labels(lambda t: t.assign(Metadata_pert_iname=None))),
        2,
        "empty for every image",
    ),
    Case(
        "all images one class",
        _train_after(_edit_labels(lambda t: t.assign(Metadata_pert_iname="DMSO"))),
        2,
        "nothing to learn",
    ),
    Case("class with a single image (warned)", _train_after(_edit_labels(_single_image_class)), 0, "single image"),
    Case("NaN / infinite feature values (warned)", _train_after(_nan_features), 0, "NaN/infinite"),
    Case("unknown config key", lambda p, r: [*_images(p, r), "--set", "training.max_epoch=3"], 2, "unknown key"),
    Case(
        "unknown config key on a stage verb",
        lambda p, r: ["train", str(r), "--set", "training.max_epoch=3", "--no-progress"],
        2,
        "unknown key 'training.max_epoch'",
    ),
    Case(
        "config value out of range", lambda p, r: [*_images(p, r), "--set", "split.test_fraction=1.5"], 2, "less than 1"
    ),
    Case(
        "output folder not writable",
        lambda p, r: (
            (r.parent / "a-file").write_text(""),
            ["images", "--load-data", _load_data(p), "--out", str(r.parent / "a-file" / "run")],
        )[1],
        2,
        "not writable",
    ),
    Case("training again on another split without --overwrite", _retrain_other_split, 2, "another split"),
    Case("stage run before its input exists", lambda p, r: ["measure", str(r.parent / "nowhere")], 2, "first"),
]


@pytest.fixture(scope="module")
def cropped_tiny(tiny_plates, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bad_input") / "run"
    argv = ["run", "--load-data", str(tiny_plates / "load_data.csv"), "--preset", "cpu", "--workers", "0"]
    argv += ["--set", "crops.store_size=32", "--set", "crops.size=32", "--split-by", "well"]
    assert main([*argv, "--out", str(run), "--until", "crops", "--no-progress"]) == 0
    return run


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".tif", ".npy", ".yaml") and "model" not in p.parts
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tiny_plates, cropped_tiny, tmp_path, capsys, caplog):
    plates = tmp_path / "plates"
    shutil.copytree(tiny_plates, plates)
    run = tmp_path / "work" / "run"
    shutil.copytree(cropped_tiny, run, ignore=shutil.ignore_patterns("model"))
    argv = case.setup(plates, run)
    before = _digest(run)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.exit_code, err[-2000:]
    assert "Traceback" not in err
    if case.exit_code:
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and case.message in lines[0], err[-2000:]
    else:
        assert case.message in err + caplog.text
    if case.exit_code:  # a refused call leaves the run folder's outputs as they were
        assert _digest(run) == before


def test_image_without_cells_is_recorded(tiny_plates, tmp_path):
    plates = tmp_path / "plates"
    shutil.copytree(tiny_plates, plates)
    _empty_field(plates)
    out = tmp_path / "run"
    argv = ["run", "--load-data", str(plates / "load_data.csv"), "--workers", "0", "--until", "measure"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    seg = pd.read_parquet(out / "segmentation.parquet")
    assert int(seg.loc[seg["image_id"].str.endswith("r01c01f01"), "cells"].iloc[0]) == 0
    assert (seg["cells"] > 0).sum() == len(seg) - 1


def test_gpu_out_of_memory_ends_in_one_line_saying_what_to_change(cropped_tiny, tmp_path, capsys, monkeypatch):
    """The study's float32 at batch 512 did not fit an 80 GB H100 (docs/benchmarks.md): the user gets one
    line naming bf16-mixed and a smaller batch, not a CUDA traceback."""
    from cellresponse.stages import train

    run = tmp_path / "run"
    shutil.copytree(cropped_tiny, run, ignore=shutil.ignore_patterns("model"))

    class OutOfMemoryTrainer:
        def fit(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 184.00 MiB.\nmore lines")

    monkeypatch.setattr(train, "build_trainer", lambda *args, **kwargs: OutOfMemoryTrainer())
    capsys.readouterr()
    code = main(["train", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    assert "out of GPU memory" in lines[0] and "training.precision=bf16-mixed" in lines[0]
    assert "training.batch_size=32" in lines[0]  # half the cpu preset's 64

"""Benchmark: segmentation and measurement speed on real BBBC021 fields.

Prints, all measured in this one run:
  * images/s per segmentation backend (offline always; Cellpose when its weights are on disk);
  * the speed-up of `segment` from 1 to 2 Dask workers (goal >= 1.7x);
  * cells/s of the `measure` stage (reading TIFFs, recipe, writing Parquet) with the study's feature
    set divided by a bare `regionprops_table` call on the same masks and images already in memory
    (goal >= 0.8: what the stage's I/O costs);
  * cells/s of the stage with every channel measured (spread, outline/inside, gradient, nucleus/cytoplasm),
    then with the default measurement (the same + `measurement.extended`: co-occurrence texture, radial
    distribution, colocalisation, neighbours), and their cost relative to the study's set.

Usage: python benchmarks/segment_measure.py [--images 440] [--data ../shared/data/bbbc021-moa/load_data.csv]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED, subset_csv
from skimage.measure import regionprops_table

from cellresponse.config import load_config
from cellresponse.features.cell_features import PROPERTIES
from cellresponse.input.channels import apply_recipe, load_stack
from cellresponse.input.io import read_tiff
from cellresponse.input.plate import ImageSource, channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.segmentation.cellpose_backend import cellpose_weights_available
from cellresponse.segmentation.inputs import segmentation_inputs
from cellresponse.segmentation.offline import Segmenter
from cellresponse.stages import images as images_stage
from cellresponse.stages import segment as segment_stage
from cellresponse.stages.measure import measure_one

DEFAULT_DATA = SHARED / "bbbc021-moa" / "load_data.csv"


def _segment_seconds(csv: Path, folder: Path, workers: int) -> float:
    run = RunFolder(folder / f"workers{workers}")
    config = load_config(overrides=["segmentation.backend=offline", f"runtime.workers={workers}"])
    images_stage.run(run, config, source=ImageSource(load_data=csv))
    started = time.perf_counter()
    segment_stage.run(run, config, progress=False)
    return time.perf_counter() - started


def _measure_rate(config, run: RunFolder, rows: list[dict], names: list[str]) -> float:
    """Cells/s of the measure stage's per-image function (read, measure, write Parquet) in this process."""
    func = functools.partial(measure_one, config_json=config.model_dump_json(), run_root=str(run.root), names=names)
    started = time.perf_counter()
    measured = sum(func(row)["cells"] for row in rows)
    return measured / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=440, help="fields used (default: all 440)")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"data not found: {args.data} (needs ../shared/data)")
    folder = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    try:
        csv = subset_csv(args.data, args.images, folder)
        config = load_config(overrides=["segmentation.backend=offline", "runtime.workers=0"])
        run = RunFolder(folder / "inproc")
        images_stage.run(run, config, source=ImageSource(load_data=csv))
        table = run.read_images()
        rows, names = table.to_dict("records"), channel_names(table)

        # 1. images/s per backend, in this process (one core)
        print(f"data: {args.data} ({len(rows)} fields, {names})")
        backends = ["offline"] + (["cellpose"] if cellpose_weights_available(config.segmentation.model) else [])
        for backend in backends:
            segmenter = Segmenter(config.segmentation, backend=backend)
            seg_input, nuclear, _ = segmentation_inputs(rows[0], names, config)
            segmenter(seg_input, nuclear)  # warm-up (numba compiles the flow code once)
            started = time.perf_counter()
            cells = 0
            for row in rows:
                seg_input, nuclear, _ = segmentation_inputs(row, names, config)
                cells += int(segmenter(seg_input, nuclear).labels.max())
            elapsed = time.perf_counter() - started
            print(f"segment[{backend}]: {len(rows) / elapsed:.2f} images/s on 1 core ({cells} cells)")
        if "cellpose" not in backends:
            print("segment[cellpose]: skipped — Cellpose weights are not on this machine (no download here)")

        # 2. Dask 1 -> 2 workers on the whole stage (cluster start included in both)
        one = _segment_seconds(csv, folder, 1)
        two = _segment_seconds(csv, folder, 2)
        print(f"segment stage: 1 worker {one:.1f} s, 2 workers {two:.1f} s -> speed-up {one / two:.2f}x (goal >= 1.7)")

        # 3. measure stage vs bare regionprops_table on the same masks
        masks_run = RunFolder(folder / "workers2")
        for name in ("masks", "flows"):
            shutil.copytree(getattr(masks_run, name), getattr(run, name), dirs_exist_ok=True)
        study = load_config(
            overrides=[
                "segmentation.backend=offline",
                "measurement.intensity_channels=[]",
                "measurement.extended=false",
            ]
        )
        stage_rate = _measure_rate(study, run, rows, names)
        arrays = []
        for row in rows:
            labels = read_tiff(run.mask_path(row["image_id"])).astype(np.int32)
            intensity = apply_recipe(load_stack(row, names), config.segmentation.input, names)
            arrays.append((labels, intensity))
        started = time.perf_counter()
        bare_cells = sum(len(regionprops_table(lab, img, properties=PROPERTIES)["label"]) for lab, img in arrays)
        bare_rate = bare_cells / (time.perf_counter() - started)
        print(
            f"measure (study's features): {stage_rate:.0f} cells/s (stage, with I/O) vs {bare_rate:.0f} cells/s"
            f" (bare regionprops_table) -> ratio {stage_rate / bare_rate:.2f} (goal >= 0.8)"
        )
        channels_only = load_config(overrides=["segmentation.backend=offline", "measurement.extended=false"])
        for label, measured in (("every channel + compartments", channels_only), ("default: + extended", config)):
            rate = _measure_rate(measured, run, rows, names)
            print(f"measure ({label}): {rate:.0f} cells/s -> {stage_rate / rate:.2f}x the study's cost")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

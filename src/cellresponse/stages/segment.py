"""``cellresponse segment``: masks and flows of every image (``RUN/masks``, ``RUN/flows``), the per-image
segmentation table and Figure 1 panels; resumable (the mask file marks an image done), parallel."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config
from cellresponse.input.channels import recipe_channels
from cellresponse.input.io import read_tiff, read_tiff_info, write_parquet, write_tiff
from cellresponse.input.runfolder import RunFolder
from cellresponse.segmentation.cellpose_backend import ensure_cellpose_weights
from cellresponse.segmentation.inputs import segmentation_inputs
from cellresponse.segmentation.offline import Segmenter, choose_backend
from cellresponse.stages.per_image import config_from_json, image_rows, map_stage

log = logging.getLogger(__name__)

FIGURES = 3  # Figure 1 panels drawn per run (the first images of the table)

_SEGMENTERS: dict[str, Segmenter] = {}


def _segmenter(config: Config, backend: str) -> Segmenter:
    # Built once per worker process: loading Cellpose weights per image would dominate the run.
    key = config.segmentation.model_dump_json() + backend
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = Segmenter(config.segmentation, backend=backend)
    return _SEGMENTERS[key]


def segment_one(row: dict, *, config_json: str, run_root: str, names: list[str], backend: str) -> dict:
    """Segment one field; flows first, mask last (the mask file is the "done" marker for resume)."""
    config = config_from_json(config_json)
    run = RunFolder(Path(run_root))
    started = time.perf_counter()
    seg_input, nuclear, nuclear_name = segmentation_inputs(row, names, config)
    result = _segmenter(config, backend)(seg_input, nuclear)
    info = {
        "image_id": row["image_id"],
        "cells": int(result.labels.max()),
        "diameter": round(result.diameter, 2),
        "backend": result.backend,
        "nuclear_channel": nuclear_name,
        "seconds": round(time.perf_counter() - started, 3),
    }
    # float16: the crops keep flows at 8 bits ((v + 1) / 2 in 1/255 steps), float16 holds them to 2.5e-4
    # (test_flows_are_stored_at_the_precision_the_crops_need) in 38 % of float32's bytes on a CPJUMP1 field.
    write_tiff(run.flow_path(row["image_id"]), result.flows.astype(np.float16), info)
    write_tiff(run.mask_path(row["image_id"]), result.labels.astype(np.uint32), info)
    return info


def save_figure1(run: RunFolder, row: dict, names: list[str], config: Config) -> Path:
    # matplotlib is imported here, by the main process only: Dask workers import this module for segment_one.
    from cellresponse.reporting.figures import figure1

    seg_input, _, _ = segmentation_inputs(row, names, config)
    labels = read_tiff(run.mask_path(row["image_id"]))
    flows = read_tiff(run.flow_path(row["image_id"]))
    title = f"{row['image_id']} — {row.get(config.input.label, '')}"
    return figure1(seg_input, labels, flows, run.figure_path(row["image_id"]), title=title)


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Segment every image into ``RUN/masks`` and ``RUN/flows``; finished images are skipped."""
    started = time.perf_counter()
    rows, names = image_rows(run)
    backend = choose_backend(config.segmentation)
    used = recipe_channels(config.segmentation.input, names)
    if used != list(config.segmentation.input.channels):
        log.info(
            "segmentation input: %s of the %d channel(s) these images have (%s) — the default recipe takes the "
            "first three; set segmentation.input.channels to choose",
            config.segmentation.input.kind,
            len(names),
            ", ".join(names),
        )
    fallback = config.segmentation.backend == "auto" and backend == "offline"
    log.info("segmentation backend: %s%s", backend, " (Cellpose weights not found)" if fallback else "")
    if backend == "cellpose":
        # Fail here, once, with a clear line, rather than in every worker.
        ensure_cellpose_weights(config.segmentation.model, config.segmentation.weights_dir)
    outcome = map_stage(
        "segment",
        segment_one,
        run,
        config,
        rows,
        is_done=lambda r: run.mask_path(r["image_id"]).exists() and run.flow_path(r["image_id"]).exists(),
        overwrite=overwrite,
        progress=progress,
        temporaries=(run.masks, run.flows),
        names=names,
        backend=backend,
    )
    masks = [run.mask_path(r["image_id"]) for r in rows]
    table = pd.DataFrame([read_tiff_info(path) for path in masks if path.exists()])
    write_parquet(run.segmentation, table)
    for row in rows[:FIGURES]:
        if run.mask_path(row["image_id"]).exists():
            save_figure1(run, row, names, config)
    summary = {
        **outcome.counts("segmented_now"),
        "backend": backend,
        "cells": int(table["cells"].sum()) if len(table) else 0,
        "images_without_cells": int((table["cells"] == 0).sum()) if len(table) else 0,
        "median_diameter": float(table["diameter"].median()) if len(table) else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    run.record_stage("segment", summary, outcome.failed)
    log.info(
        "segmented %d images (%d skipped as done): %d cells",
        len(outcome.done),
        summary["skipped_done"],
        summary["cells"],
    )
    return summary

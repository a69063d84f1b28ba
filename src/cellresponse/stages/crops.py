"""``cellresponse crops``: a mask crop and a flow crop of every measured cell, into the crop store ``RUN/crops``
(one compressed part file per image, written by that image's task, and an index: features/crop_store.py);
resumable, parallel. What the crops hold: features/crops.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.features.crop_store import write_index, write_part
from cellresponse.features.crops import cell_crops, crop_planes, crop_settings, raw_planes
from cellresponse.input.channels import load_stack
from cellresponse.input.io import read_tiff, read_tiff_info
from cellresponse.input.runfolder import RunFolder, require_outputs
from cellresponse.input.transforms import flow_planes, to_unit
from cellresponse.stages.per_image import config_from_json, image_rows, intensity_scales, map_stage, settled_scales

log = logging.getLogger(__name__)

BBOX_COLUMNS = ["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]


def crop_one(row: dict, *, config_json: str, run_root: str, names: list[str], scales: dict) -> dict:
    """Cut the cells of one measured field into its per-image part of the store."""
    config = config_from_json(config_json)
    run = RunFolder(Path(run_root))
    image_id = row["image_id"]
    cells = pd.read_parquet(run.cells_path(image_id))
    labels = read_tiff(run.mask_path(image_id))
    flows = read_tiff(run.flow_path(image_id))
    backend = read_tiff_info(run.flow_path(image_id)).get("backend", "offline")
    raw = raw_planes(load_stack(row, names), crop_planes(config, names), names, config)
    if raw.shape[1:] != labels.shape:
        raise InputError(f"mask {run.mask_path(image_id)} has shape {labels.shape}, image {raw.shape[1:]}")
    scale = scales[str(row["plate"])]
    unit = np.stack([to_unit(plane, lo, hi) for plane, (lo, hi) in zip(raw, scale, strict=True)])
    crops = cell_crops(
        labels,
        cells["label"].to_numpy(),
        cells[BBOX_COLUMNS].to_numpy(),
        unit,
        flow_planes(flows, probability_is_logit=backend == "cellpose"),
        config.crops.store_size,
        config.crops.padding,
        config.crops.recipe,
    )
    size = write_part(run.crop_part(image_id), crops)
    return {"image_id": image_id, "cells": len(crops), "bytes": size}


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Cut every measured cell into ``RUN/crops`` (a compressed part per image, then the index)."""
    started = time.perf_counter()
    rows, names = image_rows(run)
    image_ids = [r["image_id"] for r in rows]
    settings = crop_settings(config, names)
    scales = settled_scales(
        run.crops,
        run.crop_settings,
        settings,
        lambda: intensity_scales(run, rows, names, crop_planes(config, names), config, "crops"),
        overwrite,
        redo="cut them again",
        wanted_scope=config.input.intensity_scale,
    )
    require_outputs(run, image_ids, run.cells_path, "measurements", "measure")
    outcome = map_stage(
        "crops",
        crop_one,
        run,
        config,
        rows,
        is_done=lambda r: run.crop_part(r["image_id"]).exists(),
        progress=progress,
        temporaries=(run.crop_parts,),
        names=names,
        scales=scales,
    )
    if outcome.failed:
        run.record_stage("crops", {"images": len(rows), "failed": len(outcome.failed)}, outcome.failed)
    # the index needs the cells' ids only, read a plate at a time: a screen's ids are gigabytes
    plates = run.cell_parts(image_ids, ["cell_id", "image_id", "label"])
    store = write_index(run.crops, plates, run.crop_part)
    summary = {
        **outcome.counts("cropped_now"),
        "cells": store["cells"],
        "store_size": config.crops.store_size,
        "recipe": config.crops.recipe,
        "store_bytes": store["bytes"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    run.record_stage("crops", summary)
    log.info(
        "crop store: %d cells × %s at %d px (%.1f MB, %.1f KB a cell)",
        store["cells"],
        settings["channels"],
        config.crops.store_size,
        store["bytes"] / 1e6,
        store["bytes"] / max(1, store["cells"]) / 1e3,
    )
    return summary

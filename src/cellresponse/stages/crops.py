"""``cellresponse crops``: a mask crop and a flow crop of every measured cell, into the crop store ``RUN/crops``
(one compressed part file per image, written by that image's task, and an index: store.py); resumable, parallel.
What the crops hold: crops.py."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.features.crop_store import write_index, write_part
from cellresponse.features.crops import FLOW_NAMES, MASK_FLOW_NAMES, cell_crops
from cellresponse.input.channels import apply_recipe, load_stack, resolve_channel
from cellresponse.input.io import read_tiff, read_tiff_info
from cellresponse.input.runfolder import RunFolder
from cellresponse.input.transforms import DISPLAY_PERCENTILES, flow_planes, to_unit
from cellresponse.stages.per_image import (
    config_from_json,
    image_rows,
    map_stage,
    require_outputs,
    settled_scales,
)

log = logging.getLogger(__name__)

SCALE_SAMPLE_IMAGES = 8  # images per plate whose percentiles set the plate's intensity scale
BBOX_COLUMNS = ["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]


def crop_planes(config: Config, names: list[str]) -> list[str]:
    """What the image half of a crop is built from: the segmentation input or named channels."""
    if config.crops.recipe == "mask_flow":
        return ["segmentation_input"]
    chosen = list(config.crops.fluorescence_channels)
    if not chosen:
        chosen = names[:4]
    for name in chosen:
        resolve_channel(names, name)  # unknown names fail here, once, with the list of channels
    return [chosen[i % len(chosen)] for i in range(4)]


def raw_planes(stack: np.ndarray, planes: list[str], names: list[str], config: Config) -> np.ndarray:
    """The image-half planes of one field, in raw intensity units."""
    out = []
    for plane in planes:
        if plane == "segmentation_input":
            out.append(apply_recipe(stack, config.segmentation.input, names))
        else:
            out.append(stack[resolve_channel(names, plane)].astype(np.float32))
    return np.stack(out)


def plate_scales(
    rows: list[dict],
    names: list[str],
    planes: list[str],
    config: Config,
    seed: int = 0,
    percentiles: tuple[float, float] = DISPLAY_PERCENTILES,
) -> dict[str, list[list[float]]]:
    """Per plate and plane, the low and high intensity ``percentiles``, medians over a few sampled images.

    Per-plate (not per-image) scaling keeps a compound's effect on brightness visible to the model
    while absorbing plate-to-plate gain differences, as plate normalisation does in profiling.
    """
    by_plate: dict[str, list[dict]] = {}
    for row in rows:
        by_plate.setdefault(str(row["plate"]), []).append(row)
    rng = np.random.default_rng(seed)
    scales = {}
    for plate, plate_rows in by_plate.items():
        picks = rng.choice(len(plate_rows), size=min(SCALE_SAMPLE_IMAGES, len(plate_rows)), replace=False)
        lows, highs = [], []
        for i in sorted(picks):
            raw = raw_planes(load_stack(plate_rows[i], names), planes, names, config)
            q = np.percentile(raw.reshape(len(planes), -1), list(percentiles), axis=1)
            lows.append(q[0])
            highs.append(q[1])
        scales[plate] = np.stack([np.median(lows, axis=0), np.median(highs, axis=0)], axis=1).tolist()
    return scales


def crop_settings(config: Config, names: list[str]) -> dict[str, Any]:
    """What makes two crop stores compatible (compared by ``predict`` against a model bundle)."""
    planes = crop_planes(config, names)
    image_names = list(MASK_FLOW_NAMES) if config.crops.recipe == "mask_flow" else planes
    return {
        "recipe": config.crops.recipe,
        "store_size": config.crops.store_size,
        "padding": config.crops.padding,
        "planes": planes,
        "channels": [*image_names, *FLOW_NAMES],
        "segmentation_input": config.segmentation.input.model_dump(),
    }


def changed_settings(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two :func:`crop_settings` (a key on one side only counts)."""
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def crop_one(row: dict, *, config_json: str, run_root: str, names: list[str], scales: dict) -> dict:
    """Cut the cells of one measured field into its per-image part of the store."""
    config = config_from_json(config_json)
    run = RunFolder(run_root)
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
    cells = run.read_cells(["cell_id", "image_id", "label"])  # the index needs no features: memory stays small
    settings = crop_settings(config, names)
    scales = settled_scales(
        run.crops,
        run.crop_settings,
        settings,
        lambda: plate_scales(rows, names, crop_planes(config, names), config, seed=config.seed),
        overwrite,
        redo="cut them again",
    )
    require_outputs(run, [r["image_id"] for r in rows], run.cells_path, "measurements", "measure")
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
    store = write_index(run.crops, cells, run.crop_part)
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

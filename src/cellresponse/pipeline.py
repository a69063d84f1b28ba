"""The stages as file-to-file steps on a run folder (I/O lives here; the science is in the stage modules).

Run-folder layout (stable; see README "Output files"):

    RUN/config.yaml            resolved config used by the run
    RUN/images.parquet         the image table (plate.py)
    RUN/masks/<image_id>.tif   uint32 labels; the TIFF description holds JSON (cells, diameter, backend)
    RUN/flows/<image_id>.tif   float32 (3, H, W): dY, dX, cell probability
    RUN/figures/<image_id>.png Figure 1 panels (original, outlines, masks, flows)
    RUN/cells/<image_id>.parquet  per-image measurements (resume unit)
    RUN/cells.parquet          all cells (measure.py documents the columns); cells.csv with --csv
    RUN/crops/, RUN/model/, RUN/predictions/, RUN/metrics.json, RUN/report/   later stages
    RUN/logs/                  cellresponse.log, <stage>.json summaries, failures-<stage>.csv
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cellresponse.channels import apply_recipe, find_nuclear_channel, load_stack, resolve_channel
from cellresponse.config import Config
from cellresponse.errors import InputError, StageError
from cellresponse.io import (
    RunFolder,
    atomic_path,
    read_parquet,
    read_tiff,
    read_tiff_info,
    remove_stale_temporaries,
    write_json,
    write_parquet,
    write_text,
    write_tiff,
)
from cellresponse.measure import empty_cells_table, measure_cells
from cellresponse.parallel import TaskResult, map_images
from cellresponse.plate import build_image_table, channel_names, check_label
from cellresponse.segmentation import Segmenter, choose_backend, ensure_cellpose_weights

log = logging.getLogger(__name__)


def save_config(run: RunFolder, config: Config) -> None:
    write_text(run.config, config.to_yaml())


def load_run_config(run: RunFolder) -> Config:
    from cellresponse.config import load_config

    run.require(run.config, "images")
    return load_config(run.config)


def record_stage(run: RunFolder, stage: str, summary: dict[str, Any], failed: list[TaskResult]) -> None:
    run.logs.mkdir(parents=True, exist_ok=True)
    failures = run.logs / f"failures-{stage}.csv"
    if failed:
        frame = pd.DataFrame([{"image_id": f.image_id, "error": f.error} for f in failed])
        with atomic_path(failures) as tmp:
            frame.to_csv(tmp, index=False)
    elif failures.exists():
        failures.unlink()
    write_json(run.logs / f"{stage}.json", summary)
    if failed:
        raise StageError(
            f"{stage}: {len(failed)} of {summary.get('images', '?')} images failed "
            f"(first: {failed[0].image_id}: {failed[0].error}); list in {failures}"
        )


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def stage_images(
    run: RunFolder,
    config: Config,
    images_dir: str | Path | None = None,
    load_data: str | Path | None = None,
    metadata: list[str | Path] | None = None,
    plate: str | None = None,
) -> pd.DataFrame:
    """Build ``RUN/images.parquet`` and write the resolved config."""
    started = time.perf_counter()
    table, report = build_image_table(images_dir, load_data, metadata, join=config.input.join, plate=plate)
    if config.input.label in table.columns:
        check_label(table, config.input.label)
    else:
        log.warning(
            "label column %s is not in the image table: fine for prediction, required for training",
            config.input.label,
        )
    run.create()
    write_parquet(run.images, table)
    save_config(run, config)
    summary = {
        "images": len(table),
        "plates": int(table["plate"].nunique()),
        "channels": channel_names(table),
        "source": str(images_dir or load_data),
        "join": report.to_dict() if report else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if config.input.label in table.columns:
        summary["classes"] = int(table[config.input.label].nunique())
    record_stage(run, "images", summary, [])
    log.info(
        "image table: %d images, %d plates, channels %s%s",
        len(table),
        summary["plates"],
        ", ".join(summary["channels"]),
        f", {summary['classes']} classes in {config.input.label}" if "classes" in summary else "",
    )
    return table


def _image_rows(run: RunFolder) -> tuple[list[dict], list[str]]:
    table = read_parquet(run.require(run.images, "images"))
    return table.to_dict("records"), channel_names(table)


# --------------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------------

_SEGMENTERS: dict[str, Segmenter] = {}


@functools.lru_cache(maxsize=8)
def _config_from_json(config_json: str) -> Config:
    # Tasks carry the config as JSON; each worker parses it once, not once per image.
    return Config.model_validate_json(config_json)


def _segmenter(config: Config, backend: str) -> Segmenter:
    # Built once per worker process: loading Cellpose weights per image would dominate the run.
    key = config.segmentation.model_dump_json() + backend
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = Segmenter(config.segmentation, backend=backend)
    return _SEGMENTERS[key]


def segmentation_inputs(row: dict, names: list[str], config: Config) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The segmentation input (recipe) and the nuclear channel of one field."""
    stack = load_stack(row, names)
    seg_input = apply_recipe(stack, config.segmentation.input, names)
    if seg_input.ndim != 2:
        raise InputError("segmentation.input must give one 2-D image (kind median/mean/max/single)")
    nuclear = find_nuclear_channel(names, config.segmentation.nuclear_channel, stack)
    return (
        seg_input,
        (stack[nuclear] if nuclear is not None else None),
        (names[nuclear] if nuclear is not None else ""),
    )


def segment_one(row: dict, config_json: str, run_root: str, names: list[str], backend: str) -> dict:
    config = _config_from_json(config_json)
    run = RunFolder(run_root)
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
    # Flows first, mask last: the mask file is the "this image is done" marker for resume.
    write_tiff(run.flow_path(row["image_id"]), result.flows.astype(np.float32), info)
    write_tiff(run.mask_path(row["image_id"]), result.labels.astype(np.uint32), info)
    return info


def stage_segment(
    run: RunFolder, config: Config, overwrite: bool = False, progress: bool = True, n_figures: int = 3
) -> dict[str, Any]:
    """Segment every image into ``RUN/masks`` and ``RUN/flows``; finished images are skipped."""
    started = time.perf_counter()
    rows, names = _image_rows(run)
    backend = choose_backend(config.segmentation)
    for folder in (run.masks, run.flows):
        remove_stale_temporaries(folder)
    log.info(
        "segmentation backend: %s%s",
        backend,
        " (Cellpose weights not found)" if config.segmentation.backend == "auto" and backend == "offline" else "",
    )
    if backend == "cellpose":
        # Fail here, once, with a clear line, rather than in every worker.
        ensure_cellpose_weights(config.segmentation.model, config.segmentation.weights_dir)
    todo = [
        r
        for r in rows
        if overwrite or not (run.mask_path(r["image_id"]).exists() and run.flow_path(r["image_id"]).exists())
    ]
    func = functools.partial(
        segment_one,
        config_json=config.model_dump_json(),
        run_root=str(run.root),
        names=names,
        backend=backend,
    )
    done, failed = map_images(func, todo, config.runtime, "segment", progress)
    infos = [read_tiff_info(run.mask_path(r["image_id"])) for r in rows if run.mask_path(r["image_id"]).exists()]
    table = pd.DataFrame(infos)
    write_parquet(run.root / "segmentation.parquet", table)
    for row in rows[:n_figures]:
        if run.mask_path(row["image_id"]).exists():
            save_figure1(run, row, names, config)
    summary = {
        "images": len(rows),
        "segmented_now": len(done),
        "skipped_done": len(rows) - len(todo),
        "failed": len(failed),
        "backend": backend,
        "cells": int(table["cells"].sum()) if len(table) else 0,
        "images_without_cells": int((table["cells"] == 0).sum()) if len(table) else 0,
        "median_diameter": float(table["diameter"].median()) if len(table) else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    record_stage(run, "segment", summary, failed)
    log.info(
        "segmented %d images (%d skipped as done): %d cells",
        len(done),
        summary["skipped_done"],
        summary["cells"],
    )
    return summary


def save_figure1(run: RunFolder, row: dict, names: list[str], config: Config) -> Path:
    from cellresponse.figures import figure1  # matplotlib: imported by the main process only, not by workers

    seg_input, _, _ = segmentation_inputs(row, names, config)
    labels = read_tiff(run.mask_path(row["image_id"]))
    flows = read_tiff(run.flow_path(row["image_id"]))
    title = f"{row['image_id']} — {row.get(config.input.label, '')}"
    return figure1(seg_input, labels, flows, run.figures / f"{row['image_id']}.png", title=title)


# --------------------------------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------------------------------


def _cells_path(run: RunFolder, image_id: str) -> Path:
    return run.cells_per_image / f"{image_id}.parquet"


def intensity_channels(config: Config, names: list[str]) -> list[str]:
    """The channels measured per cell besides the segmentation input ('all' = every channel)."""
    wanted = config.measurement.intensity_channels
    if "all" in wanted:
        return list(names)
    return [names[resolve_channel(names, name)] for name in wanted]


def compartment_channel(config: Config, names: list[str]) -> str | None:
    """The measured channel whose bright part is taken as the nucleus, or None (no compartment columns).
    Chosen by name only, so that every image of a run gets the same columns."""
    measured = intensity_channels(config, names)
    if not config.measurement.compartments or not measured:
        return None
    index = find_nuclear_channel(names, config.segmentation.nuclear_channel)
    return names[index] if index is not None and names[index] in measured else None


def measure_one(row: dict, config_json: str, run_root: str, names: list[str]) -> dict:
    config = _config_from_json(config_json)
    run = RunFolder(run_root)
    labels = read_tiff(run.mask_path(row["image_id"]))
    stack = load_stack(row, names)
    intensity = apply_recipe(stack, config.segmentation.input, names)
    if labels.shape != intensity.shape:
        raise InputError(f"mask {run.mask_path(row['image_id'])} has shape {labels.shape}, image {intensity.shape}")
    extra = {name: stack[names.index(name)] for name in intensity_channels(config, names)}
    table, dropped = measure_cells(
        labels, intensity, row["image_id"], row["CoreFileName"], extra, compartment_channel(config, names)
    )
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), b"dropped_perimeter0": str(dropped)})
    with atomic_path(_cells_path(run, row["image_id"])) as tmp:
        pq.write_table(arrow, tmp)
    return {"image_id": row["image_id"], "cells": len(table), "dropped_perimeter0": dropped}


def stage_measure(
    run: RunFolder, config: Config, overwrite: bool = False, csv: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Measure every segmented image into ``RUN/cells.parquet``; finished images are skipped."""
    started = time.perf_counter()
    rows, names = _image_rows(run)
    missing = [r["image_id"] for r in rows if not run.mask_path(r["image_id"]).exists()]
    if missing:
        raise InputError(
            f"{len(missing)} images have no mask (e.g. {missing[0]}) — run `cellresponse segment {run.root}` first"
        )
    remove_stale_temporaries(run.cells_per_image)
    todo = [r for r in rows if overwrite or not _cells_path(run, r["image_id"]).exists()]
    func = functools.partial(measure_one, config_json=config.model_dump_json(), run_root=str(run.root), names=names)
    done, failed = map_images(func, todo, config.runtime, "measure", progress)
    parts, dropped = [], 0
    for row in rows:
        path = _cells_path(run, row["image_id"])
        if not path.exists():
            continue
        meta = pq.read_schema(path).metadata or {}
        dropped += int(meta.get(b"dropped_perimeter0", b"0"))
        parts.append(pd.read_parquet(path))
    nonempty = [p for p in parts if len(p)]
    cells = (
        pd.concat(nonempty, ignore_index=True)
        if nonempty
        else empty_cells_table(tuple(intensity_channels(config, names)), compartment_channel(config, names) is not None)
    )
    cells.insert(0, "cell_id", cells["image_id"].astype(str) + "#" + cells["label"].astype(int).astype(str))
    write_parquet(run.cells, cells)
    if csv:
        with atomic_path(run.root / "cells.csv") as tmp:
            cells.to_csv(tmp, index=False)
    summary = {
        "images": len(rows),
        "measured_now": len(done),
        "skipped_done": len(rows) - len(todo),
        "failed": len(failed),
        "cells": len(cells),
        "dropped_perimeter0": dropped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    record_stage(run, "measure", summary, failed)
    log.info("measured %d cells in %d images (%d cells with perimeter 0 dropped)", len(cells), len(rows), dropped)
    return summary


# --------------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------------

SCALE_SAMPLE_IMAGES = 8


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


def _raw_planes(stack: np.ndarray, planes: list[str], names: list[str], config: Config) -> np.ndarray:
    out = []
    for plane in planes:
        if plane == "segmentation_input":
            out.append(apply_recipe(stack, config.segmentation.input, names))
        else:
            out.append(stack[resolve_channel(names, plane)].astype(np.float32))
    return np.stack(out)


def plate_scales(rows: list[dict], names: list[str], config: Config, seed: int = 0) -> dict[str, list[list[float]]]:
    """Per plate and plane, the 1st and 99.8th intensity percentiles over a few sampled images.

    Per-plate (not per-image) scaling keeps a compound's effect on brightness visible to the model
    while absorbing plate-to-plate gain differences, as plate normalisation does in profiling.
    """
    planes = crop_planes(config, names)
    by_plate: dict[str, list[dict]] = {}
    for row in rows:
        by_plate.setdefault(str(row["plate"]), []).append(row)
    rng = np.random.default_rng(seed)
    scales = {}
    for plate, plate_rows in by_plate.items():
        picks = rng.choice(len(plate_rows), size=min(SCALE_SAMPLE_IMAGES, len(plate_rows)), replace=False)
        lows, highs = [], []
        for i in sorted(picks):
            raw = _raw_planes(load_stack(plate_rows[i], names), planes, names, config)
            q = np.percentile(raw.reshape(len(planes), -1), [1.0, 99.8], axis=1)
            lows.append(q[0])
            highs.append(q[1])
        scales[plate] = np.stack([np.median(lows, axis=0), np.median(highs, axis=0)], axis=1).tolist()
    return scales


def _part_path(run: RunFolder, image_id: str) -> Path:
    return run.crops / "parts" / f"{image_id}.npy"


def crop_one(row: dict, config_json: str, run_root: str, names: list[str], scales: dict) -> dict:
    from cellresponse.crops import cell_crops, flow_planes, to_unit

    config = _config_from_json(config_json)
    run = RunFolder(run_root)
    image_id = row["image_id"]
    cells = pd.read_parquet(_cells_path(run, image_id))
    labels = read_tiff(run.mask_path(image_id))
    flows = read_tiff(run.flow_path(image_id))
    backend = read_tiff_info(run.flow_path(image_id)).get("backend", "offline")
    planes = crop_planes(config, names)
    raw = _raw_planes(load_stack(row, names), planes, names, config)
    if raw.shape[1:] != labels.shape:
        raise InputError(f"mask {run.mask_path(image_id)} has shape {labels.shape}, image {raw.shape[1:]}")
    scale = scales[str(row["plate"])]
    unit = np.stack([to_unit(plane, lo, hi) for plane, (lo, hi) in zip(raw, scale, strict=True)])
    bboxes = cells[["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]].to_numpy()
    crops = cell_crops(
        labels,
        cells["label"].to_numpy(),
        bboxes,
        unit,
        flow_planes(flows, probability_is_logit=backend == "cellpose"),
        config.crops.store_size,
        config.crops.padding,
        config.crops.recipe,
    )
    with atomic_path(_part_path(run, image_id)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, crops)
    return {"image_id": image_id, "cells": len(crops)}


def crop_settings(config: Config, names: list[str]) -> dict[str, Any]:
    """What makes two crop stores compatible (compared by ``predict`` against a model bundle)."""
    from cellresponse.crops import FLOW_NAMES, MASK_FLOW_NAMES

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


def stage_crops(run: RunFolder, config: Config, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Cut every measured cell into ``RUN/crops`` (per-image parts, then one memory-mapped store)."""
    import json

    from cellresponse.store import write_store

    started = time.perf_counter()
    rows, names = _image_rows(run)
    cells = read_parquet(run.require(run.cells, "measure"))
    settings = crop_settings(config, names)
    meta_path = run.crops / "settings.json"
    if meta_path.exists() and not overwrite:
        old = json.loads(meta_path.read_text())
        if old.get("settings") != settings:
            raise InputError(
                f"{run.crops} was cut with other crop settings ({old.get('settings')}); "
                "rerun with --overwrite to cut them again"
            )
    if overwrite and run.crops.exists():
        import shutil

        shutil.rmtree(run.crops)
    remove_stale_temporaries(run.crops / "parts")
    if meta_path.exists():
        scales = json.loads(meta_path.read_text())["scales"]
    else:
        scales = plate_scales(rows, names, config, seed=config.seed)
        write_json(meta_path, {"settings": settings, "scales": scales})
    missing = [r["image_id"] for r in rows if not _cells_path(run, r["image_id"]).exists()]
    if missing:
        raise InputError(f"{len(missing)} images are not measured (e.g. {missing[0]}) — run `cellresponse measure`")
    todo = [r for r in rows if not _part_path(run, r["image_id"]).exists()]
    func = functools.partial(
        crop_one,
        config_json=config.model_dump_json(),
        run_root=str(run.root),
        names=names,
        scales=scales,
    )
    done, failed = map_images(func, todo, config.runtime, "crops", progress)
    if failed:
        record_stage(run, "crops", {"images": len(rows), "failed": len(failed)}, failed)
    store = write_store(run.crops, cells, lambda image_id: _part_path(run, image_id), settings, progress)
    summary = {
        "images": len(rows),
        "cropped_now": len(done),
        "skipped_done": len(rows) - len(todo),
        "failed": 0,
        "cells": store["cells"],
        "store_size": config.crops.store_size,
        "recipe": config.crops.recipe,
        "store_bytes": store["bytes"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    record_stage(run, "crops", summary, [])
    log.info(
        "crop store: %d cells × %s at %d px (%.1f MB)",
        store["cells"],
        settings["channels"],
        config.crops.store_size,
        store["bytes"] / 1e6,
    )
    return summary

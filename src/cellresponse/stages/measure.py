"""``cellresponse measure``: per-cell features of every segmented image into ``RUN/cells.parquet/`` (one part per
plate; per-image parts ``RUN/cells/<image_id>.parquet`` are the resume unit); parallel."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.features.cell_features import cell_ids, empty_cells_table, measure_cells
from cellresponse.features.cellprofiler_set import cellprofiler_measurements
from cellresponse.input.channels import apply_recipe, find_nuclear_channel, load_stack, resolve_channel
from cellresponse.input.illumination import illumination_channels
from cellresponse.input.io import atomic_folder, atomic_path, read_tiff, write_parquet
from cellresponse.input.runfolder import RunFolder, require_outputs
from cellresponse.stages.per_image import config_from_json, image_rows, map_stage, no_scales, settled_scales

log = logging.getLogger(__name__)

DROPPED_KEY = b"dropped_perimeter0"  # Parquet metadata of a per-image part: cells dropped for perimeter 0


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


def empty_part(config: Config, names: list[str]) -> pd.DataFrame:
    """The cell table with no rows that these settings measure: its columns are every part's."""
    compartments = compartment_channel(config, names) is not None
    return empty_cells_table(tuple(intensity_channels(config, names)), compartments, config.measurement.extended)


def measure_settings(config: Config, names: list[str], illuminated: bool) -> dict[str, Any]:
    """What the per-image parts depend on besides the masks: a resumed run must measure its remaining images the
    same way, or cells.parquet would mix column sets (or intensities of different inputs). ``illuminated``: the
    images are divided by illumination functions."""
    return {
        "input": config.segmentation.input.model_dump(mode="json"),
        "intensity_channels": intensity_channels(config, names),
        "compartment_channel": compartment_channel(config, names),
        "extended": config.measurement.extended,
        "intensity_scale": "CellProfiler (0-1)",  # raw counts before 2026-12-05
        "set": config.measurement.set,
        "illumination": illuminated,
    }


def check_measured_parts(run: RunFolder, rows: list[dict], config: Config, names: list[str], overwrite: bool) -> None:
    """Refuse, before measuring anything, to add images measured with other settings to the parts already there
    (``--overwrite`` measures them all again). Parts from before the settings were recorded are checked by
    their columns."""
    settings = measure_settings(config, names, bool(rows) and bool(illumination_channels(rows[0], names)))
    if not overwrite and not run.measure_settings.exists():
        done = next((run.cells_path(r["image_id"]) for r in rows if run.cells_path(r["image_id"]).exists()), None)
        if done is not None:
            expected = empty_part(config, names).columns
            found = pq.read_schema(done).names
            if list(found) != list(expected):
                extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
                raise InputError(
                    f"{run.cells_per_image} holds cells measured with other settings ({done.name}: "
                    f"{len(extra)} columns these settings do not make, e.g. {extra[:3]}; {len(missing)} they make "
                    f"that it lacks, e.g. {missing[:3]}) — rerun with --overwrite to measure every image again, "
                    "or measure with the earlier settings"
                )
    settled_scales(
        run.cells_per_image, run.measure_settings, settings, no_scales, overwrite, redo="measure every image again"
    )


def measure_one(row: dict, *, config_json: str, run_root: str, names: list[str]) -> dict:
    """Measure the cells of one segmented field into its per-image Parquet part."""
    config = config_from_json(config_json)
    run = RunFolder(Path(run_root))
    labels = read_tiff(run.mask_path(row["image_id"]))
    stack = load_stack(row, names)
    intensity = apply_recipe(stack, config.segmentation.input, names)
    if labels.shape != intensity.shape:
        raise InputError(f"mask {run.mask_path(row['image_id'])} has shape {labels.shape}, image {intensity.shape}")
    extra = {name: stack[names.index(name)] for name in intensity_channels(config, names)}
    table, dropped = measure_cells(
        labels,
        intensity,
        row["image_id"],
        row["CoreFileName"],
        extra,
        compartment_channel(config, names),
        extended=config.measurement.extended,
    )
    if config.measurement.set == "cellprofiler" and len(table):
        table = table.merge(cellprofiler_measurements(labels, extra), on="label", how="left")
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), DROPPED_KEY: str(dropped)})
    with atomic_path(run.cells_path(row["image_id"])) as tmp:
        pq.write_table(arrow, tmp)
    return {"image_id": row["image_id"], "cells": len(table), "dropped_perimeter0": dropped}


def gather_cells(run: RunFolder, rows: list[dict], config: Config, names: list[str]) -> tuple[pd.DataFrame, int]:
    """The per-image parts of ``rows`` (one plate's) in image-table order, with ``cell_id``, and the count of
    perimeter-0 cells dropped."""
    parts, dropped = [], 0
    for row in rows:
        path = run.cells_path(row["image_id"])
        if not path.exists():
            continue
        dropped += int((pq.read_schema(path).metadata or {}).get(DROPPED_KEY, b"0"))
        parts.append(pd.read_parquet(path))
    nonempty = [p for p in parts if len(p)]
    cells = pd.concat(nonempty, ignore_index=True) if nonempty else empty_part(config, names)
    cells.insert(0, "cell_id", cell_ids(cells["image_id"], cells["label"]))
    return cells, dropped


def write_cell_table(run: RunFolder, rows: list[dict], config: Config, names: list[str], csv: bool) -> tuple[int, int]:
    """``RUN/cells.parquet/<plate>.parquet`` from the per-image parts, one plate at a time (a screen's cells are
    never held at once), and ``cells.csv`` with ``csv``; the folder replaces the old table only once every part is
    written. Returns the cells written and the perimeter-0 cells dropped."""
    by_plate: dict[str, list[dict]] = {}  # in image-table order
    for row in rows:
        by_plate.setdefault(str(row["plate"]), []).append(row)
    last = next(reversed(by_plate), None)
    total, dropped = 0, 0
    with atomic_folder(run.cells) as folder, atomic_path(run.cells_csv) if csv else nullcontext() as csv_tmp:
        for plate, plate_rows in by_plate.items():
            cells, lost = gather_cells(run, plate_rows, config, names)
            dropped += lost
            if cells.empty and (total or plate != last):
                continue  # an empty plate adds no part; a run without cells keeps one, for its columns
            write_parquet(folder / run.cells_part(plate).name, cells)
            if csv_tmp is not None:
                cells.to_csv(csv_tmp, mode="a", header=total == 0, index=False)
            total += len(cells)
    return total, dropped


def run(
    run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True, csv: bool = False
) -> dict[str, Any]:
    """Measure every segmented image into ``RUN/cells.parquet/`` (and ``cells.csv`` with ``csv``)."""
    started = time.perf_counter()
    rows, names = image_rows(run)
    require_outputs(run, [r["image_id"] for r in rows], run.mask_path, "mask", "segment")
    check_measured_parts(run, rows, config, names, overwrite)
    outcome = map_stage(
        "measure",
        measure_one,
        run,
        config,
        rows,
        is_done=lambda r: run.cells_path(r["image_id"]).exists(),
        overwrite=overwrite,
        progress=progress,
        temporaries=(run.cells_per_image, run.root),  # the root: a killed run's cells.parquet folder
        names=names,
    )
    cells, dropped = write_cell_table(run, rows, config, names, csv)
    summary = {
        **outcome.counts("measured_now"),
        "cells": cells,
        "dropped_perimeter0": dropped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    run.record_stage("measure", summary, outcome.failed)
    log.info("measured %d cells in %d images (%d cells with perimeter 0 dropped)", cells, len(rows), dropped)
    return summary

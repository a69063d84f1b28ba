"""``cellresponse images``: the image table ``RUN/images.parquet`` from a Phenix folder or a load_data.csv,
joined to treatment metadata, and the run's resolved config."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.input.channels import load_stack
from cellresponse.input.illumination import (
    ILLUM_FILE,
    ILLUM_PATH,
    average_images,
    check_illumination,
    illumination_channels,
    illumination_function,
    illumination_plan,
)
from cellresponse.input.io import atomic_path, write_json, write_parquet
from cellresponse.input.plate import (
    ImageSource,
    build_image_table,
    channel_names,
    check_label,
    check_same_images,
    safe_id,
)
from cellresponse.input.runfolder import RunFolder

log = logging.getLogger(__name__)


def run(
    run: RunFolder,
    config: Config,
    *,
    source: ImageSource | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build ``RUN/images.parquet`` and write the resolved config (always rebuilt: it is cheap)."""
    if source is None:
        raise InputError("the images stage needs an image source: --images DIR or --load-data CSV")
    started = time.perf_counter()
    table, report = build_image_table(source, join=config.input.join)
    label = config.input.label
    if label in table.columns:
        check_label(table, label)
    else:
        log.warning("label column %s is not in the image table: fine for prediction, required for training", label)
    if run.images.exists() and not overwrite:
        check_same_images(run.read_images(), table, str(run.root))
    run.create()
    table, illumination = settle_illumination(run, table, config, overwrite, progress)
    write_parquet(run.images, table)
    run.save_config(config)
    summary: dict[str, Any] = {
        "images": len(table),
        "plates": int(table["plate"].nunique()),
        "channels": channel_names(table),
        "source": source.describe(),
        "join": report.to_dict() if report else None,
        "illumination": illumination,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if label in table.columns:
        summary["classes"] = int(table[label].nunique())
    # synth.py marks its plates; the report says so at the top (the images are not evidence about real cells)
    marked = "Metadata_Synthetic" in table.columns and (table["Metadata_Synthetic"] == "yes").any()
    summary["synthetic"] = bool(marked)
    run.record_stage("images", summary)
    log.info(
        "image table: %d images, %d plates, channels %s%s",
        len(table),
        summary["plates"],
        ", ".join(summary["channels"]),
        f", {summary['classes']} classes in {label}" if "classes" in summary else "",
    )
    return summary


def without_illumination(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in table.columns if c.startswith((ILLUM_FILE, ILLUM_PATH))])


def settle_illumination(
    run: RunFolder, table: pd.DataFrame, config: Config, overwrite: bool, progress: bool
) -> tuple[pd.DataFrame, str]:
    """The image table with the illumination functions its images will be divided by (``input.illumination``),
    every one read and checked here, before any image work; and a line saying which."""
    names = channel_names(table)
    named = illumination_channels(table, names)
    plan, why = illumination_plan(config.input.illumination, bool(named), table.groupby("plate").size())
    if plan == "none":
        if named:
            log.info("illumination: none — the load_data's illumination functions are not applied")
        log.info("illumination: none (%s)", why)
        return without_illumination(table), f"none ({why})"
    if plan == "compute":
        if named:
            log.info("illumination: compute — the load_data's illumination functions are replaced by computed ones")
        table = computed_illumination(run, without_illumination(table), config, overwrite, progress)
    shape = load_stack(without_illumination(table.iloc[:1]).iloc[0], names).shape[1:]
    count = check_illumination(table, names, shape)
    line = f"{count} illumination functions ({why})"
    log.info("illumination: %s; images are divided by them on CellProfiler's 0-1 scale", line)
    return table, line


def computed_illumination(
    run: RunFolder, table: pd.DataFrame, config: Config, overwrite: bool, progress: bool
) -> pd.DataFrame:
    """One function per plate and channel (illumination.py), saved as ``RUN/illumination/<plate>/Illum<Ch>.npy``
    and named in the table's ``FileName_Illum<Ch>`` / ``PathName_Illum<Ch>``. A plate whose functions were made
    with the same filter from the same images is not computed again (resume)."""
    names, table = channel_names(table), table.copy()
    for plate, rows in table.groupby("plate", sort=True):
        folder = run.illumination / safe_id(str(plate))
        made_with = {"filter": config.input.illumination_filter, "images": sorted(rows["image_id"].astype(str))}
        record = folder / "settings.json"
        paths = {name: folder / f"Illum{name}.npy" for name in names}
        current = record.exists() and json.loads(record.read_text()) == made_with
        if overwrite or not current or not all(p.exists() for p in paths.values()):
            records = rows.to_dict("records")
            bar = tqdm(records, desc=f"illumination {plate}", unit="image", disable=not progress, leave=False)
            mean = average_images(load_stack(row, names) for row in bar)
            folder.mkdir(parents=True, exist_ok=True)
            for index, name in enumerate(names):
                with atomic_path(paths[name]) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, illumination_function(mean[index], config.input.illumination_filter))
            write_json(record, made_with)
        for name in names:
            table.loc[rows.index, f"{ILLUM_FILE}{name}"] = paths[name].name
            table.loc[rows.index, f"{ILLUM_PATH}{name}"] = str(folder.resolve())
    return table

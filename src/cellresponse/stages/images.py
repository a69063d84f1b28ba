"""``cellresponse images``: the image table ``RUN/images.parquet`` from a Phenix folder or a load_data.csv,
joined to treatment metadata, and the run's resolved config."""

from __future__ import annotations

import logging
import time
from typing import Any

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.input.io import write_parquet
from cellresponse.input.plate import ImageSource, build_image_table, channel_names, check_label
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
    run.create()
    write_parquet(run.images, table)
    run.save_config(config)
    summary: dict[str, Any] = {
        "images": len(table),
        "plates": int(table["plate"].nunique()),
        "channels": channel_names(table),
        "source": source.describe(),
        "join": report.to_dict() if report else None,
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

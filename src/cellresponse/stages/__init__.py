"""The pipeline's stages: one module per CLI verb, each exposing the same call,

    run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True, ...) -> dict

(the summary also written to ``RUN/logs/<stage>.json``), and the order they run in. ``cli run``, ``demo`` and the
report read the order from :data:`PIPELINE`; nothing else lists it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from types import ModuleType
from typing import Any

import pandas as pd

from cellresponse.config import WELL_TREATMENT, Config
from cellresponse.errors import CellResponseError
from cellresponse.input.locks import folder_lock
from cellresponse.input.plate import ImageSource, check_columns, check_label
from cellresponse.input.runfolder import RunFolder
from cellresponse.parallel import is_main_process

log = logging.getLogger(__name__)

PIPELINE = ("images", "segment", "measure", "crops", "embed", "profile", "train", "evaluate", "report")


def stage_module(name: str) -> ModuleType:
    """The module of stage ``name``. Imported on demand because start-up time needs it: ``segment`` must not pay
    for importing torch and Lightning, which only ``train``, ``evaluate`` and ``predict`` use."""
    if name not in PIPELINE:
        raise CellResponseError(f"unknown stage {name!r}; stages: {', '.join(PIPELINE)}")
    return importlib.import_module(f"cellresponse.stages.{name}")


def run_stage(
    name: str, run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True, **options: Any
) -> dict[str, Any]:
    """One stage on a run folder; the config is saved to ``RUN/config.yaml`` once the stage has succeeded (so a
    failed call leaves it as it was; the report only reads it)."""
    with writer_lock(run):
        summary = stage_module(name).run(run, config, overwrite=overwrite, progress=progress, **options)
        if is_main_process() and name != "report":
            run.save_config(config)
    return summary


def writer_lock(run: RunFolder) -> contextlib.AbstractContextManager:
    """The run folder's lock (locks.py) in the main process; the extra processes of Lightning's DDP launcher run
    under their parent's."""
    return folder_lock(run.root) if is_main_process() else contextlib.nullcontext()


def check_stage_inputs(run: RunFolder, config: Config, stages: tuple[str, ...]) -> None:
    """The columns the given stages will need, checked on the image table before any image work: the label and the
    split column for train/evaluate, the treatment, compound, mechanism and batch columns for profile (a misspelt
    --split-column used to fail only after segmentation, measurement, crops and embeddings: nine minutes on
    BBBC021-moa)."""
    table = run.read_images()
    if {"train", "evaluate"} & set(stages):
        check_label(table, config.input.label)
        if config.split.by == "column" and config.split.column:
            check_columns(table, [config.split.column], "split", "split.column (--split-column)")
    if "train" in stages:
        check_reference_batch(table, config)
    if "profile" in stages:
        p = config.profiles
        named_columns = [c for c in (p.batch, p.moa if p.moa != "auto" else None) if c]
        named_columns += [p.compound] if p.compound not in (None, "auto") else []
        check_columns(table, named_columns, "profiles", "profiles.batch / profiles.moa / profiles.compound")
        named = [*table.columns, *WELL_TREATMENT]  # the image table's plate and well are the profiles' Metadata_*
        check_columns(
            table,
            [c for c in config.treatment_columns(named) if c not in WELL_TREATMENT],
            "treatment",
            "profiles.treatment",
        )


def check_reference_batch(table: pd.DataFrame, config: Config) -> None:
    """The batch column the bundle's references are corrected by (profiles.batch with batch_correction), which
    would otherwise fall back to the plate without a word."""
    p = config.profiles
    if p.batch and p.batch_correction != "none":
        check_columns(table, [p.batch], "references' batch", "profiles.batch (with profiles.batch_correction)")


def run_pipeline(
    run: RunFolder,
    config: Config,
    *,
    source: ImageSource | None = None,
    start: str = PIPELINE[0],
    stop: str = PIPELINE[-1],
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """The stages from ``start`` to ``stop`` in order, each resumable; returns seconds per stage.

    In the extra processes of Lightning's DDP launcher (which rerun the command) only ``train`` runs."""
    first, last = PIPELINE.index(start), PIPELINE.index(stop)
    if first > last:
        raise CellResponseError(f"--from {start} comes after --until {stop}")
    if not is_main_process():
        first = last = PIPELINE.index("train")
    with writer_lock(run):  # held across the stages: no other command slips in between two of them
        return run_stages(run, config, PIPELINE[first : last + 1], source, overwrite, progress)


def run_stages(
    run: RunFolder,
    config: Config,
    stages: tuple[str, ...],
    source: ImageSource | None,
    overwrite: bool,
    progress: bool,
) -> dict[str, float]:
    """:func:`run_pipeline`'s loop: each stage in turn, the columns checked once the image table exists."""
    timings: dict[str, float] = {}
    checked = False
    for name in stages:
        if not checked and name != "images":  # right after the image table exists, before any image work
            check_stage_inputs(run, config, stages)
            checked = True
        began = time.perf_counter()
        options = {"source": source} if name == "images" else {}
        run_stage(name, run, config, overwrite=overwrite, progress=progress, **options)
        timings[name] = round(time.perf_counter() - began, 2)
        if not is_main_process():
            break
    log.info("stage timings (s): %s", timings)
    return timings

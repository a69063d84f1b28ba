"""The skeleton every per-image stage shares: which images are still to do, one task per image over Dask (or in
this process), and the counts its summary starts with.

A task is a module-level function ``task(row, *, config_json, run_root, **arguments) -> dict`` that writes its
image's outputs atomically; Dask pickles it by reference, so workers import only the stage's own module.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.features.crops import compounds_and_treated, intensity_scope, plate_scales
from cellresponse.input.io import remove_stale_temporaries, write_json
from cellresponse.input.plate import channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.parallel import TaskResult, map_images

log = logging.getLogger(__name__)


@dataclass
class PerImageOutcome:
    total: int
    todo: int
    done: list[TaskResult]
    failed: list[TaskResult]

    def counts(self, done_key: str) -> dict[str, int]:
        """The first keys of the stage summary: images, <done_key> (done by this call), skipped_done, failed."""
        return {
            "images": self.total,
            done_key: len(self.done),
            "skipped_done": self.total - self.todo,
            "failed": len(self.failed),
        }


def image_rows(run: RunFolder) -> tuple[list[dict[str, Any]], list[str]]:
    """The image table's rows and channel names (the input of every per-image stage)."""
    table = run.read_images()
    return cast(list[dict[str, Any]], table.to_dict("records")), channel_names(table)


def settled_scales(
    folder: Path,
    settings_path: Path,
    settings: dict[str, Any],
    make_scales: Callable[[], tuple[dict[str, Any], str]],
    overwrite: bool,
    redo: str,
    wanted_scope: str = "auto",
) -> dict[str, Any]:
    """The per-plate intensity scales an output folder is made with, stored beside its settings (with their scope,
    ``plate`` or ``experiment``) so that a resumed (killed) run scales its remaining images the same way.
    ``overwrite`` empties the folder first; a folder made with other settings, or with another scope than an
    explicit ``wanted_scope``, is refused (never mixed); otherwise the stored scales, or ``make_scales()`` written
    now."""
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    if settings_path.exists():
        stored = json.loads(settings_path.read_text())
        if stored.get("settings") != settings:
            raise InputError(
                f"{folder} was made with other settings ({stored.get('settings')}); rerun with --overwrite to {redo}"
            )
        scope = stored.get("scope", "plate")  # folders made before scopes existed were scaled per plate
        if wanted_scope not in ("auto", scope):
            raise InputError(
                f"{folder} was scaled per {scope}, not per {wanted_scope} (input.intensity_scale); rerun with "
                f"--overwrite to {redo}"
            )
        return cast(dict[str, Any], stored["scales"])
    scales, scope = make_scales()
    write_json(settings_path, {"settings": settings, "scales": scales, "scope": scope})
    return scales


def no_scales() -> tuple[dict[str, Any], str]:
    """``make_scales`` for an output folder whose settings are kept without intensity scales (measurements,
    embeddings from the trained network)."""
    return {}, "none"


def intensity_scales(
    run: RunFolder, rows: list[dict[str, Any]], names: list[str], planes: list[str], config: Config, part: str
) -> tuple[dict[str, Any], str]:
    """Each plate's intensity scale of ``planes`` and its scope: the bundle's, where ``predict`` fixed one for the
    ``part`` (``crops``, ``embedding``) in ``RUN/intensity_scales.json``; else measured on these images, per plate or
    across the experiment (features.crops.intensity_scope)."""
    if run.bundle_scales.is_file():
        fixed = json.loads(run.bundle_scales.read_text()).get(part)
        if fixed is not None:
            log.info("%s: intensity scaled with the bundle's scale, one across its training experiment", part)
            return {str(row["plate"]): fixed for row in rows}, "experiment"
    table = pd.DataFrame(rows)
    scope, why = intensity_scope(table, config.input.intensity_scale, *compounds_and_treated(table, config))
    log.info("%s: %s", part, why)
    return plate_scales(rows, names, planes, config, seed=config.seed, scope=scope), scope


@functools.lru_cache(maxsize=8)
def config_from_json(config_json: str) -> Config:
    """Tasks carry the config as JSON; each worker parses it once, not once per image."""
    return Config.model_validate_json(config_json)


def map_stage(
    stage: str,
    task: Callable[..., dict],
    run: RunFolder,
    config: Config,
    rows: list[dict[str, Any]],
    *,
    is_done: Callable[[dict[str, Any]], bool],
    overwrite: bool = False,
    progress: bool = True,
    temporaries: Iterable[Path] = (),
    **arguments: Any,
) -> PerImageOutcome:
    """Run ``task`` on every row not yet done (all rows with ``overwrite``), after clearing the temporary files
    a killed run may have left in ``temporaries``."""
    for folder in temporaries:
        remove_stale_temporaries(folder)
    todo = [row for row in rows if overwrite or not is_done(row)]
    func = functools.partial(task, config_json=config.model_dump_json(), run_root=str(run.root), **arguments)
    done, failed = map_images(func, todo, config.runtime, stage, progress)
    return PerImageOutcome(total=len(rows), todo=len(todo), done=done, failed=failed)

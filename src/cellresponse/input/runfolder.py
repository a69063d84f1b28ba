"""The run folder: every path of its documented layout, in one place (docs/design.md "Output files").

    RUN/config.yaml                  resolved config of the run
    RUN/images.parquet               the image table (plate.py)
    RUN/illumination/<plate>/Illum<Ch>.npy  computed illumination functions (input.illumination: compute)
    RUN/masks/<image_id>.tif         uint32 labels; the TIFF description holds JSON (cells, diameter, backend)
    RUN/flows/<image_id>.tif         float32 (3, H, W): dY, dX, cell probability
    RUN/segmentation.parquet         one row per segmented image
    RUN/figures/<image_id>.png       Figure 1 panels
    RUN/cells/<image_id>.parquet     per-image measurements (the resume unit)
    RUN/cells.parquet/<plate>.parquet  all cells, one part per plate (a Parquet dataset: pd.read_parquet reads the
                                     folder whole); cells.csv with --csv
    RUN/crops/                       index.parquet, settings.json, parts/<image_id>.crops (features/crop_store.py)
    RUN/embeddings/<image_id>.parquet  per-cell embeddings (cell_id, image_id, emb_…); settings.json
    RUN/embedding_means.parquet      each image's mean embedding and cell count, written when embed finishes
    RUN/intensity_scales.json        predict only: the bundle's experiment-wide intensity scales (crops,
                                     embedding) that the new plates are scaled with
    RUN/profiles/                    <kind>_wells.parquet, <kind>_treatments.parquet, metrics.json
    RUN/model/                       split.parquet, split.json, history.csv, checkpoints/, bundle/, train.json;
                                     training_cells/ while train runs (the sets' feature rows, memory-mapped)
    RUN/predictions/                 cell_predictions.parquet, image_predictions.parquet (predict: + well_…)
    RUN/metrics.json, RUN/report/    evaluation and report
    RUN/logs/                        cellresponse.log, <stage>.json summaries, failures-<stage>.csv

Stages read and write through :class:`RunFolder`; tables read through it carry ``image_id`` and ``cell_id`` as
``str`` (the typed-id contract every stage relies on, so nobody casts them again).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow.parquet as pq

from cellresponse.config import Config, load_config
from cellresponse.errors import InputError, StageError
from cellresponse.input.io import (
    atomic_path,
    one_at_a_time,
    read_parquet,
    release_arrow_memory,
    write_json,
    write_text,
)
from cellresponse.provenance import made_by, made_by_line

ID_COLUMNS = ("image_id", "cell_id")
# A fresh pass over a run's cells, one plate's table at a time (a call of RunFolder.cell_parts, or a map over it):
# what the stages that must see every cell of a screen take, so that they can read the plates more than once.
CellParts = Callable[[], Iterable[pd.DataFrame]]

# The command that makes each output, as a user types it (error messages suggest it).
MAKES = {
    "images": "cellresponse images (--images DIR | --load-data CSV) --out {root}",
    "segment": "cellresponse segment {root}",
    "measure": "cellresponse measure {root}",
    "crops": "cellresponse crops {root}",
    "embed": "cellresponse embed {root}",
    "profile": "cellresponse profile {root}",
    "train": "cellresponse train {root}",
    "evaluate": "cellresponse evaluate {root}",
}


class Failure(Protocol):
    """What :meth:`RunFolder.record_stage` needs of a failed image (``parallel.TaskResult`` is one)."""

    image_id: str
    error: str


def safe_file_name(name: str) -> str:
    """``name`` with every character a file name may not safely hold (path separators, spaces, …) as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)) or "_"


def with_typed_ids(table: pd.DataFrame) -> pd.DataFrame:
    """``image_id`` / ``cell_id`` as Python strings, whatever the file stored."""
    casts = [c for c in ID_COLUMNS if c in table.columns and table[c].dtype != object]
    if not casts:
        return table
    table = table.copy(deep=False)
    for column in casts:  # column by column: DataFrame.astype({...}) splits the table into a block per column
        table[column] = table[column].astype(str)
    return table


@dataclass(frozen=True)
class RunFolder:
    """The documented layout of a run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- files and folders -------------------------------------------------------------------
    config = property(lambda self: self.root / "config.yaml")
    images = property(lambda self: self.root / "images.parquet")
    masks = property(lambda self: self.root / "masks")
    illumination = property(lambda self: self.root / "illumination")
    flows = property(lambda self: self.root / "flows")
    segmentation = property(lambda self: self.root / "segmentation.parquet")
    figures = property(lambda self: self.root / "figures")
    cells = property(lambda self: self.root / "cells.parquet")
    cells_csv = property(lambda self: self.root / "cells.csv")
    cells_per_image = property(lambda self: self.root / "cells")
    measure_settings = property(lambda self: self.root / "cells" / "settings.json")
    crops = property(lambda self: self.root / "crops")
    crop_parts = property(lambda self: self.root / "crops" / "parts")
    crop_settings = property(lambda self: self.root / "crops" / "settings.json")
    embeddings = property(lambda self: self.root / "embeddings")
    embedding_settings = property(lambda self: self.root / "embeddings" / "settings.json")
    embedding_means = property(lambda self: self.root / "embedding_means.parquet")
    bundle_scales = property(lambda self: self.root / "intensity_scales.json")
    profiles = property(lambda self: self.root / "profiles")
    profile_metrics = property(lambda self: self.root / "profiles" / "metrics.json")
    model = property(lambda self: self.root / "model")
    split_table = property(lambda self: self.root / "model" / "split.parquet")
    split_report = property(lambda self: self.root / "model" / "split.json")
    history = property(lambda self: self.root / "model" / "history.csv")
    checkpoints = property(lambda self: self.root / "model" / "checkpoints")
    training_cells = property(lambda self: self.root / "model" / "training_cells")
    best_checkpoint = property(lambda self: self.root / "model" / "checkpoints" / "best.ckpt")
    last_checkpoint = property(lambda self: self.root / "model" / "checkpoints" / "last.ckpt")
    bundle = property(lambda self: self.root / "model" / "bundle")
    train_summary = property(lambda self: self.root / "model" / "train.json")
    predictions = property(lambda self: self.root / "predictions")
    cell_predictions = property(lambda self: self.root / "predictions" / "cell_predictions.parquet")
    image_predictions = property(lambda self: self.root / "predictions" / "image_predictions.parquet")
    well_predictions = property(lambda self: self.root / "predictions" / "well_predictions.parquet")
    treatment_calls = property(lambda self: self.root / "predictions" / "treatment_calls.parquet")
    metrics = property(lambda self: self.root / "metrics.json")
    report = property(lambda self: self.root / "report")
    report_index = property(lambda self: self.root / "report" / "index.html")
    logs = property(lambda self: self.root / "logs")
    log_file = property(lambda self: self.root / "logs" / "cellresponse.log")

    def mask_path(self, image_id: str) -> Path:
        return self.masks / f"{image_id}.tif"

    def flow_path(self, image_id: str) -> Path:
        return self.flows / f"{image_id}.tif"

    def cells_path(self, image_id: str) -> Path:
        return self.cells_per_image / f"{image_id}.parquet"

    def cells_part(self, plate: str) -> Path:
        """``cells.parquet/<plate>.parquet``: one plate's cells (the plate's name made safe for a file name)."""
        return self.cells / f"{safe_file_name(plate)}.parquet"

    def crop_part(self, image_id: str) -> Path:
        return self.crop_parts / f"{image_id}.crops"

    def embedding_path(self, image_id: str) -> Path:
        return self.embeddings / f"{image_id}.parquet"

    def profile_path(self, kind: str, level: str) -> Path:
        """``profiles/<kind>_<level>.parquet``: kind measured/deep/both, level wells/treatments."""
        return self.profiles / f"{kind}_{level}.parquet"

    def figure_path(self, image_id: str) -> Path:
        return self.figures / f"{image_id}.png"

    def stage_summary(self, stage: str) -> Path:
        return self.logs / f"{stage}.json"

    def failures(self, stage: str) -> Path:
        return self.logs / f"failures-{stage}.csv"

    # ---- life cycle --------------------------------------------------------------------------
    def create(self) -> RunFolder:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(exist_ok=True)
            probe = self.root / ".write-probe"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"run folder {self.root} is not writable: {exc.strerror} — choose another --out") from None
        return self

    def require(self, path: Path, stage: str) -> Path:
        """``path`` if it exists, else one line naming the command that makes it (or saying that the run folder
        itself does not exist: a mistyped path is not a run that lacks a stage)."""
        if not self.root.exists():
            start = MAKES["images"].format(root=self.root)
            raise InputError(
                f"run folder {self.root} does not exist — check the path, or start it: run `{start}` first"
            )
        if not path.exists():
            command = MAKES.get(stage, f"cellresponse {stage} {{root}}").format(root=self.root)
            raise InputError(f"{path} is missing — run `{command}` first")
        return path

    # ---- config ------------------------------------------------------------------------------
    def save_config(self, config: Config) -> None:
        write_text(self.config, f"# written by {made_by_line()}\n" + config.to_yaml())

    def load_config(self) -> Config:
        return load_config(self.require(self.config, "images"))

    # ---- tables ------------------------------------------------------------------------------
    def read_table(self, path: Path, stage: str, columns: list[str] | None = None) -> pd.DataFrame:
        return with_typed_ids(read_parquet(self.require(path, stage), columns))

    def read_images(self) -> pd.DataFrame:
        return self.read_table(self.images, "images")

    def read_cells(self, columns: list[str] | None = None, image_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The measured cells (``columns`` only, when given: a whole plate's table takes ~630 bytes a cell), of
        ``image_ids`` only when given — read from the parts of the plates that hold them, so that a stage needing
        some plates of a screen never loads the others. A run measured before the table was partitioned (one
        ``cells.parquet`` file) reads the same."""
        path = self.require(self.cells, "measure")
        wanted = None if image_ids is None else {str(i) for i in image_ids}
        if not path.is_dir():
            return self.plate_cells(None, columns, wanted)
        images = self.read_images()  # the parts in the image table's plate order: the rows in image-table order
        if wanted is not None:
            images = images[images["image_id"].isin(wanted)]
        return self.plate_cells(list(pd.unique(images["plate"].astype(str))), columns, wanted)

    def plate_cells(self, plates: list[str] | None, columns: list[str] | None, wanted: set[str] | None) -> pd.DataFrame:
        """The cells of the parts of ``plates`` (the one file of a run measured before the table was partitioned
        where None), ``columns`` only, of the ``wanted`` image ids only."""
        if wanted is not None and columns is not None and "image_id" not in columns:
            columns = ["image_id", *columns]
        sources = [self.cells]
        if plates is not None:
            sources = [part for part in map(self.cells_part, plates) if part.exists()]
            sources = sources or sorted(self.cells.glob("[!._]*.parquet"))[:1]  # none: an empty table, typed

        def read(source: Path) -> pd.DataFrame:
            cells = with_typed_ids(read_parquet(source, columns))
            return cells if wanted is None else cells[cells["image_id"].isin(wanted)]

        # a part at a time, each cut to the wanted images before the next is read: the cells of a treatment on many
        # plates cost those cells, not every plate's table
        parts = one_at_a_time(sources, read)
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)

    def cell_parts(self, image_ids: Iterable[str], columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """The cells of ``image_ids``, one plate's at a time (:meth:`plate_cells` of each plate in turn, in the
        image table's order): what a stage that must see every cell of a screen holds at once is one plate. A run
        measured before the table was partitioned yields its one table."""
        wanted = {str(i) for i in image_ids}
        if not self.require(self.cells, "measure").is_dir():
            yield self.read_cells(columns, wanted)
            return
        images = self.read_images()  # once, not once a plate: a screen's image table is millions of rows
        images = images[images["image_id"].astype(str).isin(wanted)]
        for plate, rows in images.groupby(images["plate"].astype(str), sort=False):
            release_arrow_memory()  # the previous plate's buffers: what is held stays one plate's
            yield self.plate_cells([str(plate)], columns, set(rows["image_id"].astype(str)))

    def images_with_cells(self, image_ids: Iterable[str]) -> list[str]:
        """Those of ``image_ids`` that hold at least one cell, sorted (a plate's ``image_id`` column read at a
        time)."""
        found = one_at_a_time(self.cell_parts(image_ids, ["image_id"]), lambda cells: set(cells["image_id"]))
        return sorted(set().union(*found))

    def count_cells(self) -> int:
        """How many cells the run measured in the image table's plates, from the parts' Parquet footers (no table
        read)."""
        path = self.require(self.cells, "measure")
        parts = [path]
        if path.is_dir():
            plates = pd.unique(self.read_images()["plate"].astype(str))
            parts = [part for part in map(self.cells_part, plates) if part.exists()]
        return sum(pq.ParquetFile(part).metadata.num_rows for part in parts)

    def cell_columns(self) -> list[str]:
        """The columns of the cells table (from one part's schema: every part has the same columns)."""
        path = self.require(self.cells, "measure")
        if path.is_dir():
            path = min(path.glob("[!._]*.parquet"), default=path)
        return pq.read_schema(path).names

    def clear_predictions(self) -> list[Path]:
        """Remove the calls of an earlier prediction (``predictions/``'s tables and their CSV copies) and return
        them: a prediction into a folder that holds another model's calls must not leave files it does not write
        again beside its own, to be read as its own."""
        stale = sorted(p for p in self.predictions.glob("*") if p.suffix in (".parquet", ".csv") and p.is_file())
        for path in stale:
            path.unlink()
        return stale

    def read_split(self) -> tuple[pd.Series, dict[str, Any]]:
        """Each split image's side (indexed by image_id) and the split report."""
        sides = self.read_table(self.split_table, "train").set_index("image_id")["side"]
        return sides, json.loads(self.require(self.split_report, "train").read_text())

    def read_history(self) -> list[dict[str, float]]:
        """``model/history.csv`` as one dict per epoch (empty values as NaN; [] before training)."""
        if not self.history.exists():
            return []
        with open(self.history, newline="") as handle:
            return [
                {k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()}
                for r in csv.DictReader(handle)
            ]

    def read_summary(self, stage: str) -> dict[str, Any]:
        """A stage's ``logs/<stage>.json`` ({} when the stage has not run)."""
        path = self.stage_summary(stage)
        return json.loads(path.read_text()) if path.exists() else {}

    def experiment_scales(self) -> dict[str, Any]:
        """The one intensity scale the run's crops and frozen embeddings were made with, where they were scaled
        across the experiment (``{"crops": [[low, high], …], "embedding": …}``; a part scaled per plate, or not
        made, is absent)."""
        found = {}
        for part, path in (("crops", self.crop_settings), ("embedding", self.embedding_settings)):
            stored = json.loads(path.read_text()) if path.is_file() else {}
            if stored.get("scope") == "experiment" and stored.get("scales"):
                found[part] = next(iter(stored["scales"].values()))
        return found

    @property
    def holds_a_prediction(self) -> bool:
        """Whether this is the ``--out`` folder of ``predict`` (its record, written before its first image; or —
        written before predict kept one — calls without a trained model), not a training run."""
        called = self.treatment_calls.exists() or self.image_predictions.exists()
        return self.stage_summary("predict").exists() or (called and not self.model.exists())

    # ---- stage records -----------------------------------------------------------------------
    def record_stage(self, stage: str, summary: dict[str, Any], failed: Sequence[Failure] = ()) -> None:
        """Write ``logs/<stage>.json`` and the failures list; raise :class:`StageError` when images failed."""
        self.logs.mkdir(parents=True, exist_ok=True)
        failures = self.failures(stage)
        if failed:
            frame = pd.DataFrame([{"image_id": f.image_id, "error": f.error} for f in failed])
            with atomic_path(failures) as tmp:
                frame.to_csv(tmp, index=False)
        elif failures.exists():
            failures.unlink()
        write_json(self.stage_summary(stage), {**summary, "made_by": made_by()})
        if failed:
            raise StageError(
                f"{stage}: {len(failed)} of {summary.get('images', '?')} images failed "
                f"(first: {failed[0].image_id}: {failed[0].error}); list in {failures}"
            )


def require_outputs(
    run: RunFolder, image_ids: Iterable[str], path_of: Callable[[str], Path], what: str, stage: str
) -> None:
    """Every image must have the output of an earlier stage (``path_of(image_id)``), else one line naming the
    command that makes it."""
    missing = [image_id for image_id in image_ids if not path_of(image_id).exists()]
    if missing:
        raise InputError(
            f"{len(missing)} images have no {what} (e.g. {missing[0]}) — run `cellresponse {stage} {run.root}` first"
        )

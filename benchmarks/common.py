"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cellresponse.config import Config, load_config
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.splits import assign_split, downsample_control

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STUDY_FIELDS = 2867  # fields of the study's plate BR00116991


def subset_csv(source: Path, n: int, folder: Path) -> Path:
    """The first ``n`` rows of a load_data.csv, with absolute paths, written into ``folder``."""
    table = pd.read_csv(source).head(n)
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [str((source.parent / p).resolve()) for p in table[column]]
    path = folder / "subset.csv"
    table.to_csv(path, index=False)
    return path


def prepared_run(source: Path, n: int, folder: Path, config: Config, stages: tuple[str, ...]) -> RunFolder:
    """A run folder of the first ``n`` images of a load_data.csv, through ``images`` and then ``stages`` (names of
    per-image stages, in order) in this process, without progress bars."""
    from cellresponse.input.plate import ImageSource
    from cellresponse.stages import crops, images, measure, segment

    modules = {"segment": segment, "measure": measure, "crops": crops}
    run = RunFolder(folder / "run")
    images.run(run, config, source=ImageSource(load_data=subset_csv(source, n, folder)))
    for stage in stages:
        modules[stage].run(run, config, progress=False)
    return run


def study_epoch_cells(cells_per_field: float, cap: int | None, preset: str | None) -> int:
    """Cells one training epoch sees on the study's plate: its 2,867 fields, controls down-sampled and split as
    `train` does with ``preset`` (None: the study's settings), each training field's cells (capped)."""
    meta = pd.read_csv(SHARED / "cpjump1" / "metadata" / "metadata_BR00116991_filtered.csv")
    images = pd.DataFrame(
        {
            "image_id": [f"f{i}" for i in range(len(meta))],
            "plate": meta["Metadata_Plate"].astype(str),
            "well": meta["Metadata_Well"].astype(str),
            "Metadata_pert_iname": meta["Metadata_pert_iname"].astype(str),
        }
    )
    per_image = pd.Series(cells_per_field, index=images["image_id"])
    config = load_config(preset=preset)
    chosen, _ = downsample_control(images, per_image, "Metadata_pert_iname", "DMSO", config.seed)
    side, _ = assign_split(chosen, "Metadata_pert_iname", config.split, seed=config.seed)
    per_field = min(cells_per_field, cap) if cap else cells_per_field
    return int((side == "train").sum() * per_field)

"""The crop store: one memory-mapped uint8 array plus a Parquet index, read by training and prediction.

Layout of ``RUN/crops/``::

    crops.npy        uint8 (N, 8, S, S): channels 0-3 the image half, 4-7 the flow half (crops.py)
    index.parquet    one row per crop: row, cell_id, image_id, label (row = position in crops.npy)
    settings.json    recipe, store size, channel names, per-plate intensity scales
    parts/<image_id>.npy  per-image pieces (the resume unit of the crops stage)

A training batch is one fancy-index into the memory map (sorted rows, so reads are sequential where
they can be): no TIFF is opened again after the crops stage.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cellresponse.crops import CHANNELS
from cellresponse.errors import InputError
from cellresponse.io import atomic_path, write_parquet


def write_store(
    folder: Path,
    cells: pd.DataFrame,
    part_path: Callable[[str], Path],
    settings: dict[str, Any],
    progress: bool = True,
) -> dict[str, int]:
    """Gather the per-image parts into ``crops.npy`` in ``cells`` order; skipped when already current."""
    folder = Path(folder)
    store_path, index_path = folder / "crops.npy", folder / "index.parquet"
    index = pd.DataFrame(
        {
            "row": np.arange(len(cells), dtype=np.int64),
            "cell_id": cells["cell_id"].astype(str).to_numpy(),
            "image_id": cells["image_id"].astype(str).to_numpy(),
            "label": cells["label"].astype(np.int64).to_numpy(),
        }
    )
    size = int(settings["store_size"])
    if store_path.exists() and index_path.exists():
        old = pd.read_parquet(index_path)
        shape = np.load(store_path, mmap_mode="r").shape
        if old["cell_id"].tolist() == index["cell_id"].tolist() and shape == (len(cells), CHANNELS, size, size):
            return {"cells": len(cells), "bytes": store_path.stat().st_size}
    with atomic_path(store_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(cells), CHANNELS, size, size))
        image_ids = index["image_id"].to_numpy()
        # cells.parquet holds each image's cells contiguously, in the order of the image table
        boundaries = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1], True])
        for a, b in tqdm(list(itertools.pairwise(boundaries)), desc="store", unit="image", disable=not progress):
            image_id = image_ids[a]
            part = np.load(part_path(image_id))
            if part.shape[0] != b - a:
                raise InputError(
                    f"crops of {image_id} hold {part.shape[0]} cells, the measurements {b - a} — "
                    "rerun `cellresponse crops --overwrite`"
                )
            array[a:b] = part
        array.flush()
        del array
    write_parquet(index_path, index)
    return {"cells": len(cells), "bytes": store_path.stat().st_size}


class CropStore:
    """Read access to a crop store: ``store.batch(rows)`` gives uint8 ``(n, 8, S, S)``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "crops.npy"
        if not path.exists():
            raise InputError(f"crop store {path} not found — run `cellresponse crops` first")
        self.array = np.load(path, mmap_mode="r")
        self.index = pd.read_parquet(self.folder / "index.parquet")
        settings_path = self.folder / "settings.json"
        self.settings: dict[str, Any] = (
            json.loads(settings_path.read_text())["settings"] if settings_path.exists() else {}
        )

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def store_size(self) -> int:
        return int(self.array.shape[-1])

    def rows_for(self, cell_ids: pd.Series | list[str]) -> np.ndarray:
        lookup = pd.Series(self.index["row"].to_numpy(), index=self.index["cell_id"].to_numpy())
        missing = pd.Index(cell_ids).difference(lookup.index)
        if len(missing):
            raise InputError(f"{len(missing)} cells have no crop (e.g. {missing[0]}) — rerun `cellresponse crops`")
        return lookup.loc[list(cell_ids)].to_numpy()

    def batch(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        out[order] = self.array[rows[order]]
        return out

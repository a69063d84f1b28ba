"""The cells the network trains and validates on: each labelled cell's side of the split, its class code, its
standardised feature row and its row in the crop store, with the training caps applied.

The cells are read plate by plate, so that training on a screen holds one plate's table at a time: the cells' ids,
sides and labels stay in memory (tens of bytes a cell), their standardised feature rows go to a memory-mapped file
per set (as their crops sit in the crop store), from which each batch reads its rows."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from cellresponse.config import TrainingConfig
from cellresponse.errors import InputError
from cellresponse.features.crop_store import CropStore, missing_crops
from cellresponse.input.io import one_at_a_time
from cellresponse.input.runfolder import CellParts
from cellresponse.learning.encoders import LabelEncoder, Scaler, count_nonfinite
from cellresponse.learning.splits import TEST, TRAIN, VALIDATION, cap_cells
from cellresponse.learning.training import CellSet

log = logging.getLogger(__name__)


def sided_rows(part: pd.DataFrame, side_of: pd.Series, label_of: pd.Series, store: CropStore) -> pd.DataFrame:
    """The cells of ``part`` that belong to the split's images, as what the sets keep of a cell (a few bytes): its
    crop-store ``row``, ``image_id``, ``side`` and ``true_label`` (categories of ``side_of``'s and ``label_of``'s,
    both indexed by image id)."""
    part = part[part["image_id"].isin(side_of.index)]
    image_ids = part["image_id"].to_numpy()
    return pd.DataFrame(
        {
            "row": store.known_rows(part).astype(row_type(len(store))),
            "image_id": pd.Categorical(image_ids, categories=side_of.index),
            "side": pd.Categorical(side_of.loc[image_ids].to_numpy(), categories=sorted(set(side_of))),
            "true_label": pd.Categorical(label_of.loc[image_ids].to_numpy(), categories=sorted(set(label_of))),
        }
    )


def cell_sets(
    parts: CellParts,
    columns: list[str],
    sides: pd.DataFrame,
    images: pd.DataFrame,
    label: str,
    training: TrainingConfig,
    seed: int,
    store: CropStore,
    folder: Path,
) -> tuple[LabelEncoder, Scaler, CellSet, CellSet, str]:
    """Encoder and scaler fitted on the training side, and the training and validation cell sets (validation = the
    test side when the split kept none; its classes never trained on left out, as they cannot be scored); the
    caps of ``training.max_cells_per_image`` / ``max_cells_per_class`` applied. ``parts`` gives the cells (with
    ``image_id``, the mask ``label`` and the feature ``columns``) plate by plate; each set's feature rows are written
    to ``folder`` (:func:`stored_sets`)."""
    side_of = sides.set_index(sides["image_id"].astype(str))["side"].astype(str)
    label_of = images.set_index(images["image_id"].astype(str))[label].astype(str)
    train, val, val_side = split_sides(one_at_a_time(parts(), lambda part: sided_rows(part, side_of, label_of, store)))
    if train.empty:
        raise InputError("the training side has no cells — check the split settings and the segmentation")
    encoder = LabelEncoder.fit(train["true_label"].unique())
    nonfinite: list[int] = []
    in_train = np.zeros(len(store), dtype=bool)  # one byte a crop of the screen, dropped once the scaler is fitted
    train_rows = train["row"].to_numpy()
    in_train[train_rows[train_rows >= 0]] = True
    on_train_side = partial(training_side, split_images=side_of.index, in_train=in_train, store=store,
                            columns=columns, nonfinite=nonfinite)  # fmt: skip
    scaler = Scaler.fit_parts(map(on_train_side, parts()), columns)
    del on_train_side, in_train
    if sum(nonfinite):
        log.warning("%d NaN/infinite feature values replaced by the training mean", sum(nonfinite))
    if val.empty:
        raise InputError("no validation cells: the split left no validation or test images")
    val = val[encoder.transform(val["true_label"]) >= 0]
    if training.max_cells_per_image is not None or training.max_cells_per_class is not None:
        before = len(train)
        train = cap_cells(train, "true_label", training.max_cells_per_image, training.max_cells_per_class, seed)
        val = cap_cells(val, "true_label", training.max_cells_per_image, None, seed)
        log.info(
            "cell cap (training.max_cells_per_image %s, max_cells_per_class %s): training on %d of %d cells",
            training.max_cells_per_image,
            training.max_cells_per_class,
            len(train),
            before,
        )
    train_set, val_set = stored_sets(parts, {"train": train, "validation": val}, scaler, encoder, store, folder)
    return encoder, scaler, train_set, val_set, val_side


def split_sides(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The training side's cells and the validation side's (the test side's where the split kept no validation
    images) of the plates' ``frames`` (:func:`sided_rows`), and the name of that side. The frames are emptied as
    they are joined: what is held of a cell is its row in one of the two sides."""
    val_side = VALIDATION if any((frame["side"] == VALIDATION).any() for frame in frames) else TEST
    sides: dict[str, list[pd.DataFrame]] = {TRAIN: [], val_side: []}
    while frames:  # each plate's frame split and let go in turn; joined without an index (eight bytes a cell)
        frame = frames.pop(0)
        for name, pieces in sides.items():
            pieces.append(frame[frame["side"] == name])
    empty = pd.DataFrame(columns=["row", "image_id", "side", "true_label"])
    train, val = (pd.concat(pieces, ignore_index=True) if pieces else empty for pieces in sides.values())
    return train, val, val_side


def row_type(store_rows: int) -> type:
    """The integer type of a store's rows: four bytes a cell wherever the store allows."""
    return np.int32 if store_rows < 2**31 else np.int64


def store_positions(store_rows: int, sets: list[np.ndarray]) -> np.ndarray:
    """For each row of a store of ``store_rows`` crops, its position in the sets of store ``rows`` one after the
    other (-1 where in none; rows of -1, cells without a crop, are skipped): four bytes a crop for all the sets,
    where an index of the rows would hash each one."""
    positions: np.ndarray = np.full(store_rows, -1, dtype=row_type(sum(map(len, sets))))
    start = 0
    for rows in sets:
        kept = rows >= 0
        positions[rows[kept]] = start + np.flatnonzero(kept)
        start += len(rows)
    return positions


def positions_at(positions: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``positions`` (:func:`store_positions`) at store ``rows``; -1 where a row is -1 (a cell without a crop)."""
    found = np.full(len(rows), -1, dtype=np.int64)
    known = rows >= 0
    found[known] = positions[rows[known]]
    return found


def training_side(
    part: pd.DataFrame,
    split_images: pd.Index,
    in_train: np.ndarray,
    store: CropStore,
    columns: list[str],
    nonfinite: list[int],
) -> pd.DataFrame:
    """The training-side cells of one part (those whose store row ``in_train`` marks), counting into ``nonfinite``
    the NaN/infinite values of its split cells (the scaler sets them to the training mean)."""
    part = part[part["image_id"].isin(split_images)]
    nonfinite.append(count_nonfinite(part, columns))
    rows = store.known_rows(part)
    return part[(rows >= 0) & in_train[rows.clip(min=0)]]


def stored_sets(
    parts: CellParts,
    sets: dict[str, pd.DataFrame],
    scaler: Scaler,
    encoder: LabelEncoder,
    store: CropStore,
    folder: Path,
) -> list[CellSet]:
    """Each set of ``sets`` (cells with their store ``row`` and ``true_label``) as a :class:`CellSet` whose standardised
    feature rows, in the set's order, are written plate by plate to ``folder/<name>.npy`` and read back
    memory-mapped. Written with plain file writes, not through the map, so that the rows written stay the page
    cache's (dropped under memory pressure) rather than the process's."""
    for table in sets.values():
        if (table["row"] < 0).any():
            raise missing_crops(int((table["row"] < 0).sum()))  # only the cells the sets take need a crop
    write_feature_rows(parts, {name: table["row"].to_numpy() for name, table in sets.items()}, scaler, store, folder)
    width = len(scaler.columns)
    narrow_targets = np.int16 if len(encoder.classes) < 2**15 else np.int32  # widened a batch at a time
    return [
        CellSet(
            rows=table["row"].to_numpy(),
            features=np.load(folder / f"{name}.npy", mmap_mode="r")
            if len(table) and width
            else np.zeros((0, width), np.float32),
            targets=encoder.transform(table["true_label"]).astype(narrow_targets),
        )
        for name, table in sets.items()
    ]


def write_feature_rows(
    parts: CellParts, sets: dict[str, np.ndarray], scaler: Scaler, store: CropStore, folder: Path
) -> None:
    """The standardised feature rows of each set of store rows in ``sets``, in the set's order, written plate by
    plate to ``folder/<name>.npy`` (one position array over the store's rows for all the sets)."""
    folder.mkdir(parents=True, exist_ok=True)
    width = len(scaler.columns)
    positions = store_positions(len(store), list(sets.values()))
    starts = np.cumsum([0, *map(len, sets.values())])
    with ExitStack() as files:
        handles = [empty_npy(files.enter_context(open(folder / f"{name}.npy", "w+b")), len(rows), width)
                   for name, rows in sets.items()]  # fmt: skip

        def write_part(part: pd.DataFrame) -> None:
            found = positions_at(positions, store.known_rows(part))
            if not (found >= 0).any():
                return
            scaled = scaler.transform(part)  # float32, once for every set: no float64 copy of the plate's rows
            for handle, start, stop in zip(handles, starts[:-1], starts[1:], strict=True):
                mine = (found >= start) & (found < stop)
                if mine.any():
                    write_rows(*handle, found[mine] - start, scaled[mine])

        one_at_a_time(parts(), write_part)


def empty_npy(handle: BinaryIO, rows: int, width: int) -> tuple[BinaryIO, int]:
    """``handle`` made a ``.npy`` file of ``rows`` × ``width`` float32 (zeros, sparse until written), and the bytes
    before its data."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (rows, width)}  # fmt: skip
    np.lib.format.write_array_header_1_0(handle, header)
    start = handle.tell()
    handle.truncate(start + rows * width * 4)
    return handle, start


def write_rows(handle: BinaryIO, header: int, rows: np.ndarray, values: np.ndarray) -> None:
    """``values`` (float32, one row each) written at ``rows`` of the ``.npy`` file open as ``handle``, one write per
    run of consecutive rows (a plate's cells are one run of a set: the sets keep the plates' order)."""
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], np.ascontiguousarray(values[order], dtype=np.float32)
    starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
    for start, stop in zip(starts, [*starts[1:], len(rows)], strict=True):
        handle.seek(header + int(rows[start]) * values.shape[1] * 4)
        handle.write(values[start:stop].tobytes())

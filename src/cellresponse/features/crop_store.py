"""The crop store: per-image files of per-cell compressed crops plus a Parquet index, read by training and
prediction.

Layout of ``RUN/crops/``::

    parts/<image_id>.crops   the crops of one image's cells, uint8 (8, S, S) each: channels 0-3 the image half,
                             4-7 the flow half (crops.py); each crop compressed on its own (Blosc zstd level 3)
    index.parquet            one row per crop: row, cell_id, image_id, label, part, offset, length
    settings.json            recipe, store size, channel names, per-plate intensity scales

A part file is ``CROPS01`` (magic), ``n`` and the ``n + 1`` byte offsets of the cells' blobs (little-endian
uint64), then the blobs. Each image's task writes its own part (atomically, in parallel, the resume unit); there
is no merged copy. A batch reads each cell with one ``pread`` and decompresses it: any cell of a plate is reached
without touching the rest.

Why not zarr: a zarr 3 array per image (1-cell chunks, one shard per image, Blosc zstd) read a random 64-cell
batch of 32-px crops in 166-200 ms on this machine — its per-call overhead is milliseconds — where this format
reads a random 64-cell batch of 96-px crops in 9 ms (docs/benchmarks.md). The codec is
numcodecs', the field's (zarr's own).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cellresponse.errors import InputError
from cellresponse.features.crops import CHANNELS
from cellresponse.input.io import atomic_path, release_arrow_memory, write_parquet_parts

MAGIC = b"CROPS01\x00"


def _codec() -> Any:
    # Imported here because start-up time needs it (numcodecs loads its C codecs); one thread: the per-image tasks
    # and the loader's workers are the parallelism, and Blosc's own threads do not survive a fork.
    from numcodecs import Blosc

    # zstd level 3 without a shuffle filter: on 600 CPJUMP1 crops at 96 px, 20.3 KB a cell, 0.37 ms to encode and
    # 0.07 to decode, where level 5 with bit-shuffle (the first choice) gave 22.9 KB, 0.99 and 0.14 ms — shuffling
    # bytes or bits of uint8 pixels only scatters them. Blosc writes its settings into each blob, so stores cut
    # with other settings still read.
    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.NOSHUFFLE, blocksize=0)


def write_part(path: Path, crops: np.ndarray) -> int:
    """Write one image's crops ``(n, 8, S, S)`` uint8 as a part file (atomically); returns its size in bytes."""
    codec = _codec()
    blobs = [bytes(codec.encode(np.ascontiguousarray(crop))) for crop in crops]
    sizes = np.fromiter((len(b) for b in blobs), dtype=np.uint64, count=len(blobs))
    header = len(MAGIC) + 8 + 8 * (len(blobs) + 1)
    offsets = header + np.concatenate([[0], np.cumsum(sizes)]).astype("<u8")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(MAGIC)
        handle.write(np.uint64(len(blobs)).astype("<u8").tobytes())
        handle.write(offsets.tobytes())
        for blob in blobs:
            handle.write(blob)
    return int(offsets[-1])


def part_offsets(path: Path) -> np.ndarray:
    """The ``n + 1`` byte offsets of a part file's blobs (read from its header only)."""
    with open(path, "rb") as handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise InputError(f"{path} is not a crop part — rerun `cellresponse crops --overwrite`")
        n = int(np.frombuffer(handle.read(8), dtype="<u8")[0])
        return np.frombuffer(handle.read(8 * (n + 1)), dtype="<u8").astype(np.int64)


def write_index(folder: Path, plates: Iterable[pd.DataFrame], part_path: Callable[[str], Path]) -> dict[str, int]:
    """Index every cell's crop, a plate at a time: ``plates`` gives each plate's cells (``cell_id``, ``image_id``,
    ``label``; an image's cells together, in measured order), written as row groups of ``index.parquet`` as they
    come (atomically; one plate's rows held). Only the parts' headers are read; each part must hold its image's
    measured cells. Returns the cell count and the bytes of all parts."""
    counts = {"cells": 0, "bytes": 0}

    def plate_index(cells: pd.DataFrame) -> pd.DataFrame:
        index, size = index_rows(cells, part_path, first_row=counts["cells"])
        counts["cells"] += len(index)
        counts["bytes"] += size
        return index

    empty = index_rows(pd.DataFrame({"cell_id": [], "image_id": [], "label": []}), part_path, 0)[0]
    write_parquet_parts(Path(folder) / "index.parquet", itertools.chain(map(plate_index, plates), [empty]))
    return counts


def index_rows(cells: pd.DataFrame, part_path: Callable[[str], Path], first_row: int) -> tuple[pd.DataFrame, int]:
    """The index rows of ``cells`` (numbered from ``first_row``) and the bytes of their parts."""
    image_ids = cells["image_id"].astype(str).to_numpy()
    parts, offsets, lengths = [], [], []
    total = 0
    # cells.parquet holds each image's cells contiguously, in the order of the image table
    for a, b in itertools.pairwise(run_bounds(image_ids)):
        path = Path(part_path(image_ids[a]))
        starts = part_offsets(path)
        if len(starts) - 1 != b - a:
            raise InputError(
                f"crops of {image_ids[a]} hold {len(starts) - 1} cells, the measurements {b - a} — "
                "rerun `cellresponse crops --overwrite`"
            )
        parts += [path.name] * (b - a)
        offsets.append(starts[:-1])
        lengths.append(np.diff(starts))
        total += int(starts[-1])
    index = pd.DataFrame(
        {
            "row": np.arange(first_row, first_row + len(cells), dtype=np.int64),
            "cell_id": cells["cell_id"].astype(str).to_numpy(),
            "image_id": image_ids,
            "label": cells["label"].astype(np.int64).to_numpy(),
            "part": np.asarray(parts, dtype=object),
            "offset": np.concatenate(offsets) if offsets else np.zeros(0, np.int64),
            "length": np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        }
    )
    return index, total


def index_column(path: Path, name: str) -> np.ndarray:
    """One integer column of a store's index as int64, an array that owns its memory."""
    values = pq.read_table(path, columns=[name]).column(name).to_numpy().astype(np.int64)  # a copy
    release_arrow_memory()
    return values


def run_bounds(values: np.ndarray) -> np.ndarray:
    """Where each run of equal consecutive ``values`` starts, and the end: the bounds of ``pairwise``."""
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1], True]) if len(values) else np.zeros(0, np.int64)


def narrowest(values: np.ndarray) -> np.ndarray:
    """``values`` (integers) as the narrowest of uint16, uint32 and int64 that holds them all."""
    for kind in (np.uint16, np.uint32):
        if not len(values) or (values.min() >= 0 and values.max() <= np.iinfo(kind).max):
            return values.astype(kind)
    return values.astype(np.int64)


def index_codes(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A string column of a store's index as one small integer code a cell and the strings they stand for (each
    read once, as a Parquet dictionary)."""
    column = pq.read_table(path, columns=[name], read_dictionary=[name]).column(name).combine_chunks()
    if not isinstance(column, pa.DictionaryArray):  # an empty index
        column = column.dictionary_encode()
    codes = column.indices.to_numpy(zero_copy_only=False)
    narrow = next(t for t in (np.int16, np.int32, np.int64) if len(column.dictionary) < np.iinfo(t).max)
    codes, names = codes.astype(narrow), column.dictionary.to_numpy(zero_copy_only=False)
    del column
    release_arrow_memory()
    return codes, names


def cell_keys(image_codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One int64 a cell, unique within a store: its image's code in the high 32 bits, its mask label in the low."""
    return (np.asarray(image_codes, np.int64) << 32) | np.asarray(labels, np.int64)


def missing_crops(count: int, example: str | None = None) -> InputError:
    """The error of cells that have no crop in the store."""
    shown = f" (e.g. {example})" if example is not None else ""
    return InputError(f"{count} cells have no crop{shown} — rerun `cellresponse crops`")


def used_codes(codes: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` and ``names`` without the names no code uses (a Parquet dictionary unified over chunks may hold
    some), the codes renumbered in the same order."""
    used = np.bincount(codes.astype(np.int64), minlength=len(names)) > 0
    if used.all():
        return codes, names
    return (np.cumsum(used) - 1)[codes].astype(codes.dtype), names[used]


def in_cell_order(codes: np.ndarray, labels: np.ndarray) -> bool:
    """Whether rows of image ``codes`` and mask ``labels`` run by image code and then strictly rising label (the
    order ``crops`` writes: an image's cells together, as measured)."""
    same_image = codes[1:] == codes[:-1]
    return bool(((codes[1:] > codes[:-1]) | (same_image & (labels[1:] > labels[:-1]))).all())


@dataclass(frozen=True)
class CropIndex:
    """Where each crop of a store is, in rows ordered by image and then mask label (the order ``crops`` writes
    the index in): what a store keeps in memory of every cell of a screen, ~6 bytes a cell — its mask label and
    its blob's offset in its image's part. An image's cells are rows ``starts[i]`` to ``starts[i + 1]``; a blob
    ends where the next cell's of its image starts, the image's last at ``ends[i]`` (``lengths`` is kept instead
    only for a store whose blobs do not follow each other so)."""

    images: pd.Index  # image ids, by code
    parts: np.ndarray  # each image's part file name
    starts: np.ndarray  # int64, len(images) + 1
    labels: np.ndarray  # per row, narrowest unsigned
    offsets: np.ndarray  # per row, narrowest unsigned
    ends: np.ndarray  # int64 per image
    lengths: np.ndarray | None  # per row, only where the blobs are not contiguous

    @classmethod
    def read(cls, path: Path) -> CropIndex:
        """The index of the store's ``index.parquet``; one clear error where it holds a cell twice or an image
        in two part files. Each column is narrowed as it is read: opening a store holds ~25 bytes a cell at most."""
        codes, images = used_codes(*index_codes(path, "image_id"))
        labels = narrowest(index_column(path, "label"))
        offsets, lengths = narrowest(index_column(path, "offset")), narrowest(index_column(path, "length"))
        part_codes, part_names = index_codes(path, "part")
        if not in_cell_order(codes, labels):  # an index not written by image and label: sorted once
            order = np.argsort(cell_keys(codes, labels), kind="stable")
            columns = (codes, labels, offsets, lengths, part_codes)
            codes, labels, offsets, lengths, part_codes = (column[order] for column in columns)
            del columns, order
            if ((codes[1:] == codes[:-1]) & (labels[1:] == labels[:-1])).any():
                raise InputError(f"{path} holds a cell twice — rerun `cellresponse crops --overwrite`")
        starts = np.searchsorted(codes, np.arange(len(images) + 1)).astype(np.int64)
        del codes
        if (part_codes != np.repeat(part_codes[starts[:-1]], np.diff(starts))).any():
            raise InputError(f"{path} puts an image's crops in two part files — rerun `cellresponse crops --overwrite`")
        first_of_image = np.zeros(len(offsets), dtype=bool)
        first_of_image[starts[:-1]] = True
        blob_ends = offsets.astype(np.int64)
        blob_ends += lengths
        contiguous = bool((first_of_image[1:] | (offsets[1:] == blob_ends[:-1])).all())
        return cls(
            images=pd.Index(images.astype(str)),
            parts=np.asarray(part_names, dtype=object)[part_codes[starts[:-1]]],
            starts=starts,
            labels=labels,
            offsets=offsets,
            ends=blob_ends[starts[1:] - 1],
            lengths=None if contiguous else lengths,
        )

    def rows(self, image_ids: pd.Series, labels: np.ndarray) -> np.ndarray:
        """Each cell's row (int64), -1 where the index has no crop of it: one sorted search per image."""
        codes = self.images.get_indexer(pd.Index(image_ids.astype(str)))
        labels = np.asarray(labels, np.int64)
        found = np.full(len(codes), -1, dtype=np.int64)
        by_image = np.argsort(codes, kind="stable")
        in_order = codes[by_image]
        for a, b in itertools.pairwise(run_bounds(in_order)):
            code = in_order[a]
            if code < 0:
                continue
            low, high = self.starts[code], self.starts[code + 1]
            wanted = labels[by_image[a:b]]
            at = (low + np.searchsorted(self.labels[low:high].astype(np.int64), wanted)).clip(max=high - 1)
            found[by_image[a:b]] = np.where(self.labels[at] == wanted, at, -1)
        return found

    def image_codes(self, rows: np.ndarray) -> np.ndarray:
        """The code of each of ``rows``' image (the row range it falls in)."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def cells(self, rows: np.ndarray) -> pd.DataFrame:
        """The ``image_id`` and mask ``label`` of each of ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        image = self.image_codes(rows)
        return pd.DataFrame({"image_id": self.images[image], "label": self.labels[rows].astype(np.int64)})

    def blobs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image code, byte offset and length of each of ``rows``' blobs."""
        image = self.image_codes(rows)
        offsets = self.offsets[rows].astype(np.int64)
        if self.lengths is not None:
            return image, offsets, self.lengths[rows].astype(np.int64)
        following = rows + 1
        last = following >= self.starts[image + 1]
        nxt = self.offsets[np.minimum(following, len(self.offsets) - 1)].astype(np.int64)
        return image, offsets, np.where(last, self.ends[image], nxt) - offsets


class CropStore:
    """Read access to a crop store: ``store.batch(rows)`` gives uint8 ``(n, 8, S, S)``; a cell's row is its position
    in the index (ordered by image and mask label), found from its image and label (:meth:`known_rows`).

    What it holds of the index is a few bytes a cell (:class:`CropIndex`), not the index's strings: training on a
    screen keeps every cell of it here."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_path = self.folder / "index.parquet"
        if not index_path.exists():
            raise InputError(f"crop store {self.folder} not found — run `cellresponse crops` first")
        if "part" not in pq.read_schema(index_path).names:
            raise InputError(
                f"{self.folder} is a crop store of an earlier version — rerun `cellresponse crops --overwrite`"
            )
        settings_path = self.folder / "settings.json"
        self.settings: dict[str, Any] = (
            json.loads(settings_path.read_text())["settings"] if settings_path.exists() else {}
        )
        self._index = CropIndex.read(index_path)
        self._size = int(self.settings.get("store_size", 0))
        self._codec: Any = None  # made on first read, in the process that reads

    def __len__(self) -> int:
        return len(self._index.offsets)

    @property
    def store_size(self) -> int:
        return self._size

    def known_rows(self, cells: pd.DataFrame) -> np.ndarray:
        """The store row of each of ``cells`` (a table with ``image_id`` and the mask ``label``), -1 where the store
        holds no crop of it."""
        return self._index.rows(cells["image_id"], cells["label"].to_numpy())

    def rows_for(self, cells: pd.DataFrame) -> np.ndarray:
        """Each cell's store row; one clear error where some have no crop."""
        rows = self.known_rows(cells)
        if (rows < 0).any():
            first = cells.iloc[int(np.flatnonzero(rows < 0)[0])]
            name = first["cell_id"] if "cell_id" in cells else f"{first['image_id']}#{first['label']}"
            raise missing_crops(int((rows < 0).sum()), str(name))
        return rows

    def cells_at(self, rows: np.ndarray) -> pd.DataFrame:
        """The ``image_id`` and mask ``label`` of the cells at store ``rows``."""
        return self._index.cells(rows)

    def batch(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self._codec is None:
            self._codec = _codec()
        shape = (CHANNELS, self._size, self._size)
        out = np.empty((len(rows), *shape), dtype=np.uint8)
        images, offsets, lengths = self._index.blobs(rows)
        # one open per part file in the batch, one pread per cell, in file order
        order = np.lexsort((offsets, images))
        handle, current = -1, None
        try:
            for i in order:
                if images[i] != current:
                    if handle >= 0:
                        os.close(handle)
                    current = images[i]
                    handle = os.open(self.folder / "parts" / self._index.parts[current], os.O_RDONLY)
                blob = os.pread(handle, int(lengths[i]), int(offsets[i]))
                out[i] = np.frombuffer(self._codec.decode(blob), dtype=np.uint8).reshape(shape)
        finally:
            if handle >= 0:
                os.close(handle)
        return out

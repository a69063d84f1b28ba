"""File I/O at the edges: atomic writes, TIFF, Parquet and JSON helpers, and reading a screen's tables a plate at
a time with nothing of the last plate held (the run folder's layout is runfolder.py).

Every file a stage writes appears whole or not at all: it is written under a temporary name in the
same folder and renamed into place (``os.replace`` is atomic on POSIX filesystems).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile

from cellresponse.errors import InputError

T = TypeVar("T")
R = TypeVar("R")


@functools.cache
def process_umask() -> int:
    """The process umask. Reading it means setting it, so it is read once, on first use, and put back at once
    (never at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~process_umask())  # mkstemp makes 0600 files; outputs should be readable like any other
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files left by a killed run (``.<name>.<random>.tmp``); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = list(folder.glob(".*.tmp"))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; it takes ``target``'s place (a file or a folder) only if the
    block succeeds, so a reader finds the old table or the new one whole, never some of its parts."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~process_umask())
    try:
        yield tmp
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=target.parent))
        if target.exists():
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_tiff(path: str | Path, array: np.ndarray, info: dict | None = None) -> None:
    """Write a compressed TIFF atomically (zlib: lossless, readable by every TIFF reader; floating-point arrays
    with the floating-point predictor, which shrinks them further).

    ``info`` is stored as JSON in the ImageDescription tag, so an output describes itself
    (:func:`read_tiff_info`) and a resumed stage needs no side files.
    """
    predictor = 3 if np.issubdtype(array.dtype, np.floating) else None
    with atomic_path(path) as tmp:
        description = json.dumps(info, default=_json_default) if info is not None else None
        tifffile.imwrite(tmp, array, compression="zlib", predictor=predictor, description=description, metadata=None)


def read_tiff_info(path: str | Path) -> dict:
    """The JSON stored by :func:`write_tiff` (without reading the pixels)."""
    with tifffile.TiffFile(path) as tif:
        text = tif.pages.first.description
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def read_tiff(path: str | Path) -> np.ndarray:
    """Read a TIFF, turning a missing or corrupt file into one clear error line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        array = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt/truncated files
        raise InputError(f"cannot read TIFF {path}: {exc} — is the file complete?") from None
    if array.size == 0:  # a damaged header can read as an empty image instead of raising
        raise InputError(f"cannot read TIFF {path}: no image data — is the file complete?")
    return array


def write_parquet(path: str | Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def write_parquet_parts(path: str | Path, parts: Iterable[pd.DataFrame]) -> int:
    """One Parquet file of ``parts`` (a plate's rows each, made as they are asked for), written a row group at a
    time so that only one part is held, and renamed onto ``path`` only when every part is in (a failed or killed
    write leaves no partial file). Every part takes the first non-empty part's schema (a part whose column came out
    of another type, an all-missing one for instance, is cast to it); empty parts add nothing (their columns have
    no values to type by), unless every part is empty. Returns the rows written."""
    rows, empty = 0, None
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for part in parts:
                if len(part) == 0:
                    empty = part if empty is None else empty
                else:
                    table = pa.Table.from_pandas(part, schema=writer.schema if writer else None, preserve_index=False)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    rows += len(part)
                    del table
                del part  # nothing of this part held while the next is made
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            if empty is None:
                raise ValueError(f"no parts to write to {path}")
            empty.to_parquet(tmp, index=False)
    return rows


def read_parquet(path: str | Path | list[Path], columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file, a folder of parts (a dataset: its hidden ``.…tmp`` files ignored) or a list of part files."""
    paths = [Path(p) for p in path] if isinstance(path, list) else [Path(path)]
    if not paths:
        raise InputError("table not found: no parts to read — run the stage that writes it first")
    for p in paths:
        if not p.exists():
            raise InputError(f"table not found: {p} — run the stage that writes it first")
    if len(paths) == 1:
        return pd.read_parquet(paths[0], columns=columns)
    return pd.concat([pd.read_parquet(p, columns=columns) for p in paths], ignore_index=True)


# Columns in a block of column_blocks: a plate's feature table is worked on a few columns at a time, so that its
# float64 working copies are a block's, not the table's (hundreds of MB on a real plate).
COLUMN_BLOCK = 16


def column_blocks(columns: list[str]) -> list[list[str]]:
    """``columns`` in consecutive blocks of :data:`COLUMN_BLOCK`."""
    return [columns[start : start + COLUMN_BLOCK] for start in range(0, len(columns), COLUMN_BLOCK)]


def one_at_a_time(parts: Iterable[T], function: Callable[[T], R]) -> list[R]:
    """``function`` of each of ``parts`` (a screen's plates, read as they are asked for), with no reference to a
    part left while the next is read: a ``for`` loop keeps its variable bound while it asks for the next item,
    so two plates' tables would be held at once (measured: the peak of a many-plate run one plate's table above
    a one-plate run's). ``function``'s own locals are gone when it returns."""
    results, iterator = [], iter(parts)
    while (part := next(iterator, None)) is not None:
        results.append(function(part))
        del part
    return results


def release_arrow_memory() -> None:
    """Give back to the system what Arrow's memory pool keeps after a read. Its pool holds freed buffers for
    reuse; a stage that reads a screen plate by plate, or keeps arrays copied from a large index, would otherwise
    keep the high-water mark of every read as its own (measured: tens of bytes a cell of a screen)."""
    pa.default_memory_pool().release_unused()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

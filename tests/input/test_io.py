"""Reading a screen's tables a plate at a time (input.io.one_at_a_time)."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from cellresponse.input.io import one_at_a_time


class Plate:
    """Stands for one plate's table (weak references need an object that allows them)."""

    def __init__(self, number: int):
        self.number, self.values = number, np.full(1000, number)


def test_no_plate_is_held_while_the_next_is_read():
    alive: list[weakref.ref] = []
    held_while_reading = []

    def plates():
        for number in range(4):
            gc.collect()
            held_while_reading.append(sum(ref() is not None for ref in alive))
            plate = Plate(number)
            alive.append(weakref.ref(plate))
            yield plate
            del plate

    sums = one_at_a_time(plates(), lambda plate: int(plate.values.sum()))
    assert sums == [0, 1000, 2000, 3000]
    assert held_while_reading == [0, 0, 0, 0]  # a for loop would have held the last plate each time: [0, 1, 1, 1]
    # the same plates read with a for loop, to show what the test tells apart
    alive.clear()
    held_while_reading.clear()
    for plate in plates():
        int(plate.values.sum())
    assert held_while_reading == [0, 1, 1, 1]


def test_parts_are_written_as_one_file_and_a_failed_write_leaves_none(tmp_path):
    import pandas as pd
    import pytest

    from cellresponse.input.io import write_parquet_parts

    first = pd.DataFrame({"cell_id": ["a#1", "a#2"], "score": [0.5, 0.25], "call": ["x", "y"]})
    second = pd.DataFrame({"cell_id": ["b#1"], "score": [1.0], "call": [None]})  # an all-missing column: cast
    path = tmp_path / "calls.parquet"
    assert write_parquet_parts(path, iter([first, second])) == 3
    written = pd.read_parquet(path)
    expected = pd.concat([first, second], ignore_index=True)
    pd.testing.assert_frame_equal(written.drop(columns="call"), expected.drop(columns="call"))
    assert written["call"].tolist()[:2] == ["x", "y"] and written["call"].isna().tolist() == [False, False, True]

    # an empty part (a plate without cells) adds nothing and does not set the schema, first or later
    nothing = first.iloc[:0].astype(object)
    assert write_parquet_parts(tmp_path / "gaps.parquet", iter([nothing, first, nothing, second])) == 3
    assert pd.read_parquet(tmp_path / "gaps.parquet")["cell_id"].tolist() == ["a#1", "a#2", "b#1"]
    assert write_parquet_parts(tmp_path / "none.parquet", iter([nothing])) == 0
    assert list(pd.read_parquet(tmp_path / "none.parquet").columns) == ["cell_id", "score", "call"]
    for name in ("gaps.parquet", "none.parquet"):
        (tmp_path / name).unlink()

    def failing():
        yield first
        raise OSError("No space left on device")

    target = tmp_path / "failed.parquet"
    with pytest.raises(OSError, match="No space"):
        write_parquet_parts(target, failing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.parquet"]  # neither the file nor a temporary

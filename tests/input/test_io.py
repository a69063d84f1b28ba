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

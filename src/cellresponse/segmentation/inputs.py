"""What a field is segmented from: the segmentation input (the channel recipe, by default the median of the
first three channels) and the nuclear channel, read from the field's files."""

from __future__ import annotations

import numpy as np

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.input.channels import apply_recipe, find_nuclear_channel, load_stack


def segmentation_inputs(row: dict, names: list[str], config: Config) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The segmentation input (recipe), the nuclear channel and its name, of one field."""
    stack = load_stack(row, names)
    seg_input = apply_recipe(stack, config.segmentation.input, names)
    if seg_input.ndim != 2:
        raise InputError("segmentation.input must give one 2-D image (kind median/mean/max/single)")
    nuclear = find_nuclear_channel(names, config.segmentation.nuclear_channel, stack)
    return (
        seg_input,
        (stack[nuclear] if nuclear is not None else None),
        (names[nuclear] if nuclear is not None else ""),
    )

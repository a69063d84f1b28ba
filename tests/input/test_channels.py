import numpy as np
import pandas as pd
import pytest
import tifffile

from cellresponse.config import ChannelRecipe
from cellresponse.errors import InputError
from cellresponse.input.channels import (
    SELECTION_MEDIAN_MAX_CHANNELS,
    apply_recipe,
    channel_median,
    find_nuclear_channel,
    load_stack,
    resolve_channel,
)
from cellresponse.input.plate import ImageSource, build_image_table, channel_names
from tests.conftest import shared

NAMES = ["ch1", "ch2", "ch3", "ch4", "ch5"]


def test_median_of_first_three_is_the_default_recipe():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 1000, size=(5, 6, 7)).astype(np.uint16)
    out = apply_recipe(stack, ChannelRecipe(), NAMES)
    np.testing.assert_array_equal(out, np.median(stack[:3].astype(np.float32), axis=0))
    assert out.shape == (6, 7) and out.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_channel_median_equals_numpy_for_any_count(dtype):
    rng = np.random.default_rng(1)
    for count in range(1, SELECTION_MEDIAN_MAX_CHANNELS + 3):  # the min/max path and np.median's beyond it
        stack = rng.integers(0, 60000, size=(count, 9, 11)).astype(dtype)
        if dtype != np.uint16:
            stack[rng.integers(0, count), 3, 4] = np.nan  # NaN propagates as in np.median
        expected = np.median(stack, axis=0)
        out = channel_median(stack)
        assert out.dtype == expected.dtype and out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)
    one = np.ones((1, 2, 2), np.float32)
    channel_median(one)[0, 0] = 5  # a copy, never a view of the stack
    assert one[0, 0, 0] == 1


def test_named_recipes():
    stack = np.stack([np.full((2, 2), v, np.uint16) for v in (1, 5, 3, 9, 7)])
    assert apply_recipe(stack, ChannelRecipe(kind="max", channels=["ch1", "ch4"]), NAMES)[0, 0] == 9
    assert apply_recipe(stack, ChannelRecipe(kind="mean", channels=[0, 1]), NAMES)[0, 0] == 3
    assert apply_recipe(stack, ChannelRecipe(kind="single", channels=["ch5"]), NAMES)[0, 0] == 7
    assert apply_recipe(stack, ChannelRecipe(kind="stack", channels=[4, 0]), NAMES)[:, 0, 0].tolist() == [7, 1]
    with pytest.raises(InputError, match="not found"):
        apply_recipe(stack, ChannelRecipe(kind="single", channels=["Mito"]), NAMES)


def test_resolve_channel_names():
    names = ["DNA", "Tubulin", "Actin"]
    assert resolve_channel(names, "OrigActin") == 2 and resolve_channel(names, "dna") == 0
    assert resolve_channel(names, 1) == 1
    with pytest.raises(InputError, match="out of range"):
        resolve_channel(names, 3)


def test_nuclear_channel_by_name_and_by_look():
    assert find_nuclear_channel(["DNA", "Tubulin", "Actin"]) == 0
    assert find_nuclear_channel(NAMES) == 4  # CPJUMP1: Hoechst in ch5
    assert find_nuclear_channel(NAMES, "ch2") == 1
    assert find_nuclear_channel(NAMES, None) is None


def test_nuclear_channel_guess_on_real_field():
    """The unlabelled CPJUMP1-style field keeps its nuclei in ch4; ch5 there is a cytoplasmic stain."""
    table, _ = build_image_table(ImageSource(images_dir=shared("cpjump1", "fields", "unlabelled-r01c02f01")))
    names = channel_names(table)
    stack = load_stack(table.iloc[0], names)
    assert names[find_nuclear_channel(names, "auto", stack)] == "ch4"
    table, _ = build_image_table(ImageSource(images_dir=shared("cpjump1", "fields", "BR00117006-r01c01f01")))
    names = channel_names(table)
    assert names[find_nuclear_channel(names, "auto", load_stack(table.iloc[0], names))] == "ch5"


def _row(tmp_path, arrays):
    row = {}
    for i, a in enumerate(arrays):
        tifffile.imwrite(tmp_path / f"c{i}.tif", a)
        row[f"FileName_Origc{i}"] = f"c{i}.tif"
        row[f"PathName_Origc{i}"] = str(tmp_path)
    return pd.Series(row)


def test_load_stack_checks_shape_and_dtype(tmp_path):
    ok = _row(tmp_path, [np.zeros((3, 3), np.uint16)] * 2)
    assert load_stack(ok).shape == (2, 3, 3)
    with pytest.raises(InputError, match="differ in shape"):
        load_stack(_row(tmp_path, [np.zeros((3, 3), np.uint16), np.zeros((4, 3), np.uint16)]))
    with pytest.raises(InputError, match="differ in dtype"):
        load_stack(_row(tmp_path, [np.zeros((3, 3), np.uint16), np.zeros((3, 3), np.uint8)]))
    row = _row(tmp_path, [np.zeros((3, 3), np.uint16)] * 2)
    (tmp_path / "c1.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match=r"cannot read TIFF .*c1\.tif"):
        load_stack(row)

"""Crops: square boxes around the bbox, edge padding, channel meaning, the store's order and values."""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.transform import resize

from cellresponse.features.crop_store import CropStore
from cellresponse.features.crops import cell_crops, cut_square, resize_square, square_boxes
from cellresponse.input.io import read_tiff
from cellresponse.input.runfolder import RunFolder
from cellresponse.input.transforms import flow_planes
from cellresponse.segmentation.offline import flows_from_masks


def test_square_box_is_centred_on_the_bbox_and_covers_it():
    boxes = square_boxes(np.array([[10, 20, 14, 40]]))  # 4 high, 20 wide
    top, left, side = boxes[0]
    assert side == 20 and left == 20 and top == 2  # centre row 12 -> rows 2..21
    padded = square_boxes(np.array([[10, 20, 14, 40]]), padding=0.5)
    assert padded[0, 2] == 30


def test_cut_square_pads_with_zeros_outside_the_image():
    planes = np.arange(1, 26, dtype=np.float32).reshape(1, 5, 5)
    cut = cut_square(planes, -2, 3, 4)
    assert cut.shape == (1, 4, 4)
    assert (cut[0, :2] == 0).all() and (cut[0, :, 2:] == 0).all()
    assert cut[0, 2, 0] == planes[0, 0, 3] and cut[0, 3, 1] == planes[0, 1, 4]


def test_resize_square_equals_scikit_image_resize_when_shrinking_and_enlarging():
    """The matrix-product resize is scikit-image's bilinear, anti-aliased resize (what the crops were cut with)."""
    rng = np.random.default_rng(0)
    for side in (7, 31, 95, 97, 250):
        crop = rng.random((8, side, side)).astype(np.float32)
        crop[1] = crop[1] > 0.5  # a mask channel: sharp edges
        expected = resize(crop, (8, 96, 96), order=1, anti_aliasing=side > 96, preserve_range=True)
        got = resize_square(crop, 96)
        assert got.shape == (8, 96, 96) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-6)
    same = rng.random((8, 96, 96)).astype(np.float32)
    assert np.array_equal(resize_square(same, 96), same)


def test_mask_flow_channels_of_a_cell():
    labels = np.zeros((40, 40), np.uint32)
    labels[5:15, 5:15] = 1  # the cell: 10 x 10
    labels[5:15, 15:20] = 2  # a neighbour touching it on the right
    seg = np.full((1, 40, 40), 0.5, np.float32)
    flows = flow_planes(flows_from_masks(labels), probability_is_logit=False)
    crops = cell_crops(labels, [1], np.array([[5, 5, 15, 15]]), seg, flows, store_size=10)
    crop = crops[0].astype(np.float32) / 255
    assert crops.dtype == np.uint8 and crops.shape == (1, 8, 10, 10)
    assert np.allclose(crop[0], 0.5, atol=1 / 255)  # segmentation input
    assert crop[1].min() == 1.0  # this cell fills its own tight square box
    assert crop[2].max() == 0.0  # the neighbour lies outside the box
    assert np.allclose(crop[3], 0.5, atol=1 / 255)  # input x mask
    assert np.allclose(crop[6], 1.0)  # probability: inside a cell
    # flows point inwards: dX > 0 on the left edge, < 0 on the right edge (stored as (v+1)/2)
    assert crop[5][:, 0].mean() > 0.5 > crop[5][:, -1].mean()
    wider = cell_crops(labels, [1], np.array([[5, 5, 15, 15]]), seg, flows, store_size=20, padding=1.0)[0] / 255
    assert wider[2].max() == 1.0 and wider[1].sum() < wider[1].size  # with context: the neighbour shows


def test_store_rows_hold_each_cells_own_crop_on_a_real_field(bbbc021_cropped):
    """Recompute a real field's crops from its mask and check the store holds them at the index rows."""
    run = RunFolder(bbbc021_cropped)
    store = CropStore(run.crops)
    cells = pd.read_parquet(run.cells)
    index = pd.read_parquet(run.crops / "index.parquet")
    assert len(store) == len(cells) and index["cell_id"].tolist() == cells["cell_id"].tolist()
    np.testing.assert_array_equal(store.rows_for(cells), index["row"])  # each cell found by its image and label
    image_id = cells["image_id"].iloc[len(cells) // 2]
    mine = cells[cells["image_id"] == image_id]
    labels = read_tiff(run.mask_path(image_id))
    crops = store.batch(store.rows_for(mine))
    bboxes = mine[["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]].to_numpy()
    boxes = square_boxes(bboxes, store.settings["padding"])
    for crop, label, (top, left, side) in zip(crops, mine["label"], boxes, strict=True):
        truth = (cut_square(labels[None].astype(np.int64), top, left, side)[0] == label).mean()
        # the stored mask channel covers the same share of the square as the cell in the full mask
        assert abs(crop[1].mean() / 255 - truth) < 0.08
        assert crop[1].max() == 255 and crop[2][crop[1] == 255].max() == 0  # own mask never marked as other
    # the crops of one image differ from each other (index alignment, not one crop repeated)
    assert len({c.tobytes() for c in crops}) == len(crops)


def test_a_plates_intensity_scales_do_not_depend_on_the_other_plates_in_the_run():
    """The same plate must be scaled the same in a training run and in a prediction of fewer plates: its crops and
    embeddings (and so the network's calls and the deep profiles) are made with these scales."""
    from cellresponse.config import Config
    from cellresponse.features.crops import plate_scales
    from cellresponse.input.plate import ImageSource, build_image_table, channel_names
    from tests.conftest import shared

    table, _ = build_image_table(ImageSource(load_data=shared("bbbc021-moa", "load_data.csv")))
    rows = table[table["plate"].isin(["Week3_25421", "Week3_25441"])].to_dict("records")  # 52 images each
    names, config = channel_names(table), Config()
    alone = [r for r in rows if r["plate"] == "Week3_25441"]
    together = plate_scales(rows, names, ["DNA"], config, seed=42)["Week3_25441"]
    assert plate_scales(alone, names, ["DNA"], config, seed=42)["Week3_25441"] == together
    assert plate_scales(alone[::-1], names, ["DNA"], config, seed=42)["Week3_25441"] == together  # row order
    assert plate_scales(alone, names, ["DNA"], config, seed=7)["Week3_25441"] != together  # the seed still counts


def test_plates_confounded_with_compounds_are_scaled_across_the_experiment():
    """BBBC021-moa holds one compound a plate (median): a plate's own intensity scale would be its compound's and
    erase what the compound does to brightness, so ``auto`` takes one scale across the experiment, as profile
    normalisation does; a plate of many compounds keeps its own."""
    from cellresponse.config import Config
    from cellresponse.features.crops import intensity_scope, plate_scales
    from cellresponse.input.plate import ImageSource, build_image_table, channel_names
    from tests.conftest import shared

    table, _ = build_image_table(ImageSource(load_data=shared("bbbc021-moa", "load_data.csv")))
    scope, why = intensity_scope(table, "auto", "Metadata_Compound")
    assert scope == "experiment" and "median 1 compound per plate" in why
    assert intensity_scope(table, "plate", "Metadata_Compound")[0] == "plate"  # an explicit setting wins
    assert intensity_scope(table, "auto", None)[0] == "plate"  # nothing to tell the design by
    mixed = table.assign(plate="one plate")  # the same images as one plate of 18 compounds
    assert intensity_scope(mixed, "auto", "Metadata_Compound") == (
        "plate",
        "intensity scaled per plate (median 18 compounds per plate)",
    )
    # controls do not count as a plate's compounds
    treated = (table["Metadata_Compound"] != "DMSO").to_numpy()
    assert intensity_scope(mixed, "auto", "Metadata_Compound", treated)[0] == "plate"

    rows = table[table["plate"].isin(["Week3_25421", "Week3_25441", "Week2_24141"])].to_dict("records")
    names, config = channel_names(table), Config()
    pooled = plate_scales(rows, names, ["DNA"], config, seed=42, scope="experiment")
    own = plate_scales(rows, names, ["DNA"], config, seed=42)
    assert set(pooled) == set(own) == {"Week3_25421", "Week3_25441", "Week2_24141"}
    assert len({str(scale) for scale in pooled.values()}) == 1  # one scale, given to every plate
    assert len({str(scale) for scale in own.values()}) == 3  # each plate's own
    low, high = pooled["Week2_24141"][0]
    assert min(s[0][1] for s in own.values()) <= high <= max(s[0][1] for s in own.values()) and 0 <= low < high

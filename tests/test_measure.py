import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

from cellresponse.measure import FEATURES, measure_cells


def test_perimeter_zero_cells_are_dropped_and_columns_named():
    labels = np.zeros((20, 30), np.uint16)
    labels[2:8, 3:13] = 1  # 6 x 10 box
    labels[15, 25] = 2  # single pixel: perimeter 0
    labels[12:18, 2:5] = 3
    intensity = np.arange(600, dtype=np.float32).reshape(20, 30)
    table, dropped = measure_cells(labels, intensity, "img", "r01c01f01")
    assert dropped == 1 and table["label"].tolist() == [1, 3]
    first = table.iloc[0]
    assert first["area"] == 60 and first["convex_area"] == 60
    assert (first["centroid_y"], first["centroid_x"]) == (4.5, 7.5)
    assert (first["bbox_min_row"], first["bbox_min_col"], first["bbox_max_row"], first["bbox_max_col"]) == (2, 3, 8, 13)
    assert first["min_intensity"] == intensity[2, 3] and first["max_intensity"] == intensity[7, 12]
    assert set(FEATURES) <= set(table.columns)
    assert (table["image_id"] == "img").all() and (table["CoreFileName"] == "r01c01f01").all()


def test_no_cells_gives_an_empty_table_with_the_columns():
    table, dropped = measure_cells(np.zeros((5, 5), np.uint16), np.zeros((5, 5)))
    assert len(table) == 0 and dropped == 0 and "centroid_x" in table.columns


def test_per_channel_intensities():
    labels = np.zeros((6, 6), np.uint16)
    labels[1:4, 1:4] = 1
    dna = np.full((6, 6), 7.0)
    table, _ = measure_cells(labels, np.ones((6, 6)), channels={"DNA": dna})
    assert table.loc[0, "Intensity_MeanIntensity_DNA"] == 7.0


def test_values_equal_regionprops_on_a_real_field(tmp_path):
    from cellresponse.segmentation import Segmenter
    from tests.test_segmentation import _real_field

    seg_input, nuclear, config = _real_field("bbbc021-moa", "load_data.csv", loader="load_data")
    labels = Segmenter(config.segmentation, backend="offline")(seg_input, nuclear).labels
    table, dropped = measure_cells(labels, seg_input, "x", "y")
    bare = pd.DataFrame(
        regionprops_table(
            labels.astype(int), seg_input, properties=("label", "area", "perimeter", "intensity_mean", "solidity")
        )
    )
    bare = bare[bare["perimeter"] > 0].reset_index(drop=True)
    assert len(table) == len(bare) > 50 and dropped == int(labels.max() - len(bare))
    np.testing.assert_allclose(table["mean_intensity"], bare["intensity_mean"])
    np.testing.assert_allclose(table["solidity"], bare["solidity"])

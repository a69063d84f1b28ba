import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table

from cellresponse.measure import FEATURES, measure_cells
from tests.conftest import shared


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


def test_edge_core_spread_and_texture_on_known_cells():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:9, 2:9] = 1  # 7 x 7: outline of 24 px, 5 x 5 inside
    labels[11:18, 11:18] = 2
    image = np.zeros((20, 20))
    image[2:9, 2:9] = 10.0
    image[3:8, 3:8] = 2.0  # cell 1: bright outline (a cortical stain), dim inside
    image[11:18, 11:18] = 5.0  # cell 2: flat
    table, _ = measure_cells(labels, np.ones((20, 20)), channels={"Actin": image})
    one, two = table.iloc[0], table.iloc[1]
    assert one["Intensity_MeanIntensityEdge_Actin"] == 10.0 and one["Intensity_MeanIntensityCore_Actin"] == 2.0
    assert one["Intensity_IntegratedIntensity_Actin"] == 24 * 10.0 + 25 * 2.0
    assert one["Intensity_StdIntensity_Actin"] == pytest.approx(np.std(image[2:9, 2:9]))
    assert two["Intensity_StdIntensity_Actin"] == 0.0
    # Flat inside, edges only at the border: the textured cell has the larger mean gradient.
    assert one["Texture_MeanGradient_Actin"] > two["Texture_MeanGradient_Actin"] > 0


def test_compartments_split_each_cell_at_its_dna_bright_part():
    labels = np.zeros((12, 12), np.uint16)
    labels[1:11, 1:11] = 1  # 100 px
    dna = np.zeros((12, 12))
    dna[4:8, 4:8] = 50.0  # 16 px nucleus
    tubulin = np.full((12, 12), 6.0)
    tubulin[4:8, 4:8] = 1.0  # tubulin lives in the cytoplasm
    channels = {"DNA": dna, "Tubulin": tubulin}
    table, _ = measure_cells(labels, np.ones((12, 12)), channels=channels, nuclear_channel="DNA")
    cell = table.iloc[0]
    assert cell["AreaShape_NuclearFraction"] == pytest.approx(0.16)
    assert cell["Intensity_MeanIntensityNucleus_DNA"] == 50.0 and cell["Intensity_MeanIntensityCytoplasm_DNA"] == 0.0
    assert cell["Intensity_MeanIntensityNucleus_Tubulin"] == 1.0
    assert cell["Intensity_MeanIntensityCytoplasm_Tubulin"] == 6.0
    # Without a nuclear channel there are no compartment columns; an empty image has the same columns.
    plain, _ = measure_cells(labels, np.ones((12, 12)), channels=channels)
    assert not any("Nucleus" in c or "NuclearFraction" in c for c in plain.columns)
    empty, _ = measure_cells(np.zeros((12, 12), np.uint16), np.ones((12, 12)), channels=channels, nuclear_channel="DNA")
    assert list(empty.columns) == list(table.columns)


def test_labels_with_gaps_get_their_own_values():
    labels = np.zeros((10, 10), np.uint16)
    labels[1:4, 1:4] = 2
    labels[6:9, 6:9] = 7  # labels 1 and 3-6 absent
    image = np.zeros((10, 10))
    image[6:9, 6:9] = 3.0
    table, _ = measure_cells(labels, np.ones((10, 10)), channels={"DNA": image}, nuclear_channel="DNA")
    assert table["label"].tolist() == [2, 7]
    assert table["Intensity_IntegratedIntensity_DNA"].tolist() == [0.0, 27.0]


def test_compartments_on_a_real_field_put_dna_in_the_nucleus():
    """On real MCF-7 cells the DNA-bright part is a nucleus: DNA clearly brighter there than around it,
    covering a plausible fraction of the cell (all 440 fields: median 0.28)."""
    from cellresponse.channels import load_stack
    from cellresponse.plate import ImageSource, build_image_table, channel_names
    from cellresponse.segmentation import Segmenter
    from tests.test_segmentation import _real_field

    seg_input, nuclear, config = _real_field("bbbc021-moa", "load_data.csv", loader="load_data")
    labels = Segmenter(config.segmentation, backend="offline")(seg_input, nuclear).labels
    images, _ = build_image_table(ImageSource(load_data=shared("bbbc021-moa", "load_data.csv")))
    names = channel_names(images)
    stack = load_stack(images.iloc[0].to_dict(), names)
    channels = {name: stack[i] for i, name in enumerate(names)}
    table, _ = measure_cells(labels, seg_input, channels=channels, nuclear_channel="DNA")
    assert len(table) > 50
    dna_ratio = table["Intensity_MeanIntensityNucleus_DNA"] / table["Intensity_MeanIntensityCytoplasm_DNA"]
    assert (dna_ratio > 1.2).mean() > 0.95
    assert 0.15 < table["AreaShape_NuclearFraction"].median() < 0.6

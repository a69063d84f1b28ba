import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table

from cellresponse.features.cell_features import (
    FEATURES,
    PROPERTIES,
    RENAMES,
    measure_cells,
    neighbour_counts,
    sobel_magnitude,
)
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
    from cellresponse.segmentation.offline import Segmenter
    from tests.segmentation.test_segmentation import _real_field

    seg_input, nuclear, config = _real_field("bbbc021-moa", "load_data.csv", loader="load_data")
    labels = Segmenter(config.segmentation, backend="offline")(seg_input, nuclear).labels
    table, dropped = measure_cells(labels, seg_input, "x", "y")
    # every property as regionprops_table gives it (the inertia ones are computed for all cells at once)
    bare = pd.DataFrame(regionprops_table(labels.astype(int), seg_input, properties=PROPERTIES)).rename(columns=RENAMES)
    bare = bare[bare["perimeter"] > 0].reset_index(drop=True)
    assert len(table) == len(bare) > 50 and dropped == int(labels.max() - len(bare))
    assert list(table.columns) == ["image_id", "CoreFileName", *bare.columns]
    for column in bare.columns:
        np.testing.assert_allclose(table[column], bare[column], rtol=1e-9, atol=1e-9, err_msg=column)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_sobel_magnitude_equals_scikit_image(dtype):
    from skimage.filters import sobel

    rng = np.random.default_rng(3)
    image = rng.integers(0, 65535, size=(40, 57)).astype(dtype)
    image[10:20, 5:30] += dtype(2000)  # an edge, and the borders reflected as scikit-image reflects them
    expected = sobel(image.astype(np.float64))
    np.testing.assert_allclose(sobel_magnitude(image), expected, rtol=1e-5, atol=1e-6 * expected.max())


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
    assert one["Intensity_MeanIntensityEdge_Actin"] == 10.0 and one["CR_MeanIntensityCore_Actin"] == 2.0
    assert one["Intensity_IntegratedIntensity_Actin"] == 24 * 10.0 + 25 * 2.0
    assert one["Intensity_StdIntensity_Actin"] == pytest.approx(np.std(image[2:9, 2:9]))
    assert two["Intensity_StdIntensity_Actin"] == 0.0
    # Flat inside, edges only at the border: the textured cell has the larger mean gradient.
    assert one["CR_MeanGradient_Actin"] > two["CR_MeanGradient_Actin"] > 0


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
    assert cell["CR_NuclearFraction"] == pytest.approx(0.16)
    assert cell["CR_MeanIntensityNucleus_DNA"] == 50.0 and cell["CR_MeanIntensityCytoplasm_DNA"] == 0.0
    assert cell["CR_MeanIntensityNucleus_Tubulin"] == 1.0
    assert cell["CR_MeanIntensityCytoplasm_Tubulin"] == 6.0
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
    from cellresponse.input.channels import load_stack
    from cellresponse.input.plate import ImageSource, build_image_table, channel_names
    from cellresponse.segmentation.offline import Segmenter
    from tests.segmentation.test_segmentation import _real_field

    seg_input, nuclear, config = _real_field("bbbc021-moa", "load_data.csv", loader="load_data")
    labels = Segmenter(config.segmentation, backend="offline")(seg_input, nuclear).labels
    images, _ = build_image_table(ImageSource(load_data=shared("bbbc021-moa", "load_data.csv")))
    names = channel_names(images)
    stack = load_stack(images.iloc[0].to_dict(), names)
    channels = {name: stack[i] for i, name in enumerate(names)}
    table, _ = measure_cells(labels, seg_input, channels=channels, nuclear_channel="DNA")
    assert len(table) > 50
    dna_ratio = table["CR_MeanIntensityNucleus_DNA"] / table["CR_MeanIntensityCytoplasm_DNA"]
    assert (dna_ratio > 1.2).mean() > 0.95
    assert 0.15 < table["CR_NuclearFraction"].median() < 0.6


def _extended(labels, channels):
    table, _ = measure_cells(labels, np.ones(labels.shape), channels=channels, extended=True)
    return table.set_index("label")


def test_cooccurrence_texture_equals_scikit_image_on_a_cell_that_fills_a_rectangle():
    """Pairs stay inside the cell and the rectangle is the whole cell, so each direction's matrix is
    scikit-image's; the four directions are averaged before the Haralick features, as the module says. The
    diagonals go 3 px along each axis (CellProfiler's and mahotas' offsets), which scikit-image reaches at a
    distance of 3√2 (it rounds 3·sin 45° to 2)."""
    from skimage.feature import graycomatrix, graycoprops

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 8, size=(14, 17))
    grey[0, 0], grey[0, 1] = 0, 7  # the cell's range spans the 8 levels, so its own levels are these values
    labels = np.zeros((20, 25), np.uint16)
    labels[3:17, 4:21] = 1
    image = np.zeros((20, 25))
    image[3:17, 4:21] = grey
    cell = _extended(labels, {"DNA": image}).loc[1]
    axes = graycomatrix(grey.astype(np.uint8), [3], [0, np.pi / 2], levels=8, symmetric=True, normed=True)
    diagonal = [np.pi / 4, 3 * np.pi / 4]
    diagonals = graycomatrix(grey.astype(np.uint8), [3 * np.sqrt(2)], diagonal, levels=8, symmetric=True, normed=True)
    averaged = np.concatenate([axes, diagonals], axis=3).mean(axis=3, keepdims=True)
    i, j = np.indices((8, 8))
    homogeneity = (averaged[:, :, 0, 0] / (1.0 + np.abs(i - j))).sum()  # MATLAB's (scikit-image squares i - j)
    assert cell["CR_Texture_Homogeneity_DNA_3"] == pytest.approx(homogeneity)
    for measure, skimage_name in (
        ("Contrast", "contrast"),
        ("AngularSecondMoment", "ASM"),
        ("Correlation", "correlation"),
    ):
        assert cell[f"CR_Texture_{measure}_DNA_3"] == pytest.approx(graycoprops(averaged, skimage_name)[0, 0])
    entropy_bits = graycoprops(averaged, "entropy")[0, 0] / np.log(2)
    assert cell["CR_Texture_Entropy_DNA_3"] == pytest.approx(entropy_bits)


def test_texture_ignores_brightness_and_tells_stripes_from_a_smooth_cell():
    labels = np.zeros((20, 40), np.uint16)
    labels[2:18, 2:18] = 1
    labels[2:18, 22:38] = 2
    image = np.zeros((20, 40))
    image[2:18, 2:18] = np.tile(np.repeat([0.0, 9.0], 3), 3)[:16]  # stripes 3 px wide: every 3-px pair differs
    image[2:18, 22:38] = np.linspace(0.0, 9.0, 16)  # a smooth ramp
    table = _extended(labels, {"Actin": image})
    brighter = _extended(labels, {"Actin": 5.0 * image + 100.0})
    assert table.loc[1, "CR_Texture_Contrast_Actin_3"] > 5 * table.loc[2, "CR_Texture_Contrast_Actin_3"]
    assert table.loc[1, "CR_Texture_Homogeneity_Actin_3"] < table.loc[2, "CR_Texture_Homogeneity_Actin_3"]
    texture = [c for c in table.columns if c.startswith("CR_Texture_") and c.endswith("_3")]
    pd.testing.assert_frame_equal(table[texture], brighter[texture])


def test_radial_distribution_puts_a_centred_stain_inside_and_a_cortical_stain_at_the_outline():
    labels = np.zeros((13, 26), np.uint16)
    labels[1:12, 1:12] = 1  # 11 x 11
    labels[1:12, 14:25] = 2
    centre, cortex = np.zeros((13, 26)), np.zeros((13, 26))
    centre[5:8, 5:8] = 1.0  # cell 1's middle
    centre[5:8, 18:21] = 1.0
    cortex[labels > 0] = 1.0
    cortex[2:11, 2:11] = 0.0  # outline of cell 1 only
    cortex[2:11, 15:24] = 0.0
    table = _extended(labels, {"DNA": centre, "Actin": cortex})
    rings = [f"CR_RingFraction_DNA_{k}of4" for k in range(1, 5)]
    np.testing.assert_allclose(table[rings].sum(axis=1), 1.0)
    assert table.loc[1, "CR_RingFraction_DNA_1of4"] > 0.5
    assert table.loc[1, "CR_RingFraction_DNA_4of4"] == 0.0
    assert table.loc[1, "CR_RingFraction_Actin_4of4"] == 1.0


def test_channel_correlation_and_neighbour_counts():
    labels = np.zeros((12, 30), np.uint16)
    labels[1:6, 1:6] = 1
    labels[1:6, 7:12] = 2  # 2 px from cell 1 (a gap of one column): neighbours
    labels[1:6, 20:25] = 3  # far from both
    ramp = np.tile(np.arange(30, dtype=float), (12, 1))
    channels = {"DNA": ramp, "Tubulin": 2.0 * ramp + 1.0, "Actin": -ramp, "Flat": np.ones((12, 30))}
    table = _extended(labels, channels)
    assert table["Correlation_Correlation_DNA_Tubulin"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert table["Correlation_Correlation_DNA_Actin"].tolist() == pytest.approx([-1.0, -1.0, -1.0])
    assert table["Correlation_Correlation_DNA_Flat"].tolist() == [0.0, 0.0, 0.0]
    assert table["CR_NumberOfNeighbors_2"].tolist() == [1.0, 1.0, 0.0]
    # The empty table has the same columns, and the extended measurement needs no channel for neighbours.
    empty, _ = measure_cells(np.zeros((12, 30), np.uint16), np.ones((12, 30)), channels=channels, extended=True)
    full, _ = measure_cells(labels, np.ones((12, 30)), channels=channels, extended=True)
    assert list(empty.columns) == list(full.columns)
    alone, _ = measure_cells(labels, np.ones((12, 30)), extended=True)
    assert alone["CR_NumberOfNeighbors_2"].tolist() == [1.0, 1.0, 0.0]


def test_neighbour_counts_equal_a_dilation_of_each_cell_on_a_real_field():
    from scipy import ndimage

    from cellresponse.segmentation.offline import Segmenter
    from tests.segmentation.test_segmentation import _real_field

    seg_input, nuclear, config = _real_field("bbbc021-moa", "load_data.csv", loader="load_data")
    labels = Segmenter(config.segmentation, backend="offline")(seg_input, nuclear).labels.astype(np.int32)
    labels[:, :3] = labels[:, 3:4]  # cells cut by the field's edge, as outlines that meet the border
    counts = neighbour_counts(labels, 2)
    square = np.ones((5, 5), bool)
    for cell in range(1, int(labels.max()) + 1):
        near = set(np.unique(labels[ndimage.binary_dilation(labels == cell, square)])) - {0, cell}
        assert counts[cell] == len(near), cell
    assert counts[1:].mean() > 1  # a crowded field: the check compares real contacts


def test_extended_measures_on_a_real_field_are_finite_and_plausible():
    """Real MCF-7 cells: every extended value finite, each cell's rings sum to one, DNA sits in the inner rings more
    than actin (a cortical stain), DNA and tubulin stains correlate less than a channel with itself would (< 1),
    and crowded cells have neighbours."""
    from cellresponse.input.channels import load_stack
    from cellresponse.input.plate import ImageSource, build_image_table, channel_names
    from cellresponse.segmentation.offline import Segmenter
    from tests.segmentation.test_segmentation import _real_field

    seg_input, nuclear, config = _real_field("bbbc021-moa", "load_data.csv", loader="load_data")
    labels = Segmenter(config.segmentation, backend="offline")(seg_input, nuclear).labels
    images, _ = build_image_table(ImageSource(load_data=shared("bbbc021-moa", "load_data.csv")))
    names = channel_names(images)
    stack = load_stack(images.iloc[0].to_dict(), names)
    table, _ = measure_cells(labels, seg_input, channels={n: stack[i] for i, n in enumerate(names)}, extended=True)
    extended = [
        c for c in table.columns if c.startswith(("CR_Texture_", "CR_RingFraction_", "Correlation_", "CR_NumberOf"))
    ]
    assert len(table) > 50 and len(extended) == 1 + 3 * (5 + 4) + 3
    assert np.isfinite(table[extended].to_numpy()).all()
    for name in names:
        rings = table[[f"CR_RingFraction_{name}_{k}of4" for k in range(1, 5)]].sum(axis=1)
        np.testing.assert_allclose(rings, 1.0)
    inner = "CR_RingFraction_{}_1of4"
    assert table[inner.format("DNA")].median() > table[inner.format("Actin")].median()
    assert table["Correlation_Correlation_DNA_Tubulin"].between(-1, 1).all()
    assert table["CR_NumberOfNeighbors_2"].median() >= 1

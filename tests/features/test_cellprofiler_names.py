"""Every column named after a CellProfiler measurement holds CellProfiler's value (cp_measure, CellProfiler's own
code, on the same masks and images of real fields), and measurement.set: cellprofiler adds CellProfiler's set."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cellresponse.config import Config
from cellresponse.features.cell_features import measure_cells
from cellresponse.features.cellprofiler_set import cellprofiler_measurements
from cellresponse.input.channels import apply_recipe, load_stack
from cellresponse.input.illumination import unit_scale
from cellresponse.input.plate import ImageSource, build_image_table, channel_names
from cellresponse.segmentation.offline import Segmenter
from tests.conftest import run_cli, shared

CELLPROFILER_MODULES = ("Intensity_", "Texture_", "RadialDistribution_", "AreaShape_", "Granularity_", "Correlation_",
                        "Neighbors_", "Location_")  # fmt: skip


@pytest.fixture(scope="module")
def real_fields():
    """Three BBBC021-moa fields (8-bit, three channels) segmented offline: (labels, channels) each."""
    table, _ = build_image_table(ImageSource(load_data=shared("bbbc021-moa", "load_data.csv")))
    names, config = channel_names(table), Config()
    fields = []
    for index in (0, 150, 300):
        stack = load_stack(table.iloc[index].to_dict(), names)
        seg_input = apply_recipe(stack, config.segmentation.input, names)
        labels = Segmenter(config.segmentation, backend="offline")(seg_input, stack[names.index("DNA")]).labels
        fields.append((labels, seg_input, {n: stack[i] for i, n in enumerate(names)}))
    return fields


def cellprofiler_reference(labels: np.ndarray, channels: dict[str, np.ndarray]) -> pd.DataFrame:
    """cp_measure's intensity and colocalisation for every channel and pair, and the cellprofiler set."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    labels = labels.astype(np.int32)
    scaled = {n: unit_scale(image).astype(np.float64) for n, image in channels.items()}
    columns = {}
    for name, image in scaled.items():
        for key, values in get_core_measurements()["intensity"](labels, image).items():
            columns[f"{key}_{name}"] = np.asarray(values)
    names = list(scaled)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            pearson = get_correlation_measurements()["pearson"](scaled[first], scaled[second], labels)
            columns[f"Correlation_Correlation_{first}_{second}"] = np.asarray(pearson["Correlation_Pearson"])
    table = pd.DataFrame({"label": np.unique(labels[labels > 0]), **columns})
    return table.merge(cellprofiler_measurements(labels, channels), on="label", suffixes=("", "_set"))


def test_every_cellprofiler_name_holds_cellprofilers_value(real_fields):
    ours, reference = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cp_measure divides by empty rings of tiny cells
        for labels, seg_input, channels in real_fields:
            table, _ = measure_cells(labels, seg_input, channels=channels, nuclear_channel="DNA", extended=True)
            ours.append(table)
            reference.append(cellprofiler_reference(labels, channels).set_index("label").loc[table["label"]])
    ours_table, reference_table = pd.concat(ours), pd.concat(reference)
    named = [c for c in ours_table.columns if c.startswith(CELLPROFILER_MODULES)]
    assert len(ours_table) > 300 and len(named) >= 6 * 3 + 3
    for column in named:
        assert column in reference_table.columns, f"{column} claims a CellProfiler name cp_measure does not make"
        mine, theirs = ours_table[column].to_numpy(float), reference_table[column].to_numpy(float)
        close = np.abs(mine - theirs) <= 1e-4 * np.maximum(np.abs(theirs), 1e-12)
        assert close.mean() >= 0.99, f"{column}: {close.mean():.3f} of cells within 1e-4 of CellProfiler's"


def test_cellprofiler_set_is_named_as_cellprofiler_names_it(real_fields):
    labels, _, channels = real_fields[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = cellprofiler_measurements(labels, channels)
    expected = ["AreaShape_Area", "AreaShape_Zernike_0_0", "AreaShape_MaxFeretDiameter", "Granularity_1_Actin",
                "Texture_Contrast_DNA_3_00_256", "RadialDistribution_FracAtD_Tubulin_1of4",
                "RadialDistribution_ZernikeMagnitude_DNA_0_0", "Intensity_MedianIntensity_DNA",
                "Correlation_Manders_DNA_Actin", "Correlation_Manders_Actin_DNA",
                "Correlation_RWC_Tubulin_Actin"]  # fmt: skip
    for column in expected:
        assert column in table.columns
    assert not [c for c in table.columns if "Location_" in c or "Center_" in c or "BoundingBox" in c]
    assert len(table) == len(np.unique(labels[labels > 0])) and table.shape[1] > 400


def test_measure_with_the_cellprofiler_set(tiny_plates, tmp_path):
    out = tmp_path / "run"
    run_cli("run", "--load-data", tiny_plates / "load_data.csv", "--out", out, "--until", "measure",
            "--workers", "0", "--no-progress", "--set", "measurement.set=cellprofiler")  # fmt: skip
    cells = pd.read_parquet(out / "cells.parquet")
    assert {"AreaShape_FormFactor", "Granularity_1_DNA", "Intensity_MeanIntensity_DNA"} <= set(cells.columns)
    assert cells["AreaShape_Area"].notna().all()

"""A per-image features table a user brings (CellProfiler's Image.csv joined to metadata) for evaluate --features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellresponse.errors import InputError
from cellresponse.input.feature_tables import read_feature_table


def test_a_features_table_reads_as_images_and_numeric_features(tmp_path, caplog):
    table = pd.DataFrame(
        {
            "Metadata_Plate": ["P1", "P1", "P2", "P2"],
            "Metadata_Well": ["A01", "A02", "A01", "A02"],
            "Metadata_pert_iname": ["DMSO", "taxol", "DMSO", None],  # an unlabelled row is left out
            "Metadata_Dose": [0.0, 1.0, 0.0, 1.0],  # metadata, not a feature, though numeric
            "ImageNumber": [1, 2, 3, 4],
            "Image_Count_Cells": [100, 80, 95, 70],  # CellProfiler's cell count stays a feature
            "Intensity_MeanIntensity_DNA": [0.2, np.inf, 0.4, 0.5],
        }
    )
    table.to_csv(tmp_path / "Image.csv", index=False)
    images, features = read_feature_table(tmp_path / "Image.csv", "Metadata_pert_iname")
    assert list(images["image_id"]) == ["img0", "img1", "img2"] and list(images["plate"]) == ["P1", "P1", "P2"]
    assert list(images["Metadata_pert_iname"]) == ["DMSO", "taxol", "DMSO"] and "Metadata_Dose" in images
    assert list(features.columns) == ["Image_Count_Cells", "Intensity_MeanIntensity_DNA"]
    assert list(features.index) == list(images["image_id"])
    assert features.loc["img1", "Intensity_MeanIntensity_DNA"] == pytest.approx(0.3)  # the column's mean
    assert "1 NaN/infinite values" in caplog.text


def test_a_features_table_without_wells_or_features_is_one_clear_error(tmp_path):
    pd.DataFrame({"Metadata_Plate": ["P1"], "label": ["a"], "x": [1.0]}).to_csv(tmp_path / "no_well.csv", index=False)
    with pytest.raises(InputError, match="needs plate and well columns"):
        read_feature_table(tmp_path / "no_well.csv", "label")
    with pytest.raises(InputError, match="label column 'Metadata_MoA' not found"):
        read_feature_table(tmp_path / "no_well.csv", "Metadata_MoA")
    only_metadata = pd.DataFrame({"Metadata_Plate": ["P1"], "Metadata_Well": ["A01"], "label": ["a"]})
    only_metadata.to_csv(tmp_path / "no_features.csv", index=False)
    with pytest.raises(InputError, match="no numeric feature columns"):
        read_feature_table(tmp_path / "no_features.csv", "label")

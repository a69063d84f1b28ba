import numpy as np
import pandas as pd
import pytest
import tifffile

from cellresponse.errors import InputError
from cellresponse.input.plate import (
    ImageSource,
    build_image_table,
    channel_names,
    core_file_name,
    parse_phenix_name,
    parse_well,
    read_table,
    well_name,
)
from tests.conftest import run_cli, shared


def test_parse_phenix_name():
    p = parse_phenix_name("r03c12f09p01-ch5sk1fk1fl1.tiff")
    assert (p.row, p.col, p.field, p.plane, p.channel) == (3, 12, 9, 1, 5)
    assert p.well == "C12" and p.core == "r03c12f09"
    assert parse_phenix_name("/some/dir/r01c01f01p02-ch10sk1fk1fl1.tif").channel == 10
    assert parse_phenix_name("r01c01f01_median_aggregated.tiff") is None
    assert parse_phenix_name("notes.txt") is None


@pytest.mark.parametrize(("row", "col", "name"), [(1, 1, "A01"), (16, 24, "P24"), (26, 1, "Z01"), (27, 3, "AA03")])
def test_well_names_round_trip(row, col, name):
    assert well_name(row, col) == name
    assert parse_well(name) == (row, col)


def test_parse_well_lenient_and_strict():
    assert parse_well("b2") == (2, 2)
    with pytest.raises(InputError, match="cannot read well name"):
        parse_well("12")


def test_core_file_name():
    assert core_file_name(1, 2, 3) == "r01c02f03"


def _touch_phenix(folder, cores, channels=(1, 2, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    pixel = np.zeros((4, 4), np.uint16)
    for core in cores:
        for c in channels:
            tifffile.imwrite(folder / f"{core}p01-ch{c}sk1fk1fl1.tiff", pixel)


def test_study_metadata_full_plate_join(tmp_path):
    """The study's own 2,867-row metadata joins a plate folder with every one of its fields."""
    meta_path = shared("cpjump1", "metadata", "metadata_BR00116991_filtered.csv")
    meta = pd.read_csv(meta_path)
    cores = meta["FileName_OrigRNA"].str[:9]
    folder = tmp_path / "BR00116991__2020-11-05T19_51_35-Measurement1" / "Images"
    _touch_phenix(folder, cores, channels=(1, 2))
    extra = ["r16c24f09"]  # a field with no metadata row: reported and dropped
    _touch_phenix(folder, extra, channels=(1, 2))
    table, report = build_image_table(ImageSource(images_dir=folder, metadata=[meta_path]))
    assert len(table) == 2867
    assert table["Metadata_pert_iname"].nunique() == 250
    assert (table["Metadata_pert_iname"] == "DMSO").sum() == 509
    assert table["plate"].unique().tolist() == ["BR00116991"]  # plate from the Phenix export folder name
    assert report.how == "plate+CoreFileName"
    assert report.images_without_metadata == 1 and report.examples_images_only == ["BR00116991_r16c24f09"]
    assert report.metadata_without_images == 0
    assert channel_names(table) == ["ch1", "ch2"]


def test_cpjump1_real_fields_join_study_metadata():
    meta = shared("cpjump1", "metadata", "metadata_BR00116991_filtered.csv")
    table, report = build_image_table(
        ImageSource(images_dir=shared("cpjump1", "fields", "BR00117006-r01c01f01"), metadata=[meta])
    )
    assert len(table) == 1 and table.loc[0, "CoreFileName"] == "r01c01f01"
    assert table.loc[0, "Metadata_pert_iname"] == "gabapentin-enacarbil"
    assert channel_names(table) == ["ch2", "ch3", "ch5"]
    assert report.metadata_without_images == 2866
    assert "2866 metadata rows without images dropped" in report.summary()


def test_jump_platemap_join():
    """Well -> broad_sample -> pert_iname/target through the real JUMP-Target-1 tables."""
    folder = shared("cpjump1", "fields", "BR00143976-r03c03f03")
    md = shared("cpjump1", "metadata")
    table, report = build_image_table(
        ImageSource(
            images_dir=folder,
            metadata=[md / "JUMP-Target-1_compound_platemap.tsv", md / "JUMP-Target-1_compound_metadata.tsv"],
        )
    )
    platemap = read_table(md / "JUMP-Target-1_compound_platemap.tsv")
    compounds = read_table(md / "JUMP-Target-1_compound_metadata.tsv")
    sample = platemap.set_index("well_position").loc["C03", "broad_sample"]
    expected = "DMSO" if pd.isna(sample) else compounds.set_index("broad_sample").loc[sample, "pert_iname"]
    assert table.loc[0, "well"] == "C03"
    assert table.loc[0, "Metadata_pert_iname"] == expected
    assert report.metadata_without_images == len(platemap) - 1


def test_bbbc021_load_data():
    table, report = build_image_table(ImageSource(load_data=shared("bbbc021", "load_data.csv")))
    assert report is None and len(table) == 33
    assert channel_names(table) == ["DNA", "Tubulin", "Actin"]
    assert set(table["Metadata_Compound"]) == {"DMSO", "cyclohexamide"}
    assert table["plate"].nunique() == 4 and table["image_id"].is_unique
    first = table.iloc[0]
    assert (pd.io.common.Path(first["PathName_OrigDNA"]) / first["FileName_OrigDNA"]).is_file()
    moa, _ = build_image_table(ImageSource(load_data=shared("bbbc021-moa", "load_data.csv")))
    assert len(moa) == 440 and moa["Metadata_MoA"].nunique() == 6 and moa["Metadata_Compound"].nunique() == 18


def test_missing_channel_file_names_the_file(tmp_path):
    folder = tmp_path / "P1"
    _touch_phenix(folder, ["r01c01f01", "r01c01f02"])
    (folder / "r01c01f02p01-ch2sk1fk1fl1.tiff").unlink()
    with pytest.raises(InputError, match=r"missing channel file: .*r01c01f02p01-ch2sk1fk1fl1\.tiff"):
        build_image_table(ImageSource(images_dir=folder))


def test_load_data_with_missing_file(tmp_path):
    _touch_phenix(tmp_path, ["r01c01f01"], channels=(1,))
    csv = tmp_path / "load_data.csv"
    pd.DataFrame(
        {
            "Metadata_Plate": ["P", "P"],
            "Metadata_Well": ["A01", "A01"],
            "Metadata_Site": [1, 2],
            "FileName_OrigDNA": ["r01c01f01p01-ch1sk1fk1fl1.tiff", "gone.tiff"],
            "PathName_OrigDNA": [".", "."],
        }
    ).to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"missing channel file: .*gone\.tiff"):
        build_image_table(ImageSource(load_data=csv))


def test_images_cli_writes_table_and_config(tiny_plates, tmp_path):
    run = tmp_path / "run"
    run_cli(
        "images", "--images", tiny_plates, "--metadata", tiny_plates / "metadata.csv", "--preset", "cpu", "--out", run
    )
    table = pd.read_parquet(run / "images.parquet")
    truth = pd.read_csv(tiny_plates / "truth.csv")
    assert len(table) == len(truth)
    assert table["Metadata_pert_iname"].nunique() == 4
    assert (run / "config.yaml").is_file() and (run / "logs" / "images.json").is_file()
    bad = run_cli(
        "images",
        "--images",
        tiny_plates,
        "--metadata",
        tiny_plates / "metadata.csv",
        "--label",
        "Metadata_nope",
        "--out",
        tmp_path / "r2",
        check=False,
    )
    assert bad.returncode == 0  # a missing label is a warning here (prediction needs none)
    assert "Metadata_nope is not in the image table" in bad.stderr

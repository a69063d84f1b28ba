import hashlib

import numpy as np
import pandas as pd
import tifffile

from cellresponse.input.plate import ImageSource, build_image_table
from cellresponse.input.synth import SynthSpec, make_plates


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.tiff")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    spec = SynthSpec(
        n_compounds=2,
        wells_per_compound=1,
        control_wells=1,
        sites=1,
        plates=1,
        size=64,
        seed=7,
        cells_per_image=4,
        cell_radius=8,
    )
    make_plates(tmp_path / "a", spec)
    make_plates(tmp_path / "b", spec)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    make_plates(tmp_path / "c", SynthSpec(**{**spec.__dict__, "seed": 8}))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_round_trip_through_all_metadata_forms(tiny_plates):
    truth = pd.read_csv(tiny_plates / "truth.csv")
    by_core, _ = build_image_table(ImageSource(images_dir=tiny_plates, metadata=(tiny_plates / "metadata.csv",)))
    by_map, _ = build_image_table(
        ImageSource(
            images_dir=tiny_plates, metadata=[tiny_plates / "platemap.tsv", tiny_plates / "compound_metadata.tsv"]
        )
    )
    by_load, _ = build_image_table(ImageSource(load_data=tiny_plates / "load_data.csv"))
    for table in (by_core, by_map, by_load):
        assert len(table) == len(truth)
        merged = table.merge(truth, on=["plate", "well", "site"])
        assert (merged["Metadata_pert_iname"] == merged["pert_iname"]).all()
    assert by_core["plate"].nunique() == 2


def test_effect_changes_the_cells(tmp_path):
    """A strong compound differs from DMSO; a null compound has the same phenotype as DMSO."""
    spec = SynthSpec(
        n_compounds=2,
        wells_per_compound=1,
        control_wells=1,
        sites=4,
        plates=1,
        size=128,
        effect=2.5,
        null_compounds=1,
        seed=1,
        cells_per_image=10,
        cell_radius=10,
    )
    make_plates(tmp_path, spec)
    table, _ = build_image_table(ImageSource(load_data=tmp_path / "load_data.csv"))

    def foreground(label):
        rows = table[table["Metadata_pert_iname"] == label]
        values = [tifffile.imread(f"{r.PathName_OrigMito}/{r.FileName_OrigMito}") for r in rows.itertuples()]
        return np.mean([(v > 600).mean() for v in values])

    dmso, strong, null = foreground("DMSO"), foreground("compound-00"), foreground("compound-01")
    assert abs(strong - dmso) > 2 * abs(null - dmso)

"""Controls by JUMP's names (pert_type / control_type) and by input.control_label."""

from __future__ import annotations

import pandas as pd

from cellresponse.config import load_config
from cellresponse.input.controls import CONTROL_KIND, control_kinds, where_controls_were_sought
from cellresponse.input.plate import platemap_to_metadata, read_table
from cellresponse.profiling.profile_benchmarks import without_controls
from cellresponse.profiling.references import negative_controls, positive_controls
from tests.conftest import shared


def test_control_type_pert_type_and_the_label_override():
    table = pd.DataFrame(
        {
            "image_id": list("abcdefg"),
            "Metadata_pert_type": ["trt", "control", "control", "control", "trt", None, "trt"],
            "Metadata_control_type": [None, "negcon", "poscon_cp", None, None, None, "POSCON_orf"],
            "Metadata_pert_iname": ["x", "DMSO", "y", "DMSO", "z", "DMSO", "w"],
        }
    )
    kinds = control_kinds(table, ["Metadata_pert_iname"], "DMSO").tolist()
    # a control without a control type (a solvent well) is negative; a DMSO label is negative whatever the columns say
    assert kinds == ["trt", "negcon", "poscon", "negcon", "trt", "negcon", "poscon"]
    assert control_kinds(table, ["Metadata_pert_iname"], None).tolist()[5] == "trt"
    assert negative_controls(table, ["Metadata_pert_iname"], "DMSO").tolist() == [
        False, True, False, True, False, True, False,
    ]  # fmt: skip
    assert positive_controls(table, ["Metadata_pert_iname"], "DMSO").tolist() == ["c", "g"]


def test_positive_controls_are_not_benchmark_queries_unless_asked():
    table = pd.DataFrame({CONTROL_KIND: ["trt", "negcon", "poscon"], "Metadata_pert_iname": ["x", "DMSO", "y"]})
    label = load_config().input.label
    assert without_controls(table, label, "DMSO")["Metadata_pert_iname"].tolist() == ["x"]
    assert without_controls(table, label, "DMSO", "include")["Metadata_pert_iname"].tolist() == ["x", "y"]
    # a table without the control-kind column: the label column equal to the control label marks the controls
    plain = pd.DataFrame({"Metadata_pert_iname": ["x", "DMSO", "y"]})
    assert without_controls(plain, "Metadata_pert_iname", "DMSO")["Metadata_pert_iname"].tolist() == ["x", "y"]


def test_jump_platemap_carries_control_types():
    md = shared("cpjump1", "metadata")
    platemap = read_table(md / "JUMP-Target-1_compound_platemap.tsv")
    joined = platemap_to_metadata(platemap, [read_table(md / "JUMP-Target-1_compound_metadata.tsv")])
    kinds = control_kinds(joined, ["Metadata_pert_iname"], None)
    solvent = platemap["broad_sample"].isna().to_numpy()
    assert (kinds[solvent] == "negcon").all() and solvent.sum() > 0  # the DMSO wells, by control_type alone
    assert (kinds == "poscon").sum() > 0 and (kinds == "trt").sum() > 200
    assert set(joined.loc[kinds.to_numpy() == "poscon", "Metadata_control_type"]) <= {
        "poscon_cp", "poscon_diverse", "poscon_orf",
    }  # fmt: skip


def test_where_the_controls_were_sought_names_the_columns_there_were_or_that_there_were_none():
    named = pd.DataFrame({"Metadata_Compound": ["a", "b"]})
    assert where_controls_were_sought(named, ["Metadata_Compound", None], "DMSO") == (
        "looked for Metadata_Compound = DMSO, input.control_label"
    )
    typed = named.assign(Metadata_pert_type=["trt", "trt"])
    assert where_controls_were_sought(typed, ["Metadata_Compound"], "DMSO") == (
        "looked for Metadata_pert_type and Metadata_Compound = DMSO, input.control_label"
    )
    # a plate whose wells carry no names: the label column is not there to look in
    blind = pd.DataFrame({"Metadata_Well": ["A01"]})
    assert where_controls_were_sought(blind, ["Metadata_Compound", "Metadata_Compound"], "DMSO") == (
        "these images have no Metadata_Compound column to find DMSO (input.control_label) in"
    )

"""What a new compound does: reference profiles, leave-one-compound-out calibration, nearest references, mechanism
calls, novelty and phenotypic activity (references.py, activity.py, treatment_calls.py)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cellresponse.config import ReferencesConfig
from cellresponse.errors import InputError
from cellresponse.profiling.calibration import leave_one_compound_out
from cellresponse.profiling.matching import match
from cellresponse.profiling.queries import normalize_query
from cellresponse.profiling.reference_building import build_references
from cellresponse.profiling.references import (
    image_meta,
    level_table,
    load_references,
    negative_controls,
    profile_fields,
    save_references,
)
from cellresponse.profiling.treatment_calls import answer
from cellresponse.profiling.well_profiles import select_features

# the references' settings with novelty quantile 0.05, the default when these tests were written
QUANTILE_005 = ReferencesConfig(novelty_quantile=0.05)

FEATURES = 40
MOAS = ("actin", "tubulin", "dna")


def phenotypes(seed: int = 0) -> dict[str, np.ndarray]:
    """A direction in profile space per mechanism and a smaller one per compound."""
    rng = np.random.default_rng(seed)
    out = {moa: rng.normal(0, 1, FEATURES) * 3 for moa in MOAS}
    for moa in MOAS:
        for j in range(3):
            out[f"{moa}-{j}"] = out[moa] + rng.normal(0, 1, FEATURES)
    out["unseen"] = rng.normal(0, 1, FEATURES) * 3  # a mechanism no reference has
    return out


def plate(rows: list[tuple[str, str, str | None, int]], seed: int, plate_name: str = "P1", fields: int = 3):
    """Per-field profiles and an image table: ``rows`` are (compound, concentration, moa, wells); DMSO has no
    phenotype. Returns (blocks, images)."""
    rng = np.random.default_rng(seed)
    effects = phenotypes()
    profiles, records, well = [], [], 0
    for compound, concentration, moa, wells in rows:
        for _ in range(wells):
            well += 1
            well_effect = rng.normal(0, 0.3, FEATURES)
            for site in range(fields):
                effect = np.zeros(FEATURES) if compound == "DMSO" else effects[compound] * float(concentration)
                profiles.append(effect + well_effect + rng.normal(0, 0.5, FEATURES))
                records.append(
                    {
                        "image_id": f"{plate_name}-w{well:03d}-s{site}",
                        "plate": plate_name,
                        "well": f"w{well:03d}",
                        "Metadata_Compound": compound,
                        "Metadata_Concentration": concentration,
                        "Metadata_MoA": moa if moa else "DMSO",
                    }
                )
    images = pd.DataFrame(records)
    table = pd.DataFrame(profiles, columns=[f"f{i:02d}__mean" for i in range(FEATURES)], index=images["image_id"])
    return {"measured": table}, images


def reference_plate(seed: int = 1):
    rows = [("DMSO", "0", None, 4)]
    rows += [(f"{moa}-{j}", c, moa, 2) for moa in MOAS for j in range(3) for c in ("1", "2")]
    return plate(rows, seed)


def references_of(blocks, images, quantile: float = 0.05):
    meta = image_meta(images, ["Metadata_Compound", "Metadata_Concentration"], "Metadata_Compound", "Metadata_MoA")
    controls = negative_controls(images, ["Metadata_Compound"], "DMSO")
    columns = {"treatment": ["Metadata_Compound", "Metadata_Concentration"], "moa": "Metadata_MoA"}
    return build_references(blocks, meta, controls, "measured", columns, ReferencesConfig(novelty_quantile=quantile))


def query_answer(references, blocks, images):
    meta = image_meta(images, ["Metadata_Compound", "Metadata_Concentration"], "Metadata_Compound", "Metadata_MoA")
    controls = negative_controls(images, ["Metadata_Compound"], "DMSO")
    raw, _ = profile_fields(blocks, meta)
    fields = normalize_query(raw, controls, references, "controls" if controls is not None else "references")
    return answer(fields, raw, references, controls, neighbours=5, fdr=0.05)


@pytest.fixture(scope="module")
def references():
    return references_of(*reference_plate())


def test_references_leave_out_the_controls_and_calibrate_every_level(references):
    fields = references.fields
    assert "DMSO" not in set(fields["compound"]) and fields["treatment"].nunique() == 18
    assert references.normalization.samples == "negative controls"
    for level in ("field", "well", "treatment"):
        c = references.calibration[level]
        assert c["accuracy"] > 0.9 and 0 < c["temperature"] < 1 and -1 < c["novelty_threshold"] < 1, c


def test_leave_one_compound_out_never_matches_a_compound_to_itself(references):
    """A reference unit's own compound is barred: its best match is another compound's treatment, never its own
    (which would sit near similarity 1 and make every call look right)."""
    loco = leave_one_compound_out(references, "treatment")
    treatments = level_table(references.fields, references.features, "treatment")
    called = match(treatments, references, "treatment", 5, exclude=treatments["compound"])
    assert (called["nearest_1"].str.split(" @ ").str[0] != treatments["compound"]).all()
    np.testing.assert_allclose(called["best_similarity"], loco["best_similarity"])
    assert (loco["best_similarity"] < 0.999).all()


def test_calibration_never_reads_the_query_plate(references, tmp_path):
    """The calibration is fixed when the references are built: answering a query plate leaves it as it was, and
    two very different query plates are answered with the same temperature and threshold."""
    before = {level: dict(c) for level, c in references.calibration.items()}
    query_answer(references, *plate([("DMSO", "0", None, 2), ("unseen", "1", "new", 2)], seed=5))
    query_answer(references, *plate([("actin-0", "1", "actin", 3)], seed=6))
    assert references.calibration == before


def test_a_treatment_that_copies_a_reference_phenotype_is_matched_to_it(references):
    blocks, images = plate([("DMSO", "0", None, 4), ("tubulin-1", "2", "tubulin", 2)], seed=7, plate_name="Q")
    answers = query_answer(references, blocks, images)
    row = answers.treatments.set_index("treatment").loc["tubulin-1 @ 2"]
    # cosine similarity reads the direction of a phenotype, so both doses of the copied compound come first
    assert {row["nearest_1"], row["nearest_2"]} == {"tubulin-1 @ 1", "tubulin-1 @ 2"}
    assert row["nearest_1_moa"] == "tubulin" and row["nearest_1_similarity"] > 0.8
    assert row["moa_call"] == "tubulin" and not row["novel"] and row["moa_probability"] > 0.5
    assert row["active"] and row["activity_level"] == "wells"


def test_a_phenotype_no_reference_has_is_novel(references):
    blocks, images = plate([("DMSO", "0", None, 4), ("unseen", "1", "new", 2)], seed=8, plate_name="Q")
    answers = query_answer(references, blocks, images)
    row = answers.treatments.set_index("treatment").loc["unseen @ 1"]
    assert row["novel"] and pd.isna(row["moa_call"]) and np.isnan(row["moa_probability"])
    assert isinstance(row["nearest_1"], str)  # a novel call keeps its nearest list
    assert row["active"]  # novel is not inactive: it differs from the controls too
    wells = answers.wells[answers.wells["treatment"] == "unseen @ 1"]
    assert len(wells) == 2 and wells["novel"].all()


def test_dmso_queried_as_a_treatment_is_not_active(references):
    """DMSO wells named as a treatment of their own are scored against the other DMSO wells (16, as a JUMP plate
    has): not active. With a handful of control wells the controls' mean is itself uncertain, and subtracting it
    leaves any two other wells alike — the activity benchmark on BBBC021's tiled plates measures that case."""
    blocks, images = plate([("DMSO", "0", None, 18), ("actin-2", "2", "actin", 2)], seed=9, plate_name="Q")
    fake = images["well"].isin(["w001", "w002"])
    images.loc[fake, "Metadata_Compound"] = "DMSO-as-query"
    answers = query_answer(references, blocks, images)
    table = answers.treatments.set_index("treatment")
    assert not table.loc["DMSO-as-query @ 0", "active"] and table.loc["actin-2 @ 2", "active"]
    assert table.loc["DMSO @ 0", "control"] and pd.isna(table.loc["DMSO @ 0", "active"])


def test_a_treatment_in_a_single_well_is_scored_on_its_fields(references):
    blocks, images = plate([("DMSO", "0", None, 4), ("dna-0", "2", "dna", 1)], seed=10, plate_name="Q", fields=4)
    row = query_answer(references, blocks, images).treatments.set_index("treatment").loc["dna-0 @ 2"]
    assert row["activity_level"] == "one well" and row["active"]


def test_a_plate_without_controls_gets_empty_activity_and_says_why(references):
    blocks, images = plate([("actin-0", "1", "actin", 2), ("dna-1", "2", "dna", 2)], seed=11, plate_name="Q")
    answers = query_answer(references, blocks, images)
    assert "no negative controls" in answers.activity_note
    assert answers.treatments["active"].isna().all() and answers.treatments["activity_q"].isna().all()
    assert answers.treatments["moa_call"].tolist() == ["actin", "dna"]


def test_a_bundle_round_trips_its_reference_profiles(references, tmp_path):
    save_references(tmp_path, references)
    loaded = load_references(tmp_path)
    pd.testing.assert_frame_equal(loaded.fields, references.fields)
    assert loaded.normalization == references.normalization
    assert loaded.calibration == references.calibration and loaded.kind == "measured"
    assert load_references(tmp_path / "elsewhere") is None


def test_references_without_a_mechanism_give_neighbours_and_say_why_there_is_no_call():
    blocks, images = reference_plate()
    meta = image_meta(images, ["Metadata_Compound"], "Metadata_Compound", None)
    refs = build_references(blocks, meta, None, "measured", {"moa": None}, QUANTILE_005)
    assert "no mechanism column" in refs.calibration["well"]["skipped"]
    units = level_table(refs.fields, refs.features, "well")
    called = match(units, refs, "well", 3)
    assert called["moa_call"].isna().all() and called["nearest_3"].notna().all()


@pytest.fixture(scope="module")
def tiny_prediction(tiny_demo, tiny_plates, tmp_path_factory):
    """`cellresponse predict` of the tiny demo's bundle on its plates (DMSO wells on each): the output folder and
    what the command printed."""
    from tests.conftest import run_cli

    demo, _ = tiny_demo
    out = tmp_path_factory.mktemp("predicted") / "predicted"
    result = run_cli(
        "predict", demo / "run", "--load-data", tiny_plates / "load_data.csv", "--out", out, "--csv", "--no-progress"
    )
    return out, result.stdout + result.stderr


def test_predict_answers_every_treatment_and_well_and_writes_the_report(tiny_prediction):
    out, printed = tiny_prediction
    calls = pd.read_parquet(out / "predictions" / "treatment_calls.parquet")
    assert calls.loc[calls["control"], "treatment"].tolist() == ["DMSO"]
    treated = calls[~calls["control"]]
    assert len(treated) == 3 and treated["activity_q"].notna().all() and treated["active"].notna().all()
    assert treated["activity_level"].eq("wells").all()  # one well per plate, two plates: replicate wells
    assert {"nearest_1", "nearest_3_similarity", "moa_call", "moa_probability", "novel"} <= set(calls.columns)
    # a known compound's nearest reference is itself
    assert (treated["nearest_1"] == treated["treatment"]).all()
    wells = pd.read_parquet(out / "predictions" / "well_predictions.parquet")
    assert {"treatment", "active", "activity_q", "nearest_1", "moa_call", "moa_probability", "novel"} <= set(wells)
    assert wells["nearest_1"].notna().all()
    images = pd.read_parquet(out / "predictions" / "image_predictions.parquet")
    assert images["best_similarity"].notna().all()
    assert (out / "predictions" / "treatment_calls.csv").is_file()
    assert " treatments: " in printed and "active" in printed
    page = (out / "report" / "index.html").read_text()
    assert "Active, novel and called: the counts" in page and page.count("<img") >= 3
    assert "novelty quantile" in page  # the calibration table says which quantile set the threshold


def test_a_bundle_made_before_references_predicts_and_says_so_in_one_line(tiny_demo, tiny_plates, tmp_path):
    import shutil

    from tests.conftest import run_cli

    demo, _ = tiny_demo
    bundle = tmp_path / "bundle"
    shutil.copytree(demo / "run" / "model" / "bundle", bundle)
    for name in ("references.json", "references.parquet"):
        (bundle / name).unlink()
    out = tmp_path / "old"
    result = run_cli("predict", bundle, "--load-data", tiny_plates / "load_data.csv", "--out", out, "--no-progress")
    printed = result.stdout + result.stderr
    assert printed.count("keeps no reference profiles") == 1 and "retrain" in printed
    assert (out / "predictions" / "well_predictions.parquet").is_file()
    assert not (out / "predictions" / "treatment_calls.parquet").exists()


def test_predict_takes_another_reference_kind_the_bundle_keeps_without_retraining(tiny_demo, tiny_plates, tmp_path):
    """train keeps the references of every kind it chose from; ``--set references.kind=KIND`` at predict answers
    with that kind's (e.g. measured, which needs no embedding) and says what it costs; a kind the bundle does not
    keep is refused in one line before any image work."""
    import shutil

    from cellresponse.learning.bundle import load_bundle
    from tests.conftest import run_cli

    demo, _ = tiny_demo
    bundle = load_bundle(demo / "run")
    assert {bundle.references.kind, *bundle.reference_kinds} == {"measured", "deep", "both"}
    train_log = (demo / "run" / "logs" / "cellresponse.log").read_text()
    assert "references too: predict --set references.kind=KIND answers with them" in train_log
    other = next(kind for kind in ("measured", "deep", "both") if kind != bundle.references.kind)
    assert bundle.references_of("auto") is bundle.references
    assert (
        bundle.references_of(other).kind == other and bundle.references_of(other).features != bundle.references.features
    )
    out = tmp_path / "other"
    args = ("--load-data", tiny_plates / "load_data.csv", "--no-progress", "--set", f"references.kind={other}")
    result = run_cli("predict", demo / "run", "--out", out, *args)
    printed = result.stdout + result.stderr
    assert (
        f"references: {other} profiles (references.kind), not the {bundle.references.kind} that train chose" in printed
    )
    calls = pd.read_parquet(out / "predictions" / "treatment_calls.parquet")
    treated = calls[~calls["control"]]
    assert len(treated) == 3 and (treated["nearest_1"] == treated["treatment"]).all()
    # a bundle that kept only its chosen kind (made before every kind was kept) refuses another, naming what it has
    old = tmp_path / "bundle"
    shutil.copytree(demo / "run" / "model" / "bundle", old)
    for folder in old.glob("references_*"):
        if folder.is_dir():
            shutil.rmtree(folder)
    refused = run_cli("predict", old, "--out", tmp_path / "refused", *args, check=False)
    assert refused.returncode == 2 and refused.stderr.count("error:") == 1
    assert f"references.kind={other}: this bundle keeps {bundle.references.kind} references" in refused.stderr
    assert not (tmp_path / "refused" / "masks").exists()
    # what the model sees stays the bundle's
    args = ("--load-data", tiny_plates / "load_data.csv", "--no-progress", "--set", "crops.size=64")
    refused = run_cli("predict", demo / "run", "--out", tmp_path / "refused", *args, check=False)
    assert refused.returncode == 2 and "--set crops.size=64: predict takes the bundle's settings" in refused.stderr


def test_without_a_mechanism_the_summary_says_why_there_is_no_call():
    from cellresponse.profiling.treatment_calls import summary

    blocks, images = reference_plate()
    meta = image_meta(images, ["Metadata_Compound"], "Metadata_Compound", None)
    refs = build_references(blocks, meta, None, "measured", {"moa": None}, QUANTILE_005)
    query_blocks, query_images = plate([("actin-0", "1", "actin", 2)], seed=12, plate_name="Q")
    query_meta = image_meta(query_images, ["Metadata_Compound"], "Metadata_Compound", None)
    raw, _ = profile_fields(query_blocks, query_meta)
    fields = normalize_query(raw, None, refs, "references")
    answers = answer(fields, raw, refs, None, neighbours=3, fdr=0.05)
    line = summary(answers, refs)
    assert "no moa_call: the references have no mechanism column" in line and "0 called" in line
    assert answers.treatments["nearest_1"].tolist() == ["actin-0"]


def test_correlated_features_are_dropped_over_enough_wells_and_kept_over_a_handful():
    from cellresponse.profiling.references import CORRELATION_MIN_WELLS, fit_normalization

    rng = np.random.default_rng(0)

    def kept_of(wells: int) -> list[str]:
        base = rng.normal(0, 1, (wells, 3))
        values = np.column_stack([base, base[:, 0] * 2 + rng.normal(0, 0.01, wells)])  # f3 copies f0
        table = pd.DataFrame(values, columns=["f0", "f1", "f2", "f3"])
        columns = list(table.columns)
        selection = ReferencesConfig().feature_selection  # the default: with the correlation threshold
        return fit_normalization(
            table, columns, np.ones(wells, bool), "all wells", {"measured": columns}, selection
        ).columns

    many = kept_of(CORRELATION_MIN_WELLS * 2)
    assert len(many) == 3 and "f1" in many and "f2" in many and not {"f0", "f3"} <= set(many)
    assert kept_of(CORRELATION_MIN_WELLS - 1) == ["f0", "f1", "f2", "f3"]


def test_a_bundle_measured_otherwise_is_refused_in_one_line_that_says_how_to_retrain(tiny_demo, tiny_plates, tmp_path):
    """A bundle whose profile model was made from a cell feature these cells lack (an earlier version named its
    features otherwise) stops with one line naming the feature and the command, not a KeyError traceback; the
    segmentation and measurement it did stay for the rerun."""
    import json
    import shutil

    from tests.conftest import run_cli

    demo, _ = tiny_demo
    bundle = tmp_path / "bundle"
    shutil.copytree(demo / "run" / "model" / "bundle", bundle)
    models = sorted(bundle.glob("profile_*.json"))
    assert models, "the demo bundle keeps profile models"
    for path in models:
        model = json.loads(path.read_text())
        model["cell_columns"] = [*(model.get("cell_columns") or []), "Intensity_MeanIntensityCore_DNA"]
        path.write_text(json.dumps(model))
    out = tmp_path / "refused"
    result = run_cli(
        "predict", bundle, "--load-data", tiny_plates / "load_data.csv", "--out", out, "--no-progress",
        "--model", "measured", check=False,
    )  # fmt: skip
    printed = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in printed
    assert "Intensity_MeanIntensityCore_DNA" in printed and "--from measure --overwrite" in printed
    assert (out / "cells.parquet").exists()


def test_require_cell_features_names_what_is_missing():
    from cellresponse.errors import InputError
    from cellresponse.profiling.profile_models import require_cell_features

    require_cell_features(["a", "b"], ["a"], "the model")  # nothing missing: no error
    with pytest.raises(InputError, match=r"the model was made from 4 cell features .*\(c, d, e and 1 more\)"):
        require_cell_features(["a"], ["a", "c", "d", "e", "f"], "the model")


def test_references_of_fields_that_are_all_alike_say_so_in_one_error():
    """The same field under every name (a plate built of copies, as the plate-scale benchmark builds one): no
    feature varies, and feature selection says so in one error instead of scikit-learn's VarianceThreshold stopping
    with a bare ValueError (`train` then keeps no references of that kind and says why; `profile` stops with it)."""
    blocks, images = reference_plate()
    alike = {
        name: pd.DataFrame(np.repeat(t.to_numpy()[:1], len(t), axis=0), t.index, t.columns)
        for name, t in blocks.items()
    }
    with pytest.raises(InputError, match=f"no profile feature varies across the {len(alike['measured'])} wells"):
        select_features(alike["measured"], list(alike["measured"].columns), ["variance_threshold"])
    with pytest.raises(InputError, match=r"no profile feature varies across the \d+ wells"):
        references_of(alike, images)


def test_a_bundle_trained_with_harmony_predicts_and_draws_its_report(tiny_demo, tiny_plates, tmp_path):
    """Harmony re-fits references and new plate together (their columns become its components): the answer and
    the report's map are both drawn from the references as they were compared, not the bundle's columns."""
    import shutil

    from tests.conftest import run_cli

    demo, _ = tiny_demo
    run = tmp_path / "run"
    shutil.copytree(demo / "run", run)
    settings = ("--set", "profiles.batch_correction=harmony", "--set", "profiles.batch=Metadata_Plate")
    run_cli("train", run, "--overwrite", "--no-progress", *settings)
    out = tmp_path / "new"
    result = run_cli("predict", run, "--load-data", tiny_plates / "load_data.csv", "--out", out, "--no-progress")
    assert "harmony: references and the new plate corrected together" in result.stdout + result.stderr
    calls = pd.read_parquet(out / "predictions" / "treatment_calls.parquet")
    assert len(calls[~calls["control"]]) == 3
    assert "<img" in (out / "report" / "index.html").read_text()


def test_a_plate_without_controls_says_where_the_controls_were_looked_for(references, caplog):
    """The whole reason — which column and which label named the controls — travels with the answer, so predict's
    summary and the report say the same thing a user can act on; the summary is its one line in the log (it was
    printed twice, the second time inside the summary)."""
    from cellresponse.config import Config, apply_overrides
    from cellresponse.profiling.treatment_calls import answer_plate, summary

    blocks, images = plate([("actin-0", "1", "actin", 2), ("dna-1", "2", "dna", 2)], seed=11, plate_name="Q")
    config = apply_overrides(Config(), ["profiles.treatment=[Metadata_Compound,Metadata_Concentration]"])
    with caplog.at_level(logging.INFO, logger="cellresponse"):
        answers = answer_plate(blocks, images, references, config).answers
    assert not [r for r in caplog.records if "no negative controls among" in r.getMessage()]
    assert answers.activity_note.startswith("no negative controls among these images (looked for ")
    assert f"= {config.input.control_label}, input.control_label)" in answers.activity_note
    assert answers.activity_note in summary(answers, references)

    # wells that carry no names: each is its own treatment, said once, and the controls' column is missing, said so
    caplog.clear()
    blind = images.drop(columns=["Metadata_Compound", "Metadata_Concentration"])
    with caplog.at_level(logging.INFO, logger="cellresponse"):
        answers = answer_plate(blocks, blind, references, apply_overrides(Config(), ["input.label=Metadata_Compound"]))
        answers = answers.answers
    said = [r.getMessage() for r in caplog.records]
    assert sum("each well is its own treatment" in line for line in said) == 1
    assert "no Metadata_Compound column to find DMSO (input.control_label) in" in answers.activity_note
    assert len(answers.treatments) == blind.groupby(["plate", "well"]).ngroups


def twin_mechanism_plate():
    """Four mechanisms, two of them one phenotype under two names: ``twin``'s compound is an actin compound."""
    rows = [("DMSO", "0", None, 4)]
    rows += [(f"{moa}-{j}", c, moa, 2) for moa in ("tubulin", "dna") for j in range(3) for c in ("1", "2")]
    rows += [(f"actin-{j}", c, "actin", 2) for j in range(2) for c in ("1", "2")]
    rows += [("actin-2", c, "twin", 2) for c in ("1", "2")]
    return plate(rows, seed=3)


def test_a_withheld_mechanism_is_flagged_novel_unless_another_looks_the_same(tmp_path):
    from cellresponse.profiling.reference_building import withheld_mechanism_novelty
    from cellresponse.profiling.references import novelty_check_phrase

    blocks, images = twin_mechanism_plate()
    meta = image_meta(images, ["Metadata_Compound", "Metadata_Concentration"], "Metadata_Compound", "Metadata_MoA")
    controls = negative_controls(images, ["Metadata_Compound"], "DMSO")
    columns = {"treatment": ["Metadata_Compound", "Metadata_Concentration"], "moa": "Metadata_MoA"}
    check = withheld_mechanism_novelty(blocks, meta, controls, "measured", columns, QUANTILE_005)
    shares = check["mechanisms"]
    assert sorted(shares) == ["actin", "dna", "tubulin", "twin"]  # DMSO, the control, is never withheld
    assert shares["tubulin"] == shares["dna"] == 1.0  # nothing else looks like them: every well novel
    assert shares["actin"] == shares["twin"] == 0.0  # each finds the other: none novel
    assert check["mean"] == 0.5 and check["quantile"] == 0.05 and check["of"] == 4

    references = build_references(blocks, meta, controls, "measured", columns, QUANTILE_005)
    references.novelty_check = check
    phrase = novelty_check_phrase(check, references.calibration)
    assert phrase is not None and "4 mechanisms" in phrase and "0.50 of its wells" in phrase
    assert "(from 0.00 to 1.00; never actin, twin)" in phrase
    save_references(tmp_path, references)
    assert load_references(tmp_path).novelty_check == check  # the bundle keeps it
    from cellresponse.profiling.treatment_calls import summary

    said = summary(query_answer(references, blocks, images), references)  # predict's line
    assert "novelty: when each of the references' 4 mechanisms was withheld" in said
    # read at another novelty quantile the figure no longer holds: nothing is said
    other = {**references.calibration, "well": {**references.calibration["well"], "novelty_quantile": 0.25}}
    assert novelty_check_phrase(check, other) is None
    assert novelty_check_phrase({}, references.calibration) is None  # a bundle made before the check


def test_withheld_mechanism_novelty_needs_three_mechanisms_and_samples_many():
    from cellresponse.profiling import reference_building
    from cellresponse.profiling.reference_building import withheld_mechanism_novelty

    blocks, images = twin_mechanism_plate()
    meta = image_meta(images, ["Metadata_Compound", "Metadata_Concentration"], "Metadata_Compound", "Metadata_MoA")
    columns = {"treatment": ["Metadata_Compound", "Metadata_Concentration"], "moa": "Metadata_MoA"}
    build = (columns, QUANTILE_005)
    two = meta["moa"].isin(["tubulin", "dna"]).to_numpy()
    assert "skipped" in withheld_mechanism_novelty(blocks, meta[two], None, "measured", *build)
    limit = reference_building.MAX_WITHHELD_MECHANISMS
    try:
        reference_building.MAX_WITHHELD_MECHANISMS = 2
        controls = negative_controls(images, ["Metadata_Compound"], "DMSO")
        sampled = withheld_mechanism_novelty(blocks, meta, controls, "measured", *build, seed=5)
        again = withheld_mechanism_novelty(blocks, meta, controls, "measured", *build, seed=5)
    finally:
        reference_building.MAX_WITHHELD_MECHANISMS = limit
    assert len(sampled["mechanisms"]) == 2 and sampled["of"] == 4 and sampled == again  # a seeded sample


def test_a_mechanism_whose_withholding_leaves_no_references_is_left_out_not_fatal(monkeypatch):
    """train reads the check after the network has trained: references that cannot be built without one mechanism
    (say, nothing left varies) leave that mechanism out of the figure instead of failing before the bundle is
    saved."""
    from cellresponse.profiling import reference_building

    blocks, images = twin_mechanism_plate()
    meta = image_meta(images, ["Metadata_Compound", "Metadata_Concentration"], "Metadata_Compound", "Metadata_MoA")
    controls = negative_controls(images, ["Metadata_Compound"], "DMSO")
    columns = {"treatment": ["Metadata_Compound", "Metadata_Concentration"], "moa": "Metadata_MoA"}
    build = reference_building.build_references

    def failing_without_tubulin(blocks, meta, *args, **kwargs):
        if "tubulin" not in set(meta["moa"]):
            raise InputError("no profile feature varies across the wells")
        return build(blocks, meta, *args, **kwargs)

    monkeypatch.setattr(reference_building, "build_references", failing_without_tubulin)
    check = reference_building.withheld_mechanism_novelty(blocks, meta, controls, "measured", columns, QUANTILE_005)
    assert sorted(check["mechanisms"]) == ["actin", "dna", "twin"] and check["of"] == 4
    assert check["mechanisms"]["dna"] == 1.0 and check["mean"] == 1 / 3

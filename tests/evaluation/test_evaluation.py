"""Votes (hand-made cases, ties), metrics against scikit-learn, baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from cellresponse.config import ReferencesConfig, SplitConfig
from cellresponse.evaluation.classification import classification_metrics, top_k_accuracy, voted_metrics
from cellresponse.evaluation.label_groups import label_groups, wrong_calls
from cellresponse.evaluation.prediction_tables import prediction_table
from cellresponse.evaluation.run_metrics import Confusion, WrongPair
from cellresponse.evaluation.votes import vote
from cellresponse.learning.baselines import features_baseline
from cellresponse.profiling.profile_models import (
    PROFILE_STATISTICS,
    features_model_probabilities,
    fit_features_model,
    image_feature_table,
    profile_cell_columns,
)

# the references' settings with novelty quantile 0.05, the default when these tests were written
QUANTILE_005 = ReferencesConfig(novelty_quantile=0.05)


def test_majority_vote_counts_cells_and_breaks_ties_by_mean_probability():
    groups = np.array(["a", "a", "a", "b", "b", "c", "c"])
    probs = np.array(
        [
            [0.6, 0.4, 0.0],  # a: votes 0
            [0.6, 0.4, 0.0],  # a: votes 0
            [0.0, 0.1, 0.9],  # a: votes 2 (but very confident)
            [0.55, 0.45, 0.0],  # b: votes 0
            [0.1, 0.9, 0.0],  # b: votes 1 -> tie 1:1, mean probs 0.325 vs 0.675 -> class 1
            [0.5, 0.5, 0.0],  # c: exact tie in votes (argmax -> 0) ...
            [0.5, 0.5, 0.0],  # ... and in mean probability -> the first class (0)
        ]
    )
    unique, scores = vote(groups, probs, "majority")
    assert unique.tolist() == ["a", "b", "c"]
    assert scores.argmax(1).tolist() == [0, 1, 0]
    _, soft = vote(groups, probs, "soft")
    # soft vote: a's mean is (0.4, 0.3, 0.3) -> 0; b's mean (0.325, 0.675) -> 1
    assert soft.argmax(1).tolist() == [0, 1, 0]
    np.testing.assert_allclose(soft[0], [0.4, 0.3, 0.3])


def test_soft_and_majority_votes_can_disagree():
    groups = np.array(["g"] * 3)
    probs = np.array([[0.51, 0.49], [0.51, 0.49], [0.0, 1.0]])
    assert vote(groups, probs, "majority")[1].argmax(1)[0] == 0
    assert vote(groups, probs, "soft")[1].argmax(1)[0] == 1


# scikit-learn's own balanced accuracy, called here to compare, warns that a class is called but never true (class
# g, on purpose); classification_metrics itself keeps that warning quiet
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d", "e", "f", "g"]
    truth = rng.choice(classes[:6], 300)
    probs = rng.dirichlet(np.ones(7), 300)
    predicted = np.asarray(classes)[probs.argmax(1)]
    m = classification_metrics(truth, predicted, probs, classes, top_k=5)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(truth, predicted))
    codes = np.array([classes.index(t) for t in truth])
    assert m["top5"] == pytest.approx(skm.top_k_accuracy_score(codes, probs, k=5, labels=range(7)))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(truth, predicted, labels=classes[:6], average="macro"))
    assert m["chance_rate"] == pytest.approx(1 / 7)
    assert m["majority_rate"] == pytest.approx(pd.Series(truth).value_counts().iloc[0] / 300)
    precision = skm.precision_score(truth, predicted, labels=["a"], average=None, zero_division=0)[0]
    assert m["per_class"]["a"]["precision"] == pytest.approx(precision)
    matrix = np.asarray(m["confusion"]["matrix"])
    assert matrix.sum() == 300 and np.trace(matrix) == (truth == predicted).sum()


def test_top_k_counts_unknown_classes_as_misses():
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert top_k_accuracy(np.array([0, -1]), scores, k=1) == 0.0
    assert top_k_accuracy(np.array([0, -1]), scores, k=2) == 0.5


def test_voted_metrics_per_level_and_mixed_plates_skipped():
    table = pd.DataFrame(
        {
            "image_id": ["i1", "i1", "i2", "i2", "i3", "i3", "i4", "i4", "i4"],
            "plate": ["P1"] * 9,
            "well": ["A01", "A01", "A01", "A01", "B01", "B01", "C01", "C01", "C01"],
            "true_label": ["x", "x", "x", "x", "y", "y", "y", "y", "y"],
        }
    )
    probs = np.array(
        [
            [0.9, 0.1],
            [0.2, 0.8],
            [0.7, 0.3],
            [0.6, 0.4],
            [0.4, 0.6],
            [0.45, 0.55],
            [0.55, 0.45],  # i4: two cells lean x a little (majority says x) ...
            [0.55, 0.45],
            [0.0, 1.0],  # ... one is sure of y (soft vote says y, the truth)
        ]
    )
    image = voted_metrics(table, probs, ["x", "y"], "image")
    # i1: one vote each, mean (0.55, 0.45) -> x ; i2 -> x ; i3 -> y ; i4: majority x (wrong), soft y (right)
    assert image["majority_vote"]["accuracy"] == 0.75 and image["soft_vote"]["accuracy"] == 1.0
    assert image["soft_vote"]["n"] == 4
    # image means (0.55, 0.45), (0.65, 0.35), (0.425, 0.575), (0.367, 0.633): the calls' mean probability
    assert image["soft_vote"]["mean_probability"] == pytest.approx((0.55 + 0.65 + 0.575 + 1.9 / 3) / 4)
    assert "mean_probability" not in image["majority_vote"]  # vote counts are no probabilities
    assert image["majority_rate"] == pytest.approx(2 / 4) and image["chance_rate"] == 0.5
    well = voted_metrics(table, probs, ["x", "y"], "well")
    assert well["soft_vote"]["n"] == 3 and well["majority_vote"]["accuracy"] == pytest.approx(2 / 3)
    plate = voted_metrics(table, probs, ["x", "y"], "plate")
    assert "skipped" in plate and "99%" in plate["skipped"]  # one plate holds both classes
    assert "skipped" not in voted_metrics(table, probs, ["x", "y"], "plate", min_purity=0.5)


def test_wrong_calls_count_the_ones_that_stay_within_the_true_labels_group():
    groups = {"a1": "A", "a2": "A", "b1": "B"}  # "x" has no group: never within one
    confusion = {
        "labels": ["a1", "a2", "b1", "x"],
        "matrix": [[5, 3, 1, 0], [2, 4, 0, 0], [0, 0, 6, 1], [0, 0, 0, 2]],
    }
    out = wrong_calls(Confusion(**confusion), groups, top=2)
    assert (out.n, out.wrong, out.wrong_within_group) == (24, 7, 5)
    assert out.share_within_group == pytest.approx(5 / 7)
    assert out.group_accuracy == pytest.approx((17 + 5) / 24)
    assert out.pairs == [WrongPair("a1", "a2", 3, True), WrongPair("a2", "a1", 2, True)]
    right = wrong_calls(Confusion(["a1", "b1"], [[3, 0], [0, 2]]), groups)
    assert right.wrong == 0 and right.share_within_group is None and right.group_accuracy == 1.0


def test_label_groups_only_when_every_label_has_one_group():
    images = pd.DataFrame(
        {"compound": ["c1", "c1", "c2", "DMSO"], "moa": ["m1", "m1", "m2", None], "mixed": ["m1", "m2", "m2", "m3"]}
    )
    assert label_groups(images, "compound", "moa") == {"c1": "m1", "c2": "m2"}
    assert label_groups(images, "compound", "mixed") == {}  # c1 sits in two groups: no grouping
    assert label_groups(images, "compound", "compound") == {} and label_groups(images, "compound", "absent") == {}


def test_features_baseline_learns_a_separable_table():
    rng = np.random.default_rng(1)
    rows = []
    for i in range(60):
        label = "a" if i % 2 else "b"
        for _ in range(5):
            rows.append({"image_id": f"i{i}", "area": rng.normal(100 if label == "a" else 130, 5), "label": label})
    cells = pd.DataFrame(rows)
    images = pd.DataFrame(
        {"image_id": [f"i{i}" for i in range(60)], "plate": "P", "well": [f"w{i}" for i in range(60)]}
    )
    images["label"] = ["a" if i % 2 else "b" for i in range(60)]
    sides = pd.Series(["test" if i < 20 else "train" for i in range(60)], index=images["image_id"])
    features = image_feature_table(cells, ["area"])
    assert features["cell_count"].eq(5).all()
    result = features_baseline(features, images, "label", sides)
    assert result["image"]["accuracy"] == 1.0 and result["image"]["n"] == 20


def test_image_profile_columns_are_distribution_statistics():
    cells = pd.DataFrame({"image_id": ["a"] * 5 + ["b"] * 2, "area": [1.0, 2.0, 3.0, 4.0, 100.0, 7.0, np.inf]})
    table = image_feature_table(cells, ["area"])
    assert list(table.columns) == [f"area__{s}" for s in PROFILE_STATISTICS] + ["cell_count"]
    assert table.loc["a", "area__mean"] == 22.0 and table.loc["a", "area__q50"] == 3.0
    assert table.loc["a", "area__q95"] > table.loc["a", "area__q75"] > table.loc["a", "area__q25"]
    assert table.loc["b", "area__std"] == 0.0 and table.loc["b", "cell_count"] == 2  # inf ignored, cell counted
    assert profile_cell_columns(list(table.columns)) == ["area"]


@pytest.mark.parametrize("n_classes", [2, 4])
def test_stored_features_model_gives_scikit_learns_probabilities(n_classes):
    """The bundle keeps the features-only model as plain numbers; they must give the fitted model's answers."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    labels = np.repeat([f"c{k}" for k in range(n_classes)], 30)
    x = rng.normal(size=(len(labels), 12)) + (np.arange(len(labels)) % n_classes)[:, None] * 0.5
    x[:, 5] = 1.0  # a constant column must not break scaling
    features = pd.DataFrame(x, columns=[f"f{k}__mean" for k in range(12)])
    model = fit_features_model(features, labels)
    scaler = StandardScaler().fit(x)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(scaler.transform(x), labels)
    np.testing.assert_allclose(
        features_model_probabilities(model, features), reference.predict_proba(scaler.transform(x)), atol=1e-9
    )
    assert model["classes"] == sorted(set(labels)) and model["cell_columns"] == [f"f{k}" for k in range(12)]


@pytest.fixture(scope="module")
def moa_site1_cells(tmp_path_factory):
    """BBBC021-moa, first field of every well (110 fields), segmented (offline) and measured with the defaults."""
    from cellresponse.config import load_config
    from cellresponse.input.plate import ImageSource
    from cellresponse.input.runfolder import RunFolder
    from cellresponse.stages import images, measure, segment
    from tests.conftest import shared

    source = shared("bbbc021-moa", "load_data.csv")
    folder = tmp_path_factory.mktemp("moa-site1")
    table = pd.read_csv(source)
    table = table[table["Metadata_Site"] == 1]
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [str((source.parent / p).resolve()) for p in table[column]]
    table.to_csv(folder / "load_data.csv", index=False)
    config = load_config(overrides=["segmentation.backend=offline", "runtime.workers=0", "input.label=Metadata_MoA"])
    run = RunFolder(folder / "run")
    images.run(run, config, source=ImageSource(load_data=folder / "load_data.csv"))
    segment.run(run, config, progress=False)
    measure.run(run, config, progress=False)
    return pd.read_parquet(run.cells), pd.read_parquet(run.images)


@pytest.mark.parametrize("label, goal", [("Metadata_MoA", 0.85), ("Metadata_Compound", 0.5)])
def test_features_only_model_on_real_cells_leave_replicate_out(moa_site1_cells, label, goal):
    """Real MCF-7 fields, train on one replicate, test on the other (other plates), both directions: the
    features-only model (profiles + shrinkage LDA) clears the goal and beats the study's 12 per-cell columns
    averaged per field (the previous model) in both directions."""
    from cellresponse.features.cell_features import FEATURES, feature_columns

    cells, images = moa_site1_cells
    assert len(images) == 110 and len(cells) > 5000
    default = image_feature_table(cells, feature_columns(cells.columns))
    study_means = image_feature_table(cells, list(FEATURES))
    study_means = study_means[[c for c in study_means.columns if c.endswith("__mean")] + ["cell_count"]]
    for test in ("1", "2"):
        sides = pd.Series(
            np.where(images["Metadata_Replicate"].astype(str) == test, "test", "train"), index=images["image_id"]
        )
        ours = features_baseline(default, images, label, sides)["image"]
        plain = features_baseline(study_means, images, label, sides)["image"]
        assert ours["n"] == 55
        assert ours["accuracy"] >= goal, (test, ours["accuracy"])
        assert ours["accuracy"] > plain["accuracy"] + 0.05, (test, ours["accuracy"], plain["accuracy"])


def test_wrong_compound_calls_on_real_cells_stay_within_the_mechanism(moa_site1_cells):
    """Real MCF-7 fields, leave-replicate-out, compound label: most wrong compound calls name another compound of
    the same MoA (BBBC021's statins, protein-synthesis inhibitors), so the calls are right far more often as MoA
    calls than as compound calls — what the report's "Where the wrong calls go" tells a biologist."""
    from cellresponse.features.cell_features import feature_columns

    cells, images = moa_site1_cells
    groups = label_groups(images, "Metadata_Compound", "Metadata_MoA")
    assert len(groups) == 18 and len(set(groups.values())) == 6
    table = image_feature_table(cells, feature_columns(cells.columns))
    for test in ("1", "2"):
        sides = pd.Series(
            np.where(images["Metadata_Replicate"].astype(str) == test, "test", "train"), index=images["image_id"]
        )
        image = features_baseline(table, images, "Metadata_Compound", sides)["image"]
        out = wrong_calls(Confusion(**image["confusion"]), groups)
        assert out.n == 55 and out.wrong == round(55 * (1 - image["accuracy"]))
        assert out.share_within_group >= 0.7, (test, out)
        assert out.group_accuracy >= image["accuracy"] + 0.15, (test, out, image["accuracy"])


def test_tempered_probabilities_on_real_cells_say_how_often_the_calls_are_right(moa_site1_cells):
    """Real MCF-7 fields, compound label, train on one replicate and test on the other: the LDA alone calls nearly
    every field with probability ~1, wrong calls included. A temperature fitted on a validation side of the
    training replicate (wells it was not fitted on) brings the test side's mean probability of the call near its
    accuracy and lowers its log loss — without changing a single call."""
    from cellresponse.features.cell_features import feature_columns
    from cellresponse.learning.model_choice import fit_profile_models, profile_validation_scores
    from cellresponse.learning.splits import assign_split

    cells, images = moa_site1_cells
    table = image_feature_table(cells, feature_columns(cells.columns))
    labels = images.set_index("image_id")["Metadata_Compound"].astype(str)
    wells = images.set_index("image_id")["plate"].astype(str) + "/" + images.set_index("image_id")["well"].astype(str)
    for test in ("1", "2"):
        split = SplitConfig(by="column", column="Metadata_Replicate", test_values=[test])
        sides, _ = assign_split(images, "Metadata_Compound", split, seed=42)
        sides.index = images["image_id"]
        scores = profile_validation_scores({"measured": table}, labels, sides, wells)
        temperature = scores["measured"]["temperature"]
        assert temperature > 2.0, (test, temperature)
        model = fit_profile_models({"measured": table}, labels, sides, {"measured": temperature})["measured"]
        held_out = table[(sides.reindex(table.index) == "test").to_numpy()]
        truth = labels.loc[held_out.index].to_numpy()
        tempered = features_model_probabilities(model, held_out)
        plain = features_model_probabilities({**model, "temperature": 1.0}, held_out)
        classes = np.asarray(model["classes"])
        np.testing.assert_array_equal(tempered.argmax(1), plain.argmax(1))
        accuracy = float(np.mean(classes[tempered.argmax(1)] == truth))
        gap = {name: abs(p.max(1).mean() - accuracy) for name, p in (("tempered", tempered), ("plain", plain))}
        assert gap["tempered"] < gap["plain"] - 0.05, (test, accuracy, gap)
        loss = {
            name: skm.log_loss(truth, np.clip(p, 1e-15, 1), labels=classes)
            for name, p in (("tempered", tempered), ("plain", plain))
        }
        assert loss["tempered"] < 0.5 * loss["plain"], (test, loss)


def test_a_call_names_its_group_with_the_summed_probability_of_the_groups_labels():
    table = pd.DataFrame({"image_id": ["i1", "i2", "i3"]})
    scores = np.array([[0.4, 0.35, 0.25, 0.0], [0.1, 0.1, 0.7, 0.1], [0.1, 0.0, 0.2, 0.7]])
    classes = ["statin-a", "statin-b", "eg5-a", "dmso"]
    groups = {"statin-a": "statins", "statin-b": "statins", "eg5-a": "Eg5"}
    out = prediction_table(table, scores, classes, 2, ("Metadata_MoA", groups))
    # unsure between two statins (0.40), sure of the mechanism (0.75); a group of one keeps its own probability
    assert out["predicted_Metadata_MoA"].tolist()[:2] == ["statins", "Eg5"]
    np.testing.assert_allclose(out["probability_Metadata_MoA"][:2], [0.75, 0.7])
    # a label without a group (the control) gets none, and is not pooled with anything
    assert pd.isna(out["predicted_Metadata_MoA"][2]) and np.isnan(out["probability_Metadata_MoA"][2])
    assert list(out.columns[:5]) == ["image_id", "predicted_label", "probability", "predicted_Metadata_MoA",
                                     "probability_Metadata_MoA"]  # fmt: skip
    assert "predicted_Metadata_MoA" not in prediction_table(table, scores, classes, 2)


@pytest.mark.parametrize("label", ["Metadata_Compound", "Metadata_MoA"])
def test_the_mechanism_benchmarks_find_the_moa_column_without_being_told(moa_site1_cells, label):
    """Real MCF-7 fields: BBBC021 names its mechanism column Metadata_MoA and its compound column Metadata_Compound.
    With `profiles.moa: auto` and `profiles.compound: auto` a run scores NSC MoA accuracy on treatments (compound @
    concentration, the concentration column found too) without `--set` — a MoA-labelled run as well, which used to
    skip NSC because its only treatment column was the mechanism itself."""
    from cellresponse.config import load_config
    from cellresponse.features.cell_features import feature_columns
    from cellresponse.profiling.well_profiles import normalized_wells, treatment_profiles
    from cellresponse.stages.profile import evaluate_profiles, image_metadata

    cells, images = moa_site1_cells
    config = load_config(overrides=[f"input.label={label}"])
    assert config.profiles.moa == "auto" and config.profiles.compound == "auto"
    assert config.treatment_columns(images.columns) == ["Metadata_Compound", "Metadata_Concentration"]
    table = image_feature_table(cells, feature_columns(cells.columns))
    meta = image_metadata(images, config)
    compound = config.compound_column(meta.columns)
    fields = table.rename_axis("image_id").reset_index()
    wells, features, _ = normalized_wells(fields, list(table.columns), meta, config.profiles, compound, None)
    result = evaluate_profiles(wells, treatment_profiles(wells, features), features, config)
    nsc = result["nsc"]
    assert result["moa_column"] == "Metadata_MoA" and result["compound_column"] == "Metadata_Compound"
    assert nsc["n"] == 55 and nsc["accuracy"] >= 0.75 > nsc["chance_rate"] + 0.5, nsc  # measured: 0.873 (chance 0.114)
    assert result["map_moa"]["mean_average_precision"] > 0.6, result["map_moa"]  # measured: 0.774


def test_unseen_compounds_are_called_by_their_mechanism_on_real_cells(moa_site1_cells):
    """Real MCF-7 fields (first field of every well): references from replicate 1, each compound withheld in turn
    (its references dropped, the rest recalibrated leave-one-compound-out), replicate 2's wells of that compound
    answered as predict answers a new plate — the mechanism comes from the nearest other compounds."""
    from cellresponse.features.cell_features import feature_columns
    from cellresponse.profiling.matching import match
    from cellresponse.profiling.queries import normalize_query
    from cellresponse.profiling.reference_building import build_references
    from cellresponse.profiling.references import image_meta, level_table, profile_fields

    cells, images = moa_site1_cells
    table = image_feature_table(cells, feature_columns(cells.columns))
    meta = image_meta(images, ["Metadata_Compound", "Metadata_Concentration"], "Metadata_Compound", "Metadata_MoA")
    replicate = images.set_index(images["image_id"].astype(str))["Metadata_Replicate"].astype(str)
    reference_ids, query_ids = replicate.index[replicate == "1"], replicate.index[replicate == "2"]
    columns = {"moa": "Metadata_MoA"}
    right = []
    for compound in sorted(meta["compound"].unique()):
        kept = reference_ids[meta.loc[reference_ids, "compound"] != compound]
        refs = build_references(
            {"measured": table.loc[kept]},
            meta.loc[kept],
            None,
            "measured",
            columns,
            QUANTILE_005,
        )
        raw, _ = profile_fields({"measured": table.loc[query_ids]}, meta.loc[query_ids])
        fields = normalize_query(raw, None, refs, "references")
        wells = level_table(fields, refs.features, "well")
        wells = wells[wells["compound"] == compound].reset_index(drop=True)
        calls = match(wells, refs, "well", 5)
        assert not calls["nearest_1"].str.startswith(compound + " @").any()  # withheld means withheld
        right += list(calls["moa_call"].astype(object) == wells["moa"])
    # measured 0.800 on these single fields (chance 0.114); whole wells of four fields: benchmarks/unseen_compounds.py
    assert len(right) == 55 and np.mean(right) >= 0.7, np.mean(right)


def test_the_wilson_interval_matches_known_values():
    from cellresponse.evaluation.classification import wilson_interval

    low, high = wilson_interval(18, 20)  # 0.90 on 20 fields
    assert abs(low - 0.699) < 0.002 and abs(high - 0.972) < 0.002
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


@pytest.mark.parametrize("method", ["soft", "majority"])
def test_votes_merged_plate_by_plate_equal_one_vote_over_every_plate(method):
    from cellresponse.evaluation.votes import merged_votes

    rng = np.random.default_rng(1)
    groups = np.array([f"P{p}/w{w}" for p in (2, 1, 3) for w in rng.integers(0, 5, 40)], dtype=object)
    probs = rng.dirichlet(np.ones(4), len(groups))
    plates = np.array([g.split("/")[0] for g in groups])
    parts = [vote(groups[plates == p], probs[plates == p], method) for p in ("P2", "P1", "P3")]
    merged, scores = merged_votes(parts, 4)
    whole, expected = vote(groups, probs, method)
    assert merged.tolist() == whole.tolist()
    np.testing.assert_array_equal(scores, expected)

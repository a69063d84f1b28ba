"""Which model predicts (issue 15): a profile model per kind, chosen on the validation side and never on the test
side, stored in the bundle and used by `predict --model auto`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.baselines import features_baseline
from cellresponse.learning.bundle import load_bundle
from cellresponse.learning.model_choice import (
    NETWORK,
    auto_summary,
    choose_model,
    describe_choice,
    fit_profile_models,
    profile_validation_scores,
)
from cellresponse.learning.profile_tables import profile_tables
from cellresponse.learning.splits import TEST, TRAIN, VALIDATION
from cellresponse.profiling.profile_models import (
    MAX_TEMPERATURE,
    PROFILE_KINDS,
    features_model_logits,
    features_model_probabilities,
    fit_temperature,
    why_no_features_model,
)
from tests.conftest import run_cli, run_metrics


def planted_tables(seed: int, test_signal: bool) -> tuple[dict[str, pd.DataFrame], pd.Series, pd.Series, pd.Series]:
    """120 images of 3 classes on three sides. ``measured`` carries the class on every side; ``deep`` is noise
    on the training and validation sides and — with ``test_signal`` — a perfect, huge class signal on the test
    side only."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:03d}" for i in range(120)]
    labels = pd.Series(np.tile(["a", "b", "c"], 40), index=ids)
    sides = pd.Series(np.repeat([TRAIN, VALIDATION, TEST], [60, 30, 30]), index=ids)
    wells = pd.Series([f"P/w{i // 2}" for i in range(120)], index=ids)
    centre = labels.map({"a": 0.0, "b": 1.0, "c": 2.0}).to_numpy()[:, None]
    measured = pd.DataFrame(centre + rng.normal(0, 0.4, (120, 5)), index=ids).add_prefix("f")
    deep = pd.DataFrame(rng.normal(0, 1, (120, 8)), index=ids).add_prefix("emb_")
    if test_signal:
        deep.loc[(sides == TEST).to_numpy()] += 100.0 * centre[(sides == TEST).to_numpy()]
    return {"measured": measured, "deep": deep}, labels, sides, wells


def test_the_choice_never_reads_the_test_side():
    plain, labels, sides, wells = planted_tables(0, test_signal=False)
    planted, *_ = planted_tables(0, test_signal=True)
    scores = profile_validation_scores(planted, labels, sides, wells)
    # the planted test-only signal changes nothing: the same scores as without it, measured still wins
    assert scores == profile_validation_scores(plain, labels, sides, wells)
    assert choose_model(scores) == "measured"
    assert scores["measured"]["accuracy"] > 0.9 and scores["deep"]["accuracy"] < 0.7
    assert scores["measured"]["images"] == 30  # the validation side, not the test side


def test_without_a_validation_side_the_choice_cross_validates_the_training_side():
    tables, labels, sides, wells = planted_tables(1, test_signal=True)
    sides = sides.replace(VALIDATION, TRAIN)
    scores = profile_validation_scores(tables, labels, sides, wells)
    assert scores["measured"]["images"] == 90 and scores["measured"]["folds"] == 3
    assert choose_model(scores) == "measured"


def test_a_training_side_with_no_more_images_than_classes_is_skipped_with_its_reason():
    # scikit-learn's LDA stops with a bare ValueError there (a run on a few fields of 18 compounds did); the choice,
    # the bundle's profile models and evaluate's baseline skip it instead, saying why
    tables, labels, sides, wells = planted_tables(2, test_signal=False)
    keep = list(labels.index[sides == TRAIN][:3]) + list(labels.index[sides != TRAIN])
    tables = {kind: table.loc[keep] for kind, table in tables.items()}
    scores = profile_validation_scores(tables, labels, sides, wells)
    assert scores["measured"]["accuracy"] is None
    assert scores["measured"]["skipped"] == why_no_features_model(labels.loc[keep[:3]])
    assert "3 images for 3 classes" in scores["measured"]["skipped"]
    assert fit_profile_models(tables, labels, sides.replace(VALIDATION, TEST)) == {}
    ids = labels.index
    images = pd.DataFrame({"image_id": ids, "plate": "P", "well": wells.str.split("/").str[1], "label": labels})
    baseline = features_baseline(tables["measured"], images, "label", sides.replace(VALIDATION, TEST))
    assert baseline == {"skipped": scores["measured"]["skipped"]}
    assert why_no_features_model(np.array(["a", "b", "a"])) is None
    assert "fewer than two classes" in why_no_features_model(np.array(["a", "a"]))


def test_ties_go_to_the_cheaper_model_and_nothing_scored_means_the_network():
    tie = {"both": {"accuracy": 0.9}, "measured": {"accuracy": 0.9}, NETWORK: {"accuracy": 0.9}}
    assert choose_model(tie) == "measured"
    assert choose_model({"deep": {"accuracy": 0.5}, NETWORK: {"accuracy": 0.8}}) == NETWORK
    assert choose_model({"measured": {"accuracy": None, "skipped": "…"}}) == NETWORK


def test_the_choice_is_told_with_its_validation_scores_and_its_test_score_after():
    scores = {"measured": {"accuracy": 0.95}, "deep": {"accuracy": 0.9}, NETWORK: {"accuracy": 0.8}}
    choice = {"auto": "measured", "scores": scores, "scored_on": "the validation side (24 images)"}
    told = describe_choice(choice)
    assert "uses the measured model" in told and "0.950" in told and "against deep 0.900, network 0.800" in told
    image = {"accuracy": 0.97, "n": 100}
    given = {"image": {"soft_vote": {"accuracy": 0.6, "n": 100}}}
    metrics = run_metrics(profile_models={"measured": {"image": image, "well": {"accuracy": 1.0, "n": 25}}}, **given)
    summary = auto_summary(choice, metrics, "soft")
    assert summary.test == {"image": 0.97, "well": 1.0} and summary.validation["deep"] == 0.9
    assert summary.sentence.endswith("on the test side it scores 0.970 per image")
    sure = {"image": {**image, "mean_probability": 0.8}, "well": {"accuracy": 1.0, "n": 25}}
    metrics = run_metrics(profile_models={"measured": sure}, **given)
    told = auto_summary(choice, metrics, "soft").sentence
    assert told.endswith("scores 0.970 per image, its calls made with a mean probability of 0.800")
    # the network chosen: its voted accuracy is the test score
    network = auto_summary({**choice, "auto": NETWORK}, metrics, "soft")
    assert network.test == {"image": 0.6}


def overconfident_logits(n: int, right: float, margin: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of 4 classes whose call is right for a share ``right`` of ``n`` images, every call ``margin`` above
    the rest (probability ~1 at temperature 1)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n)
    called = np.where(rng.random(n) < right, truth, (truth + rng.integers(1, 4, n)) % 4)
    logits = rng.normal(0, 0.1, (n, 4))
    logits[np.arange(n), called] += margin
    return logits, truth


def test_the_temperature_makes_an_overconfident_model_s_probabilities_match_its_accuracy():
    logits, truth = overconfident_logits(400, right=0.7, margin=40.0)
    temperature = fit_temperature([(logits[:200], truth[:200]), (logits[200:], truth[200:])])
    assert 5.0 < temperature < MAX_TEMPERATURE
    tempered = np.exp(logits / temperature)
    tempered /= tempered.sum(1, keepdims=True)
    accuracy = np.mean(logits.argmax(1) == truth)
    assert abs(tempered.max(1).mean() - accuracy) < 0.03  # calls said to be 70 % sure, right 70 % of the time
    # a model its held-out images cannot fault keeps its own probabilities (never sharpened below 1)
    assert fit_temperature([overconfident_logits(50, right=1.0, margin=5.0)]) == 1.0
    assert fit_temperature([]) == 1.0 and fit_temperature([(np.zeros((0, 4)), np.zeros(0, int))]) == 1.0
    # a side of wrong calls only cannot push it past the bound
    assert fit_temperature([overconfident_logits(50, right=0.0, margin=40.0)]) <= MAX_TEMPERATURE


def test_a_stored_temperature_changes_how_sure_a_call_is_never_which_call(demo_run):
    bundle = load_bundle(demo_run.bundle)
    sides, _ = demo_run.read_split()
    table = profile_tables(demo_run, demo_run.read_cells(), [str(i) for i in sides.index])["measured"]
    model = bundle.profile_models["measured"]
    calls = {t: features_model_probabilities({**model, "temperature": t}, table) for t in (1.0, 3.0, 30.0)}
    assert all((p.argmax(1) == calls[1.0].argmax(1)).all() for p in calls.values())
    assert calls[1.0].max(1).mean() >= calls[3.0].max(1).mean() >= calls[30.0].max(1).mean()
    assert features_model_logits(model, table).shape == (len(table), len(model["classes"]))
    # a bundle of an earlier version stores no temperature: scikit-learn's own probabilities
    legacy = {k: v for k, v in model.items() if k != "temperature"}
    np.testing.assert_allclose(features_model_probabilities(legacy, table), calls[1.0])


@pytest.fixture(scope="module")
def demo_run(tiny_demo):
    out, _ = tiny_demo
    return RunFolder(out / "run")


# the test's own reference fit, like the stored model's (profile_models.fit_features_model), meets classes with one
# training image on this tiny plate
@pytest.mark.filterwarnings("ignore:Only one sample available")
def test_each_profile_kind_round_trips_through_the_bundle(demo_run):
    bundle = load_bundle(demo_run.bundle)
    assert set(bundle.profile_models) == set(PROFILE_KINDS)
    sides, _ = demo_run.read_split()
    tables = profile_tables(demo_run, demo_run.read_cells(), [str(i) for i in sides.index])
    images = demo_run.read_images().set_index("image_id")
    for kind, table in tables.items():
        model = bundle.profile_models[kind]
        assert model["kind"] == kind and model["columns"] == list(table.columns)
        fit = table[(sides.reindex(table.index) != TEST).to_numpy()]
        reference = make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
        reference.fit(fit, images.loc[fit.index, "Metadata_pert_iname"].astype(str))
        # the stored model carries the temperature its held-out images fitted (recorded beside the choice's scores;
        # 1 where none could be scored, as on this tiny plate)
        assert model["temperature"] == bundle.choice["scores"][kind].get("temperature", 1.0) >= 1.0
        # the stored JSON gives scikit-learn's probabilities on every image (the test side included) ...
        untempered = features_model_probabilities({**model, "temperature": 1.0}, table)
        np.testing.assert_allclose(untempered, reference.predict_proba(table), atol=1e-6)
        # ... and, tempered, the softmax of scikit-learn's decision function divided by the temperature
        decision = np.atleast_2d(reference.decision_function(table).T).T
        if decision.shape[1] == 1:
            decision = np.column_stack([np.zeros(len(decision)), decision[:, 0]])
        tempered = np.exp((decision - decision.max(1, keepdims=True)) / 4.0)
        np.testing.assert_allclose(
            features_model_probabilities({**model, "temperature": 4.0}, table),
            tempered / tempered.sum(1, keepdims=True),
            atol=1e-6,
        )
    choice = bundle.choice
    assert choice["auto"] in (*PROFILE_KINDS, NETWORK) and set(choice["scores"]) == {*PROFILE_KINDS, NETWORK}


@pytest.mark.parametrize("chosen", ["deep", NETWORK])
def test_predict_auto_uses_the_recorded_choice(demo_run, tiny_plates, tmp_path, chosen):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(demo_run.bundle, bundle_dir)
    choice = json.loads((bundle_dir / "choice.json").read_text())
    (bundle_dir / "choice.json").write_text(json.dumps({**choice, "auto": chosen}))
    out = tmp_path / "predicted"
    run_cli("predict", bundle_dir, "--load-data", tiny_plates / "load_data.csv", "--out", out, "--no-progress")
    predicted = pd.read_parquet(out / "predictions" / "image_predictions.parquet")
    assert set(predicted["model"]) == {chosen}
    assert (out / "predictions" / "cell_predictions.parquet").exists() == (chosen == NETWORK)
    # each call names what the called compound does (the bundle's grouping: the synthetic compounds' gene target;
    # DMSO has none), with the summed probability of that target's compounds, never below the call's own
    column, groups = load_bundle(bundle_dir).label_grouping
    assert column == "Metadata_target" and "DMSO" not in groups and len(groups) >= 2
    wells = pd.read_parquet(out / "predictions" / "well_predictions.parquet")
    for table in (predicted, wells):
        expected = table["predicted_label"].map(groups)
        assert table["predicted_Metadata_target"].equals(expected)
        grouped = expected.notna()
        assert (table.loc[grouped, "probability_Metadata_target"] >= table.loc[grouped, "probability"] - 1e-9).all()
        assert table.loc[~grouped, "probability_Metadata_target"].isna().all()
    if chosen == "deep":
        # new cells embedded with the bundle's window give the training run's own profiles: same probabilities
        bundle = load_bundle(bundle_dir)
        table = profile_tables(demo_run, demo_run.read_cells(), list(predicted["image_id"].astype(str)))["deep"]
        probs = features_model_probabilities(bundle.profile_models["deep"], table)
        expected = np.asarray(bundle.profile_models["deep"]["classes"])[probs.argmax(1)]
        assert list(predicted.set_index("image_id").loc[table.index, "predicted_label"]) == list(expected)
        assert not (out / "crops").exists()

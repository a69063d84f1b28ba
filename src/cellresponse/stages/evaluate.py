"""``cellresponse evaluate``: the test side predicted by the bundle's network, voted into images, wells and plates,
scored beside chance, majority and the baselines; ``RUN/predictions/`` and ``RUN/metrics.json``.
``evaluate --features TABLE`` scores the features-only model on a per-image table a user already has."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config, differences
from cellresponse.devices import device_name, inference_device
from cellresponse.errors import InputError
from cellresponse.evaluation.call_tallies import CallTally, merge_tallies, tally_cells
from cellresponse.evaluation.classification import tally_scores
from cellresponse.evaluation.label_groups import (
    group_accuracy,
    grouping_record,
    label_grouping,
    wrong_calls_by_model,
    wrong_calls_sentence,
)
from cellresponse.evaluation.prediction_tables import prediction_table
from cellresponse.evaluation.run_metrics import RunMetrics
from cellresponse.evaluation.votes import LEVELS
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.crop_store import CropStore
from cellresponse.input.feature_tables import read_feature_table
from cellresponse.input.io import write_json, write_parquet
from cellresponse.input.plate import group_keys, labelled_images
from cellresponse.input.runfolder import CellParts, RunFolder
from cellresponse.learning.baselines import (
    cell_features_baseline,
    compare_with_baseline,
    compare_with_embeddings,
    features_baseline,
    headline,
    sanity_check,
    split_summary,
    test_side_parts,
)
from cellresponse.learning.bundle import Bundle, load_bundle
from cellresponse.learning.inference import write_cell_calls
from cellresponse.learning.model_choice import auto_summary, profile_validation_scores
from cellresponse.learning.profile_tables import profile_tables_of
from cellresponse.learning.splits import TEST, assign_split, log_split
from cellresponse.profiling.profile_models import plate_by_plate_statistics
from cellresponse.provenance import made_by

log = logging.getLogger(__name__)

# What evaluate may set differently from training: how predictions are voted and scored, and how it runs.
# Anything else (crop size, network, split, ...) is fixed by the trained model; changing it here would half apply.
EVALUATION_KEYS = (
    "evaluation.",
    "runtime.",
    "embedding.",
    "profiles.",
    "seed",
    "input.control_label",
    "input.target_column",
    # where the network runs, not what it is
    "training.accelerator",
    "training.devices",
    "training.num_nodes",
    "training.num_workers",
)
PREDICTION_COLUMNS = ["cell_id", "image_id", "plate", "well", "true_label"]


def check_same_model_settings(bundle: Bundle, config: Config) -> None:
    """The run's config must describe the bundle's model; only :data:`EVALUATION_KEYS` may differ."""
    changed = differences(bundle.config, config, ignore=EVALUATION_KEYS)
    if changed:
        detail = ", ".join(f"{key}: {old!r} → {new!r}" for key, (old, new) in list(changed.items())[:5])
        raise InputError(
            f"the model was trained with other settings ({detail}); evaluate can only change evaluation.*, "
            "runtime.* and where the network runs (training.accelerator) — to use the new settings, train again: "
            "cellresponse train RUN --overwrite --set ..."
        )


def split_cells(run: RunFolder, images: pd.DataFrame, sides: pd.Series, label: str) -> CellParts:
    """The measured cells of the split's images, with their true label, plate and well, one plate's table at a
    time (a fresh pass each call; ``map`` keeps no plate once it has handed it on)."""
    meta = images.set_index("image_id")[[label, "plate", "well"]].set_axis(["true_label", "plate", "well"], axis=1)
    return lambda: map(partial(with_image_columns, meta=meta), run.cell_parts(sides.index))


def with_image_columns(cells: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """``cells`` with each of ``meta``'s columns (indexed by image id) of its image."""
    for column in meta.columns:
        cells[column] = cells["image_id"].map(meta[column])
    return cells


def say_results(metrics: RunMetrics, vote: str) -> None:
    """The log lines of an evaluation: headline, verdicts, where the calls go wrong, and the split's caveats."""
    for line in headline(metrics, vote):
        log.info(line)
    log.info(metrics.verdict)
    auto = metrics.auto.sentence if metrics.auto else None
    for sentence in (metrics.embeddings_verdict, auto, wrong_calls_sentence(metrics)):
        if sentence:
            log.info(sentence)
    split_report = metrics.split
    if split_report.leaky_classes:
        log.warning(
            "%d classes have sites of one well on both sides of the split: the image-level number is optimistic",
            split_report.leaky_classes,
        )
    if split_report.plate_confounded_images:
        log.warning(
            "%d test images sit on plates whose training images all carry their label: a model can recognise the "
            "plate, so their accuracy is optimistic (split by plate or replicate for an honest number)",
            split_report.plate_confounded_images,
        )


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> RunMetrics:
    """Predict the test side, vote, score, add baselines; writes RUN/predictions and RUN/metrics.json."""
    started = time.perf_counter()
    device = inference_device(config.training.accelerator)
    bundle = load_bundle(run.require(run.bundle, "train"))
    label = config.input.label
    if bundle.meta.get("label") != label:
        raise InputError(f"the model predicts {bundle.meta.get('label')!r}, the run's label is {label!r}")
    check_same_model_settings(bundle, config)
    images = labelled_images(run.read_images(), label)
    sides, split_report = run.read_split()
    parts = split_cells(run, images, sides, label)
    classes = bundle.encoder.classes
    e = config.evaluation
    if not run.images_with_cells(sides.index[sides == TEST]):
        raise InputError("the test side has no cells — nothing to evaluate")
    log.info("the network predicts the test cells on %s, a plate at a time", device_name(device))
    store = CropStore(run.crops)
    label_grouped = label_grouping(images, label, config.grouping_columns(images.columns))
    tallies: list[CallTally] = []  # what the scores need of each plate's calls; the calls go to the table

    def keep(cells: pd.DataFrame, probs: np.ndarray) -> None:
        tallies.append(tally_cells(cells, probs, classes, e.top_k, LEVELS))

    test_plates = test_side_parts(parts, sides)
    write_cell_calls(bundle, store, test_plates, run.cell_predictions, e, keep, PREDICTION_COLUMNS, label_grouped,
                     progress, device)  # fmt: skip
    calls = merge_tallies(tallies)
    tallies.clear()  # the merged tally holds the same; the parts need not be kept beside it
    image_votes = calls.levels["image"]
    image_table = images.set_index("image_id").loc[image_votes.groups].reset_index()
    image_scores = image_votes.scores(e.vote)
    write_parquet(run.image_predictions, prediction_table(image_table, image_scores, classes, e.top_k, label_grouped))

    metrics = RunMetrics.from_json(
        {
            "label": label,
            "classes": len(classes),
            "headline_vote": e.vote,
            **tally_scores(calls, classes, e.top_k),
            "split": split_report,
            **baseline_scores(run, parts, images, sides, bundle, config),
            "verdict": "",  # the verdicts below read the record
            "embeddings_verdict": "",
            "label_grouping": grouping_record(label_grouped),
            "profiles": json.loads(run.profile_metrics.read_text()) if run.profile_metrics.exists() else None,
        }
    )
    cell_confusion = metrics.cell.confusion if metrics.cell else None
    metrics = replace(
        metrics, target_cell_accuracy=group_accuracy(cell_confusion, bundle.label_to_target) if cell_confusion else None
    )
    if bundle.choice:  # before the verdict, which says whether predict's default already follows it
        metrics = replace(metrics, auto=auto_summary(bundle.choice, metrics, e.vote))
    metrics = replace(
        metrics,
        verdict=compare_with_baseline(metrics, e.vote),
        embeddings_verdict=compare_with_embeddings(metrics, e.vote),
        wrong_calls=wrong_calls_by_model(metrics, label_grouped) or None,
        seconds=round(time.perf_counter() - started, 2),
        made_by=made_by(),
    )
    write_json(run.metrics, metrics.to_json())
    say_results(metrics, e.vote)
    run.record_stage("evaluate", {"cells": len(calls), "device": device_name(device), "seconds": metrics.seconds})
    return metrics


def baseline_scores(
    run: RunFolder,
    parts: CellParts,
    images: pd.DataFrame,
    sides: pd.Series,
    bundle: Bundle,
    config: Config,
) -> dict[str, Any]:
    """The profile models of each kind on the same split (the measured one is the features-only baseline), logistic
    regression on single cells, and the study's control-vs-compound sanity check; ``parts`` the split's cells
    plate by plate (:func:`split_cells`)."""
    label, top_k = config.input.label, config.evaluation.top_k
    columns = feature_columns(run.cell_columns())
    # per image, in image-id order, as one table's groupby gave them
    statistics = plate_by_plate_statistics(parts(), columns).sort_index()
    profile_models = {
        kind: features_baseline(table, images, label, sides, top_k, bundle.profile_models.get(kind))
        for kind, table in profile_tables_of(run, statistics, [str(i) for i in sides.index]).items()
    }
    split = split_summary(parts, sides)  # read once for both single-cell baselines
    return {
        "profile_models": profile_models,
        "baseline_features": profile_models["measured"],
        "baseline_cell_features": cell_features_baseline(parts, columns, sides, config.seed, top_k, split=split),
        "sanity_check": sanity_check(parts, columns, sides, config.input.control_label, config.seed, split=split),
    }


def run_feature_table(path: str | Path, config: Config, out: str | Path) -> dict[str, Any]:
    """Features-only evaluation of a per-image table a user already has (e.g. CellProfiler Image.csv
    joined to metadata): same split rules, same metrics, written to OUT/metrics.json — never into a run folder,
    whose metrics.json is its own evaluation."""
    if RunFolder(Path(out)).images.exists():
        raise InputError(
            f"{out} holds a run: its metrics.json is the run's own evaluation, which this would replace — give "
            "--out a folder of its own"
        )
    label = config.input.label
    images, features = read_feature_table(path, label)
    split = config.split.model_copy(update={"validation_fraction": 0.0})  # no network to stop early here
    side, report = assign_split(images, label, split, seed=config.seed, control=config.input.control_label)
    log_split(report)
    sides = pd.Series(side.to_numpy(), index=images["image_id"])
    # tempered as `train` tempers the run's profile models; with no validation side here, on out-of-fold wells
    by_image = images.set_index("image_id")
    held_out = profile_validation_scores({"measured": features}, by_image[label], sides, group_keys(by_image, "well"))
    temperature = held_out["measured"].get("temperature", 1.0)
    baseline = features_baseline(features, images, label, sides, temperature=temperature)
    metrics = {
        "label": label,
        "source": str(path),
        "features": features.shape[1],
        "temperature": temperature,
        **{k: baseline[k] for k in LEVELS if k in baseline},
        "split": report.to_json(),
    }
    write_json(Path(out) / "metrics.json", {**metrics, "made_by": made_by()})
    for level in LEVELS:
        if level in metrics:
            b = metrics[level]
            log.info(
                "%s accuracy %.3f — chance %.3f, majority %.3f [n=%d]",
                level,
                b["accuracy"],
                b["chance_rate"],
                b["majority_rate"],
                b["n"],
            )
    return metrics

"""Prediction tables: the calls of a model per cell, image or well as ``predict`` writes them — the label called,
its probability, the label's group (a compound's mechanism) and the top-k labels — the one-line summary of a
plate's well calls for the console, the open-world answer's columns joined on, and CSV copies for a spreadsheet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import EvaluationConfig
from cellresponse.evaluation.votes import Votes, vote
from cellresponse.input.io import atomic_path, write_parquet
from cellresponse.input.plate import group_keys

log = logging.getLogger(__name__)

# A model chosen on fewer validation images than this gets a warning beside its probabilities.
SMALL_SIDE = 30


def top_labels(scores: np.ndarray, classes: list[str], k: int = 5) -> tuple[list[list[str]], list[list[float]]]:
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    names = np.asarray(classes, dtype=object)[order]
    values = np.take_along_axis(scores, order, axis=1)
    return [list(map(str, n)) for n in names], [list(map(float, v)) for v in values]


def group_calls(
    scores: np.ndarray, classes: list[str], groups: dict[str, str], called: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """The group of each ``called`` label and the summed scores of that group's labels; NaN for a label that has
    no group (a class the mapping does not know is its own group, never pooled with another)."""
    group_of = [groups.get(c, f"\0{c}") for c in classes]
    column_of = {name: j for j, name in enumerate(sorted(set(group_of)))}
    member = np.zeros((len(classes), len(column_of)))
    member[np.arange(len(classes)), [column_of[g] for g in group_of]] = 1.0
    summed = np.asarray(scores, np.float64) @ member  # per row and group: the summed scores of its labels
    column = called.map(lambda c: column_of[groups[c]] if c in groups else -1).to_numpy(np.int64)
    probability = np.where(column >= 0, summed[np.arange(len(column)), np.maximum(column, 0)], np.nan)
    return called.map(groups).to_numpy(dtype=object), probability


def prediction_table(
    table: pd.DataFrame,
    scores: np.ndarray,
    classes: list[str],
    top_k: int = 5,
    grouping: tuple[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """``table`` with the prediction columns added: ``predicted_label``, ``probability`` (its score), with a
    ``grouping`` (a coarser column and each label's group in it, :func:`label_grouping`) the called label's group
    ``predicted_<column>`` and ``probability_<column>`` (the summed scores of that group's labels: a compound call
    may be unsure between compounds of one mechanism and sure of the mechanism), then the top-k labels and scores
    (``top<k>_labels``, ``top<k>_probabilities``)."""
    names, values = top_labels(scores, classes, top_k)
    out = table.copy()
    out["predicted_label"] = [n[0] for n in names]
    out["probability"] = [v[0] for v in values]
    if grouping is not None:
        column, groups = grouping
        out[f"predicted_{column}"], out[f"probability_{column}"] = group_calls(
            scores, classes, groups, out["predicted_label"]
        )
    out[f"top{top_k}_labels"] = names
    out[f"top{top_k}_probabilities"] = values
    return out


def write_image_predictions(
    path: Path,
    table: pd.DataFrame,
    scores: np.ndarray,
    classes: list[str],
    evaluation: EvaluationConfig,
    label: str,
    model: str,
    grouping: tuple[str, dict[str, str]] | None = None,
) -> None:
    """Image predictions with the image table's columns (file paths left out), the model's name and, with the
    bundle's ``grouping``, each call's MoA or gene target; logs the accuracy when the images carry the ``label``
    column (e.g. a held-out plate)."""
    keep = [c for c in table.columns if not c.startswith(("FileName_", "PathName_"))]
    predictions = prediction_table(table[keep], scores, classes, evaluation.top_k, grouping)
    predictions.insert(len(keep), "model", model)
    write_parquet(path, predictions)
    if label in table.columns:
        predicted = np.asarray(classes, dtype=object)[scores.argmax(1)]
        accuracy = float(np.mean(table[label].astype(str).to_numpy() == predicted))
        line = f"these images carry {label}: image accuracy {accuracy:.3f} ({len(table)} images)"
        if grouping is not None and grouping[0] in table.columns:
            column = grouping[0]
            right = predictions[f"predicted_{column}"].astype(str) == table[column].astype(str).to_numpy()
            line += f"; their {column} called right on {float(right.mean()):.3f}"
        log.info(line)


def well_votes(rows: pd.DataFrame, probs: np.ndarray, method: str) -> Votes:
    """The wells (``plate/well``) of ``rows`` (cells of the network, or images of a profile model, with plate and
    well columns) and their probabilities voted as ``method`` (votes.py)."""
    return vote(group_keys(rows, "well").to_numpy(), probs, method)


def write_well_predictions(
    path: Path,
    votes: Votes,
    images: pd.DataFrame,
    classes: list[str],
    evaluation: EvaluationConfig,
    model: str,
    validation: dict[str, Any] | None = None,
    grouping: tuple[str, dict[str, str]] | None = None,
) -> None:
    """One call per well — the unit a screen is laid out in: ``votes`` the wells and their voted scores
    (:func:`well_votes`, or votes merged plate by plate); the well's metadata (the image columns its images share)
    beside the call, so a treatment given in the metadata sits next to it."""
    wells, scores = votes
    keys = group_keys(images, "well")
    described = images.drop(columns=[c for c in images.columns if c.startswith(("FileName_", "PathName_"))])
    metadata = [c for c in described.columns if c.startswith("Metadata_")]
    per_well = described.groupby(keys)
    shared = [c for c, most in per_well[metadata].nunique().max().items() if most <= 1]
    table = per_well[["plate", "well", *shared]].first()
    table.insert(2, "images", keys.value_counts())
    table = table.loc[wells].reset_index(drop=True)
    table.insert(3, "model", model)
    calls = prediction_table(table, scores, classes, evaluation.top_k, grouping)
    write_parquet(path, calls)
    log.info(well_calls_summary(calls, validation=validation, group_column=grouping[0] if grouping else None))


def most_often(counts: pd.Series, shown: int) -> str:
    """``a (3), b (2) and 4 more``: the first ``shown`` of value counts."""
    top = ", ".join(f"{name} ({n})" for name, n in counts.head(shown).items())
    return top + (f" and {len(counts) - shown} more" if len(counts) > shown else "")


def well_calls_summary(
    calls: pd.DataFrame, shown: int = 5, validation: dict[str, Any] | None = None, group_column: str | None = None
) -> str:
    """The calls in one line for the console: how many wells, the most frequent calls, how sure the model was —
    and, where the bundle scored this model on its validation side, how often it was right there, to read beside
    the probability (a profile model's probabilities are tempered on that side; the LDA alone, and a bundle of an
    earlier version, call nearly everything with probability ~1, wrong calls included); with ``group_column``, the
    calls read as the called compounds' MoA or gene target."""
    counts = calls["predicted_label"].value_counts()
    line = (
        f"{len(calls)} wells called {len(counts)} ways — most often {most_often(counts, shown)}; median probability "
        f"of the call {calls['probability'].median():.2f}"
    )
    if validation and validation.get("accuracy") is not None:
        line += (
            f" (on the bundle's validation side this model called {validation['accuracy']:.3f} of "
            f"{validation.get('images', 'its')} images right"
        )
        if validation.get("calibration_images"):
            line += f"; its probabilities tempered on {validation['calibration_images']} held-out images"
        line += ")"
        if validation.get("images", SMALL_SIDE) < SMALL_SIDE:
            line += f" — chosen on only {validation['images']} images: read its probabilities with care"
    if group_column is not None and f"predicted_{group_column}" in calls:
        # what the called compounds do: the wells per group (a label without one, such as the control, not counted)
        groups = calls[f"predicted_{group_column}"].value_counts()
        line += (
            f"; as {group_column}: {most_often(groups, shown)}, median probability "
            f"{calls[f'probability_{group_column}'].median():.2f}"
        )
    return line


def write_csv_copies(paths: list[Path]) -> list[Path]:
    """A CSV beside each prediction table, for a spreadsheet: the top-k lists joined by ``;``."""
    written = []
    for path in paths:
        table = pd.read_parquet(path)
        for column in [c for c in table.columns if c.startswith("top")]:
            table[column] = [
                ";".join(f"{v:.4f}" if isinstance(v, (float, np.floating)) else str(v) for v in row)
                for row in table[column]
            ]
        with atomic_path(path.with_suffix(".csv")) as tmp:
            table.to_csv(tmp, index=False)
        written.append(path.with_suffix(".csv"))
    return written


def add_columns(path: Path, answers: pd.DataFrame, keys: list[str], columns: tuple[str, ...]) -> None:
    """A prediction table with the answer ``columns`` (and the treatment's name) joined on ``keys``."""
    table = pd.read_parquet(path)
    extra = answers[[*keys, "treatment", *[c for c in columns if c in answers.columns]]].copy()
    for key in keys:
        table[key], extra[key] = table[key].astype(str), extra[key].astype(str)
    table = table.drop(columns=[c for c in extra.columns if c in table.columns and c not in keys])
    write_parquet(path, table.merge(extra, on=keys, how="left"))

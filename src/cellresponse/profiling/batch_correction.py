"""Batch correction after normalisation (``profiles.batch_correction``), as JUMP's released profiles end: sphering
(pycytominer's ``Spherize``, ZCA on the correlation matrix, fitted on the negative controls where there are any) and
Harmony (``harmonypy`` on the profiles' principal components; Arevalo et al. 2024 rank it among the best methods
in every JUMP scenario).

Batches come from a column: ``profiles.batch``, else ``Metadata_Batch``, else the plate. A design whose batches
are confounded with compounds (most batches hold one compound and no control, as BBBC021-moa's plates do) is not
corrected: aligning such batches would align the treatments. Sphering is a fixed linear map (a new plate can be put
through it); Harmony has no such map — a new plate is corrected only by fitting again on it and the references
together.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from cellresponse.errors import InputError
from cellresponse.input.plate import did_you_mean

METHODS = ("none", "spherize", "harmony")
BATCH_COLUMNS = ("Metadata_Batch", "Metadata_batch")
SPHERIZE_EPSILON = 1e-3  # ridge on the correlation eigenvalues; see docs/results.md (batch correction)
HARMONY_COMPONENTS = 50


def batch_column(columns: Iterable[str], setting: str | None, plate: str) -> str:
    """The column naming each well's batch: ``setting`` (``profiles.batch``), else ``Metadata_Batch``, else the
    plate column."""
    columns = list(columns)
    if setting:
        return setting
    return next((c for c in BATCH_COLUMNS if c in columns), plate)


def confounded(batches: pd.Series, compounds: pd.Series, controls: np.ndarray) -> bool:
    """Whether most batches are one compound and nothing else: a batch is anchored where it holds negative
    ``controls`` or two or more compounds, and fewer than half the batches are."""
    table = pd.DataFrame({"b": batches.to_numpy(), "c": compounds.to_numpy(), "control": controls})
    by_batch = table.groupby("b")
    anchored = by_batch["control"].any() | (by_batch["c"].nunique() >= 2)
    return float(anchored.mean()) < 0.5


def fit_spherize(values: np.ndarray, epsilon: float = SPHERIZE_EPSILON) -> dict[str, np.ndarray]:
    """pycytominer's ``Spherize(method="ZCA-cor")`` fitted on ``values`` (rows: the wells it is fitted on), as a
    map a new plate can be put through (:func:`apply_spherize`): each feature's mean and scale, then ``W``."""
    from pycytominer.operations.transform import Spherize

    sphere = Spherize(epsilon=epsilon, center=True, method="ZCA-cor", return_numpy=True)
    sphere.fit(pd.DataFrame(values))
    scaler = sphere.standard_scaler
    return {"mean": np.asarray(scaler.mean_), "scale": np.asarray(scaler.scale_), "W": np.asarray(sphere.W)}


def apply_spherize(values: np.ndarray, sphere: dict[str, np.ndarray]) -> np.ndarray:
    return ((values - sphere["mean"]) / sphere["scale"]) @ sphere["W"]


def harmony(values: np.ndarray, batches: np.ndarray, seed: int, components: int = HARMONY_COMPONENTS) -> np.ndarray:
    """The rows' principal components (at most ``components``) corrected by Harmony for ``batches``."""
    import harmonypy
    from sklearn.decomposition import PCA

    n = min(components, values.shape[0] - 1, values.shape[1])
    scores = PCA(n_components=n, random_state=seed).fit_transform(values)
    meta = pd.DataFrame({"batch": pd.Series(batches).astype(str).to_numpy()})
    # harmonypy's default of N / 30 clusters is 0 under 30 wells; one cluster is then a per-batch linear correction
    clusters = max(1, min(len(values) // 30, 100))
    result = harmonypy.run_harmony(scores, meta, "batch", nclust=clusters, random_state=seed, verbose=False)
    corrected = np.asarray(result.Z_corr, dtype=np.float64)
    return corrected.T if corrected.shape[0] != len(values) else corrected


def correct_batches(
    wells: pd.DataFrame,
    features: list[str],
    method: str,
    batches: pd.Series,
    fit_rows: np.ndarray,
    seed: int,
) -> tuple[pd.DataFrame, list[str], str]:
    """The wells corrected by ``method`` (none | spherize | harmony) and their feature columns, with one line saying
    what was done. ``fit_rows`` marks the wells sphering is fitted on (the negative controls, or all)."""
    if method == "none":
        return wells, features, "batch correction: none"
    values = wells[features].to_numpy(np.float64)
    meta = wells.drop(columns=features).reset_index(drop=True)
    if method == "spherize":
        fit = values[fit_rows] if fit_rows.sum() > 2 else values
        out = apply_spherize(values, fit_spherize(fit))
        names, note = features, f"batch correction: spherize (ZCA-cor, fitted on {len(fit)} wells)"
    else:
        if batches.nunique() < 2:
            return wells, features, "batch correction: harmony skipped — there is one batch"
        out = harmony(values, batches.to_numpy(), seed)
        names = [f"harmony_{i + 1}" for i in range(out.shape[1])]
        note = f"batch correction: harmony over {batches.nunique()} batches ({out.shape[1]} principal components)"
    table = pd.concat([meta, pd.DataFrame(out, columns=names)], axis=1)
    table.index = wells.index
    return table, names, note


def corrected_profiles(
    wells: pd.DataFrame,
    features: list[str],
    method: str,
    batch_setting: str | None,
    compound: str | None,
    fit_rows: np.ndarray,
    seed: int,
    controls: np.ndarray | None = None,
) -> tuple[pd.DataFrame, list[str], str]:
    """:func:`correct_batches` with the batch column resolved (:func:`batch_column`; the well's plate as the last
    resort) and a design whose batches are the treatments left uncorrected, saying so."""
    if method == "none":
        return wells, features, "batch correction: none"
    controls = np.zeros(len(wells), bool) if controls is None else controls
    column = batch_column(wells.columns, batch_setting, "Metadata_Plate")
    if column not in wells.columns:
        near = did_you_mean(column, list(wells.columns))
        raise InputError(f"batch column {column!r} (profiles.batch) is not in the profiles{near}")
    batches = wells[column].astype(str)
    if compound and compound in wells.columns and confounded(batches, wells[compound], controls):
        why = "most hold one compound and no negative control: aligning them would align the treatments"
        return wells, features, f"batch correction: {method} skipped — batches ({column}) are confounded ({why})"
    table, names, note = correct_batches(wells, features, method, batches, fit_rows, seed)
    return table, names, f"{note}; batches from {column}"

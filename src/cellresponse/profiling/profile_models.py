"""Profiles: per-image summaries of the cells, and the profile models trained on them.

A *profile* of an image is, by kind (:data:`PROFILE_KINDS`):

``measured``  the distribution of each measured cell feature over the field's cells — mean, sd and five
              percentiles — plus the cell count (:func:`image_feature_table`);
``deep``      the mean embedding of the field's cells (``cellresponse embed``: a frozen ImageNet network);
``both``      the two side by side (:func:`image_profiles`).

A profile model is shrinkage LDA on one kind of profile (:func:`fit_features_model`), stored as plain JSON (a
scaler plus linear coefficients) in the model bundle beside the network, with a temperature fitted on held-out
images (:func:`fit_temperature`) so that its probabilities say how often its calls are right.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.preprocessing import StandardScaler

from cellresponse.errors import InputError
from cellresponse.input.io import column_blocks, one_at_a_time

# Per-image profile of the cell features: their distribution over the field's cells, not only the mean,
# because a treatment often shifts a subpopulation (mitotic, apoptotic cells) more than the average.
# Measured on BBBC021-moa leave-replicate-out (benchmarks/features_ablation.py, docs/design.md), same features and
# classifier: mean only → compound 0.595 / 0.641 per field; mean, sd and five quantiles → 0.714 / 0.800.
PROFILE_STATISTICS = ("mean", "std", "q05", "q25", "q50", "q75", "q95")
FEATURES_MODEL = (
    "shrinkage LDA on per-image profiles (mean, sd, 5/25/50/75/95th percentiles of each cell feature + cell count)"
)
PROFILE_KINDS = ("measured", "deep", "both")
PROFILE_MODELS = {
    "measured": FEATURES_MODEL,
    "deep": "shrinkage LDA on per-image mean embeddings (frozen ImageNet network)",
    "both": "shrinkage LDA on per-image measured profiles and mean embeddings side by side",
}
# Upper bound of a fitted temperature. LDA on hundreds of columns is far too sure of itself (BBBC021-moa compounds:
# median probability of its wrong calls 1.00; measured profiles' validation sides fit T ≈ 12, the deep ones' thousands
# of columns reach the bound), but a validation side with one confidently wrong call among a few right ones could
# push T without bound and flatten every call to chance. Set before any test side was scored with it.
MAX_TEMPERATURE = 100.0


def image_feature_table(cells: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per-image profile: mean, standard deviation and quantiles of each cell feature, plus the cell count
    (the features-only model's input). Columns are ``<feature>__<statistic>`` and ``cell_count``."""
    return filled(image_feature_statistics(cells, columns))


def require_cell_features(available: Iterable[str], needed: Iterable[str], what: str) -> None:
    """Raise :class:`InputError` when cells lack features that ``what`` (a bundle's profile model or references)
    was made from: a bundle of an earlier version, whose measurement named or computed its features otherwise."""
    missing = sorted(set(needed) - set(available))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(
            f"{what} was made from {len(missing)} cell features that these cells do not have ({shown}): the bundle "
            "comes from an earlier version or other measurement settings — measure its training run again and "
            "retrain (cellresponse run --out RUN --from measure --overwrite)"
        )


def filled(table: pd.DataFrame) -> pd.DataFrame:
    """Missing statistics (a feature no cell of a field had) as the mean over fields, else 0."""
    return table.fillna(table.mean()).fillna(0.0).copy()  # copy: one block, not hundreds of inserted columns


def plate_by_plate_feature_table(
    plates: Iterable[pd.DataFrame], columns: list[str], in_image_order: bool = False
) -> pd.DataFrame:
    """:func:`image_feature_table` of cells that come one plate at a time (``plates``, e.g. read from the per-image
    parts), holding one plate's cells at once: a screen's memory stays that of its largest plate. Its rows come in
    the plates' order, or ``in_image_order`` (sorted by image id, as :func:`image_feature_table` gives them: the same
    table to the last bit, the missing values filled over the same rows in the same order)."""
    statistics = plate_by_plate_statistics(plates, columns)
    if in_image_order:
        statistics = statistics.sort_index()
    return filled(statistics) if len(statistics) else pd.DataFrame()


def plate_by_plate_statistics(plates: Iterable[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """:func:`image_feature_statistics` of cells that come one plate at a time, in the plates' order, holding one
    plate's cells at once (no rows where no plate has cells)."""
    parts = one_at_a_time(plates, lambda cells: image_feature_statistics(cells, columns) if len(cells) else None)
    parts = [part for part in parts if part is not None]
    return pd.concat(parts) if parts else pd.DataFrame(columns=["cell_count"])


def image_feature_statistics(cells: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """:func:`image_feature_table` before missing values are filled."""
    image_ids = cells["image_id"].astype(str)
    parts: dict[str, list[pd.DataFrame]] = {statistic: [] for statistic in PROFILE_STATISTICS}
    for block in column_blocks(list(columns)):  # float64 working copies of a few columns at a time
        groups = cells[block].replace([np.inf, -np.inf], np.nan).astype(np.float64).groupby(image_ids)
        for statistic, blocks in parts.items():
            if statistic == "mean":
                blocks.append(groups.mean())
            elif statistic == "std":
                blocks.append(groups.std(ddof=0))
            else:
                blocks.append(groups.quantile(int(statistic[1:]) / 100))
    if not columns:
        parts = {statistic: [pd.DataFrame(index=pd.Index(sorted(set(image_ids))))] for statistic in parts}
    table = pd.concat([pd.concat(blocks, axis=1).add_suffix(f"__{name}") for name, blocks in parts.items()], axis=1)
    table["cell_count"] = cells.groupby(image_ids).size()
    return table


def image_profiles(kind: str, measured: pd.DataFrame | None, deep: pd.DataFrame | None) -> pd.DataFrame:
    """The per-image profile of one kind from the measured table (:func:`image_feature_table`) and the mean
    embeddings (index image_id, ``emb_…`` columns); ``both`` keeps the images that have both."""
    if kind not in PROFILE_KINDS:
        raise InputError(f"unknown profile kind {kind!r}; choose one of: {', '.join(PROFILE_KINDS)}")
    needed = {"measured": [measured], "deep": [deep], "both": [measured, deep]}[kind]
    present = [table for table in needed if table is not None]
    if len(present) < len(needed):
        missing = "the embeddings (cellresponse embed)" if deep is None else "the measured cells"
        raise InputError(f"the {kind} profile needs {missing}")
    tables = [table.set_axis(table.index.astype(str)) for table in present]
    return tables[0] if len(tables) == 1 else pd.concat(tables, axis=1, join="inner")


def profile_cell_columns(columns: list[str]) -> list[str]:
    """The cell-level columns an :func:`image_feature_table` was built from."""
    return list(dict.fromkeys(c.rsplit("__", 1)[0] for c in columns if "__" in c))


def why_no_features_model(labels: np.ndarray | pd.Series) -> str | None:
    """Why no profile model can be fitted on images with these labels, or None when one can: LDA needs two classes
    and more images than classes (scikit-learn otherwise stops with a bare ValueError)."""
    n_classes = len(set(np.asarray(labels).astype(str)))
    if n_classes < 2:
        return "the training side holds fewer than two classes"
    if len(labels) <= n_classes:
        return f"the training side holds {len(labels)} images for {n_classes} classes (a profile model needs more)"
    return None


def fit_features_model(
    features: pd.DataFrame, labels: np.ndarray, kind: str = "measured", temperature: float = 1.0
) -> dict[str, Any]:
    """Fit a profile model on per-image profiles of ``kind`` and return it as plain JSON (stored in the model
    bundle), with the ``temperature`` its probabilities are tempered by (:func:`fit_temperature`).

    Linear discriminant analysis with Ledoit-Wolf shrinkage: hundreds of correlated profile columns
    against a few hundred training images is where plain LDA breaks down and shrinkage holds
    (benchmarks/features_ablation.py: compound 0.714 / 0.800 per field vs 0.636 / 0.695 for logistic
    regression on the same profiles; MoA 0.995 / 0.977 vs 1.000 / 0.955).
    Its decision function is linear, so the model is stored as a scaler plus coefficients.
    The same model serves every kind: a PCA to 50/100/200 components before it lost compound accuracy on every
    kind in the choosing direction (BBBC021-moa, train replicate 1: measured 0.714 without, 0.650/0.641/0.536
    with; deep 0.718 without, 0.664/0.682/0.691 with), so there is none."""
    x = features.to_numpy(np.float64)
    scaler = StandardScaler().fit(x)
    # Constant columns get scale 1 (scikit-learn's choice), so they stay 0 after scaling.
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    with warnings.catch_warnings():
        # A class with one training image warns about its covariance; the pooled, shrunk one is still fine.
        warnings.filterwarnings("ignore", message="Only one sample available")
        lda.fit(scaler.transform(x), np.asarray(labels).astype(str))
    return {
        "model": PROFILE_MODELS[kind],
        "kind": kind,
        "classes": [str(c) for c in lda.classes_],
        "columns": list(features.columns),
        "cell_columns": profile_cell_columns(list(features.columns)),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": np.atleast_2d(lda.coef_).tolist(),
        "intercept": np.atleast_1d(lda.intercept_).tolist(),
        "temperature": temperature,
    }


def features_model_logits(model: dict[str, Any], features: pd.DataFrame) -> np.ndarray:
    """The untempered class scores of a :func:`fit_features_model` model, one column per class (a binary model's
    single decision function becomes ``[0, d]``, whose softmax is scikit-learn's ``predict_proba``)."""
    missing = [c for c in model["columns"] if c not in features.columns]
    if missing:
        raise InputError(f"the features-only model needs columns {missing} — measure with the bundle's settings")
    x = (features[model["columns"]].to_numpy(np.float64) - np.asarray(model["mean"])) / np.asarray(model["scale"])
    logits = x @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    if logits.shape[1] == 1:  # binary: scikit-learn keeps one column, the second class's log-odds
        logits = np.column_stack([np.zeros(len(logits)), logits[:, 0]])
    return logits


def features_model_probabilities(model: dict[str, Any], features: pd.DataFrame) -> np.ndarray:
    """Class probabilities of a :func:`fit_features_model` model: the softmax of its logits divided by the model's
    ``temperature`` (1 — scikit-learn's own probabilities — for a model stored without one). The temperature never
    changes which class is called, only how sure the call says it is."""
    return softmax(features_model_logits(model, features) / float(model.get("temperature", 1.0)), axis=1)


def held_out_logits(model: dict[str, Any], features: pd.DataFrame, labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A model's logits on held-out images and each image's true class as a column index; images of a class the
    model never saw are left out (no probability can be right for them)."""
    codes = pd.Index(model["classes"]).get_indexer(labels.loc[features.index].astype(str))
    known = codes >= 0
    return features_model_logits(model, features[known]), codes[known]


def fit_temperature(held_out: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The temperature ``T`` that makes a profile model's probabilities fit held-out images: the one minimising their
    mean negative log-likelihood with the logits divided by ``T`` (temperature scaling, Guo et al. 2017), between 1
    and :data:`MAX_TEMPERATURE`. ``held_out`` holds (logits, true column) pairs, one per held-out fold.

    Never below 1: a held-out side the model gets all right pulls T towards 0, and a few dozen images do not
    justify claiming more certainty than the LDA itself. Without held-out images, 1."""
    blocks = [(np.asarray(z, np.float64), np.asarray(y, int)) for z, y in held_out if len(y)]
    if not blocks:
        return 1.0
    n = sum(len(y) for _, y in blocks)

    def mean_nll(log_t: float) -> float:
        t = np.exp(log_t)
        return -sum(log_softmax(z / t, axis=1)[np.arange(len(y)), y].sum() for z, y in blocks) / n

    best = minimize_scalar(mean_nll, bounds=(0.0, np.log(MAX_TEMPERATURE)), method="bounded")
    # The bounded search stops within its tolerance of a bound when the optimum lies on it: snap to 1 exactly
    # where 1 is no worse, so a model its held-out side cannot fault keeps scikit-learn's probabilities, and to
    # the upper bound where that is no worse (99.9995 is the bound, and reads as 100 in the bundle).
    if mean_nll(0.0) <= best.fun:
        return 1.0
    if mean_nll(np.log(MAX_TEMPERATURE)) <= best.fun:
        return MAX_TEMPERATURE
    return round(float(np.exp(best.x)), 3)

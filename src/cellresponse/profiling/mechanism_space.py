"""The mechanism-discriminant space: where the references' mechanisms lie furthest apart.

A cosine over every profile column weighs the directions in which a replicate, a plate or one compound's own
quirks vary as much as those that tell mechanisms apart. Linear discriminant analysis of the reference fields'
mechanisms keeps the (mechanisms − 1) directions along which mechanisms differ most relative to the spread within
them; a new compound's mechanism is called by its nearest reference treatment there. The within-mechanism
covariance is shrunk as Ledoit & Wolf (2004) estimate it (scikit-learn's ``shrinkage="auto"``), with no setting to
tune: the references have far more columns (~1,800) than fields (~220 on BBBC021-moa).

The projection is not centred: the origin stays the normalisation's (the negative controls, or all reference
wells), as in the profile cosine. A space needs at least :data:`MIN_MECHANISMS` mechanisms — with two it has one
dimension, where a cosine is only a sign. How often its calls are right is measured as a new compound meets it: by
leave-one-compound-out with the space fitted again without the left-out compound (:func:`held_out_spaces`), so
the calibration never scores a compound in a space that saw it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from cellresponse.input.io import atomic_path
from cellresponse.profiling.similarity import cosine_similarity

MIN_MECHANISMS = 3
# Leave-one-compound-out fits one space per reference compound; beyond this many compounds (a JUMP reference set
# holds hundreds), compounds are left out in this many groups instead (each group fitted once).
MOST_FOLDS = 20


@dataclass(frozen=True)
class MechanismSpace:
    """A linear map of the references' profile ``columns`` onto ``scalings.shape[1]`` discriminant directions of
    the ``mechanisms``."""

    columns: list[str]
    scalings: np.ndarray  # (columns, directions)
    mechanisms: list[str]

    def project(self, values: np.ndarray) -> np.ndarray:
        """Rows of profile values (in :attr:`columns` order) in the space."""
        return np.asarray(values, np.float64) @ self.scalings

    def similarity(self, queries: pd.DataFrame, treatments: pd.DataFrame) -> np.ndarray:
        """The cosine of every query row with every treatment row (tables holding :attr:`columns`) in the space."""
        return cosine_similarity(
            self.project(queries[self.columns].to_numpy()), self.project(treatments[self.columns].to_numpy())
        )


def fit_mechanism_space(values: np.ndarray, mechanisms: np.ndarray, columns: list[str]) -> MechanismSpace | None:
    """The discriminant space of ``mechanisms`` (one per row of ``values``), or None with fewer than
    :data:`MIN_MECHANISMS` of them."""
    names = np.asarray(mechanisms).astype(str)
    if len(np.unique(names)) < MIN_MECHANISMS:
        return None
    with warnings.catch_warnings():
        # A mechanism with a single reference field (common in a JUMP reference set) has no spread of its own: its
        # zero within-mechanism covariance is right, and scikit-learn's Ledoit-Wolf warning for it, printed once per
        # such mechanism and per leave-one-compound-out fold, would tell a user nothing.
        warnings.filterwarnings("ignore", "Only one sample available", UserWarning)
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(np.asarray(values, np.float64), names)
    directions = len(lda.classes_) - 1
    return MechanismSpace(list(columns), lda.scalings_[:, :directions].copy(), [str(c) for c in lda.classes_])


def compound_folds(compounds: np.ndarray, most: int = MOST_FOLDS) -> dict[str, int]:
    """Each compound's fold: one compound a fold up to ``most`` compounds, beyond that ``most`` folds, the sorted
    compounds dealt round them in turn."""
    names = sorted({str(c) for c in compounds})
    return {name: i % most for i, name in enumerate(names)}


def held_out_spaces(
    values: np.ndarray, compounds: np.ndarray, mechanisms: np.ndarray, columns: list[str], most: int = MOST_FOLDS
) -> tuple[dict[str, int], dict[int, MechanismSpace | None]]:
    """Each compound's fold (:func:`compound_folds`) and, per fold, the space fitted on the rows of every other
    fold's compounds that have a mechanism (None where they hold fewer than :data:`MIN_MECHANISMS`)."""
    folds = compound_folds(compounds, most)
    fold_of_row = np.array([folds[str(c)] for c in compounds])
    mechanisms = np.asarray(mechanisms, dtype=object)
    labelled = np.asarray(pd.notna(mechanisms), dtype=bool)
    spaces = {}
    for fold in sorted(set(folds.values())):
        rows = (fold_of_row != fold) & labelled
        spaces[fold] = fit_mechanism_space(values[rows], mechanisms[rows], columns)
    return folds, spaces


def save_space(path: str | Path, space: MechanismSpace) -> None:
    """``space`` as one ``.npz`` (its scalings, columns and mechanisms)."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            scalings=space.scalings,
            columns=np.asarray(space.columns, dtype=str),
            mechanisms=np.asarray(space.mechanisms, dtype=str),
        )


def load_space(path: str | Path) -> MechanismSpace | None:
    """The space :func:`save_space` wrote, or None where there is no such file (a bundle made before spaces)."""
    if not Path(path).is_file():
        return None
    with np.load(path) as saved:
        columns, mechanisms = [str(c) for c in saved["columns"]], [str(m) for m in saved["mechanisms"]]
        return MechanismSpace(columns, saved["scalings"].astype(np.float64), mechanisms)

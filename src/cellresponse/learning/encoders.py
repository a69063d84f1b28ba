"""The label encoder and the feature scaler of the network: fitted on the training side, kept in the model bundle
as plain JSON (nothing pickled), applied to every cell the network sees."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellresponse.errors import InputError
from cellresponse.input.io import column_blocks, one_at_a_time


@dataclass
class LabelEncoder:
    """Class names ↔ integer codes, in sorted order; a name never fitted is -1."""

    classes: list[str]

    @classmethod
    def fit(cls, values: pd.Series | np.ndarray | list[str]) -> LabelEncoder:
        return cls(sorted({str(v) for v in values}))

    def transform(self, values: pd.Series | list[str]) -> np.ndarray:
        # vectorised: a screen's training side is millions of cells, and a list of Python ints costs ~36 B each;
        # categorical values map their categories, not a string per cell
        classes = pd.Index(self.classes, dtype=object)
        if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.to_numpy()
            mapped = classes.get_indexer(values.cat.categories.astype(str))
            return np.where(codes >= 0, mapped[codes], -1).astype(np.int64)
        return classes.get_indexer(pd.Index(pd.Series(values, dtype=object).astype(str))).astype(np.int64)

    def inverse(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[np.asarray(codes)]


@dataclass
class Scaler:
    """StandardScaler fitted on the training side only; NaN/inf become the training mean (0)."""

    columns: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, table: pd.DataFrame, columns: list[str]) -> Scaler:
        values = np.array(table[columns].to_numpy(np.float64), copy=True)
        values[~np.isfinite(values)] = np.nan
        mean = np.nan_to_num(np.nanmean(values, axis=0)) if len(values) else np.zeros(len(columns))
        std = np.nan_to_num(np.nanstd(values, axis=0)) if len(values) else np.ones(len(columns))
        std[std == 0] = 1.0
        return cls(list(columns), mean.tolist(), std.tolist())

    @classmethod
    def fit_parts(cls, parts: Iterable[pd.DataFrame], columns: list[str]) -> Scaler:
        """:meth:`fit` over tables that come one at a time (a screen's plates), holding one: each part's count,
        mean and sum of squared deviations per column (finite values only), pooled as Chan et al. (1979) pool
        them — equal to :meth:`fit` on the concatenation within rounding (~1e-15 relative)."""
        count, mean, squares = np.zeros(len(columns)), np.zeros(len(columns)), np.zeros(len(columns))
        for n, part_mean, part_squares in one_at_a_time(parts, lambda part: column_moments(part, columns)):
            if not n.any():
                continue
            total = count + n
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = part_mean - mean
                mean = np.where(total > 0, mean + delta * n / total, 0.0)
                squares = np.where(total > 0, squares + part_squares + delta**2 * count * n / total, 0.0)
            count = total
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(count > 0, np.sqrt(squares / count), 1.0)
        std[std == 0] = 1.0
        return cls(list(columns), mean.tolist(), std.tolist())

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise InputError(f"feature columns missing: {missing}")
        out = np.empty((len(table), len(self.columns)), dtype=np.float32)
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        start = 0
        for block in column_blocks(self.columns):  # float64 working copies of a few columns at a time
            at = slice(start, start + len(block))
            scaled = (table[block].to_numpy(np.float64) - mean[at]) / std[at]
            scaled[~np.isfinite(scaled)] = 0.0
            out[:, at], start = scaled, at.stop
        return out


def count_nonfinite(table: pd.DataFrame, columns: list[str]) -> int:
    """How many values of ``columns`` are NaN or infinite (the scaler sets them to the training mean)."""
    return sum(int((~np.isfinite(table[block].to_numpy(np.float64))).sum()) for block in column_blocks(columns))


def column_moments(table: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``table``: the count of finite values, their mean and their sum of squared deviations (what
    :meth:`Scaler.fit_parts` pools), computed a block of columns at a time (each column on its own, so the
    figures are those of the whole table at once)."""
    moments = [block_moments(table[block].to_numpy(np.float64)) for block in column_blocks(columns)]
    if not moments:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    n, mean, squares = (np.concatenate(parts) for parts in zip(*moments, strict=True))
    return n, mean, squares


def block_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`column_moments` of one block of columns (an array, one column a feature)."""
    finite = np.isfinite(values)
    n = finite.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / n
        squares = np.where(finite, values - mean, 0.0) ** 2
    return n, np.nan_to_num(mean), squares.sum(axis=0)

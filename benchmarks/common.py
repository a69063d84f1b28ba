"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def subset_csv(source: Path, n: int, folder: Path) -> Path:
    """The first ``n`` rows of a load_data.csv, with absolute paths, written into ``folder``."""
    table = pd.read_csv(source).head(n)
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [str((source.parent / p).resolve()) for p in table[column]]
    path = folder / "subset.csv"
    table.to_csv(path, index=False)
    return path

"""Benchmark: which per-image features and which classifier make the features-only model (BBBC021-moa).

Leave-replicate-out on ../shared/data/bbbc021-moa (train replicate 1 / test 2, and the swap), field-level
accuracy, for every combination of
  cell features   study    the study's 12 shape/intensity columns (segmentation input only)
                  +means   plus per-channel mean/min/max intensity
                  -extended  + spread, outline/inside, mean gradient, nucleus/cytoplasm (the default
                           before `measurement.extended`)
                  all      every measured column (the default measurement: the above + co-occurrence texture,
                           radial distribution, colocalisation, neighbours)
  per image       mean     mean of each cell feature + cell count
                  profile  mean, sd and 5/25/50/75/95th percentiles + cell count (the default)
  classifier      logreg   standardised logistic regression (C = 1)
                  lda      shrinkage LDA (the default, `profiles.fit_features_model`)

Segmentation and measurement run once with the default config (skipped when RUN/cells.parquet exists).
The last row is what `evaluate` reports as the features-only baseline. All rows are scored on the same
splits they were chosen on (the shared data has no third replicate), so the best row is optimistic.

Usage: python benchmarks/features_ablation.py [--run benchmark-runs/bbbc021-moa-measured]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from common import SHARED

from cellresponse.features.cell_features import EXTENDED_PREFIXES, FEATURES, feature_columns
from cellresponse.profiling.profile_models import features_model_probabilities, fit_features_model, image_feature_table

LABELS = ("Metadata_MoA", "Metadata_Compound")


def logistic_accuracy(train: pd.DataFrame, y_train, test: pd.DataFrame, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on the widest tables
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(train, y_train)
    return float(np.mean(model.predict(test) == y_test))


def lda_accuracy(train: pd.DataFrame, y_train, test: pd.DataFrame, y_test) -> float:
    model = fit_features_model(train, y_train)
    predicted = np.asarray(model["classes"])[features_model_probabilities(model, test).argmax(1)]
    return float(np.mean(predicted == y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("benchmark-runs/bbbc021-moa-measured"))
    args = parser.parse_args()
    load_data = SHARED / "bbbc021-moa" / "load_data.csv"
    if not (args.run / "cells.parquet").exists():
        if not load_data.is_file():
            raise SystemExit(f"data not found: {load_data} (needs ../shared/data)")
        command = [sys.executable, "-m", "cellresponse.cli", "run", "--load-data", str(load_data)]
        command += ["--label", "Metadata_MoA", "--out", str(args.run), "--until", "measure", "--no-progress"]
        subprocess.run(command, check=True)
    cells = pd.read_parquet(args.run / "cells.parquet")
    images = pd.read_parquet(args.run / "images.parquet").set_index("image_id")
    measured = feature_columns(cells.columns)
    basic = ("Intensity_MeanIntensity_", "Intensity_MinIntensity_", "Intensity_MaxIntensity_")
    means = [c for c in measured if c.startswith(basic)]
    feature_sets = {
        "study": [c for c in FEATURES if c in cells.columns],
        "+means": [c for c in FEATURES if c in cells.columns] + means,
        "-extended": [c for c in measured if not c.startswith(EXTENDED_PREFIXES)],
        "all": measured,
    }
    replicate = images["Metadata_Replicate"].astype(str)
    print(f"{len(cells)} cells, {len(images)} fields; field accuracy, test replicate 2 / 1\n")
    print(f"{'cell features':<14} {'per image':<9} {'classifier':<10} {'cols':>5} {'MoA':>13} {'compound':>13}")
    for set_name, columns in feature_sets.items():
        profile = image_feature_table(cells, columns)
        tables = {
            "mean": profile[[c for c in profile.columns if c.endswith("__mean")] + ["cell_count"]],
            "profile": profile,
        }
        for table_name, table in tables.items():
            for classifier, score in (("logreg", logistic_accuracy), ("lda", lda_accuracy)):
                started = time.perf_counter()
                cells_out = []
                for label in LABELS:
                    y = images.loc[table.index, label].astype(str).to_numpy()
                    pair = []
                    for test in ("2", "1"):
                        is_test = (replicate.loc[table.index] == test).to_numpy()
                        pair.append(score(table[~is_test], y[~is_test], table[is_test], y[is_test]))
                    cells_out.append(f"{pair[0]:.3f} / {pair[1]:.3f}")
                print(
                    f"{set_name:<14} {table_name:<9} {classifier:<10} {table.shape[1]:>5} {cells_out[0]:>13} "
                    f"{cells_out[1]:>13}   ({time.perf_counter() - started:.1f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()

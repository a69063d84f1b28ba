"""Do the profile models' probabilities say how often their calls are right? Temperature against none, BBBC021-moa.

    python benchmarks/calibration.py --run RUN

RUN: a run of ../shared/data/bbbc021-moa/load_data.csv through `profile` with the README's settings, e.g.

    cellresponse run --load-data ../shared/data/bbbc021-moa/load_data.csv --label Metadata_MoA --preset finetune \\
        --split-column Metadata_Replicate --test-values 2 --out RUN --until profile

For each label (MoA, compound), each test replicate (2, 1) and each profile kind it does what `train` and
`evaluate` do for the profile models — the run's split settings with that label and test replicate, each kind
scored on the validation side, which also fits its temperature (`selection.profile_validation_scores`), the model
refitted on all non-test images (`train.profile_models`), scored on the test side (`baselines.features_baseline`)
— once with the fitted temperature and once with none (T = 1, the LDA's own probabilities), and prints per field
and per well (soft vote) the accuracy, the mean probability of the calls and the log loss, and per field the
expected calibration error (10 bins). The temperature is fitted on validation images only; the test columns are
measured after it, so they are a fair check of it. The field accuracy cannot move (a temperature never changes a
call); the well accuracy can (the soft vote averages probabilities).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from cellresponse.config import load_config
from cellresponse.input.plate import group_keys, labelled_images
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.baselines import features_baseline
from cellresponse.learning.model_choice import fit_profile_models, fitted_temperatures, profile_validation_scores
from cellresponse.learning.profile_tables import profile_tables
from cellresponse.learning.splits import TEST, assign_split
from cellresponse.profiling.profile_models import features_model_probabilities

LABELS = ("Metadata_MoA", "Metadata_Compound")
BINS = 10


def calibration_error(probabilities: np.ndarray, right: np.ndarray) -> float:
    """Expected calibration error: the share-weighted gap between mean probability and accuracy, per bin of the
    call's probability."""
    sure = probabilities.max(axis=1)
    bins = np.minimum((sure * BINS).astype(int), BINS - 1)
    return float(sum(abs(sure[bins == b].mean() - right[bins == b].mean()) * np.mean(bins == b) for b in set(bins)))


def scored(model: dict, table: pd.DataFrame, images: pd.DataFrame, label: str, sides: pd.Series) -> dict:
    """Test-side accuracy, mean probability and log loss per field and per well, and the fields' calibration error."""
    result = features_baseline(table, images, label, sides, model=model)
    test = table[(sides.reindex(table.index) == TEST).to_numpy()]
    probabilities = features_model_probabilities(model, test)
    truth = images.set_index(images["image_id"].astype(str)).loc[test.index, label].astype(str).to_numpy()
    classes = np.asarray(model["classes"])
    return {
        "field": result["image"]["accuracy"],
        "well": result["well"]["accuracy"],
        "field_p": result["image"]["mean_probability"],
        "well_p": result["well"]["mean_probability"],
        "field_loss": log_loss(truth, np.clip(probabilities, 1e-15, 1.0), labels=classes),
        "field_ece": calibration_error(probabilities, classes[probabilities.argmax(1)] == truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # LDA's one-image classes; log_loss's renormalisation
    started = time.perf_counter()
    run = RunFolder(args.run)
    if not (run.config.is_file() and run.cells.exists()):
        raise SystemExit(f"{args.run} is not a measured run folder — make one with the command in this script's help")
    config = load_config(run.config)
    table = run.read_images()
    cells = run.read_cells()
    s = config.split
    print(
        f"{'label':9} {'test':>4} {'kind':9} {'T':>6}  {'field acc':>9} {'well acc (T=1 → T)':>19} "
        f"{'field mean p (T=1 → T)':>23} {'well mean p':>13} {'field log loss':>15} {'field ECE':>13}"
    )
    for label in LABELS:
        images = labelled_images(table, label)
        labels = images.set_index(images["image_id"].astype(str))[label]
        for test in ("2", "1"):
            split = s.model_copy(update={"by": "column", "column": "Metadata_Replicate", "test_values": [test]})
            side, _ = assign_split(images, label, split, seed=config.seed)
            sides = pd.Series(side.to_numpy(), index=images["image_id"].astype(str))
            tables = profile_tables(run, cells, list(sides.index))
            wells = group_keys(images.set_index(images["image_id"].astype(str)), "well")
            scores = profile_validation_scores(tables, labels, sides, wells)
            temperatures = fitted_temperatures(scores)
            models = fit_profile_models(tables, labels, sides, temperatures)
            for kind, model in models.items():
                plain = scored({**model, "temperature": 1.0}, tables[kind], images, label, sides)
                tempered = scored(model, tables[kind], images, label, sides)
                assert plain["field"] == tempered["field"]  # a temperature never changes a call

                def pair(key: str) -> str:
                    return f"{plain[key]:.3f} → {tempered[key]:.3f}"  # noqa: B023 — used in this iteration only

                print(
                    f"{label[9:]:9} {test:>4} {kind:9} {model['temperature']:6.2f}  {tempered['field']:9.3f} "
                    f"{pair('well'):>19} {pair('field_p'):>23} {pair('well_p'):>13} {pair('field_loss'):>15} "
                    f"{pair('field_ece'):>13}",
                    flush=True,
                )
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Profile settings against the field's benchmark: not-same-compound (NSC) MoA accuracy on BBBC021-moa.

    python benchmarks/profiles_nsc.py --run RUN

RUN: a run of ../shared/data/bbbc021-moa/load_data.csv measured and embedded with the defaults
(`cellresponse run ... --until embed`). For each profile kind (measured, deep, both) and each normalisation
(standardize, spherize) it prints NSC accuracy over the 55 treatments from replicate 1's wells only — the split
that chooses the settings — then from replicate 2's wells only and from both replicates (reported, not used to
choose). Treatments: compound × concentration; chance beside it.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

from cellresponse.config import load_config
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.profile_benchmarks import nsc_accuracy
from cellresponse.profiling.well_profiles import TREATMENT, combined_profiles, normalized_wells, treatment_profiles
from cellresponse.stages.profile import image_metadata, image_tables

SETTINGS = [
    "profiles.treatment=[Metadata_Compound,Metadata_Concentration]",
    "profiles.compound=Metadata_Compound",
    "profiles.moa=Metadata_MoA",
]


def nsc(wells: pd.DataFrame, features: list[str]) -> dict:
    treatments = treatment_profiles(wells, features, "mean")
    return nsc_accuracy(treatments[features].to_numpy(), treatments["Metadata_MoA"], treatments["Metadata_Compound"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    run = RunFolder(args.run)
    config = load_config(run.config, None, SETTINGS)
    images = run.read_images()
    meta = image_metadata(images, config)
    compound = config.compound_column(meta.columns)
    tables = image_tables(run, ["measured", "deep"], images)  # the profile stage's own fields → wells path
    print(f"{'kind':9} {'normalisation':12} {'rep 1 (chooses)':>16} {'rep 2':>7} {'both reps':>10} {'chance':>7}")
    for method in ("standardize", "spherize"):
        try:
            normalized = {
                kind: normalized_wells(table, features, meta, config.profiles, compound, None, method)[:2]
                for kind, (table, features) in tables.items()
            }
        except ValueError as exc:  # sphering fails on zero-variance columns (e.g. per-channel embeddings)
            print(f"{'all':9} {method:12} failed: {exc}")
            continue
        normalized["both"] = combined_profiles(*normalized["measured"], *normalized["deep"])
        for kind, (wells, features) in normalized.items():
            rep = wells["Metadata_Replicate"].astype(str)
            scores = [nsc(wells[rep == r], features) for r in ("1", "2")] + [nsc(wells, features)]
            print(
                f"{kind:9} {method:12} {scores[0]['accuracy']:16.3f} {scores[1]['accuracy']:7.3f} "
                f"{scores[2]['accuracy']:10.3f} {scores[2]['chance_rate']:7.3f}"
            )
    print(f"({TREATMENT}: compound @ concentration; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

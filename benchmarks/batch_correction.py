"""Batch correction (``profiles.batch_correction``: none | spherize | harmony) on the profile stage's benchmarks.

    python benchmarks/batch_correction.py MOA_RUN [--tiled TILED_RUN]

MOA_RUN: bbbc021-moa through ``profile`` (see unseen_compounds.py); its replicates are the batches (each holds all 55
treatments, on other plates). Per method and profile kind: NSC MoA accuracy of treatment profiles, NSC and NSCB (not
same compound, not same batch) of well profiles (a treatment's consensus spans both batches) and the replicate mAP,
as ``cellresponse profile RUN --set profiles.batch=Metadata_Replicate --set profiles.batch_correction=METHOD``
computes them.

TILED_RUN: the tiled BBBC021 plates (DMSO vs cycloheximide, DMSO on every plate) through ``measure``; the plates are
the batches. Per method: each cycloheximide treatment's well-level copairs mAP against the DMSO wells, and how many
are separated (p < 0.05).

The profile stage rewrites RUN/profiles for each method; a run that had profiles gets its own back at the end.
"""

from __future__ import annotations

import argparse
import json
import logging

import pandas as pd

from cellresponse.evaluation.run_metrics import ProfileMetrics
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.activity import copairs_activity
from cellresponse.profiling.profile_benchmarks import nsc_accuracy
from cellresponse.profiling.well_profiles import TREATMENT
from cellresponse.stages import profile

METHODS = ("none", "spherize", "harmony")


def profile_with(run: RunFolder, method: str, batch: str | None, kinds: list[str]) -> ProfileMetrics:
    config = run.load_config()
    config = config.model_copy(
        update={
            "profiles": config.profiles.model_copy(update={"batch_correction": method, "batch": batch, "kinds": kinds})
        }
    )
    return profile.run(run, config, progress=False)


def batch_note(metrics: ProfileMetrics) -> str:
    return next(n for n in metrics.normalization if n.startswith("batch correction"))


def moa_benchmark(run: RunFolder) -> None:
    print(f"{run.root}: replicates as batches")
    for method in METHODS:
        metrics = profile_with(run, method, "Metadata_Replicate", ["measured", "deep", "both"])
        print(f"  {method:>9}: {batch_note(metrics)}")
        for kind, result in metrics.kinds.items():
            # NSC / NSCB per well: a treatment's consensus spans both replicates, so NSCB needs the wells
            wells = pd.read_parquet(run.profile_path(kind, "wells"))
            features = [c for c in wells.columns if not c.startswith("Metadata_")]
            x, moa, compound = wells[features].to_numpy(), wells["Metadata_MoA"], wells["Metadata_Compound"]
            nsc = nsc_accuracy(x, moa, compound)["accuracy"]
            nscb = nsc_accuracy(x, moa, compound, wells["Metadata_Replicate"].astype(str).to_numpy())["accuracy"]
            print(
                f"             {kind:>8}: treatments NSC {result.nsc.accuracy:.3f}; wells NSC {nsc:.3f}, "
                f"NSCB {nscb:.3f}; replicate mAP {result.map_replicates.mean_average_precision:.3f}"
            )


def tiled_benchmark(run: RunFolder) -> None:
    print(f"{run.root}: plates as batches, cycloheximide against DMSO (well profiles)")
    for method in METHODS:
        metrics = profile_with(run, method, None, ["measured"])
        wells = pd.read_parquet(run.profile_path("measured", "wells"))
        features = [c for c in wells.columns if not c.startswith("Metadata_")]
        control = (wells["Metadata_control_kind"] == "negcon").to_numpy()
        activity = copairs_activity(
            wells[features].to_numpy(), wells[TREATMENT].to_numpy(), control, seed=0,
            wells=(wells["Metadata_Plate"] + "/" + wells["Metadata_Well"]).to_numpy(),
        )  # fmt: skip
        print(
            f"  {method:>9}: {batch_note(metrics)}; mAP vs DMSO "
            + ", ".join(f"{t} {m:.3f}" for t, m in zip(activity["treatment"], activity["activity_map"], strict=True))
            + f" (p {', '.join(f'{p:.3g}' for p in activity['activity_p'])}; wells {len(wells)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--tiled")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for folder, benchmark in ((args.run, moa_benchmark), (args.tiled, tiled_benchmark)):
        if folder is None:
            continue
        run = RunFolder(folder)
        original, had_profiles = run.load_config(), run.profile_metrics.exists()
        if had_profiles:  # restore the kinds it had (a run through measure has no deep profiles)
            kinds = list(json.loads(run.profile_metrics.read_text())["kinds"])
            original = original.model_copy(update={"profiles": original.profiles.model_copy(update={"kinds": kinds})})
        try:
            benchmark(run)
        finally:
            if had_profiles:
                profile.run(run, original, progress=False)


if __name__ == "__main__":
    main()

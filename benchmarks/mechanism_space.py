"""Where should ``moa_call`` be made? The references' own leave-one-compound-out calls, and novelty, in the
mechanism-discriminant space against the profile cosine (issue 33; mechanism_space.py).

    python benchmarks/mechanism_space.py RUN [--novelty]

RUN as for ``unseen_compounds.py`` (bbbc021-moa through ``profile``). Per replicate as references and per kind:
how often a reference compound's mechanism is called right when it is left out (fields / wells) — by the profile
cosine (today's ``references.moa_space: profile``), and by the nearest treatment in a mechanism space fitted
without it, under the cosine (``discriminant``) and under the Euclidean distance. This is the figure
``references.moa_space: auto`` chooses by, and needs no query plate.

``--novelty`` adds, per reference side, the ROC AUC of telling a withheld mechanism's query wells from an unseen
compound of a known one (``novelty_scores.py``'s groups) for scores read in the mechanism space (fitted without the
withheld compound or mechanism): the best cosine to a treatment, the distance to the nearest treatment and to the
nearest mechanism centre — beside the profile cosine's best similarity, which ``novel`` thresholds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from unseen_compounds import COLUMNS, answered, blocks_of, run_tables

from cellresponse.config import ReferencesConfig
from cellresponse.profiling.calibration import leave_one_compound_out
from cellresponse.profiling.mechanism_space import fit_mechanism_space, held_out_spaces
from cellresponse.profiling.reference_building import build_references
from cellresponse.profiling.references import level_table, treatment_table
from cellresponse.profiling.similarity import cosine_similarity

PROFILE = ReferencesConfig(moa_space="profile")


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)


def euclidean_calls(refs, level: str, held_out) -> np.ndarray:
    """Per unit of ``level``, whether the nearest other-fold treatment by Euclidean distance in the held-out space
    has its mechanism (units whose fold has no space count as wrong)."""
    folds, spaces = held_out
    units, treatments = level_table(refs.fields, refs.features, level), treatment_table(refs.fields, refs.features)
    unit_fold = units["compound"].astype(str).map(folds).to_numpy()
    treatment_fold = treatments["compound"].astype(str).map(folds).to_numpy()
    right = np.zeros(len(units), bool)
    for fold, space in spaces.items():
        rows = unit_fold == fold
        if space is None or not rows.any():
            continue
        distance = squared_distances(space.project(units.loc[rows, space.columns].to_numpy()),
                                     space.project(treatments[space.columns].to_numpy()))  # fmt: skip
        distance[:, treatment_fold == fold] = np.inf
        right[rows] = treatments["moa"].to_numpy()[distance.argmin(axis=1)] == units.loc[rows, "moa"].to_numpy()
    return right


def own_calls(tables, meta, ids, kind: str) -> str:
    refs = build_references(blocks_of(tables, kind, ids), meta.loc[ids], None, kind, COLUMNS, PROFILE)
    fields = refs.fields
    held_out = held_out_spaces(fields[refs.features].to_numpy(), fields["compound"].astype(str).to_numpy(),
                               fields["moa"].to_numpy(object), refs.features)  # fmt: skip
    figures = {"profile cosine": [], "space, cosine": [], "space, Euclidean": []}
    for level in ("field", "well"):
        profile, in_space = leave_one_compound_out(refs, level), leave_one_compound_out(refs, level, held_out)
        scorable = np.isfinite(profile["same_moa_similarity"]).to_numpy()  # a mechanism-mate among the others
        figures["profile cosine"].append((profile["moa_call"] == profile["moa"]).to_numpy()[scorable].mean())
        figures["space, cosine"].append((in_space["moa_call"] == in_space["moa"]).to_numpy()[scorable].mean())
        figures["space, Euclidean"].append(euclidean_calls(refs, level, held_out)[scorable].mean())
    return "; ".join(f"{name} {f:.3f} / {w:.3f}" for name, (f, w) in figures.items())


def space_scores(refs, units: pd.DataFrame) -> dict[str, np.ndarray]:
    fields = refs.fields
    space = fit_mechanism_space(fields[refs.features].to_numpy(), fields["moa"].to_numpy(), refs.features)
    treatments = treatment_table(fields, refs.features)
    queried = space.project(units[space.columns].to_numpy())
    projected = space.project(treatments[space.columns].to_numpy())
    seen = space.project(fields[space.columns].to_numpy())
    centres = np.stack([seen[(fields["moa"] == m).to_numpy()].mean(axis=0) for m in space.mechanisms])
    return {"space best cosine": cosine_similarity(queried, projected).max(axis=1),
            "space nearest treatment (−distance)": -squared_distances(queried, projected).min(axis=1),
            "space nearest mechanism centre (−distance)": -squared_distances(queried, centres).min(axis=1)}  # fmt: skip


def novelty(tables, meta, ref_ids, query_ids) -> None:
    parts = []
    for withheld, key in [(m, "moa") for m in sorted(meta["moa"].unique())] + [
        (c, "compound") for c in sorted(meta["compound"].unique())
    ]:
        kept = ref_ids[meta.loc[ref_ids, key] != withheld]
        refs = build_references(blocks_of(tables, "both", kept), meta.loc[kept], None, "both", COLUMNS, PROFILE)
        units, calls = answered(refs, tables, "both", meta, query_ids, "auto", "well")
        table = pd.DataFrame({"profile best cosine": calls["best_similarity"].to_numpy(), **space_scores(refs, units)})
        mine = (units[key] == withheld).to_numpy()
        table["group"] = np.where(mine, "withheld_moa", "known") if key == "moa" else "unseen_compound"
        parts.append(table if key == "moa" else table[mine])
    table = pd.concat(parts, ignore_index=True)
    new, unseen = table[table["group"] == "withheld_moa"], table[table["group"] == "unseen_compound"]
    truth = np.r_[np.ones(len(new)), np.zeros(len(unseen))]
    for score in [c for c in table.columns if c != "group"]:
        auc = 1 - roc_auc_score(truth, np.r_[new[score], unseen[score]])  # a low score = novel
        print(f"    {score}: ROC AUC new mechanism vs unseen compound {auc:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--novelty", action="store_true")
    args = parser.parse_args()
    _, tables, meta, replicate = run_tables(args.run)
    print("mechanism right when a reference compound is left out, fields / wells:")
    for side in ("1", "2"):
        ids = replicate.index[replicate == side]
        for kind in ("measured", "deep", "both"):
            started = time.perf_counter()
            print(f"  references replicate {side}, {kind}: {own_calls(tables, meta, ids, kind)} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    if args.novelty:
        for side in ("1", "2"):
            print(f"  references replicate {side} → queries the other (both):", flush=True)
            novelty(tables, meta, replicate.index[replicate == side], replicate.index[replicate != side])


if __name__ == "__main__":
    main()

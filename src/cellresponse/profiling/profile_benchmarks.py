"""The field's profile-level benchmarks: not-same-compound (NSC) nearest-neighbour MoA accuracy (Ljosa et al. 2013)
and mean average precision of replicate and MoA retrieval (copairs, as JUMP reports them).

NSC: each treatment's nearest treatment (cosine similarity of consensus profiles) among those of *other*
compounds — and, for NSCB, other batches — must share its mechanism. Chance is what a random such neighbour scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import MOA_COLUMNS
from cellresponse.input.controls import CONTROL_KIND, POSITIVE
from cellresponse.input.controls import TREATMENT as TREATMENT_KIND
from cellresponse.profiling.similarity import cosine_similarity, pair_batch_size
from cellresponse.profiling.well_profiles import PLATE, TREATMENT, WELL

# Permutations of copairs' null distribution and the significance level of "retrieved".
NULL_SIZE = 10000
ALPHA = 0.05


def nsc_accuracy(
    features: np.ndarray, moa: np.ndarray, compound: np.ndarray, batch: np.ndarray | None = None
) -> dict[str, Any]:
    """Share of treatments whose nearest neighbour among other compounds (and other batches) shares the MoA.

    Treatments with no candidate neighbour, or whose MoA no candidate has, are left out (they cannot be right),
    and counted in ``skipped``."""
    moa, compound = np.asarray(moa).astype(str), np.asarray(compound).astype(str)
    similarity = cosine_similarity(features)
    hits, chances, skipped = [], [], 0
    for i in range(len(moa)):
        candidates = compound != compound[i]
        if batch is not None:
            candidates &= np.asarray(batch).astype(str) != str(batch[i])
        same = moa[candidates] == moa[i]
        if not candidates.any() or not same.any():
            skipped += 1
            continue
        scores = np.where(candidates, similarity[i], -np.inf)
        hits.append(moa[int(np.argmax(scores))] == moa[i])
        chances.append(float(same.mean()))
    return {
        "accuracy": float(np.mean(hits)) if hits else float("nan"),
        "chance_rate": float(np.mean(chances)) if chances else float("nan"),
        "n": len(hits),
        "skipped": skipped,
    }


def retrieval_map(
    meta: pd.DataFrame,
    features: np.ndarray,
    pos_sameby: list[str],
    pos_diffby: list[str],
    neg_diffby: list[str],
    group_by: list[str],
    seed: int = 0,
    null_size: int = NULL_SIZE,
) -> dict[str, Any]:
    """copairs' average precision of every profile and mean average precision per group (``group_by``), with
    permutation p-values (FDR-corrected); returns the mean mAP and the fraction of groups retrieved (p < 0.05)."""
    # copairs is imported here, as pycytominer is in well_profiles.py: train, evaluate and predict reach these modules
    # through the profile stage without calling them (0.5 s of import time saved in train, 2026-11-26).
    from copairs.map import average_precision, mean_average_precision
    from copairs.matching import UnpairedException

    meta = meta.reset_index(drop=True).astype(str)
    try:
        features = np.asarray(features, dtype=np.float64)
        batch = pair_batch_size(features.shape[1])
        ap = average_precision(
            meta, features, pos_sameby, pos_diffby, [], neg_diffby, batch_size=batch, progress_bar=False
        )
    except UnpairedException as exc:  # e.g. every mechanism has a single compound
        return {"skipped": f"{exc} (positives: same {pos_sameby}, different {pos_diffby})"}
    ap = ap.dropna(subset=["average_precision"])
    if ap.empty:
        return {"skipped": "no profile has a positive pair"}
    maps = mean_average_precision(ap, group_by, null_size=null_size, threshold=ALPHA, seed=seed, progress_bar=False)
    return {
        "mean_average_precision": float(maps["mean_average_precision"].mean()),
        "fraction_retrieved": float(maps["below_corrected_p"].mean()),
        "groups": len(maps),
        "profiles": len(ap),
    }


def without_controls(
    table: pd.DataFrame, label: str, control_label: str | None, positive_controls: str = "exclude"
) -> pd.DataFrame:
    """The treated rows: negative controls (by the :data:`CONTROL_KIND` column; without it, the ``label`` column
    equal to ``control_label``) are not queries of a benchmark, nor positive controls unless ``positive_controls``
    is ``include``."""
    if CONTROL_KIND not in table.columns:
        return table[table[label].astype(str) != control_label] if label in table.columns else table
    kept = [TREATMENT_KIND] + ([POSITIVE] if positive_controls == "include" else [])
    return table[table[CONTROL_KIND].isin(kept).to_numpy()]


def mechanism_benchmark_skipped(moa: str | None, compound: str, columns: Iterable[str]) -> str | None:
    """Why NSC accuracy and MoA retrieval cannot run on treatments with these ``columns`` (None: they can)."""
    if moa is None:
        return f"no mechanism column (looked for {', '.join(MOA_COLUMNS)}) — name it with --set profiles.moa=COLUMN"
    if moa == compound:
        # Every other treatment of the same mechanism would count as the same compound: NSC would be 0 by design.
        return (
            f"the compound column is the mechanism column ({moa}) — name the compound column with "
            "--set profiles.compound=COLUMN (and the treatment with profiles.treatment)"
        )
    missing = sorted({moa, compound} - set(columns))
    if missing:
        return (
            f"columns {missing} not in the metadata — name the MoA and compound columns with "
            "--set profiles.moa=COLUMN --set profiles.compound=COLUMN"
        )
    return None


def benchmark_profiles(
    wells: pd.DataFrame,
    treatments: pd.DataFrame,
    features: list[str],
    *,
    moa: str | None,
    compound: str,
    batch: str | None,
    controls: tuple[str, str | None, str],
    seed: int,
) -> dict[str, Any]:
    """NSC (and NSCB, where the ``batch`` column is there) MoA accuracy on treatment profiles; mAP of replicate
    retrieval (wells, by their treatment) and of MoA retrieval (treatments, other compounds). ``controls`` are
    :func:`without_controls`' label, control label and positive-control rule: controls are never queries. A
    benchmark whose columns are missing is skipped with the reason."""
    out: dict[str, Any] = {}
    treated = without_controls(treatments, *controls)
    skipped = mechanism_benchmark_skipped(moa, compound, treated.columns)
    if skipped or moa is None:  # skipped says why whenever there is no mechanism column
        out["nsc"] = {"skipped": skipped}
    else:
        x = treated[features].to_numpy()
        labels = treated[moa].to_numpy(), treated[compound].to_numpy()
        out["nsc"] = nsc_accuracy(x, *labels)
        if batch and batch in treated.columns:
            out["nscb"] = nsc_accuracy(x, *labels, treated[batch].to_numpy())
        out["map_moa"] = retrieval_map(treated[[moa, compound]], x, [moa], [compound], [moa], [moa], seed=seed)
        out["moa_column"], out["compound_column"] = moa, compound
    queries = without_controls(wells, *controls)
    ids = [TREATMENT, PLATE, WELL]
    out["map_replicates"] = retrieval_map(
        queries[ids], queries[features].to_numpy(), [TREATMENT], [], [TREATMENT], [TREATMENT], seed=seed
    )
    return out

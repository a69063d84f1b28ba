"""Phenotypic activity: is a treatment distinguishable from the negative controls of its plate?

As JUMP scores it (copairs; Kalinin et al. 2024): each replicate profile of a treatment ranks the other replicates
of that treatment against the control profiles by cosine similarity; the average precision of that ranking, meaned
over the replicates (mAP), is compared with a permutation null, and the p-values of all treatments are corrected
together (Benjamini–Hochberg). A treatment is *active* where its q-value is below the FDR.

A treatment with replicate wells is scored on its wells against the control wells. One held in a single well — 236
of the study plate's 249 compounds — has no replicate wells: it is scored on its fields against the control wells'
fields, and the table says so (``activity_level = field``); fields of one well share that well's effects, so such a
call is weaker evidence than a well-level one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from cellresponse.profiling.similarity import pair_batch_size

# Permutations of copairs' null distribution and the default false discovery rate of "active".
NULL_SIZE = 10000
FDR = 0.05
_TREATMENT, _REFERENCE, _WELL = "Metadata_ActivityTreatment", "Metadata_ActivityReference", "Metadata_ActivityWell"
COLUMNS = ("activity_level", "activity_map", "activity_p", "activity_q", "active")


def copairs_activity(
    profiles: np.ndarray, treatment: np.ndarray, control: np.ndarray, seed: int, wells: np.ndarray | None = None
) -> pd.DataFrame:
    """copairs mAP of each treatment's profiles against the ``control`` profiles (a boolean per row), positives
    taken from other ``wells`` where given: one row per treatment with its ``activity_map`` and ``activity_p``."""
    from copairs.map import average_precision

    # Each control profile gets its own reference index, so controls are never positives of one another, and
    # treated profiles are only ranked against controls (the negatives differ in treatment and index).
    meta = pd.DataFrame(
        {
            _TREATMENT: np.asarray(treatment, dtype=str),
            _REFERENCE: np.where(control, np.arange(len(control)), -1),
            _WELL: np.asarray(wells, dtype=str) if wells is not None else "",
        }
    )
    sameby = diffby = [_TREATMENT, _REFERENCE]
    other_well = [_WELL] if wells is not None else []
    features = np.asarray(profiles, np.float64)
    batch = pair_batch_size(np.shape(features)[1])
    ap = average_precision(meta, features, sameby, other_well, [], diffby, batch_size=batch, progress_bar=False)
    ap = ap[ap[_REFERENCE].astype(int) < 0].dropna(subset=["average_precision"])  # the treated profiles
    if ap.empty:
        return pd.DataFrame(columns=["treatment", "activity_map", "activity_p"])
    return map_p_values(ap, seed)


def map_p_values(ap: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Each treatment's mAP and its permutation p-value against copairs' null distributions, counting null values
    *equal* to the mAP as well as greater ones. copairs' own ``mean_average_precision`` counts only greater ones, so
    a perfect mAP gets p = 1/(null size + 1) however likely a perfect ranking is by chance — with two replicate
    wells and four control wells that chance is 1 in 25, not 1 in 10,001."""
    from copairs.compute import get_null_dists

    configurations = ap[["n_pos_pairs", "n_total_pairs"]].to_numpy(int)
    unique, inverse = np.unique(configurations, axis=0, return_inverse=True)
    nulls = get_null_dists(unique, NULL_SIZE, seed=seed, progress_bar=False)
    rows = []
    for treatment, positions in ap.groupby(_TREATMENT).indices.items():
        score = float(ap["average_precision"].iloc[positions].mean())
        null = nulls[inverse.reshape(-1)[positions]].mean(axis=0)
        p = (int(np.sum(null >= score - 1e-12)) + 1) / (NULL_SIZE + 1)
        rows.append({"treatment": treatment, "activity_map": score, "activity_p": p})
    return pd.DataFrame(rows)


def phenotypic_activity(
    fields: pd.DataFrame, features: list[str], control: pd.Series, fdr: float = FDR, seed: int = 0
) -> pd.DataFrame:
    """Activity of every treatment of ``fields`` (normalised per-field profiles with ``plate``, ``well`` and
    ``treatment`` columns; ``control`` a boolean per field) against the control fields; one row per treated
    treatment with :data:`COLUMNS`, q-values over all treatments together.

    A treatment in two or more wells is scored on its fields, each retrieving the fields of the treatment's *other*
    wells (``activity_level = wells``): a well's own effect cannot make its fields look alike, and every field
    counts. One in a single well is scored on its fields retrieving each other (``one well``); one of a single field
    has nothing to retrieve (``one field``, NA)."""
    is_control = control.to_numpy(bool)
    fields = fields.reset_index(drop=True)
    treatment = fields["treatment"].astype(str).to_numpy()
    well = (fields["plate"].astype(str) + "/" + fields["well"].astype(str)).to_numpy()
    treated = pd.DataFrame({"treatment": treatment, "well": well})[~is_control]
    wells_of = treated.groupby("treatment")["well"].nunique()
    fields_of = treated.groupby("treatment").size()
    replicated = set(wells_of[wells_of >= 2].index)
    one_well = set(wells_of[(wells_of == 1) & (fields_of >= 2)].index)
    parts = []
    for chosen, level, by_well in ((replicated, "wells", True), (one_well, "one well", False)):
        if not chosen:
            continue
        rows = is_control | np.isin(treatment, list(chosen))
        x = fields.loc[rows, features].to_numpy()
        scored = copairs_activity(x, treatment[rows], is_control[rows], seed, well[rows] if by_well else None)
        parts.append(scored.assign(activity_level=level))
    lone = sorted(set(treated["treatment"]) - replicated - one_well)
    parts.append(pd.DataFrame({"treatment": lone, "activity_level": "one field"}))
    parts = [part for part in parts if len(part)]
    if not parts:
        return pd.DataFrame(columns=["treatment", *COLUMNS])
    table = pd.concat(parts, ignore_index=True)
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan
    has_p = table["activity_p"].notna().to_numpy()
    if has_p.any():
        p_values = table.loc[has_p, "activity_p"].astype(float).to_numpy()
        table.loc[has_p, "activity_q"] = false_discovery_control(p_values, method="bh")
    active = pd.array((table["activity_q"] < fdr).to_numpy(), dtype="boolean")
    active[~has_p] = pd.NA
    table["active"] = active
    return table[["treatment", *COLUMNS]]

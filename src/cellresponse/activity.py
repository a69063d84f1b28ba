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

# Permutations of copairs' null distribution and the default false discovery rate of "active".
NULL_SIZE = 10000
FDR = 0.05
_TREATMENT, _REFERENCE = "Metadata_ActivityTreatment", "Metadata_ActivityReference"
COLUMNS = ("activity_level", "activity_map", "activity_p", "activity_q", "active")


def copairs_activity(profiles: np.ndarray, treatment: np.ndarray, control: np.ndarray, seed: int) -> pd.DataFrame:
    """copairs mAP of each treatment's profiles against the ``control`` profiles (a boolean per row): one row per
    treatment with its ``activity_map`` and permutation ``activity_p``."""
    from copairs.map import average_precision, mean_average_precision

    # Each control profile gets its own reference index, so controls are never positives of one another, and
    # treated profiles are only ranked against controls (the negatives differ in treatment and index).
    meta = pd.DataFrame(
        {_TREATMENT: np.asarray(treatment, dtype=str), _REFERENCE: np.where(control, np.arange(len(control)), -1)}
    )
    sameby, diffby = [_TREATMENT, _REFERENCE], [_TREATMENT, _REFERENCE]
    ap = average_precision(meta, np.asarray(profiles, np.float64), sameby, [], [], diffby, progress_bar=False)
    ap = ap[ap[_REFERENCE].astype(int) < 0].dropna(subset=["average_precision"])  # the treated profiles
    if ap.empty:
        return pd.DataFrame(columns=["treatment", "activity_map", "activity_p"])
    maps = mean_average_precision(ap, sameby, null_size=NULL_SIZE, threshold=FDR, seed=seed, progress_bar=False)
    return pd.DataFrame(
        {
            "treatment": maps[_TREATMENT].to_numpy(),
            "activity_map": maps["mean_average_precision"].to_numpy(),
            "activity_p": maps["p_value"].to_numpy(),
        }
    )


def phenotypic_activity(
    fields: pd.DataFrame, features: list[str], control: pd.Series, fdr: float = FDR, seed: int = 0
) -> pd.DataFrame:
    """Activity of every treatment of ``fields`` (normalised per-field profiles with ``plate``, ``well`` and
    ``treatment`` columns; ``control`` a boolean per field) against the control wells: treatments with two or
    more wells on their wells, the others on their fields; one row per treated treatment with
    :data:`COLUMNS` (q-values over all treatments together)."""
    control = control.to_numpy(bool)
    fields = fields.reset_index(drop=True)
    well_key = fields["plate"].astype(str) + "/" + fields["well"].astype(str)
    wells = fields.assign(_well=well_key).groupby("_well", sort=True)
    well_profiles = wells[features].mean()
    well_treatment = wells["treatment"].first().astype(str)
    well_control = pd.Series(control, index=fields.index).groupby(well_key).all()
    treated = well_treatment[~well_control]
    replicated = treated.groupby(treated).size()
    replicated = set(replicated[replicated >= 2].index)
    parts = []
    at_wells = (~well_control) & well_treatment.isin(replicated) | well_control
    if replicated:
        scored = copairs_activity(
            well_profiles[at_wells].to_numpy(),
            well_treatment[at_wells].to_numpy(),
            well_control[at_wells].to_numpy(),
            seed,
        )
        parts.append(scored.assign(activity_level="well"))
    single = (~control) & ~fields["treatment"].astype(str).isin(replicated).to_numpy()
    if single.any():
        rows = single | control
        scored = copairs_activity(
            fields.loc[rows, features].to_numpy(),
            fields.loc[rows, "treatment"].astype(str).to_numpy(),
            control[rows],
            seed,
        )
        parts.append(scored.assign(activity_level="field"))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["treatment", *COLUMNS])
    if len(table):
        table["activity_q"] = false_discovery_control(table["activity_p"].to_numpy(np.float64), method="bh")
        table["active"] = table["activity_q"] < fdr
    return table[["treatment", *COLUMNS]]

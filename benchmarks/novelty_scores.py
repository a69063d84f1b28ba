"""How well could *any* novelty rule separate new mechanisms from unseen compounds of known ones? (issue 33 probe)

    python benchmarks/novelty_scores.py RUN [--reference-side 1] [--deep-statistic mean|median]

RUN as for ``unseen_compounds.py`` (bbbc021-moa through ``profile``). Per query well, three groups:
``withheld_moa`` (its whole mechanism withheld from the references — should be novel), ``unseen_compound`` (its
compound withheld, two or more of its mechanism's compounds kept — should not) and ``known`` (its compound among the
references — should not). For each score the ROC AUC of separating the first group from each other group, and the
flag rates of the per-mechanism rule at a few cut-offs. Scores:

* ``best`` — the best cosine similarity to a reference treatment (what ``references.novelty_quantile`` thresholds);
* ``percentile`` — where ``best`` falls among the leave-one-compound-out same-mechanism similarities of the
  mechanism it is nearest to (a per-mechanism threshold);
* ``margin`` — best mechanism's similarity minus the second's;
* ``top3`` — the mean similarity of the three nearest treatments;
* ``zbest`` — ``best`` as a z-score of the unit's similarities to every reference treatment;
* ``csls`` — cross-domain similarity local scaling (Lample et al. 2018): ``2·cos − top3(query) − hub(treatment)``,
  ``hub`` a treatment's mean similarity to its three nearest other-compound treatments, maximised over treatments;
* ``hub_relative`` — ``cos − hub(treatment)``, maximised: how much closer the unit is to a treatment than that
  treatment's own nearest other compounds are;
* ``agreement`` — the share of the well's fields whose own nearest mechanism is the well's (a new mechanism's
  fields might scatter over the known ones where an unseen compound's agree); ``agreed_best`` — ``best`` times it;
* ``best_measured``, ``best_deep`` — ``best`` with references of one block only; ``kinds_mean`` and ``kinds_min``
  — the mean and the least of the three kinds' ``best`` (two views that may err on different wells).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from unseen_compounds import COLUMNS, answered, blocks_of, run_tables

from cellresponse.config import ReferencesConfig
from cellresponse.profiling.calibration import leave_one_compound_out
from cellresponse.profiling.matching import moa_similarities
from cellresponse.profiling.reference_building import build_references
from cellresponse.profiling.references import treatment_table
from cellresponse.profiling.similarity import cosine_similarity

# the references' settings as predict's defaults (the scores do not depend on the novelty quantile; the flags
# of the per-mechanism lines do)
SETTINGS = ReferencesConfig()

SCORES = ("best", "percentile", "margin", "top3", "zbest", "csls", "hub_relative", "agreement", "agreed_best",
          "best_measured", "best_deep", "kinds_mean", "kinds_min")  # fmt: skip
KIND = "both"  # the kind references.kind: auto chose on this run (docs/results.md)


def scores(refs, units: pd.DataFrame, calls: pd.DataFrame) -> pd.DataFrame:
    loco = leave_one_compound_out(refs, "well")
    same = {moa: group["same_moa_similarity"].to_numpy() for moa, group in loco.groupby("moa")}
    best = calls["best_similarity"].to_numpy()
    nearest = calls["nearest_1_moa"].to_numpy()
    percentile = np.array(
        [(same[m] <= b).mean() if np.isfinite(same[m]).any() else 1.0 for m, b in zip(nearest, best, strict=True)]
    )
    treatments = treatment_table(refs.fields, refs.features)
    similarity = cosine_similarity(units[refs.features].to_numpy(), treatments[refs.features].to_numpy())
    moas = sorted(treatments["moa"].astype(str).unique())
    by_moa = np.sort(moa_similarities(similarity, treatments["moa"].astype(str).to_numpy(), moas), axis=1)
    # local scaling: each reference treatment's own mean similarity to its 3 nearest other-compound treatments
    among = cosine_similarity(treatments[refs.features].to_numpy(), treatments[refs.features].to_numpy())
    other = treatments["compound"].to_numpy(object)[:, None] != treatments["compound"].to_numpy(object)[None, :]
    hub = np.sort(np.where(other, among, -np.inf), axis=1)[:, -3:].mean(axis=1)
    top3 = np.sort(similarity, axis=1)[:, -3:].mean(axis=1)
    return pd.DataFrame({"best": best, "percentile": percentile, "margin": by_moa[:, -1] - by_moa[:, -2],
                         "top3": top3,
                         "zbest": (best - similarity.mean(axis=1)) / similarity.std(axis=1),
                         "csls": (2 * similarity - top3[:, None] - hub[None, :]).max(axis=1),
                         "hub_relative": (similarity - hub[None, :]).max(axis=1)})  # fmt: skip


def field_agreement(refs, tables, meta, query_ids, units: pd.DataFrame, calls: pd.DataFrame) -> np.ndarray:
    """Per well of ``units``, the share of its fields whose nearest mechanism is the well's."""
    fields, field_calls = answered(refs, tables, KIND, meta, query_ids, "auto", "field")
    key = fields["plate"].astype(str) + "/" + fields["well"].astype(str)
    well_moa = pd.Series(
        calls["nearest_1_moa"].to_numpy(), index=units["plate"].astype(str) + "/" + units["well"].astype(str)
    )
    agrees = pd.Series((field_calls["nearest_1_moa"].to_numpy() == well_moa.reindex(key).to_numpy()), index=key)
    return agrees.groupby(level=0).mean().reindex(well_moa.index).to_numpy(float)


def groups(tables, meta, ref_ids, query_ids) -> pd.DataFrame:
    parts = []
    for withheld, key in [(m, "moa") for m in sorted(meta["moa"].unique())] + [
        (c, "compound") for c in sorted(meta["compound"].unique())
    ]:
        kept = ref_ids[meta.loc[ref_ids, key] != withheld]
        refs = build_references(blocks_of(tables, KIND, kept), meta.loc[kept], None, KIND, COLUMNS, SETTINGS)
        units, calls = answered(refs, tables, KIND, meta, query_ids, "auto", "well")
        mine = (units[key] == withheld).to_numpy()
        table = scores(refs, units, calls)
        table["agreement"] = field_agreement(refs, tables, meta, query_ids, units, calls)
        table["agreed_best"] = table["best"] * table["agreement"]
        for kind in ("measured", "deep"):
            alone = build_references(blocks_of(tables, kind, kept), meta.loc[kept], None, kind, COLUMNS, SETTINGS)
            table[f"best_{kind}"] = answered(alone, tables, kind, meta, query_ids, "auto", "well")[1][
                "best_similarity"
            ].to_numpy()
        kinds = table[["best", "best_measured", "best_deep"]]
        table["kinds_mean"], table["kinds_min"] = kinds.mean(axis=1), kinds.min(axis=1)
        table["novel"] = calls["novel"].astype(bool).to_numpy()
        table["moa"], table["nearest_moa"] = units["moa"].to_numpy(), calls["nearest_1_moa"].to_numpy()
        if key == "moa":
            table["group"] = np.where(mine, "withheld_moa", "known")
        else:
            table, table["group"] = table[mine], "unseen_compound"
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--reference-side", default="1")
    parser.add_argument("--deep-statistic", default="mean", choices=["mean", "median"])
    args = parser.parse_args()
    _, tables, meta, replicate = run_tables(args.run, args.deep_statistic)
    ref_ids, query_ids = (
        replicate.index[replicate == args.reference_side],
        replicate.index[replicate != args.reference_side],
    )
    table = groups(tables, meta, ref_ids, query_ids)
    novel = table[table["group"] == "withheld_moa"]
    print(f"references replicate {args.reference_side}: wells {table['group'].value_counts().to_dict()}")
    for score in SCORES:
        aucs = []
        for other in ("unseen_compound", "known"):
            rest = table[table["group"] == other]
            truth = np.r_[np.ones(len(novel)), np.zeros(len(rest))]
            aucs.append(1 - roc_auc_score(truth, np.r_[novel[score], rest[score]]))  # low score = novel
        print(f"  {score:>10}: ROC AUC new mechanism vs unseen compound {aucs[0]:.3f}, vs known compound {aucs[1]:.3f}")
    print(
        f"  per withheld mechanism (novelty quantile {SETTINGS.novelty_quantile}): wells flagged novel; the "
        "mechanism its wells are nearest to; their median best similarity"
    )
    for moa, wells in novel.groupby("moa"):
        nearest = ", ".join(f"{m} {n}" for m, n in wells["nearest_moa"].value_counts().items())
        print(
            f"    {moa:>26}: {len(wells):2d} wells, flagged {wells['novel'].mean():.2f}; nearest {nearest}; "
            f"best {wells['best'].median():.2f}"
        )
    for cut in (0.05, 0.2, 0.3):
        rates = {g: float((t["percentile"] < cut).mean()) for g, t in table.groupby("group")}
        print(f"  percentile < {cut}: flagged " + ", ".join(f"{g} {r:.3f}" for g, r in sorted(rates.items())))


if __name__ == "__main__":
    main()

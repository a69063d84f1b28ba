"""Which rule turns the nearest references into a mechanism call? (issue 33 probe: "a vote of the nearest
references")

    python benchmarks/mechanism_call_rules.py RUN [--kind both]

RUN as for ``unseen_compounds.py`` (bbbc021-moa through ``profile``). Each compound withheld in turn from the
references of one replicate (as ``unseen_compounds.py`` withholds it) and its fields and wells on the other replicate
called by each rule; the share whose call is its mechanism is printed (novelty set aside: every unit gets a call).
Rules, over the cosine similarities of a unit to the reference treatments:

* ``nearest`` — the mechanism of the nearest treatment (what ``predict`` calls);
* ``compound_mean`` — per mechanism, the mean over its compounds of each compound's best treatment;
* ``mechanism_top2`` — per mechanism, the mean of its two most similar treatments;
* ``treatments_vote_k`` — a vote of the k nearest treatments (ties to the nearer);
* ``compounds_vote_k`` — a vote of the k nearest compounds (each its best treatment), weighted by similarity.

Chosen on references replicate 1 → queries 2; the swap reported beside it.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from unseen_compounds import COLUMNS, blocks_of, run_tables

from cellresponse.config import ReferencesConfig
from cellresponse.profiling.matching import moa_similarities
from cellresponse.profiling.queries import normalize_query, query_normalization
from cellresponse.profiling.reference_building import build_references
from cellresponse.profiling.references import level_table, profile_fields, treatment_table
from cellresponse.profiling.similarity import cosine_similarity


def vote(order: np.ndarray, weights: np.ndarray, column: np.ndarray, size: int) -> np.ndarray:
    """Per unit, the column of the largest sum of ``weights`` over its ``order``-ed neighbours' ``column``."""
    votes = np.zeros((len(order), size))
    for j in range(order.shape[1]):
        np.add.at(votes, (np.arange(len(order)), column[order[:, j]]), weights[:, j])
    return votes.argmax(axis=1)


def calls(similarity: np.ndarray, treatments: pd.DataFrame) -> dict[str, np.ndarray]:
    moa = treatments["moa"].astype(str).to_numpy()
    compound = treatments["compound"].astype(str).to_numpy()
    moas, compounds = sorted(set(moa)), sorted(set(compound))
    moa_of = {c: moa[compound == c][0] for c in compounds}
    by_compound = moa_similarities(similarity, compound, compounds)  # any labels, not only mechanisms
    members = [[i for i, c in enumerate(compounds) if moa_of[c] == m] for m in moas]
    top2 = np.stack([np.sort(np.where(moa == m, similarity, -np.inf), axis=1)[:, -2:] for m in moas], axis=1)
    top2 = np.where(np.isfinite(top2), top2, top2[:, :, -1:]).mean(axis=2)  # a mechanism of one treatment: its best
    out = {
        "nearest": moa_similarities(similarity, moa, moas).argmax(axis=1),
        "compound_mean": np.stack([by_compound[:, m].mean(axis=1) for m in members], axis=1).argmax(axis=1),
        "mechanism_top2": top2.argmax(axis=1),
    }
    moa_index = pd.Index(moas)
    for k in (3, 5):
        order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        ties = 1 + 1e-3 * np.take_along_axis(similarity, order, axis=1)
        out[f"treatments_vote_{k}"] = vote(order, ties, moa_index.get_indexer(moa), len(moas))
        order = np.argsort(-by_compound, axis=1, kind="stable")[:, :k]
        weights = np.take_along_axis(by_compound, order, axis=1)
        out[f"compounds_vote_{k}"] = vote(order, weights, moa_index.get_indexer([moa_of[c] for c in compounds]),
                                          len(moas))  # fmt: skip
    return {rule: np.asarray(moas, dtype=object)[column] for rule, column in out.items()}


def direction(tables, meta, kind, ref_ids, query_ids) -> dict[str, dict[str, float]]:
    right: dict[str, dict[str, list[bool]]] = {"field": {}, "well": {}}
    for compound in sorted(meta["compound"].unique()):
        kept = ref_ids[meta.loc[ref_ids, "compound"] != compound]
        refs = build_references(blocks_of(tables, kind, kept), meta.loc[kept], None, kind, COLUMNS, ReferencesConfig())
        mode, _ = query_normalization(refs, False, "auto")
        raw, _ = profile_fields(blocks_of(tables, kind, query_ids), meta.loc[query_ids])
        fields = normalize_query(raw, None, refs, mode)
        treatments = treatment_table(refs.fields, refs.features)
        for level, scores in right.items():
            units = level_table(fields, refs.features, level)
            units = units[(units["compound"] == compound).to_numpy()]
            similarity = cosine_similarity(units[refs.features].to_numpy(), treatments[refs.features].to_numpy())
            truth = units["moa"].astype(str).to_numpy()
            for rule, called in calls(similarity, treatments).items():
                scores.setdefault(rule, []).extend(called == truth)
    return {level: {rule: float(np.mean(v)) for rule, v in scores.items()} for level, scores in right.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--kind", default="both", choices=["measured", "deep", "both"])
    args = parser.parse_args()
    _, tables, meta, replicate = run_tables(args.run)
    for side, other in (("1", "2"), ("2", "1")):
        scores = direction(tables, meta, args.kind, replicate.index[replicate == side],
                           replicate.index[replicate == other])  # fmt: skip
        print(f"references replicate {side} → queries {other}{' (choose)' if side == '1' else ''}, {args.kind}:")
        for rule in scores["field"]:
            field, well = scores["field"][rule], scores["well"][rule]
            print(f"  {rule:>18}: mechanism right, fields {field:.3f}, wells {well:.3f}")


if __name__ == "__main__":
    main()

"""How much say should the deep block have in the ``both`` profile? (issue 33 probe)

    python benchmarks/block_weights.py RUN [--deep-weights 0.5 0.71 1 1.41 2] [--both-directions]

RUN as for ``unseen_compounds.py`` (bbbc021-moa through ``profile``). Today the ``both`` references give each block
the same say: every kept column of a block is weighted 1/√(its block's kept columns), so the measured statistics
and the mean embedding add the same expected squared length to a profile. Here the deep block's weights are
multiplied by each ``--deep-weights`` factor (1 is today; 2 gives the embedding four times the measured block's
squared length), in the references and in every new plate normalised with their parameters.

Printed per factor: the figure a bundle could choose it by without seeing a query — the leave-one-compound-out
mechanism accuracy on the references' own fields and wells (what ``references.kind: auto`` reads) — then the
unseen compounds' ``moa_call`` right per field and per well and the share of withheld-mechanism wells flagged
novel (``unseen_compounds.py``'s figures). References replicate 1 → queries 2; ``--both-directions`` adds the swap.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import unseen_compounds as uc

from cellresponse.config import ReferencesConfig, load_config
from cellresponse.profiling import reference_building as building
from cellresponse.profiling import references as refs_module

EQUAL_SAY = refs_module.fit_normalization
SETTING = {"deep_weight": 1.0}


def weighted_normalization(wells, columns, samples, samples_name, blocks, feature_selection):
    """``fit_normalization`` with the deep block's weights multiplied by ``SETTING['deep_weight']``."""
    normalization = EQUAL_SAY(wells, columns, samples, samples_name, blocks, feature_selection)
    deep = set(blocks.get("deep", [])) if len(blocks) > 1 else set()
    factor = SETTING["deep_weight"]
    weight = [w * factor if c in deep else w for c, w in zip(normalization.columns, normalization.weight, strict=True)]
    return replace(normalization, weight=weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--deep-weights", type=float, nargs="+", default=[0.5, 0.71, 1.0, 1.41, 2.0])
    parser.add_argument("--both-directions", action="store_true")
    args = parser.parse_args()
    building.fit_normalization = weighted_normalization  # the name build_references calls
    _, tables, meta, replicate = uc.run_tables(args.run)
    quantile = load_config().references.novelty_quantile
    settings = ReferencesConfig(novelty_quantile=quantile)
    for reference_side, query_side, ref_ids, query_ids in uc.directions(replicate, args.both_directions):
        print(f"\nreferences replicate {reference_side} → queries replicate {query_side}")
        for factor in args.deep_weights:
            SETTING["deep_weight"] = factor
            started = time.perf_counter()
            refs = building.build_references(uc.blocks_of(tables, "both", ref_ids), meta.loc[ref_ids], None,
                                             "both", uc.COLUMNS, settings)  # fmt: skip
            own = refs.calibration
            figures = uc.open_world_figures(tables, "both", meta, ref_ids, query_ids, quantile)
            print(f"  deep weight ×{factor:g}: references' own leave-one-compound-out fields "
                  f"{own['field']['accuracy']:.3f}, wells {own['well']['accuracy']:.3f}; {figures} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

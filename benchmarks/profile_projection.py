"""Do the references match better on their principal components? (issue 33 probe: a denoised profile)

    python benchmarks/profile_projection.py RUN [--components 0 20 50] [--whiten] [--both-directions]

RUN as for ``unseen_compounds.py`` (bbbc021-moa through ``profile``). The ``both`` references and the new replicate
are projected on the principal components of the reference fields (fitted again on each build, so on the
references without the withheld compound or mechanism) before the cosine, calibration included; ``--whiten``
divides each component by its standard deviation (akin to the factor-analysis profiles that scored best on BBBC021
in Ljosa et al. 2013). 0 components is today's profile. Printed per setting: the unseen compounds' ``moa_call``
right per field and per well, and the share of withheld-mechanism wells flagged novel (``unseen_compounds.py``'s
figures). Chosen on references replicate 1 → queries 2; ``--both-directions`` adds the swap.

The projection is put where ``predict`` puts batch correction (``queries.in_batch_corrected_space``, wrapped
here), so the leave-one-compound-out calibration and the novelty threshold are fitted in the projected space.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import unseen_compounds as uc

from cellresponse.config import load_config
from cellresponse.profiling import queries as queries_module
from cellresponse.profiling import reference_building as building
from cellresponse.profiling import references as refs_module

UNPROJECTED = queries_module.in_batch_corrected_space
SETTING = {"components": 0, "whiten": False}


def principal_frame(fields: pd.DataFrame, features: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference fields' mean, leading components (columns) and the divisor of each (1, or its s.d.)."""
    x = fields[features].to_numpy(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(SETTING["components"], len(s))
    scale = s[:k] / np.sqrt(len(x) - 1) if SETTING["whiten"] else np.ones(k)
    return mean, vt[:k].T, scale


def projected(references, queries, seed):
    references, queries = UNPROJECTED(references, queries, seed)
    if not SETTING["components"]:
        return references, queries
    features = references.features
    mean, basis, scale = principal_frame(references.fields, features)
    names = [f"pc_{i + 1}" for i in range(basis.shape[1])]
    frame = refs_module.Normalization(names, [0.0] * len(names), [1.0] * len(names), [1.0] * len(names),
                                      references.normalization.samples, references.normalization.scope)  # fmt: skip

    def rebuilt(part: pd.DataFrame) -> pd.DataFrame:
        meta = part[[c for c in refs_module.META if c in part.columns]].reset_index(drop=True)
        rows = (part[features].to_numpy(np.float64) - mean) @ basis / scale
        return pd.concat([meta, pd.DataFrame(rows, columns=names)], axis=1)

    return replace(references, fields=rebuilt(references.fields), normalization=frame), (
        rebuilt(queries) if queries is not None else None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--components", type=int, nargs="+", default=[0, 20, 50])
    parser.add_argument("--whiten", action="store_true")
    parser.add_argument("--both-directions", action="store_true")
    args = parser.parse_args()
    # the name build_references and batch_corrected call
    building.in_batch_corrected_space = queries_module.in_batch_corrected_space = projected
    _, tables, meta, replicate = uc.run_tables(args.run)
    quantile = load_config().references.novelty_quantile
    for reference_side, query_side, ref_ids, query_ids in uc.directions(replicate, args.both_directions):
        for components in args.components:
            SETTING.update(components=components, whiten=args.whiten)
            started = time.perf_counter()
            figures = uc.open_world_figures(tables, "both", meta, ref_ids, query_ids, quantile)
            print(f"{reference_side} → {query_side}, {components or 'all'} "
                  f"{'whitened ' if args.whiten and components else ''}dimensions: {figures} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

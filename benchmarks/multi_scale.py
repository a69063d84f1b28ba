"""Do embeddings of two windows together match better? (issue 33 probe: a multi-scale deep profile)

    python benchmarks/multi_scale.py RUN OTHER_RUN

RUN as for ``unseen_compounds.py`` (bbbc021-moa through ``profile``); OTHER_RUN a copy of it re-embedded with another
window (``cellresponse embed OTHER_RUN --set embedding.crop_size=32``). Two kinds are scored: ``multi`` — the
measured block, RUN's mean embedding and OTHER_RUN's, each block with an equal say as ``both`` gives its two — and
``deeps``, the two embeddings without the measured block. Printed per direction and kind: the references' own
leave-one-compound-out mechanism accuracy on fields, the unseen compounds' ``moa_call`` right per field and per
well (and the nearest mechanism's, whatever the novelty flag), and the share of withheld-mechanism wells flagged
novel (and of known ones) — ``unseen_compounds.py``'s figures. Chosen on references replicate 1 → queries 2.
"""

from __future__ import annotations

import argparse

import unseen_compounds as uc

from cellresponse.config import ReferencesConfig, load_config
from cellresponse.features.embedding_tables import mean_embeddings
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.reference_building import build_references
from cellresponse.profiling.references import DEEP_PREFIX

KINDS = {"multi": ["measured", "deep", "deep_other"], "deeps": ["deep", "deep_other"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("other_run")
    args = parser.parse_args()
    images, tables, meta, replicate = uc.run_tables(args.run)
    other = mean_embeddings(RunFolder(args.other_run), images["image_id"].astype(str).tolist())
    tables["deep_other"] = other.rename(columns=lambda c: c.replace(DEEP_PREFIX, "other_" + DEEP_PREFIX, 1))
    uc.KIND_BLOCKS.update(KINDS)
    quantile = load_config().references.novelty_quantile
    settings = ReferencesConfig(novelty_quantile=quantile)
    for reference_side, query_side, ref_ids, query_ids in uc.directions(replicate):
        for kind in KINDS:
            refs = build_references(uc.blocks_of(tables, kind, ref_ids), meta.loc[ref_ids], None, kind, uc.COLUMNS,
                                    settings)  # fmt: skip
            figures = uc.open_world_figures(tables, kind, meta, ref_ids, query_ids, quantile)
            print(f"references {reference_side} → queries {query_side}, {kind}: references' own fields "
                  f"{refs.calibration['field']['accuracy']:.3f}; {figures}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

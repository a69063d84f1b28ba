"""Phenotypic activity on real cells: BBBC021's tiled plates (DMSO vs cycloheximide), as ``predict`` scores it.

    python benchmarks/activity.py RUN [--kind measured|deep|both] [--fdr 0.05]

RUN is a run folder of ``../shared/data/bbbc021/load_data.csv`` through ``measure`` (and ``embed`` for deep or
both), e.g. ``cellresponse run --load-data ../shared/data/bbbc021/load_data.csv --label Metadata_Compound
--preset cpu --out RUN --until profile``.

* every cycloheximide treatment (compound @ concentration) scored against the DMSO wells: should be active;
* each DMSO well in turn named a treatment of its own and scored against the other DMSO wells (the false-active
  rate: how often a control is called active).

Profiles are standardised to the DMSO wells (pooled: each plate holds one) and scored with calls.activity_table,
the function ``predict`` calls; a treatment in one well is scored on its fields.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from cellresponse.config import ReferencesConfig
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.embedding_tables import mean_embeddings
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling.profile_models import image_feature_table
from cellresponse.profiling.references import (
    fit_normalization,
    image_meta,
    negative_controls,
    profile_fields,
    well_table,
)
from cellresponse.profiling.treatment_calls import activity_table

TREATMENT = ["Metadata_Compound", "Metadata_Concentration"]


def blocks_of(run: RunFolder, kind: str, images: pd.DataFrame) -> dict[str, pd.DataFrame]:
    blocks = {}
    if kind in ("measured", "both"):
        cells = run.read_cells()
        blocks["measured"] = image_feature_table(cells, feature_columns(cells.columns))
    if kind in ("deep", "both"):
        blocks["deep"] = mean_embeddings(run, images["image_id"].astype(str).tolist())
    return blocks


def scored(blocks, images: pd.DataFrame, fdr: float) -> pd.DataFrame:
    """calls.activity_table on these images, their DMSO wells the controls."""
    meta = image_meta(images, TREATMENT, "Metadata_Compound", None)
    controls = negative_controls(images, ["Metadata_Compound"], "DMSO")
    fields, columns = profile_fields(blocks, meta)
    everything = [c for names in columns.values() for c in names]
    wells = well_table(fields, everything)
    selection = ReferencesConfig().feature_selection
    normalization = fit_normalization(wells, everything, np.ones(len(wells), bool), "all wells", columns, selection)
    table, note = activity_table(fields, normalization, controls, fdr, seed=0)
    if note:
        raise SystemExit(note)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--kind", default="measured", choices=["measured", "deep", "both"])
    parser.add_argument("--fdr", type=float, default=0.05)
    args = parser.parse_args()
    run = RunFolder(args.run)
    images = run.read_images()
    blocks = blocks_of(run, args.kind, images)
    print(f"run {args.run}: {len(images)} fields; {args.kind} profiles; FDR {args.fdr}")
    treated = scored(blocks, images, args.fdr)
    for row in treated.itertuples():
        print(f"  {row.treatment:>22}: {row.activity_level}-level mAP {row.activity_map:.3f}, p {row.activity_p:.4f}, "
              f"q {row.activity_q:.4f}, active {row.active}")  # fmt: skip
    print(f"cycloheximide treatments active: {int(treated['active'].sum())} of {len(treated)}")
    dmso_wells = images.loc[images["Metadata_Compound"] == "DMSO", ["plate", "well"]].drop_duplicates()
    false_active = []
    for plate, well in dmso_wells.itertuples(index=False):
        relabelled = images.copy()
        mine = (relabelled["plate"] == plate) & (relabelled["well"] == well)
        relabelled.loc[mine, "Metadata_Compound"] = "DMSO-as-query"
        # only DMSO: the query well against the other DMSO wells
        only_dmso = relabelled[relabelled["Metadata_Compound"].isin(["DMSO", "DMSO-as-query"])]
        ids = set(only_dmso["image_id"].astype(str))
        table = scored({k: v.loc[v.index.astype(str).isin(ids)] for k, v in blocks.items()}, only_dmso, args.fdr)
        row = table.iloc[0]
        false_active.append(bool(row["active"]))
        print(f"  DMSO well {plate}/{well} as a treatment: {row['activity_level']}-level mAP "
              f"{row['activity_map']:.3f}, p {row['activity_p']:.4f}, active {row['active']}")  # fmt: skip
    print(f"DMSO wells called active (false-active rate): {sum(false_active)} of {len(false_active)} "
          f"= {np.mean(false_active):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Unseen compounds and novel mechanisms on BBBC021-moa, as ``predict`` answers them (profiling: references.py,
treatment_calls.py).

    python benchmarks/unseen_compounds.py RUN [--kinds auto measured deep both] [--query-normalization auto]
                                              [--batch-correction none|spherize|harmony]
                                              [--deep-statistic mean|median] [--correlation-threshold 0.9]
                                              [--max-cells-per-image N]

RUN is a run folder of bbbc021-moa through ``profile`` (measured cells, embeddings), e.g.
``cellresponse run --load-data ../shared/data/bbbc021-moa/load_data.csv --label Metadata_Compound
--split-column Metadata_Replicate --test-values 2 --preset cpu --out RUN --until profile``.

For each direction (references from replicate 1, queries from replicate 2, and the swap):

* **unseen compounds** — each compound withheld in turn: references built (and calibrated, leave-one-compound-out)
  from the reference replicate without it, as a bundle trained without it would keep them; the whole other replicate
  normalised as ``predict`` normalises a new plate; the withheld compound's fields and wells answered. Reported:
  ``moa_call`` accuracy (a novel unit has no call and counts as wrong), the nearest mechanism's accuracy whatever
  the novelty flag, the share flagged novel, and the expected calibration error of ``moa_probability`` (10 bins);
* **novel mechanisms** — each mechanism withheld in turn (all its compounds): the share of its wells flagged novel,
  and of the other mechanisms' wells (their compounds among the references); beside it the same share read on the
  references alone, as ``train`` stores it (reference_building.withheld_mechanism_novelty);
* seconds to build and calibrate references and to answer a replicate.

``--max-cells-per-image N``: each field's deep profile the mean of the N cells ``embedding.max_cells_per_image: N``
would embed (the same seeded sample, read from the run's embeddings of every cell), references and queries alike.

Settings are chosen on the direction references 1 → queries 2 (the ``choose`` column), the other reported beside.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd

from cellresponse.config import ReferencesConfig, load_config
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.embedding_tables import mean_embeddings, sampled_cells
from cellresponse.input.runfolder import RunFolder
from cellresponse.profiling import well_profiles
from cellresponse.profiling.calibration import leave_one_compound_out
from cellresponse.profiling.matching import match
from cellresponse.profiling.profile_models import image_feature_table
from cellresponse.profiling.queries import batch_corrected, normalize_query, query_normalization
from cellresponse.profiling.reference_building import build_references, withheld_mechanism_novelty
from cellresponse.profiling.references import DEEP_PREFIX, choose_kind, image_meta, level_table, profile_fields

SWEEP = (0.05, 0.1, 0.25, 0.5)  # novelty quantiles whose trade-off is printed
BATCH = ["none"]  # --batch-correction (profiles.batch_correction) of the references
MOA_SPACE = [load_config().references.moa_space]  # --moa-space (references.moa_space)


def thresholds(refs) -> dict[float, float]:
    """The well-level novelty threshold each quantile of :data:`SWEEP` would give these references."""
    same = leave_one_compound_out(refs, "well")["same_moa_similarity"].to_numpy()
    same = same[np.isfinite(same)]
    return {q: float(np.quantile(same, q)) for q in SWEEP}


KIND_BLOCKS = {"measured": ["measured"], "deep": ["deep"], "both": ["measured", "deep"]}
COLUMNS = {
    "treatment": ["Metadata_Compound", "Metadata_Concentration"],
    "compound": "Metadata_Compound",
    "moa": "Metadata_MoA",
}


def expected_calibration_error(probability: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy − mean probability| over equal-width probability bins, weighted by their counts."""
    if not len(probability):
        return float("nan")
    edges = np.minimum((probability * bins).astype(int), bins - 1)
    return float(sum(abs(right[edges == b].mean() - probability[edges == b].mean()) * (edges == b).sum()
                     for b in range(bins) if (edges == b).any()) / len(probability))  # fmt: skip


def blocks_of(tables: dict[str, pd.DataFrame], kind: str, ids: pd.Index) -> dict[str, pd.DataFrame]:
    return {name: tables[name].loc[tables[name].index.intersection(ids)] for name in KIND_BLOCKS[kind]}


def answered(refs, tables, kind, meta, query_ids, mode_setting, level):
    mode, _ = query_normalization(refs, False, mode_setting)
    raw, _ = profile_fields(blocks_of(tables, kind, query_ids), meta.loc[query_ids])
    fields = normalize_query(raw, None, refs, mode)
    refs, fields = batch_corrected(refs, fields, None, refs.calibration["well"].get("novelty_quantile", 0.05), 0)
    units = level_table(fields, refs.features, level)
    return units, match(units, refs, level, 5)


def unseen_compounds(tables, kind, meta, ref_ids, query_ids, quantile, mode_setting) -> dict[str, float]:
    """Each compound withheld from the references in turn, its units on the query side answered."""
    settings = ReferencesConfig(novelty_quantile=quantile, moa_space=MOA_SPACE[0])
    rows = {"field": [], "well": []}
    swept: dict[float, list[bool]] = {}
    for compound in sorted(meta["compound"].unique()):
        kept = ref_ids[meta.loc[ref_ids, "compound"] != compound]
        refs = build_references(blocks_of(tables, kind, kept), meta.loc[kept], None, kind, COLUMNS, settings,
                                batch_correction=BATCH[0])  # fmt: skip
        for level in rows:
            units, calls = answered(refs, tables, kind, meta, query_ids, mode_setting, level)
            mine = (units["compound"] == compound).to_numpy()
            if level == "well":
                limits = thresholds(refs)
                for q in SWEEP:
                    swept.setdefault(q, []).extend(calls.loc[mine, "best_similarity"] < limits[q])
            rows[level].append(pd.concat([units.loc[mine, ["moa"]].reset_index(drop=True),
                                          calls[mine].reset_index(drop=True)], axis=1))  # fmt: skip
    out = {}
    for level, parts in rows.items():
        table = pd.concat(parts, ignore_index=True)
        right = (table["moa_call"].astype(object) == table["moa"]).to_numpy()
        called = table["moa_call"].notna().to_numpy()
        out[f"{level}_accuracy"] = float(right.mean())
        out[f"{level}_nearest_moa"] = float((table["nearest_1_moa"] == table["moa"]).mean())
        out[f"{level}_novel"] = float(table["novel"].astype(bool).mean())
        out[f"{level}_mean_probability"] = float(table.loc[called, "moa_probability"].mean())
        out[f"{level}_ece"] = expected_calibration_error(table.loc[called, "moa_probability"].to_numpy(), right[called])
    out["swept_novel"] = {q: float(np.mean(flags)) for q, flags in swept.items()}
    return out


def novel_mechanisms(tables, kind, meta, ref_ids, query_ids, quantile, mode_setting) -> dict[str, float]:
    """Each mechanism withheld in turn: the share of its query wells flagged novel, and of the others'."""
    settings = ReferencesConfig(novelty_quantile=quantile, moa_space=MOA_SPACE[0])
    withheld_novel, known_novel = [], []
    swept: dict[float, list[float]] = {}
    for moa in sorted(meta["moa"].unique()):
        kept = ref_ids[meta.loc[ref_ids, "moa"] != moa]
        refs = build_references(blocks_of(tables, kind, kept), meta.loc[kept], None, kind, COLUMNS, settings,
                                batch_correction=BATCH[0])  # fmt: skip
        units, calls = answered(refs, tables, kind, meta, query_ids, mode_setting, "well")
        novel = calls["novel"].astype(bool).to_numpy()
        mine = (units["moa"] == moa).to_numpy()
        withheld_novel.append(novel[mine].mean())
        known_novel.append(novel[~mine])
        limits = thresholds(refs)
        for q in SWEEP:
            swept.setdefault(q, []).append(float((calls.loc[mine, "best_similarity"] < limits[q]).mean()))
    return {"withheld_novel": float(np.mean(withheld_novel)), "known_novel": float(np.concatenate(known_novel).mean()),
            "worst_withheld": float(np.min(withheld_novel)),
            "swept_withheld": {q: float(np.mean(v)) for q, v in swept.items()}}  # fmt: skip


def directions(replicate: pd.Series, both: bool = True):
    """(reference side, query side, reference image ids, query image ids): replicate 1 → 2 (the choosing
    direction), then, with ``both``, 2 → 1."""
    for reference_side, query_side in (("1", "2"), ("2", "1"))[: 2 if both else 1]:
        yield (reference_side, query_side, replicate.index[replicate == reference_side],
               replicate.index[replicate == query_side])  # fmt: skip


def open_world_figures(tables, kind, meta, ref_ids, query_ids, quantile) -> str:
    """The two benchmarks' headline figures in one line: unseen compounds' ``moa_call`` right per field and well
    (and the nearest mechanism's), the share of withheld-mechanism wells flagged novel, and of known ones."""
    unseen = unseen_compounds(tables, kind, meta, ref_ids, query_ids, quantile, "auto")
    novel = novel_mechanisms(tables, kind, meta, ref_ids, query_ids, quantile, "auto")
    return (f"unseen compounds moa_call per field {unseen['field_accuracy']:.3f}, per well "
            f"{unseen['well_accuracy']:.3f} (nearest mechanism {unseen['field_nearest_moa']:.3f} / "
            f"{unseen['well_nearest_moa']:.3f}; novel {unseen['field_novel']:.3f} / {unseen['well_novel']:.3f}); "
            f"withheld-mechanism wells flagged {novel['withheld_novel']:.3f}, "
            f"known {novel['known_novel']:.3f}")  # fmt: skip


def per_image_embeddings(
    run: RunFolder, image_ids: list[str], statistic: Callable[[pd.DataFrame, str], pd.Series]
) -> pd.DataFrame:
    """Each image's ``statistic`` of its cell embeddings (the table of one image's embedding columns, its id);
    images without cells left out."""
    rows = {}
    for image_id in image_ids:
        cells = pd.read_parquet(run.embedding_path(image_id))
        values = cells[[c for c in cells.columns if c.startswith(DEEP_PREFIX)]]
        if len(values):
            rows[image_id] = statistic(values, image_id)
    return pd.DataFrame.from_dict(rows, orient="index")


def median_embeddings(run: RunFolder, image_ids: list[str]) -> pd.DataFrame:
    """Each image's median cell embedding (a probe beside ``mean_embeddings``: robust to a few odd cells)."""
    return per_image_embeddings(run, image_ids, lambda values, _: values.median())


def sampled_mean_embeddings(run: RunFolder, image_ids: list[str], most: int) -> pd.DataFrame:
    """Each image's mean embedding over the cells ``embedding.max_cells_per_image: most`` would embed."""
    return per_image_embeddings(
        run, image_ids, lambda values, image_id: sampled_cells(values, image_id, most).mean(axis=0).astype(float)
    )


def run_tables(
    folder: str, deep_statistic: str = "mean", max_cells: int | None = None
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame, pd.Series]:
    """A BBBC021-moa run's images, their per-image profiles (``measured``, ``deep``: each image's mean cell
    embedding, or its median with ``deep_statistic``), their metadata (``image_meta``; the replicates as batches)
    and each image's replicate (indexed by image id)."""
    run = RunFolder(folder)
    images, cells = run.read_images(), run.read_cells()
    of_images = median_embeddings if deep_statistic == "median" else mean_embeddings
    if max_cells:
        of_images = partial(sampled_mean_embeddings, most=max_cells)
    tables = {"measured": image_feature_table(cells, feature_columns(cells.columns)),
              "deep": of_images(run, images["image_id"].astype(str).tolist())}  # fmt: skip
    # the replicates are the batches (BBBC021's plates each hold one compound: batches they cannot be)
    meta = image_meta(images, COLUMNS["treatment"], "Metadata_Compound", "Metadata_MoA", "Metadata_Replicate")
    replicate = images.set_index(images["image_id"].astype(str))["Metadata_Replicate"].astype(str)
    return images, tables, meta, replicate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--kinds", nargs="+", default=["auto", "measured", "deep", "both"])
    parser.add_argument("--query-normalization", default="auto", choices=["auto", "references", "self"])
    parser.add_argument("--quantile", type=float, default=load_config().references.novelty_quantile)
    parser.add_argument("--batch-correction", default="none", choices=["none", "spherize", "harmony"])
    parser.add_argument("--deep-statistic", default="mean", choices=["mean", "median"])
    parser.add_argument("--max-cells-per-image", type=int, default=None)
    parser.add_argument("--moa-space", default=MOA_SPACE[0], choices=["auto", "discriminant", "profile"])
    parser.add_argument("--correlation-threshold", type=float, default=well_profiles.CORRELATION_THRESHOLD)
    args = parser.parse_args()
    BATCH[0], MOA_SPACE[0] = args.batch_correction, args.moa_space
    # the references' feature selection drops one of each feature pair correlated above this (pycytominer's 0.9)
    well_profiles.correlated_features = partial(well_profiles.correlated_features, threshold=args.correlation_threshold)
    images, tables, meta, replicate = run_tables(args.run, args.deep_statistic, args.max_cells_per_image)
    cells = f"at most {args.max_cells_per_image} cells" if args.max_cells_per_image else "every cell"
    print(f"run {args.run}: {len(images)} fields; query normalization {args.query_normalization}; "
          f"novelty quantile {args.quantile}; batch correction {args.batch_correction}; correlation threshold "
          f"{args.correlation_threshold}; {args.deep_statistic} embedding per field of {cells}; "
          f"moa space {args.moa_space}")  # fmt: skip
    settings = ReferencesConfig(novelty_quantile=args.quantile, moa_space=MOA_SPACE[0])
    for reference_side, query_side, ref_ids, query_ids in directions(replicate):
        started = time.perf_counter()
        candidates = {kind: build_references(blocks_of(tables, kind, ref_ids), meta.loc[ref_ids], None, kind,
                                             COLUMNS, settings, batch_correction=BATCH[0])
                      for kind in KIND_BLOCKS}  # fmt: skip
        build_seconds = (time.perf_counter() - started) / len(candidates)
        auto, why = choose_kind(candidates)
        print(f"\nreferences replicate {reference_side} → queries replicate {query_side}"
              f"{' (choose)' if reference_side == '1' else ''}; auto kind = {why}")  # fmt: skip
        for kind in args.kinds:
            chosen = auto if kind == "auto" else kind
            started = time.perf_counter()
            answered(candidates[chosen], tables, chosen, meta, query_ids, args.query_normalization, "well")
            answer_seconds = time.perf_counter() - started
            unseen = unseen_compounds(tables, chosen, meta, ref_ids, query_ids, args.quantile, args.query_normalization)
            novel = novel_mechanisms(tables, chosen, meta, ref_ids, query_ids, args.quantile, args.query_normalization)
            print(f"  {kind:>8} ({chosen}): unseen compounds moa_call per field {unseen['field_accuracy']:.3f}, "
                  f"per well {unseen['well_accuracy']:.3f} (nearest mechanism {unseen['field_nearest_moa']:.3f} / "
                  f"{unseen['well_nearest_moa']:.3f}; novel {unseen['field_novel']:.3f} / {unseen['well_novel']:.3f}); "
                  f"mean probability {unseen['field_mean_probability']:.3f} / {unseen['well_mean_probability']:.3f}, "
                  f"ECE {unseen['field_ece']:.3f} / {unseen['well_ece']:.3f}; novel mechanisms: withheld wells "
                  f"flagged {novel['withheld_novel']:.3f} (worst mechanism {novel['worst_withheld']:.3f}), known "
                  f"wells {novel['known_novel']:.3f}; build {build_seconds:.2f} s, "
                  f"answer {answer_seconds:.2f} s")  # fmt: skip
            print(f"           moa space: {candidates[chosen].moa_space['why']}")
            started = time.perf_counter()
            check = withheld_mechanism_novelty(blocks_of(tables, chosen, ref_ids), meta.loc[ref_ids], None, chosen,
                                               COLUMNS, settings, batch_correction=BATCH[0])  # fmt: skip
            shares = ", ".join(f"{moa} {share:.2f}" for moa, share in check["mechanisms"].items())
            seconds = time.perf_counter() - started
            print(f"           read on the references alone (train's novelty_check, {seconds:.1f} s): "
                  f"withheld wells flagged {check['mean']:.3f} ({shares})")  # fmt: skip
            sweep = "; ".join(f"{q:g}: withheld mechanisms {novel['swept_withheld'][q]:.3f}, unseen compounds of "
                              f"known ones {unseen['swept_novel'][q]:.3f}" for q in SWEEP)  # fmt: skip
            print(f"           novelty_quantile → wells flagged novel: {sweep}")


if __name__ == "__main__":
    main()

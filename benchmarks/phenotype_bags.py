"""Would another *profile* tell a new mechanism from an unseen compound, where every score on today's did not?
(issue 33 probe; docs/results.md, "Unseen compounds and novel mechanisms")

    python benchmarks/phenotype_bags.py RUN [--reference-side 1] [--clusters 64] [--components 64]

RUN as for ``unseen_compounds.py`` (bbbc021-moa through ``embed``). ``novelty_scores.py`` tried thirteen scores on
the well *means* that ``predict`` compares; all separate a withheld mechanism's wells from an unseen compound's at a
ROC AUC of about 0.9. A mean hides how a well's cells are spread: a mechanism might shift a subpopulation that no
reference shifts. This probe builds, per well, from the cells of the reference replicate only (a withheld compound's
or mechanism's reference cells left out of every fit):

* ``mean`` — the mean of the cells' features (z-scored on the reference cells), centred on the reference wells;
* ``bag`` — the share of the well's cells in each of ``--clusters`` k-means phenotypes (fitted on the reference
  cells), compared by the Bhattacharyya coefficient (Σ √(p·q)), a "bag of phenotypes" (akin to the subpopulation
  profiles of Slack et al. 2008, and to PhenoRipper's bags of image-block types, Rajaram et al. 2012);

on two feature sets: ``measured`` (the run's cell features, signed log) and ``deep`` (the cell embeddings
projected on ``--components`` principal components of the reference cells). A query well's score is its best
similarity to any reference well (last, ``measured bag + deep mean``: the two scores z-scored over the wells and
summed — two views that may err on different wells); reported: the ROC AUC of new mechanism against unseen
compound (higher is better), and — an oracle upper bound, the cut read on the queries themselves — the share of
new-mechanism wells flagged where 5 % of unseen compounds' wells are. The normalisation is this probe's own
(plain z-scores, no feature selection), the same for every representation: compare its rows with each other;
``novelty_scores.py`` gives the figure of ``predict``'s own profiles.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from cellresponse.features.cell_features import feature_columns
from cellresponse.input.runfolder import RunFolder

FIT_CELLS = 15_000  # reference cells sampled for each k-means and PCA fit (of ~23,000 a replicate)
META = ["plate", "well", "Metadata_Replicate", "Metadata_Compound", "Metadata_MoA"]


@dataclass(frozen=True)
class Cells:
    """Every annotated cell of the run: its features, its well's row in ``wells`` and the wells' annotations."""

    features: dict[str, np.ndarray]  # feature set -> (cells, features)
    well_of: np.ndarray  # (cells,) row of ``wells``
    wells: pd.DataFrame  # one row per well: replicate, compound, moa


def read_cells(run: RunFolder) -> Cells:
    """The run's cell features and embeddings, row for row, with each cell's well (unannotated wells dropped)."""
    images = run.read_images().set_index("image_id")[META]
    measured = run.read_cells()
    columns = feature_columns(measured)
    parts = [pd.read_parquet(run.embedding_path(image_id)) for image_id in images.index]
    embeddings = pd.concat([part for part in parts if len(part)]).set_index("cell_id").reindex(measured["cell_id"])
    if embeddings["image_id"].isna().any():
        raise SystemExit(f"{int(embeddings['image_id'].isna().sum())} measured cells have no embedding: run embed")
    meta = images.loc[measured["image_id"]].reset_index(drop=True)
    keep = meta["Metadata_MoA"].notna().to_numpy()
    well_key = (meta["plate"].astype(str) + "/" + meta["well"].astype(str))[keep]
    wells = meta[keep].groupby(well_key.to_numpy()).first()
    values = measured[columns].to_numpy(float)[keep]
    return Cells(
        features={
            "measured": np.sign(values) * np.log1p(np.abs(values)),  # heavy-tailed areas and intensities tamed
            "deep": embeddings.filter(like="emb_").to_numpy(np.float32)[keep],
        },
        well_of=wells.index.get_indexer(well_key),
        wells=wells,
    )


def well_means(values: np.ndarray, well_of: np.ndarray, wells: int) -> np.ndarray:
    sums = np.zeros((wells, values.shape[1]))
    np.add.at(sums, well_of, values)
    return sums / np.bincount(well_of, minlength=wells)[:, None]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def profiles(values: np.ndarray, cells: Cells, fit: np.ndarray, clusters: int, reference_wells: np.ndarray):
    """Each well's ``mean`` and ``bag`` profile, every statistic fitted on the cells flagged in ``fit``, with the
    similarity each is compared by."""
    z = np.clip((values - values[fit].mean(0)) / (values[fit].std(0) + 1e-9), -6, 6)
    means = well_means(z, cells.well_of, len(cells.wells))
    sample = np.random.default_rng(0).choice(np.flatnonzero(fit), min(FIT_CELLS, int(fit.sum())), replace=False)
    labels = MiniBatchKMeans(clusters, random_state=0, n_init=3, batch_size=2048).fit(z[sample]).predict(z)
    bags = np.zeros((len(cells.wells), clusters))
    np.add.at(bags, (cells.well_of, labels), 1)
    bags /= bags.sum(1, keepdims=True)
    centred = means - means[reference_wells].mean(0)
    return {"mean": (centred, cosine), "bag": (bags, lambda a, b: np.sqrt(a) @ np.sqrt(b).T)}


def best_similarities(cells: Cells, side: int, held: Callable[[pd.DataFrame], pd.Series], args) -> dict:
    """Per representation, the best similarity of each held-out query well to the reference wells."""
    replicate = cells.wells["Metadata_Replicate"].astype(int).to_numpy()
    scores: dict[str, list[float]] = {}
    for _, held_out in held(cells.wells).items():
        held_rows = held_out.to_numpy()
        reference_wells = (replicate == side) & ~held_rows
        queries = (replicate != side) & held_rows
        fit = reference_wells[cells.well_of]
        for name, values in cells.features.items():
            if name == "deep":
                sample = np.flatnonzero(fit)[:: max(1, int(fit.sum()) // FIT_CELLS)]
                values = PCA(args.components, random_state=0).fit(values[sample]).transform(values)
            for kind, (table, similarity) in profiles(values, cells, fit, args.clusters, reference_wells).items():
                best = similarity(table[queries], table[reference_wells]).max(axis=1)
                scores.setdefault(f"{name} {kind}", []).extend(best.tolist())
    return scores


def held_sets(column: str) -> Callable[[pd.DataFrame], pd.Series]:
    """For each value of ``column``, which wells it withholds."""
    return lambda wells: {value: wells[column] == value for value in sorted(wells[column].unique())}  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=RunFolder)
    parser.add_argument("--reference-side", type=int, default=1)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--components", type=int, default=64)
    args = parser.parse_args()
    cells = read_cells(args.run)
    side = args.reference_side
    new = best_similarities(cells, side, held_sets("Metadata_MoA"), args)
    unseen = best_similarities(cells, side, held_sets("Metadata_Compound"), args)
    print(f"references replicate {side}, queries the other; {args.clusters} phenotypes, {args.components} components")
    print("profile                     AUC new mechanism vs unseen   new-mechanism wells flagged at the oracle 5 % cut")
    pair = ("measured bag", "deep mean")  # the two views that separate best, each z-scored over every well scored
    pooled = {name: np.r_[new[name], unseen[name]] for name in pair}
    both = sum((values - values.mean()) / values.std() for values in pooled.values())
    new[" + ".join(pair)], unseen[" + ".join(pair)] = both[: len(new[pair[0]])], both[len(new[pair[0]]) :]
    for name in new:
        novel, known = np.array(new[name]), np.array(unseen[name])
        truth = np.r_[np.ones(len(novel)), np.zeros(len(known))]
        auc = roc_auc_score(truth, -np.r_[novel, known])
        flagged = float(np.mean(novel < np.quantile(known, 0.05)))
        print(f"{name:26s}  {auc:.3f}{'':22s}{flagged:.3f}   ({len(novel)} / {len(known)} wells)")


if __name__ == "__main__":
    main()

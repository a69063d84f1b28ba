"""The prediction report, ``DIR/report/index.html``: what each new treatment does — pictures first, tables after.

1. the counts: treatments active / not active / not scored, novel, called per mechanism;
2. a map of treatment profiles (PCA of the unit-length profiles, fitted on the references): references coloured by
   mechanism, new treatments marked (novel ones red);
3. a clustered similarity heat map of the new treatments against the reference treatments they come close to;
4. for each new treatment (up to :data:`STRIPS`), representative cells beside those of its best reference (crops of
   the training run's images where its folder is still beside the bundle), with a scale bar;
5. the treatment calls as a table, then how the references were calibrated.

UMAP is left out on purpose: with tens of references a PCA shows the same groups, without a dependency.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import leaves_list, linkage
from sklearn.decomposition import PCA

from cellresponse.features.cell_features import feature_columns
from cellresponse.input.channels import load_stack
from cellresponse.input.io import write_text
from cellresponse.input.plate import channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.input.transforms import normalize_percentile
from cellresponse.profiling.references import (
    References,
    image_meta,
    level_table,
    novelty_check_phrase,
    treatment_table,
)
from cellresponse.profiling.similarity import cosine_similarity, unit_rows
from cellresponse.profiling.treatment_calls import PlateAnswer, calls_matching_given
from cellresponse.provenance import made_by_line
from cellresponse.reporting.figures import cell_strips, profile_map, similarity_heatmap
from cellresponse.reporting.htmlpage import html_table, inline_png, page

STRIPS = 8  # new treatments shown with their cells
CELLS = 6  # cells per strip
HEATMAP_ROWS = 40


@dataclass(frozen=True)
class CellSource:
    """Where a treatment's cells can be cut from: an image table (channel paths), a reader of its cells (the cells
    of the given image ids, with centroids and features: read when a strip needs them, a plate's part at a time,
    never a screen's whole table) and each image's treatment."""

    images: pd.DataFrame
    cells_of: Callable[[set[str]], pd.DataFrame]
    treatment_of: pd.Series  # index image_id
    channels: list[str]


def representative_cells(source: CellSource, treatment: str, n: int, features: list[str]) -> pd.DataFrame:
    """The ``n`` cells of a treatment closest to its median cell (features standardised over the treatment)."""
    ids = set(source.treatment_of.index[source.treatment_of == treatment])
    cells = source.cells_of(ids) if ids else pd.DataFrame()
    if cells.empty:
        return cells
    x = cells[features].to_numpy(np.float64)
    x = (x - np.nanmean(x, 0)) / np.where(np.nanstd(x, 0) > 0, np.nanstd(x, 0), 1)
    distance = np.nansum(x**2, axis=1)
    return cells.iloc[np.argsort(distance, kind="stable")[:n]]


def cell_crops(source: CellSource, cells: pd.DataFrame, side: int) -> list[np.ndarray]:
    """RGB crops (the first three channels, each scaled to its field's 1st–99th percentile) centred on cells."""
    crops = []
    rows = source.images.set_index(source.images["image_id"].astype(str))
    for image_id, group in cells.groupby(cells["image_id"].astype(str)):
        stack = load_stack(rows.loc[image_id].to_dict(), source.channels)
        shown = np.stack([normalize_percentile(stack[min(i, len(stack) - 1)]) for i in range(3)], axis=-1)
        padded = np.pad(shown, ((side, side), (side, side), (0, 0)))
        for y, x in zip(group["centroid_y"].astype(int), group["centroid_x"].astype(int), strict=True):
            crops.append(padded[y + side // 2 : y + side // 2 + side, x + side // 2 : x + side // 2 + side])
    return crops


def strip_rows(
    treatments: pd.DataFrame, query: CellSource, reference: CellSource | None, features: list[str], side: int
) -> list[tuple[str, list[np.ndarray]]]:
    """For each shown new treatment, a row of its cells and one of its best reference's."""
    rows = []
    for row in treatments.head(STRIPS).itertuples():
        cells = representative_cells(query, str(row.treatment), CELLS, features)
        rows.append((f"new: {row.treatment}", cell_crops(query, cells, side)))
        if reference is not None:
            best = representative_cells(reference, str(row.nearest_1), CELLS, features)
            rows.append((f"  its nearest reference: {row.nearest_1}", cell_crops(reference, best, side)))
    return [(title, crops) for title, crops in rows if crops]


def counts_section(
    calls: pd.DataFrame,
    calibration: dict[str, Any],
    activity_note: str | None = None,
    given: str | None = None,
    novelty: str | None = None,
) -> list[str]:
    """The counts table (active, novel, called, by mechanism), why activity was not scored where it was not, how
    often such calls were right on the references left out, how often ``novel`` caught a mechanism they lacked
    (``novelty``, references.novelty_check_phrase) and, where the new images carry a mechanism (``given``), how
    often they were right here."""
    treated = calls[~calls["control"]]
    active = treated["active"]
    rows: list[list[Any]] = [["treatments (negative controls left out)", len(treated)]]
    if activity_note is None:
        rows += [
            ["active (q < FDR)", int(active.fillna(False).sum())],
            ["not active", int((active == False).sum())],  # noqa: E712 (a nullable boolean: NA stays out)
            ["activity not scored", int(active.isna().sum())],
        ]
    rows += [
        ["novel (nothing in the references matches)", int(treated["novel"].fillna(False).sum())],
        ["given a mechanism call", int(treated["moa_call"].notna().sum())],
    ]
    rows += [[f"  called {name}", n] for name, n in treated["moa_call"].dropna().value_counts().items()]
    well = calibration.get("well", {})
    said = [
        f"Mechanism calls of this kind were right on {well['accuracy']:.3f} of the reference wells when their "
        f"compound was left out of the references ({well['units']} wells; mean probability claimed "
        f"{well['mean_probability']:.2f}): read each call's probability against that."
        if well.get("accuracy") is not None
        else html.escape(str(well.get("skipped", "no calibration")))
    ]
    if novelty:
        said.append(f"Novel: {html.escape(novelty)}.")
    if activity_note is not None:  # said instead of zeros that would read as "nothing is active"
        said.insert(0, f"Activity (distinct from the negative controls) was not scored: {html.escape(activity_note)}.")
    agreement = calls_matching_given(treated, given)
    if agreement is not None:
        said.append(
            f"These images carry a mechanism ({html.escape(str(given))}): the call matches it for {agreement[0]:.3f} "
            f"of the {agreement[1]} called treatments."
        )
    return [
        "<h2>Active, novel and called: the counts</h2>",
        html_table(["", "count"], rows),
        *(f"<p>{p}</p>" for p in said),
    ]


def map_coordinates(references: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the reference and new treatment profiles sit on the map: the references' first two principal
    components, fitted on and applied to unit-length profiles — the matching is by cosine, so two profiles that
    differ only in length are the same match and the same point, and one very strong profile cannot stretch the
    axes until every other treatment is a single blot — with each component's share of the variance."""
    pca = PCA(n_components=2, random_state=0)
    reference_xy = pca.fit_transform(unit_rows(references))
    return reference_xy, pca.transform(unit_rows(new)), pca.explained_variance_ratio_


def map_section(calls: pd.DataFrame, references: References, query_treatments: pd.DataFrame, out: Path) -> list[str]:
    """PCA map and clustered similarity heat map."""
    features = references.features
    refs = treatment_table(references.fields, features)
    new = query_treatments[~query_treatments["treatment"].isin(set(calls.loc[calls["control"], "treatment"]))]
    if new.empty or len(refs) < 3:
        return []
    reference_xy, new_xy, explained = map_coordinates(refs[features].to_numpy(), new[features].to_numpy())
    novel = new["treatment"].map(calls.set_index("treatment")["novel"]).fillna(False).astype(bool).tolist()
    moa = refs["moa"].astype(str).tolist() if references.has_moa else ["reference"] * len(refs)
    map_png = profile_map(
        (reference_xy, moa),
        (new_xy, new["treatment"].astype(str).tolist(), novel),
        out / "treatment_map.png",
        (f"PC 1 ({explained[0]:.0%})", f"PC 2 ({explained[1]:.0%})"),
    )
    shown = new.head(HEATMAP_ROWS)
    similarity = cosine_similarity(shown[features].to_numpy(), refs[features].to_numpy())
    close = np.unique(np.argsort(-similarity, axis=1)[:, :3])
    matrix = similarity[:, close]
    row_order = leaves_list(linkage(matrix, "average")) if len(matrix) > 2 else np.arange(len(matrix))
    column_order = leaves_list(linkage(matrix.T, "average")) if matrix.shape[1] > 2 else np.arange(matrix.shape[1])
    names = (refs["treatment"].astype(str) + (" · " + refs["moa"].astype(str) if references.has_moa else "")).to_numpy()
    heat_png = similarity_heatmap(
        matrix[np.ix_(row_order, column_order)],
        shown["treatment"].astype(str).to_numpy()[row_order].tolist(),
        names[close][column_order].tolist(),
        out / "similarity.png",
    )
    return [
        "<h2>Where the new treatments sit among the references</h2>",
        "<p>Treatment profiles (each scaled to length 1, as the cosine similarity compares them) projected on the "
        "references' first two principal components; references coloured by "
        "mechanism, new treatments as crosses (red: novel).</p>",
        inline_png(map_png, "map of treatment profiles"),
        "<h2>Similarity to the closest references</h2>",
        f"<p>Cosine similarity of {len(shown)} new treatments to each one's three closest reference treatments, "
        "rows and columns clustered (average linkage).</p>",
        inline_png(heat_png, "similarity heat map"),
    ]


def calls_table(calls: pd.DataFrame, moa_column: str | None) -> str:
    """The treatment calls, one row each, compact enough for a page: activity with its q, the mechanism call with its
    probability, novelty and the two nearest references with their similarity."""

    def activity(row: Any) -> str:
        if pd.isna(row.active):
            return f"not scored ({row.activity_level})" if isinstance(row.activity_level, str) else "—"
        return f"{'yes' if row.active else 'no'} (q {row.activity_q:.3g}, {row.activity_level})"

    def nearest(row: Any) -> str:
        return "; ".join(
            f"{getattr(row, f'nearest_{i}')} ({getattr(row, f'nearest_{i}_similarity'):.2f})"
            for i in (1, 2)
            if f"nearest_{i}" in calls and isinstance(getattr(row, f"nearest_{i}"), str)
        )

    def novel(row: Any) -> str:
        return "—" if pd.isna(row.novel) else ("yes" if row.novel else "no")

    given = moa_column if moa_column in calls else None
    rows = []
    row: Any  # a named tuple of the calls' columns
    for row in calls.rename(columns={given: "given"} if given else {}).itertuples():
        call = "—" if pd.isna(row.moa_call) else f"{row.moa_call} ({row.moa_probability:.2f})"
        rows.append([row.treatment, *([row.given] if given else []), activity(row), call, novel(row), nearest(row)])
    header = ["treatment", *([given] if given else []), "active", "mechanism (probability)", "novel", "nearest"]
    return html_table(header, rows)


def build_treatment_report(
    out: Path,
    calls: pd.DataFrame,
    references: References,
    query_treatments: pd.DataFrame,
    strips: tuple[CellSource, CellSource | None, list[str], int] | None,
    pixel_size_um: float | None = None,
    activity_note: str | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """Write ``out/index.html`` (and its PNGs): ``calls`` the treatment calls, ``query_treatments`` the new
    treatments' normalised profiles, ``strips`` where to cut cells from (query, reference or None, the cell
    features that pick representative cells, the crop side in pixels), ``activity_note`` why activity was not
    scored (None where it was), ``warnings`` what a reader must know before any call (first, highlighted)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = ["<h1>cellresponse — what the new treatments do</h1>"]
    parts += [f"<p class='note'><b>Read first:</b> {html.escape(w)}.</p>" for w in warnings or []]
    novelty = novelty_check_phrase(references.novelty_check, references.calibration)
    parts += counts_section(calls, references.calibration, activity_note, references.columns.get("moa"), novelty)
    parts += map_section(calls, references, query_treatments, out)
    treated = calls[~calls["control"]].sort_values(["novel", "moa_probability"], ascending=[False, False])
    if strips is not None:
        query, reference, features, side = strips
        rows = strip_rows(treated, query, reference, features, side)
        if rows:
            missing = "" if reference is not None else " (the training run's images are not beside the bundle)"
            parts += [
                "<h2>Cells of the new treatments and of their nearest reference</h2>",
                f"<p>The {CELLS} cells closest to each treatment's median cell{html.escape(missing)}.</p>",
                inline_png(cell_strips(rows, out / "cells.png", pixel_size_um), "representative cells"),
            ]
    parts += ["<h2>Treatment calls</h2>", calls_table(treated, references.columns.get("moa"))]
    keys = ("units", "accuracy", "mean_probability", "temperature", "novelty_quantile", "novelty_threshold")
    calibration_rows = [[level, *(c.get(k) for k in keys)] for level, c in references.calibration.items()]
    parts += [
        "<h2>How the references were calibrated</h2>",
        f"<p>{html.escape(references.kind)} profiles of {references.fields['treatment'].nunique()} reference "
        "treatments; each reference compound left out in turn and queried against the others. The mechanism is "
        f"called in {html.escape(references.moa_space.get('why', 'the profile cosine'))}; the nearest treatments "
        "and novelty read the profiles' cosine.</p>",
        html_table(
            ["level", "units", "accuracy", "mean probability", "temperature", "novelty quantile", "novel below"],
            calibration_rows,
        ),
    ]
    parts.append(f"<p>Made by {html.escape(made_by_line())}.</p>")
    write_text(out / "index.html", page("cellresponse — treatment calls", parts))
    return out / "index.html"


def run_cells(
    run: RunFolder, images: pd.DataFrame, treatment_of: pd.Series, columns: list[str], keep: set[str] | None = None
) -> CellSource:
    """The cells of a run folder's ``images`` (``columns`` of them; only the images in ``keep`` where given) as a
    strip's source, read a treatment at a time."""

    def cells_of(image_ids: set[str]) -> pd.DataFrame:
        return run.read_cells(columns, image_ids=image_ids if keep is None else image_ids & keep)

    return CellSource(images, cells_of, treatment_of, channel_names(images))


def reference_cells(run: RunFolder, references: References, columns: list[str]) -> CellSource | None:
    """The reference fields' cells in the training ``run`` (the bundle's folder's run, where it is still around
    the bundle), named by the references' treatment columns; None where the run's images or cells are gone."""
    if not (run.images.is_file() and run.cells.exists()):
        return None
    images = run.read_images()
    named = references.columns
    try:
        meta = image_meta(images, named["treatment"], named.get("compound"), named.get("moa"))
    except KeyError:
        return None
    return run_cells(run, images, meta["treatment"], columns, set(references.fields["image_id"].astype(str)))


def prediction_report(
    out: RunFolder,
    images: pd.DataFrame,
    plate: PlateAnswer,
    training_run: RunFolder,
    window: int,
    pixel_size_um: float | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """A prediction's ``DIR/report/index.html`` (:func:`build_treatment_report`): the new plate's answer with its
    references and fields as they were compared (batch-corrected together, where the bundle's were), strips of
    ``window``-pixel crops of its cells beside those of the references in ``training_run``; ``warnings`` first."""
    features = feature_columns(out.cell_columns())
    columns = ["image_id", "centroid_x", "centroid_y", *features]
    query = run_cells(out, images, plate.meta["treatment"], columns)
    strips = (query, reference_cells(training_run, plate.references, columns), features, window)
    treatments = level_table(plate.fields, plate.references.features, "treatment")
    return build_treatment_report(
        out.report,
        plate.answers.treatments,
        plate.references,
        treatments,
        strips,
        pixel_size_um,
        plate.answers.activity_note,
        warnings,
    )

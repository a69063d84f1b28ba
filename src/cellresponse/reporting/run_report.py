"""The report of a run: one self-contained HTML page (images inlined) plus the PNGs beside it.

``RUN/report/index.html`` — what was run (config, counts, timings), how good the predictions are (every accuracy
beside chance, majority and the features-only baseline), where the model `predict` uses errs (confusion matrix,
per-class accuracy), what the split could not do (leakage), how training went (per-epoch curves and table) and what
segmentation looked like (Figure 1 panels). Works on partial runs: sections without data are left out.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.evaluation.classification import wilson_interval
from cellresponse.evaluation.label_groups import wrong_calls_sentence
from cellresponse.evaluation.run_metrics import (
    NscScores,
    ProfileMetrics,
    RetrievalScores,
    RunMetrics,
    SanityCheck,
    Scores,
    SplitReport,
    VotedScores,
    WrongCalls,
)
from cellresponse.input.illumination import illumination_channels, illumination_path, read_function
from cellresponse.input.io import read_tiff, write_text
from cellresponse.input.plate import channel_names
from cellresponse.input.runfolder import RunFolder
from cellresponse.learning.baselines import compare_with_baseline
from cellresponse.learning.bundle import NETWORK
from cellresponse.learning.model_choice import call_probability, test_blocks
from cellresponse.provenance import made_by_line
from cellresponse.reporting.figures import plot_confusion, plot_history, plot_illumination, treatment_panels
from cellresponse.reporting.htmlpage import CSS, html_table, inline_png
from cellresponse.segmentation.inputs import segmentation_inputs

FIGURE1_PANELS = 3
METRIC_HEADER = [
    "level",
    "vote",
    "accuracy",
    "95 % interval",
    "balanced acc.",
    "top-{k}",
    "chance",
    "majority",
    "features-only",
    "n",
]


def metrics_rows(metrics: RunMetrics) -> list[list[Any]]:
    """One row per level and vote: accuracy with its 95 % Wilson interval (a test side of 20 fields right on 0.90
    could be 0.70–0.97), balanced accuracy, top-k, chance, majority, features-only, n."""
    rows = []
    nan = float("nan")

    def number(value: float | None) -> float:
        return nan if value is None else value

    def interval(scores: Scores) -> str:
        if scores.accuracy is None or not scores.n:
            return "—"
        low, high = wilson_interval(round(scores.accuracy * scores.n), scores.n)
        return f"{low:.2f}–{high:.2f}"

    def row(level: str, vote: str, scores: Scores, rates: Scores | VotedScores) -> list[Any]:
        base = metrics.baseline_cell_features if level == "cell" else metrics.baseline_features
        return [
            level, vote, scores.accuracy, interval(scores), number(scores.balanced_accuracy),
            number(scores.top_k_accuracy), number(rates.chance_rate), number(rates.majority_rate),
            number(base.accuracy(level)), scores.n,
        ]  # fmt: skip

    if metrics.cell is not None:
        rows.append(row("cell", "—", metrics.cell, metrics.cell))
    for level in ("image", "well", "plate"):
        voted = metrics.voted(level)
        for vote in ("majority", "soft"):
            scores = voted.vote(vote)
            if scores is not None:
                rows.append(row(level, f"{vote} vote", scores, voted))
    return rows


def sanity_meaning(sanity: SanityCheck) -> str:
    """The sanity check in words. Balanced accuracy decides (chance 0.5 whatever the group sizes): plain accuracy
    sits under the larger group's share whenever controls are few, even when the features do separate them."""
    balanced = sanity.balanced_accuracy or 0.0
    if balanced < 0.55:
        return (
            "That is no better than chance (balanced accuracy 0.5): on these cells the measured features do not "
            "tell control from treated — the treatments' effects are weak or absent here."
        )
    if balanced < 0.6:
        return "The balanced accuracy is barely above chance (0.5): control and treated cells are hardly apart."
    if (sanity.accuracy or 0.0) <= (sanity.majority_rate or 0.0):
        return (
            f"Control and treated cells differ (balanced accuracy {balanced:.3f}, chance 0.5), though plain accuracy "
            f"stays under always answering the larger group ({sanity.majority_rate:.3f} of the cells): some "
            "treated cells look like controls, as cells do when a treatment is weak or acts on part of them."
        )
    return "Control and treated cells are told apart: the treatments change what the features measure."


def never_predicted(scores: Scores) -> list[str]:
    """A sentence per true class that the model never predicts, naming where its images went."""
    if scores.confusion is None:
        return []
    labels, matrix = scores.confusion.labels, np.asarray(scores.confusion.matrix)
    notes = []
    for j, label in enumerate(labels):
        if matrix[j].sum() and not matrix[:, j].sum():
            went = labels[int(np.argmax(matrix[j]))]
            notes.append(
                f"{label} is never predicted: its {int(matrix[j].sum())} images were called {went} most often."
            )
    return notes


def section_data(run: RunFolder, summaries: dict[str, dict[str, Any]]) -> list[str]:
    images, segment, measure = summaries["images"], summaries["segment"], summaries["measure"]
    counts = [
        ["images", images.get("images", "—")],
        ["plates", images.get("plates", "—")],
        ["classes", images.get("classes", "—")],
        ["cells segmented", segment.get("cells", "—")],
        ["cells measured (perimeter > 0)", measure.get("cells", "—")],
        ["segmentation backend", segment.get("backend", "—")],
        ["median cell diameter (px)", segment.get("median_diameter", "—")],
    ]
    diameter = segment.get("median_diameter")
    counts[-1][1] = f"{diameter:.1f}" if isinstance(diameter, float) else "—"
    timings = [[stage, f"{summary['seconds']:.1f}"] for stage, summary in summaries.items() if "seconds" in summary]
    return [
        "<h2>Data</h2>",
        html_table(["", "value"], counts),
        "<h2>Timings</h2>",
        html_table(["stage", "seconds"], timings),
    ]


def model_choice_rows(metrics: RunMetrics) -> list[list[Any]]:
    """Per candidate model: held-out validation accuracy (which chose), test accuracy per image and well, and the
    mean probability of its image calls (to read beside their accuracy)."""
    auto = metrics.auto
    if auto is None:
        return []
    vote = metrics.headline_vote
    nan = float("nan")
    rows = []
    for kind, accuracy in (auto.validation or {}).items():
        what = f"the trained network ({vote} vote over cells)" if kind == NETWORK else f"{kind} profiles, shrinkage LDA"
        blocks = test_blocks(metrics, kind, vote)
        test = {lvl: blocks[lvl].accuracy if lvl in blocks else nan for lvl in ("image", "well")}
        sure = call_probability(metrics, kind)
        name = f"{kind} ← auto" if kind == auto.model else kind
        chosen_on = (auto.validation_images or {}).get(kind)
        tempered_on = (auto.calibration_images or {}).get(kind)
        row = [name, what, nan if accuracy is None else accuracy, "—" if chosen_on is None else chosen_on]
        row += [test["image"], test["well"], nan if sure is None else sure, "—" if tempered_on is None else tempered_on]
        rows.append(row)
    return rows


def predicting_model_is_a_profile(metrics: RunMetrics) -> bool:
    """Whether `predict` uses a profile model by default (the report then leads with it, not the network)."""
    chosen = metrics.auto.model if metrics.auto else None
    return chosen in metrics.profile_models and metrics.profile_models[chosen].image is not None


def headline_of_the_predicting_model(metrics: RunMetrics) -> str:
    """The report's first figure when `predict` uses a profile model by default: that model's test accuracy per
    image and well and how sure its calls say they are — what a user of `predict` gets — ahead of the network's
    numbers (empty when the network predicts: the paragraph after it is then the headline)."""
    auto = metrics.auto
    if auto is None or not predicting_model_is_a_profile(metrics):
        return ""
    chosen = auto.model
    blocks = test_blocks(metrics, chosen, "soft")
    image, well = blocks["image"], blocks.get("well")
    per_well = f", <b>{well.accuracy:.3f}</b> per well ({well.n} wells)" if well is not None else ""
    sure = call_probability(metrics, chosen)
    said = f"; its calls are made with a mean probability of {sure:.3f}" if sure is not None else ""
    return (
        f"<p class='good'><code>cellresponse predict</code> uses the <b>{html.escape(chosen)}</b> profile model "
        f"(chosen on {html.escape(auto.scored_on or 'held-out non-test images')}; see "
        f'"Which model predicts"): accuracy <b>{image.accuracy:.3f}</b> per '
        f"image on {image.n} held-out images{per_well}{said}; chance {metrics.chance_rate:.3f}, "
        f"always-the-most-common-class {metrics.majority_rate:.3f}.</p>"
    )


def predicting_model_calls(metrics: RunMetrics, vote: str) -> tuple[str, Scores | None]:
    """The name and test-side image scores (accuracy, confusion) of the model `predict` uses by default: the
    `auto` profile model, else the network's ``vote`` vote."""
    name = metrics.auto.model if metrics.auto and predicting_model_is_a_profile(metrics) else NETWORK
    return name, test_blocks(metrics, name, vote).get("image")


def per_class_rows(metrics: RunMetrics, name: str, block: Scores, vote: str) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the per-class table of model ``name`` (test-side image ``block``): each tested class's
    MoA or gene target (where evaluate recorded the grouping), images, recall and precision, and the network's
    recall beside them when ``name`` is a profile model; best first."""
    per_class = block.class_scores()
    header = ["class", "images", f"accuracy (recall), {name}", f"precision, {name}"]
    grouping = metrics.label_grouping
    groups = grouping.groups if grouping else {}
    if grouping and groups:
        header.insert(1, grouping.column)
    network_image = metrics.network("image", vote) if name != NETWORK else None
    network = network_image.class_scores() if network_image is not None else {}
    if network:
        header.append("accuracy (recall), network")
    rows = []
    for label, scores in per_class.items():
        if not scores.support:
            continue
        row = [label, *([groups.get(label, "—")] if groups else []), scores.support, scores.recall, scores.precision]
        if network:
            row.append(network[label].recall if label in network else float("nan"))
        rows.append(row)
    recall = header.index(f"accuracy (recall), {name}")
    return header, sorted(rows, key=lambda r: (-r[recall], r[0]))


def section_calls_per_class(metrics: RunMetrics, vote: str, out: Path) -> list[str]:
    """The confusion matrix and per-class accuracy of the model `predict` uses (the report's headline model), with
    a sentence for each class it never calls."""
    name, block = predicting_model_calls(metrics, vote)
    if block is None or block.confusion is None:
        return []
    which = f"{vote} vote" if name == NETWORK else f"the {name} model"
    said = "" if name == NETWORK else f" — the {html.escape(name)} profile model, which <code>predict</code> uses"
    labels, counts = block.confusion.labels, block.confusion.matrix
    png = plot_confusion(labels, counts, out / "confusion_image.png", f"images, {which}")
    parts = [f"<h2>Confusion matrix (images){said}</h2>", inline_png(png, "confusion matrix")]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in never_predicted(block)]
    header, rows = per_class_rows(metrics, name, block, vote)
    if rows:
        parts += [f"<h2>Per-class accuracy (images){said}</h2>", html_table(header, rows)]
    return parts


def section_model_choice(metrics: RunMetrics) -> list[str]:
    """Which model `predict` uses by default, the validation scores that chose it and every model's test score."""
    auto = metrics.auto
    if not auto:
        return []
    parts = [
        "<h2>Which model predicts</h2>",
        f"<p>{html.escape(auto.sentence or '')}. <code>cellresponse predict</code> uses it unless told otherwise "
        "(<code>--model network|measured|deep|both</code>). The test columns were computed after the choice and "
        "did not inform it.</p>",
    ]
    header = [
        "model",
        "what",
        "validation acc.",
        "held-out images that chose",
        "test acc. (images)",
        "test acc. (wells)",
        "mean probability of the image calls",
        "held-out images that tempered it",
    ]
    parts.append(html_table(header, model_choice_rows(metrics)))
    parts.append(
        "<p class='note'>A model whose calls are right as often as their mean probability says can be taken at its "
        "word. The profile models' probabilities are tempered on every held-out non-test image — the validation "
        "side and the training side's out-of-fold images, pooled (the LDA alone is sure of nearly every call, wrong "
        "ones included); the network's are the mean of its cells' probabilities, which "
        "say how sure its cells are, not how often a field's vote is right.</p>"
    )
    if metrics.embeddings_verdict:
        parts.append(f"<p class='note'>{html.escape(metrics.embeddings_verdict)}.</p>")
    return parts


def section_wrong_calls(metrics: RunMetrics) -> list[str]:
    """Where the wrong calls go against a coarser grouping (MoA, gene target), for every candidate model."""
    grouped = metrics.wrong_calls
    sentence = wrong_calls_sentence(metrics)
    if not grouped or not sentence:
        return []
    column = grouped.column

    def group_accuracy(calls: WrongCalls | None) -> float:
        return float("nan") if calls is None or calls.group_accuracy is None else calls.group_accuracy

    rows = []
    for name, levels in grouped.models.items():
        image, well = levels.get("image"), levels.get("well")
        share = "—" if image is None or image.share_within_group is None else f"{image.share_within_group:.0%}"
        wrong = "—" if image is None else image.wrong
        rows.append([name, wrong, share, group_accuracy(image), group_accuracy(well)])
    header = ["model", "wrong images", f"of them same {column}", f"{column} acc. (images)", f"{column} acc. (wells)"]
    return ["<h2>Where the wrong calls go</h2>", f"<p>{html.escape(sentence)}</p>", html_table(header, rows)]


def section_results(metrics: RunMetrics | None, out: Path) -> list[str]:
    if metrics is None:
        return []
    vote = metrics.headline_vote
    image = metrics.network("image", vote)
    accuracy, images = (image.accuracy, image.n) if image is not None else (float("nan"), None)
    k = metrics.cell.top_k if metrics.cell is not None and metrics.cell.top_k else 5
    parts = [
        "<h2>How good are the predictions?</h2>",
        headline_of_the_predicting_model(metrics),
        (
            f"<p>The network: image-level accuracy <b>{accuracy:.3f}</b> ({vote} vote over the cells of each image). "
            if predicting_model_is_a_profile(metrics)
            else f"<p class='good'>Image-level accuracy <b>{accuracy:.3f}</b> ({vote} "
            f"vote over the cells of each image) on {images} held-out images; chance "
            f"{metrics.chance_rate:.3f}, always-the-most-common-class {metrics.majority_rate:.3f}. "
        )
        + f"{html.escape(compare_with_baseline(metrics, vote))}.</p>",
        html_table([h.format(k=k) for h in METRIC_HEADER], metrics_rows(metrics)),
        "<p>Chance = 1 / classes; majority = accuracy of always answering the most common class; "
        "features-only = "
        + html.escape(metrics.baseline_features.model or "the features-only model")
        + " on the same split (cell row: logistic regression on single-cell features).</p>",
    ]
    parts += section_model_choice(metrics)
    parts += section_wrong_calls(metrics)
    sanity = metrics.sanity_check
    if sanity.accuracy is not None:
        parts.append(
            f"<p>Sanity check ({html.escape(sanity.task or '')}): accuracy {sanity.accuracy:.3f}, balanced "
            f"accuracy {sanity.balanced_accuracy:.3f}, majority rate {sanity.majority_rate:.3f}. "
            f"{html.escape(sanity_meaning(sanity))}</p>"
        )
    elif sanity.skipped is not None:
        parts.append(f"<p>Sanity check (control vs treated cells) not run: {html.escape(sanity.skipped)}.</p>")
    parts += section_calls_per_class(metrics, vote, out)
    return parts


CALL_ROWS = 100  # test images listed in the report's call table (all of them are in the Parquet file)


def section_image_calls(run: RunFolder, label: str) -> list[str]:
    """What each held-out test image was called by the network (its headline vote): the true label, the call, its
    probability and whether it was right — wrong calls first, at most :data:`CALL_ROWS` rows."""
    if not run.image_predictions.is_file():
        return []
    table = pd.read_parquet(run.image_predictions)
    if label not in table.columns or table.empty:
        return []
    right = table[label].astype(str) == table["predicted_label"].astype(str)
    shown = table.assign(right=right).sort_values(["right", "probability"], ascending=[True, False]).head(CALL_ROWS)
    columns = [shown[c].astype(str) for c in ("image_id", "plate", "well", label, "predicted_label")]
    rows = [
        [*names, float(probability), "yes" if ok else "no"]
        for *names, probability, ok in zip(*columns, shown["probability"], shown["right"], strict=True)
    ]
    said = f"the first {CALL_ROWS} of {len(table)}, " if len(table) > CALL_ROWS else ""
    return [
        "<h2>What each test image was called</h2>",
        f"<p>The network's call per held-out image ({said}wrong calls first; every image in "
        f"<code>{html.escape(str(run.image_predictions))}</code>).</p>",
        html_table(["image", "plate", "well", "true label", "called", "probability", "right"], rows),
    ]


def section_profiles(profiles: ProfileMetrics | None) -> list[str]:
    """The profile-level benchmarks: NSC MoA accuracy, replicate and MoA retrieval mAP, per profile kind."""
    if profiles is None or not profiles.kinds:
        return []
    empty_nsc, empty_map = NscScores(), RetrievalScores()
    rows = []
    for kind, block in profiles.kinds.items():
        nsc, nscb = block.nsc or empty_nsc, block.nscb or empty_nsc
        replicate, moa = block.map_replicates or empty_map, block.map_moa or empty_map
        rows.append(
            [
                kind,
                block.features,
                nsc.accuracy,
                nsc.chance_rate,
                nscb.accuracy,
                replicate.mean_average_precision,
                replicate.fraction_retrieved,
                moa.mean_average_precision,
                moa.fraction_retrieved,
            ]
        )
    header = ["profile", "features", "NSC MoA acc.", "chance", "NSCB", "replicate mAP", "retrieved", "MoA mAP"]
    not_computed = [f"NSC MoA accuracy not computed: {why}" for why in profiles.not_computed()]
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in [*profiles.normalization, *not_computed])
    return [
        "<h2>Profiles: mechanism of compounds never seen</h2>",
        "<p>Treatment profiles (pycytominer: fields → wells → treatments, normalised) of each kind. NSC = share of "
        "treatments whose nearest treatment among <i>other compounds</i> has the same mechanism (Ljosa et al. "
        "2013); replicate / MoA mAP = copairs' mean average precision of finding the same treatment's wells / the "
        "same mechanism's treatments, with the share retrieved at FDR 0.05.</p>",
        html_table([*header, "retrieved"], rows),
        notes,
    ]


def section_split(split: SplitReport | None) -> list[str]:
    if split is None:
        return []
    sizes = split.images
    parts = [
        "<h2>Split</h2>",
        f"<p>Split by <b>{html.escape(str(split.by))}</b>: {sizes.get('train', 0)} training, "
        f"{sizes.get('validation', 0)} validation, {sizes.get('test', 0)} test images; "
        f"{split.classes_in_test} of {split.classes} classes are tested.</p>",
    ]
    notes = []
    if split.leaky_classes:
        notes.append(
            f"{split.leaky_classes} classes have sites of the same well in training and test "
            f"(e.g. {', '.join(split.leaky_examples[:5])}). Neighbouring sites of a well are "
            "near-duplicates, so the image-level accuracy is optimistic — rerun with --split-by well or plate."
        )
    if split.plate_confounded_images:
        notes.append(
            f"{split.plate_confounded_images} of {sizes.get('test', 0)} test images sit on plates whose training "
            f"images all carry the same label (e.g. {', '.join(split.plate_confounded_examples[:5])}): "
            "a model can name them by recognising the plate rather than the treatment, so their accuracy is "
            "optimistic — rerun split by plate or by a column such as the replicate (--split-column)."
        )
    if split.untestable_classes:
        notes.append(
            f"{split.untestable_classes} classes cannot be held out at this level and are never tested "
            f"(e.g. {', '.join(split.untestable_examples[:5])})."
        )
    down = split.downsampling
    if down.get("applied"):
        notes.append(
            f"{down['control']} was down-sampled from {down['control_cells_before']} to "
            f"{down['control_cells_after']} cells (whole images) to match the second-largest class."
        )
    return parts + [f"<p class='note'>{html.escape(n)}</p>" for n in notes]


def section_illumination(run: RunFolder, out: Path) -> list[str]:
    """The illumination functions the images were divided by (computed by the images stage, or the load_data's)."""
    images = run.read_images() if run.images.exists() else pd.DataFrame()
    names = channel_names(images) if len(images) else []
    if not names or not illumination_channels(images, names):
        return []
    functions: dict[str, dict[str, np.ndarray]] = {}
    for plate, rows in images.groupby("plate", sort=True):
        row = rows.iloc[0].to_dict()
        functions[str(plate)] = {n: read_function(str(illumination_path(row, n))) for n in names}
    png = plot_illumination(functions, out / "illumination.png")
    spread = [f.max() / f.min() for plate in functions.values() for f in plate.values()]
    return [
        "<h2>Illumination correction</h2>",
        inline_png(png, "illumination functions"),
        f"<p class='note'>Each image was divided by its plate's function per channel, on CellProfiler's 0-1 scale; "
        f"{len(functions)} plates, brightest / dimmest point of a function {min(spread):.2f}–{max(spread):.2f} "
        f"(the first three plates shown).</p>",
    ]


def section_training(history: list[dict[str, float]], out: Path) -> list[str]:
    if not history:
        return []
    png = plot_history(history, out / "training_curves.png")
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    rows = [
        [int(h["epoch"]), *(h[k] for k in keys), f"{h['learning_rate']:.1e}", f"{h['seconds']:.0f}"] for h in history
    ]
    return [
        "<h2>Training history (per epoch)</h2>",
        inline_png(png, "training curves"),
        html_table(["epoch", "train loss", "train acc.", "val loss", "val acc.", "lr", "seconds"], rows),
    ]


def most_different_labels(run: RunFolder, images: pd.DataFrame, label: str, control: str, n: int) -> list[str]:
    """The ``n`` label values whose measured treatment profiles lie farthest from the control's (Euclidean, on
    the normalised profiles of `cellresponse profile`); without profiles, the first other labels."""
    others = [v for v in pd.unique(images[label].astype(str)) if v != control]
    path = run.profile_path("measured", "treatments")
    if not path.exists():
        return others[:n]
    profiles = pd.read_parquet(path)
    if label not in profiles.columns or not (profiles[label].astype(str) == control).any():
        return others[:n]
    features = [c for c in profiles.columns if not c.startswith("Metadata_")]
    values = profiles.groupby(profiles[label].astype(str))[features].mean()
    distance = np.linalg.norm(values - values.loc[control], axis=1)
    ranked = [v for _, v in sorted(zip(-distance, values.index, strict=True)) if v != control]
    return ranked[:n]


def section_segmentation(run: RunFolder, config: Config, out: Path) -> list[str]:
    """The control beside the treatments that differ most from it (field and outlines, scale bar), then the
    study's four-panel Figure 1 of the first field."""
    parts = []
    label, control = config.input.label, config.input.control_label
    images = run.read_images() if run.images.exists() else pd.DataFrame()
    if label in images.columns and run.masks.exists():
        images = images[[run.mask_path(i).exists() for i in images["image_id"]]]
        shown = [control] if (images[label].astype(str) == control).any() else []
        shown += most_different_labels(run, images, label, control, FIGURE1_PANELS - len(shown))
        panels = []
        names = channel_names(images)
        for value in shown:
            row = images[images[label].astype(str) == value].iloc[0].to_dict()
            seg_input, _, _ = segmentation_inputs(row, names, config)
            panels.append((value, seg_input, read_tiff(run.mask_path(row["image_id"]))))
        if panels:
            png = treatment_panels(panels, out / "treatments.png", config.input.pixel_size_um)
            scale = "µm." if config.input.pixel_size_um else "pixels (set input.pixel_size_um for µm)."
            if shown[0] == control:
                title = "Segmentation: the control and the most different treatments"
                what = "treatments ranked by the distance of their measured profile from the control's"
            else:  # nothing to rank against: say so rather than claim a ranking
                title = f"Segmentation: one field of each of {len(shown)} classes"
                what = f"these images hold no {control} control (input.control_label), so no ranking against it"
            parts += [
                f"<h2>{html.escape(title)}</h2>",
                f"<p>One field each (segmentation input, and the cells found); {html.escape(what)}. Scale bar in "
                f"{html.escape(scale)}</p>",
                inline_png(png, "control and treatments"),
            ]
    figures = sorted(run.figures.glob("*.png"))[:1] if run.figures.exists() else []
    if figures:
        parts += ["<h2>Segmentation, step by step (the study's Figure 1)</h2>", inline_png(figures[0], "Figure 1")]
    return parts


def stored_metrics(run: RunFolder) -> tuple[RunMetrics | None, str | None]:
    """``metrics.json`` as a record (None before ``evaluate``), or None and why where an older version wrote it
    (the rest of the report is still built)."""
    try:
        return RunMetrics.read(run.metrics), None
    except InputError as exc:
        return None, f"No results: {exc}."


def build_report(run: RunFolder, config: Config, stages: Sequence[str]) -> Path:
    """Write RUN/report/index.html (+ PNGs) from whatever the run folder holds; ``stages`` are the pipeline's, whose
    summaries (what ran, counts, timings) it reads."""
    out = run.report
    out.mkdir(parents=True, exist_ok=True)
    summaries = {stage: run.read_summary(stage) for stage in stages if stage != "report"}
    metrics, stale = stored_metrics(run)
    split = SplitReport.from_json(json.loads(run.split_report.read_text())) if run.split_report.exists() else None
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>cellresponse report</title><style>{CSS}</style>"
        "</head><body>",
        f"<h1>cellresponse report — {html.escape(run.root.name)}</h1>",
        *(
            [
                "<p class='note'><b>Synthetic data.</b> These images were made by <code>cellresponse synth</code> "
                "(simulated cells whose treatments shift size and intensity): the numbers below test the software, "
                "they say nothing about real cells.</p>"
            ]
            if summaries["images"].get("synthetic")
            else []
        ),
        f"<p>Predicted label: <b>{html.escape(config.input.label)}</b>. "
        f"Run folder: <code>{html.escape(str(run.root))}</code></p>",
        *section_data(run, summaries),
        *([f"<p class='note'>{html.escape(stale)}</p>"] if stale else []),
        *section_results(metrics, out),
        *section_image_calls(run, config.input.label),
        *section_profiles(ProfileMetrics.read(run.profile_metrics)),
        *section_split(split),
        *section_training(run.read_history(), out),
        *section_illumination(run, out),
        *section_segmentation(run, config, out),
        f"<p>Made by {html.escape(made_by_line())}.</p>",
        "<h2>Config</h2>",
        f"<pre>{html.escape(config.to_yaml())}</pre>",
        "</body></html>",
    ]
    write_text(run.report_index, "\n".join(parts))
    return run.report_index

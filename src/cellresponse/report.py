"""The run report: one self-contained HTML page (images inlined) plus the PNGs beside it.

``RUN/report/index.html`` — what was run (config, counts, timings), what segmentation looked like
(Figure 1 panels), how training went (per-epoch curves and table: the study's Table 1), how good the
predictions are (every accuracy beside chance, majority and the features-only baseline), where
the model errs (confusion matrix, per-class accuracy) and what the split could not do (leakage).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from cellresponse.config import Config
from cellresponse.io import RunFolder, write_text

STAGE_ORDER = ("images", "segment", "measure", "crops", "train", "evaluate")
MAX_CONFUSION_CLASSES = 25


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(path.name)}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "—" if np.isnan(v) else f"{v:.3f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def plot_history(history: list[dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, style in (("train", "-o"), ("val", "-s")):
        axes[0].plot(epochs, [h[f"{key}_loss"] for h in history], style, label=key)
        axes[1].plot(epochs, [h[f"{key}_accuracy"] for h in history], style, label=key)
    axes[0].set(xlabel="epoch", ylabel="loss (label-smoothed CE)")
    axes[1].set(xlabel="epoch", ylabel="accuracy (cells)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = confusion["labels"]
    matrix = np.asarray(confusion["matrix"], dtype=float)
    if len(labels) > MAX_CONFUSION_CLASSES:  # the most frequent true classes only
        keep = np.argsort(-matrix.sum(1), kind="stable")[:MAX_CONFUSION_CLASSES]
        keep = np.sort(keep)
        matrix, labels = matrix[np.ix_(keep, keep)], [labels[i] for i in keep]
        title += f" (top {MAX_CONFUSION_CLASSES} classes)"
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 2.5 + 0.32 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if len(labels) <= 12:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metrics_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    rows = []
    base = metrics.get("baseline_features", {})
    cell_base = metrics.get("baseline_cell_features", {})
    nan = float("nan")
    if "cell" in metrics:
        c = metrics["cell"]
        rows.append(
            [
                "cell",
                "—",
                c.get("accuracy", nan),
                c.get("balanced_accuracy", nan),
                c.get("top5", nan),
                c.get("chance_rate", nan),
                c.get("majority_rate", nan),
                cell_base.get("cell", {}).get("accuracy", nan),
                c.get("n"),
            ]
        )
    for level in ("image", "well", "plate"):
        block = metrics.get(level)
        if not block or "skipped" in block:
            continue
        for vote in ("majority_vote", "soft_vote"):
            r = block.get(vote, {})
            rows.append(
                [
                    level,
                    vote.replace("_", " "),
                    r.get("accuracy", nan),
                    r.get("balanced_accuracy", nan),
                    r.get("top5", nan),
                    block.get("chance_rate", nan),
                    block.get("majority_rate", nan),
                    base.get(level, {}).get("accuracy", nan),
                    r.get("n"),
                ]
            )
    return rows


def build_report(run: RunFolder, config: Config) -> Path:
    from cellresponse.evaluation import compare_with_baseline
    from cellresponse.training import read_history

    out = run.report
    out.mkdir(parents=True, exist_ok=True)
    logs = {stage: _read_json(run.logs / f"{stage}.json") for stage in STAGE_ORDER}
    metrics = _read_json(run.metrics)
    split = _read_json(run.model / "split.json")
    history = read_history(run.model / "history.csv")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cellresponse report</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f2f2f2}td:first-child{text-align:left}img{max-width:100%;margin:.3em 0}"
        ".note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em 1em}"
        ".good{background:#e6f5e6;border-left:4px solid #3a3;padding:.5em 1em}pre{background:#f7f7f7;padding:1em;"
        "overflow:auto;font-size:12px}",
        "</style></head><body>",
        f"<h1>cellresponse report — {html.escape(run.root.name)}</h1>",
        f"<p>Predicted label: <b>{html.escape(config.input.label)}</b>. "
        f"Run folder: <code>{html.escape(str(run.root))}</code></p>",
    ]

    # What was run
    counts = [
        ["images", logs["images"].get("images", "—")],
        ["plates", logs["images"].get("plates", "—")],
        ["classes", logs["images"].get("classes", "—")],
        ["cells segmented", logs["segment"].get("cells", "—")],
        ["cells measured (perimeter > 0)", logs["measure"].get("cells", "—")],
        ["segmentation backend", logs["segment"].get("backend", "—")],
        ["median cell diameter (px)", logs["segment"].get("median_diameter", "—")],
    ]
    parts += ["<h2>Data</h2>", _table(["", "value"], counts)]
    timings = [[s, logs[s].get("seconds", "—")] for s in STAGE_ORDER if logs[s]]
    parts += ["<h2>Timings</h2>", _table(["stage", "seconds"], timings)]

    # Results
    if metrics:
        vote = metrics.get("headline_vote", "soft")
        image = metrics.get("image", {}).get(f"{vote}_vote", {})
        parts += [
            "<h2>How good are the predictions?</h2>",
            f"<p class='good'>Image-level accuracy <b>{image.get('accuracy', float('nan')):.3f}</b> ({vote} vote over "
            f"the cells of each image) on {image.get('n')} held-out images; chance {metrics['chance_rate']:.3f}, "
            f"always-the-most-common-class {metrics['majority_rate']:.3f}. "
            f"{html.escape(compare_with_baseline(metrics, vote))}.</p>",
            _table(
                [
                    "level",
                    "vote",
                    "accuracy",
                    "balanced acc.",
                    "top-5",
                    "chance",
                    "majority",
                    "features-only",
                    "n",
                ],
                metrics_rows(metrics),
            ),
            "<p>Chance = 1 / classes; majority = accuracy of always answering the most common class; "
            "features-only = "
            + html.escape(metrics.get("baseline_features", {}).get("model", "the features-only model"))
            + " on the same split (cell row: logistic regression on single-cell features).</p>",
        ]
        sanity = metrics.get("sanity_check", {})
        if "accuracy" in sanity:
            parts.append(
                f"<p>Sanity check ({html.escape(sanity['task'])}): accuracy {sanity['accuracy']:.3f}, balanced "
                f"accuracy {sanity['balanced_accuracy']:.3f}, majority rate {sanity['majority_rate']:.3f}.</p>"
            )
        confusion = metrics.get("image", {}).get(f"{vote}_vote", {}).get("confusion")
        if confusion:
            png = plot_confusion(confusion, out / "confusion_image.png", f"images, {vote} vote")
            parts += ["<h2>Confusion matrix (images)</h2>", _img(png, "confusion matrix")]
        per_class = metrics.get("image", {}).get(f"{vote}_vote", {}).get("per_class", {})
        if per_class:
            rows = sorted(
                ([k, v["recall"], v["precision"], v["support"]] for k, v in per_class.items() if v["support"]),
                key=lambda r: (-r[1], r[0]),
            )
            parts += [
                "<h2>Per-class accuracy (images)</h2>",
                _table(["class", "accuracy (recall)", "precision", "images"], rows),
            ]

    # Split and leakage
    if split:
        parts.append("<h2>Split</h2>")
        sizes = split.get("images", {})
        parts.append(
            f"<p>Split by <b>{html.escape(str(split.get('by')))}</b>: {sizes.get('train', 0)} training, "
            f"{sizes.get('validation', 0)} validation, {sizes.get('test', 0)} test images; "
            f"{split.get('classes_in_test')} of {split.get('classes')} classes are tested.</p>"
        )
        notes = []
        if split.get("leaky_classes"):
            notes.append(
                f"{split['leaky_classes']} classes have sites of the same well in training and test "
                f"(e.g. {', '.join(split.get('leaky_examples', [])[:5])}). Neighbouring sites of a well are "
                "near-duplicates, so the image-level accuracy is optimistic — rerun with --split-by well or plate."
            )
        if split.get("untestable_classes"):
            notes.append(
                f"{split['untestable_classes']} classes cannot be held out at this level and are never tested "
                f"(e.g. {', '.join(split.get('untestable_examples', [])[:5])})."
            )
        down = split.get("downsampling", {})
        if down.get("applied"):
            notes.append(
                f"{down['control']} was down-sampled from {down['control_cells_before']} to "
                f"{down['control_cells_after']} cells (whole images) to match the second-largest class."
            )
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]

    # Training
    if history:
        png = plot_history(history, out / "training_curves.png")
        rows = [
            [
                int(h["epoch"]),
                h["train_loss"],
                h["train_accuracy"],
                h["val_loss"],
                h["val_accuracy"],
                h["learning_rate"],
                h["seconds"],
            ]
            for h in history
        ]
        parts += [
            "<h2>Training (Table 1)</h2>",
            _img(png, "training curves"),
            _table(["epoch", "train loss", "train acc.", "val loss", "val acc.", "lr", "seconds"], rows),
        ]

    # Segmentation
    figures = sorted(run.figures.glob("*.png"))[:3] if run.figures.exists() else []
    if figures:
        parts.append("<h2>Segmentation (Figure 1)</h2>")
        parts += [_img(f, f"Figure 1 {f.stem}") for f in figures]

    parts += [
        "<h2>Config</h2>",
        f"<pre>{html.escape(config.to_yaml())}</pre>",
        "</body></html>",
    ]
    index = out / "index.html"
    write_text(index, "\n".join(parts))
    return index


def stage_report(run: RunFolder, config: Config) -> Path:
    """Write RUN/report/index.html (+ PNGs); works on partial runs (sections without data are left out)."""
    run.require(run.images, "images")
    return build_report(run, config)

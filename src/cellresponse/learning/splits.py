"""Honest train/validation/test splits, control down-sampling and the cell caps of training.

A split assigns whole **groups** to one side: ``image`` (the study: all cells of a field together),
``well``, ``plate`` (leave-plate-out) or a user ``column`` (e.g. ``Metadata_Replicate``). Cells of one
image are never on both sides. Where a class cannot be held out at the chosen level (a compound in a
single well, under a well split) it stays in training only and is reported; under an image split the
classes whose wells sit on both sides are reported as *leaky* (sites of one well are near-duplicates,
which is how the study's image-level number was inflated).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from cellresponse.config import SplitConfig
from cellresponse.errors import InputError
from cellresponse.evaluation.run_metrics import SplitReport
from cellresponse.evaluation.votes import most_common_label
from cellresponse.input.plate import group_keys

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
_TRAIN_WORDS = {"train", "training"}
_TEST_WORDS = {"test", "testing", "holdout", "held-out"}
_VALIDATION_WORDS = {"val", "valid", "validation"}


def downsample_control(
    images: pd.DataFrame, cells_per_image: pd.Series, label: str, control: str, seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Drop whole control images until the control class has about as many cells as the
    second-largest class (the study down-sampled DMSO cells to that size; whole images keep votes fair)."""
    counts = cells_per_image.reindex(images["image_id"]).fillna(0).to_numpy()
    per_class = pd.Series(counts, index=images[label].to_numpy()).groupby(level=0).sum().sort_values(ascending=False)
    info = {"control": control, "applied": False}
    if control not in per_class.index or len(per_class) < 2 or per_class.index[0] != control:
        return images, info
    target = int(per_class.iloc[1])
    is_control = (images[label] == control).to_numpy()
    order = np.random.default_rng(seed).permutation(np.flatnonzero(is_control))
    kept = order[np.cumsum(counts[order]) <= max(target, counts[order[0]])]
    keep = ~is_control
    keep[kept] = True
    info.update(
        applied=True,
        control_cells_before=int(per_class.iloc[0]),
        control_cells_after=int(counts[kept].sum()),
        second_largest_cells=target,
        control_images_kept=len(kept),
        control_images_dropped=int(is_control.sum() - len(kept)),
    )
    return images[keep].reset_index(drop=True), info


def cap_cells(cells: pd.DataFrame, label: str, per_image: int | None, per_class: int | None, seed: int) -> pd.DataFrame:
    """At most ``per_image`` cells of each image, then at most ``per_class`` of each class (a seeded random
    sample, in the table's order): what one epoch costs on a whole plate is set here, not by the plate's size.
    Whole images stay in (every image keeps cells), so votes and the split are unchanged."""
    rng = np.random.default_rng(seed)
    keep = np.ones(len(cells), dtype=bool)
    if per_image is not None:
        rank = pd.Series(rng.random(len(cells)), index=cells.index).groupby(cells["image_id"].to_numpy()).rank()
        keep &= (rank <= per_image).to_numpy()
    if per_class is not None:
        score = pd.Series(rng.random(len(cells)), index=cells.index).where(keep, np.inf)
        rank = score.groupby(cells[label].to_numpy()).rank(method="first")
        keep &= (rank <= per_class).to_numpy()
    return cells[keep]


def _held_out_groups(group_label: pd.Series, fraction: float, stratify: bool, rng: np.random.Generator) -> set[str]:
    """Pick test groups: per class when stratified (at least one group from every class that has two)."""
    chosen: set[str] = set()
    if stratify:
        for _, groups in group_label.groupby(group_label, sort=True):
            names = np.array(sorted(groups.index))
            if len(names) < 2:
                continue
            n = min(len(names) - 1, max(1, round(fraction * len(names))))
            chosen.update(rng.choice(names, size=n, replace=False).tolist())
    else:
        names = np.array(sorted(group_label.index))
        n = min(len(names) - 1, max(1, round(fraction * len(names))))
        chosen.update(rng.choice(names, size=n, replace=False).tolist())
    return chosen


def _named_sides(values: pd.Series, test_values: list[str]) -> pd.Series:
    lowered = values.astype(str).str.lower()
    if test_values:
        wanted = {str(v).lower() for v in test_values}
        return pd.Series(np.where(lowered.isin(wanted), TEST, TRAIN), index=values.index)
    known = _TRAIN_WORDS | _TEST_WORDS | _VALIDATION_WORDS
    unknown = sorted(set(lowered) - known)
    if unknown:
        raise InputError(
            f"split column values {unknown[:5]} are not train/test/validation names — "
            "name the test values with --test-values (e.g. --split-column Metadata_Replicate --test-values 2)"
        )
    side = np.where(lowered.isin(_TEST_WORDS), TEST, np.where(lowered.isin(_VALIDATION_WORDS), VALIDATION, TRAIN))
    return pd.Series(side, index=values.index)


def assign_split(
    images: pd.DataFrame,
    label: str,
    split: SplitConfig,
    *,
    seed: int = 42,
    control: str | None = None,
) -> tuple[pd.Series, SplitReport]:
    """Side (train/validation/test) of every image, and what the split could and could not do.

    Validation (early stopping) comes out of the training groups at the same level, so the test side
    never steers training; ``validation_fraction = 0`` uses the test side instead (the study).
    """
    if label not in images.columns:
        raise InputError(f"label column {label!r} not in the image table")
    by, column, test_values = split.by, split.column, split.test_values
    test_fraction, validation_fraction, stratify = split.test_fraction, split.validation_fraction, split.stratify
    rng = np.random.default_rng(seed)
    groups = group_keys(images, by, column)
    # A group's class is its most frequent label (a well or image has one; a plate has many).
    group_label = most_common_label(images[label].astype(str), groups)
    if by == "column":
        side_of_group = _named_sides(pd.Series(group_label.index, index=group_label.index), test_values or [])
    else:
        test_groups = _held_out_groups(group_label, test_fraction, stratify and by != "plate", rng)
        side_of_group = pd.Series(TRAIN, index=group_label.index)
        side_of_group[list(test_groups)] = TEST
    if not (side_of_group == VALIDATION).any() and validation_fraction > 0:
        train_groups = group_label[side_of_group == TRAIN]
        if by == "column":  # e.g. one replicate: hold out wells of the training side for validation
            sub = images[groups.isin(train_groups.index)]
            sub_groups = group_keys(sub, "well")
            sub_label = most_common_label(sub[label].astype(str), sub_groups)
            val_wells = _held_out_groups(sub_label, validation_fraction, stratify, rng)
            side = groups.map(side_of_group).to_numpy().copy()
            side[np.isin(group_keys(images, "well").to_numpy(), list(val_wells)) & (side == TRAIN)] = VALIDATION
            sides = pd.Series(side, index=images.index)
        else:
            val_groups = _held_out_groups(train_groups, validation_fraction, stratify and by != "plate", rng)
            side_of_group[list(val_groups)] = VALIDATION
            sides = groups.map(side_of_group)
    else:
        sides = groups.map(side_of_group)
    sides = sides.astype(str)
    report = describe_split(images, sides, label, by, control)
    return sides, report


def describe_split(
    images: pd.DataFrame, sides: pd.Series, label: str, by: str, control: str | None = None
) -> SplitReport:
    """Counts, leaky classes (a well on both sides), classes that could not be held out and test images whose
    plate gives their class away (``control``, the negative-control label, does not count as a class there)."""
    report = SplitReport(by=by)
    report.images = {s: int((sides == s).sum()) for s in (TRAIN, VALIDATION, TEST)}
    labels = images[label].astype(str)
    report.classes = int(labels.nunique())
    test_classes = set(labels[sides == TEST])
    report.classes_in_test = len(test_classes)
    untestable = sorted(set(labels) - test_classes)
    report.untestable_classes = len(untestable)
    report.untestable_examples = untestable[:10]
    wells = group_keys(images, "well")
    train_wells = set(wells[sides != TEST])
    leaky = sorted({lab for lab, w, s in zip(labels, wells, sides, strict=True) if s == TEST and w in train_wells})
    report.leaky_classes = len(leaky)
    report.leaky_examples = leaky[:10]
    per_class = labels.value_counts()
    report.single_image_classes = sorted(per_class[per_class == 1].index.tolist())
    if "plate" in images.columns:
        confounded = plate_confounded(labels, images["plate"].astype(str), sides, control)
        report.plate_confounded_images = int(confounded.sum())
        report.plate_confounded_examples = sorted(set(labels[confounded]))[:10]
    return report


def plate_confounded(labels: pd.Series, plates: pd.Series, sides: pd.Series, control: str | None = None) -> pd.Series:
    """Test images whose plate's treated training-side images (controls aside) all carry the test image's own
    label: there a model can name the class by recognising the plate (staining, focus, density), so their
    accuracy says little about the treatment. BBBC021's subsets put one compound on a plate; split by well,
    nearly every test image is such."""
    training = (sides != TEST) & (labels != control)
    per_plate = labels[training].groupby(plates[training])
    only_label = per_plate.first()[per_plate.nunique() == 1]  # plates whose treated training images share a label
    return (sides == TEST) & (labels != control) & (plates.map(only_label) == labels)


def log_split(report: SplitReport) -> None:
    log.info(
        "split by %s: %s images (train/validation/test); %d of %d classes in the test side",
        report.by,
        "/".join(str(report.images.get(s, 0)) for s in (TRAIN, VALIDATION, TEST)),
        report.classes_in_test,
        report.classes,
    )
    if report.leaky_classes:
        log.warning(
            "leakage: %d classes have sites of the same well in training and test (e.g. %s) — "
            "neighbouring sites are near-duplicates, so image-level accuracy is optimistic; "
            "use --split-by well or plate for an honest number",
            report.leaky_classes,
            ", ".join(report.leaky_examples[:3]),
        )
    if report.untestable_classes:
        log.warning(
            "%d classes cannot be held out at the %s level (e.g. %s): they are trained on but never tested",
            report.untestable_classes,
            report.by,
            ", ".join(report.untestable_examples[:3]),
        )
    if report.plate_confounded_images:
        log.warning(
            "plates: %d of %d test images sit on plates whose training images all carry the same label (e.g. %s) — "
            "a model can recognise the plate instead of the treatment, so their accuracy is optimistic; "
            "split by plate or by a column such as the replicate (--split-column) for an honest number",
            report.plate_confounded_images,
            report.images.get(TEST, 0),
            ", ".join(report.plate_confounded_examples[:3]),
        )
    if report.single_image_classes:
        log.warning(
            "%d classes have a single image (e.g. %s): they cannot be stratified and stay on one side",
            len(report.single_image_classes),
            ", ".join(report.single_image_classes[:3]),
        )

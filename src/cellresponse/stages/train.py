"""``cellresponse train``: split the images, train the network on the crop store, and write ``RUN/model``
(split, checkpoints, per-epoch history, the model bundle with a profile model per kind beside the network, and
which of them ``predict`` uses by default: the best on the validation side, learning/model_choice.py).
A rerun resumes from the last checkpoint; a changed split is refused (``--overwrite`` starts over)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cellresponse.config import Config
from cellresponse.devices import inference_device
from cellresponse.errors import InputError, ResourceError
from cellresponse.evaluation.label_groups import grouping_record, label_grouping, label_groups
from cellresponse.features.cell_features import feature_columns
from cellresponse.features.crop_store import CropStore
from cellresponse.features.crops import changed_settings, crop_settings
from cellresponse.features.embedding_tables import frozen_embedding_settings
from cellresponse.input.io import write_json, write_parquet
from cellresponse.input.plate import channel_names, group_keys, labelled_images
from cellresponse.input.runfolder import CellParts, RunFolder
from cellresponse.learning.bundle import NETWORK, Bundle, save_bundle, save_choice
from cellresponse.learning.model_choice import (
    auto_choice,
    describe_choice,
    fit_profile_models,
    fitted_temperatures,
    network_validation_score,
    profile_validation_scores,
)
from cellresponse.learning.profile_tables import profile_tables_of
from cellresponse.learning.splits import TEST, assign_split, downsample_control, log_split
from cellresponse.learning.training import CellDataModule, CellResponseModule, CellSet, build_trainer, seed_everything
from cellresponse.learning.training_cells import cell_sets
from cellresponse.parallel import is_main_process
from cellresponse.profiling.profile_models import plate_by_plate_statistics
from cellresponse.profiling.reference_building import build_reference_kinds
from cellresponse.stages import check_reference_batch

log = logging.getLogger(__name__)


def split_settings(config: Config) -> dict[str, Any]:
    """What a stored split was made with (a resumed run must ask for the same)."""
    return {"label": config.input.label, "seed": config.seed, **config.split.model_dump()}


def make_split(
    run: RunFolder, config: Config, images: pd.DataFrame, per_image: pd.Series
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Down-sample controls (``per_image``: cells per image id) and split by group; stored in
    RUN/model/split.parquet (reused on resume)."""
    s = config.split
    settings = split_settings(config)
    if run.split_table.exists() and run.split_report.exists():
        report = json.loads(run.split_report.read_text())
        if report.get("settings", settings) != settings:
            changed = sorted(k for k in settings if report["settings"].get(k) != settings[k])
            raise InputError(
                f"{run.model} was trained on another split ({', '.join(changed)} changed) — "
                "rerun with --overwrite to split and train again"
            )
        return run.read_table(run.split_table, "train"), report
    info: dict[str, Any] = {"applied": False}
    chosen = images
    if s.downsample_control:
        chosen, info = downsample_control(
            images, per_image, config.input.label, config.input.control_label, config.seed
        )
    side, report = assign_split(
        chosen, config.input.label, config.split, seed=config.seed, control=config.input.control_label
    )
    report.downsampling = info
    log_split(report)
    sides = pd.DataFrame({"image_id": chosen["image_id"].to_numpy(), "side": side.to_numpy()})
    summary = replace(report, settings=settings).to_json()
    if is_main_process():
        write_parquet(run.split_table, sides)
        write_json(run.split_report, summary)
    return sides, summary


def label_to_target(images: pd.DataFrame, config: Config) -> dict[str, str]:
    """Compound → gene target, when every compound has exactly one target (CPJUMP1-style metadata)."""
    return label_groups(images, config.input.label, config.input.target_column)


def choose_predicting_model(
    run: RunFolder,
    config: Config,
    parts: CellParts,
    kind_scores: dict[str, dict[str, Any]],
    sides: pd.Series,
    labels: pd.Series,
) -> dict[str, Any]:
    """The saved network scored on the validation side beside the profile kinds' held-out ``kind_scores``, and the
    ``auto`` model of them all (logged); ``sides`` and ``labels`` indexed by image id."""
    device = inference_device(config.training.accelerator)
    store = CropStore(run.crops)
    network = network_validation_score(run.bundle, store, parts(), sides, labels, config.evaluation, device)
    choice = auto_choice({**kind_scores, NETWORK: network}, sides)
    log.info(describe_choice(choice))
    return choice


def bundle_extras(
    run: RunFolder, config: Config, images: pd.DataFrame, val_side: str, epoch: int | None, embedded: bool
) -> dict[str, Any]:
    """What bundle.json keeps beside the network: the validation side, the best epoch, the frozen embedding's
    settings (for the deep profile models), the one intensity scale of crops and embeddings where the run scaled
    across its experiment (new plates get it too) and the labels' grouping."""
    return {
        "validation_side": val_side,
        "best_checkpoint_epoch": epoch,
        "embedding": frozen_embedding_settings(run) if embedded else None,
        "intensity_scales": run.experiment_scales() or None,
        "label_grouping": grouping_record(
            label_grouping(images, config.input.label, config.grouping_columns(images.columns))
        ),
    }


def out_of_memory_advice(config: Config, error: BaseException) -> str:
    """One line for a GPU that ran out of memory: what ran, what to change (the study's float32 at batch 512
    took 89 GiB on an H200 and did not fit an 80 GB H100; bf16-mixed took 45 GiB)."""
    t = config.training
    first = str(error).splitlines()[0] if str(error) else "out of memory"
    change = [f"training.batch_size={max(t.batch_size // 2, 1)}"]
    if t.precision == "32-true":
        change.insert(0, "training.precision=bf16-mixed (half the memory, on GPUs with bfloat16)")
    return (
        f"out of GPU memory training at batch {t.batch_size}, {t.precision}, {config.crops.size} px ({first}); "
        f"rerun with --set {' or --set '.join(change)}"
    )


def matching_crop_store(run: RunFolder, config: Config, names: list[str]) -> CropStore:
    """The run's crop store, refused where it was cut with other settings than these."""
    store = CropStore(run.crops)
    wanted = crop_settings(config, names)
    changed = changed_settings(store.settings, wanted) if store.settings else []
    if changed:
        raise InputError(
            f"the crop store was cut with other settings ({', '.join(changed)}: "
            f"{', '.join(f'{store.settings.get(k)!r} → {wanted[k]!r}' for k in changed)}) — cut them again with "
            f"`cellresponse crops {run.root} --overwrite` and the same settings, or train without changing them"
        )
    return store


def fit(trainer: Any, module: Any, data: Any, resume: Path | None, config: Config) -> None:
    """``trainer.fit``, with out-of-memory and Ctrl-C turned into the CLI's one line."""
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    except torch.OutOfMemoryError as error:
        raise ResourceError(out_of_memory_advice(config, error)) from None
    except SystemExit:
        # Lightning answers Ctrl-C by saving nothing more and exiting with status 1; the CLI says "interrupted,
        # rerun to resume" and exits 130 for a KeyboardInterrupt, as every other stage does.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def train_network(
    run: RunFolder,
    config: Config,
    store: CropStore,
    train: CellSet,
    val: CellSet,
    features: int,
    classes: int,
) -> tuple[Any, int | None]:
    """Fit the network (resuming from the last checkpoint where there is one) and load its best weights; the module
    and the best epoch, or ``(None, None)`` on a process other than the main one of a multi-process run."""
    seed_everything(config.seed)
    module = CellResponseModule(features, classes, config.to_dict())
    data = CellDataModule(store, train, val, config)
    trainer = build_trainer(config, run.checkpoints, run.history)
    resume = run.last_checkpoint if run.last_checkpoint.exists() else None
    if resume:
        log.info("resuming from %s", resume)
    fit(trainer, module, data, resume, config)
    if not trainer.is_global_zero:
        return None, None
    best = run.best_checkpoint if run.best_checkpoint.exists() else run.last_checkpoint
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    return module, checkpoint.get("epoch")


def temperatures_of(scores: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each profile model's temperature, fitted on the held-out non-test images that scored it (logged)."""
    temperatures = fitted_temperatures(scores)
    if temperatures:
        log.info(
            "profile models' probabilities tempered on held-out non-test images: %s",
            ", ".join(f"{kind} T = {t:.2f}" for kind, t in temperatures.items()),
        )
    return temperatures


def training_summary(
    run: RunFolder, train: int, val: int, val_side: str, classes: int, report: dict[str, Any]
) -> dict[str, Any]:
    """``RUN/model/train_summary.json``'s figures of the fit: cells per side, classes, epochs, best validation
    loss and the split's caveats."""
    history = run.read_history()
    caveats = ("by", "images", "leaky_classes", "untestable_classes", "plate_confounded_images")
    return {
        "cells_train": train,
        "cells_validation": val,
        "validation_side": val_side,
        "classes": classes,
        "epochs": len(history),
        "best_val_loss": min((h["val_loss"] for h in history), default=None),
        "split": {k: report.get(k) for k in caveats},
    }


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train the network on RUN/crops and write RUN/model (checkpoints, history, split, bundle)."""
    started = time.perf_counter()
    table = run.read_images()
    check_reference_batch(table, config)  # before the hours of training, not at the references after them
    if overwrite and run.model.exists() and is_main_process():
        shutil.rmtree(run.model)
    run.model.mkdir(parents=True, exist_ok=True)
    images = labelled_images(table, config.input.label)
    columns = feature_columns(run.cell_columns())
    # the cells of the plates with labelled images, one plate's table at a time (a screen's memory is a plate's)
    parts = partial(run.cell_parts, images["image_id"], ["image_id", "label", *columns])
    # per image, for the profile models and the split; in image-id order, as one table's groupby gave them
    statistics = plate_by_plate_statistics(parts(), columns).sort_index()
    store = matching_crop_store(run, config, channel_names(table))
    sides, report = make_split(run, config, images, statistics["cell_count"])
    folder = run.training_cells / str(os.getpid())  # one per process: DDP's ranks each write their own
    encoder, scaler, train, val, val_side = cell_sets(
        parts, columns, sides, images, config.input.label, config.training, config.seed, store, folder
    )
    log.info(
        "training on %d cells, validating on %d (%s side), %d classes, %d table features",
        len(train),
        len(val),
        val_side,
        len(encoder.classes),
        len(scaler.columns),
    )
    try:
        module, epoch = train_network(run, config, store, train, val, len(scaler.columns), len(encoder.classes))
    finally:  # this process's sets, interrupted or not (a killed one's go when a later train finishes)
        shutil.rmtree(folder, ignore_errors=True)
    if module is None:  # not the main process of a multi-process run: the main one writes the bundle
        return {}
    names = channel_names(table)
    side_of = pd.Series(sides["side"].to_numpy(), index=sides["image_id"].astype(str))
    labels = images.set_index(images["image_id"].astype(str))[config.input.label]
    tables = profile_tables_of(run, statistics, list(side_of.index))
    wells = group_keys(images.set_index(images["image_id"].astype(str)), "well")
    scores = profile_validation_scores(tables, labels, side_of, wells)  # held out, with their temperatures
    references, reference_kinds = build_reference_kinds(tables, table, side_of.index[side_of != TEST], config)
    bundle = Bundle(
        model=module.model.cpu(),
        encoder=encoder,
        scaler=scaler,
        config=config,
        crop_settings=crop_settings(config, names),
        channels=names,
        label_to_target=label_to_target(images, config) or {},
        meta=bundle_extras(run, config, images, val_side, epoch, "deep" in tables),
        profile_models=fit_profile_models(tables, labels, side_of, temperatures_of(scores)),
        references=references,
        reference_kinds=reference_kinds,
    )
    save_bundle(run.bundle, bundle)
    choice = choose_predicting_model(run, config, parts, scores, side_of, labels)
    shutil.rmtree(run.training_cells, ignore_errors=True)
    save_choice(run.bundle, choice)
    summary = training_summary(run, len(train), len(val), val_side, len(encoder.classes), report)
    summary |= {"auto_model": choice["auto"], "seconds": round(time.perf_counter() - started, 2)}
    write_json(run.train_summary, summary)
    run.record_stage("train", summary)
    return summary

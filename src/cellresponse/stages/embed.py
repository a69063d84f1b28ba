"""``cellresponse embed``: per-cell embeddings from a frozen pretrained EfficientNet (networks/embeddings.py) into
``RUN/embeddings/<image_id>.parquet`` — ``cell_id``, ``image_id``, ``emb_0000`` … — with the settings and per-plate
intensity scales in ``RUN/embeddings/settings.json``. Resumable per image.

The network runs in this process on all cores, over batches gathered across images; a background thread reads and
cuts the next images meanwhile, so the data path stays out of the network's way (Dask workers would each hold a
copy of the network and run it on one core).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cellresponse.config import Config
from cellresponse.devices import device_name, inference_device, worker_device
from cellresponse.errors import InputError
from cellresponse.features.cell_features import cell_ids
from cellresponse.features.crop_store import CropStore
from cellresponse.features.crops import raw_planes
from cellresponse.features.embedding_tables import sampled_cells, write_embedding_means, write_embeddings
from cellresponse.input.channels import load_stack, resolve_channel
from cellresponse.input.io import remove_stale_temporaries
from cellresponse.input.runfolder import RunFolder, require_outputs
from cellresponse.input.transforms import to_unit
from cellresponse.learning.bundle import load_bundle
from cellresponse.learning.inference import predict_cells
from cellresponse.networks.embeddings import (
    GPU_BATCH,
    Embedder,
    cell_windows,
    embed_channels,
    embedding_batch_size,
    embedding_columns,
    embedding_width,
    window_side,
)
from cellresponse.parallel import gathered, prefetched, worker_number
from cellresponse.stages.per_image import (
    config_from_json,
    image_rows,
    intensity_scales,
    map_stage,
    no_scales,
    settled_scales,
)

log = logging.getLogger(__name__)

PREFETCH = 4  # images read ahead by the background thread
GATHER = GPU_BATCH  # cells gathered across images before the network runs (in batches of embedding.batch_size)


def embed_settings(config: Config, names: list[str], median_diameter: float | None) -> dict[str, Any]:
    """What makes two embedding runs comparable (a resumed run must use the same)."""
    e = config.embedding
    return {
        "backbone": e.backbone,
        "pretrained": e.pretrained,
        "channels": embed_channels(e.channels, names, e.mode),
        "mode": e.mode,
        "window": window_side(e.crop_size, median_diameter),
        "input_size": e.input_size,
        # only where set: runs embedded before the setting existed keep settings equal to today's (no re-embedding)
        **({"max_cells_per_image": e.max_cells_per_image} if e.max_cells_per_image else {}),
    }


def channel_scales(
    run: RunFolder, rows: list[dict], names: list[str], channels: list[str], config: Config
) -> tuple[dict[str, Any], str]:
    """Per-plate scales of the channels shown to the network and their scope (unknown names fail here, once, with
    the list)."""
    for channel in channels:
        resolve_channel(names, channel)
    return intensity_scales(run, rows, names, channels, config, "embedding")


def _windows(
    row: dict, cells: pd.DataFrame, names: list[str], settings: dict, scales: dict, config: Config
) -> tuple[str, pd.DataFrame, np.ndarray]:
    raw = raw_planes(load_stack(row, names), settings["channels"], names, config)
    unit = np.stack([to_unit(p, lo, hi) for p, (lo, hi) in zip(raw, scales[str(row["plate"])], strict=True)])
    centroids = cells[["centroid_y", "centroid_x"]].to_numpy()
    return row["image_id"], cells[["cell_id", "image_id"]], cell_windows(unit, centroids, settings["window"])


def embed_with_network(run: RunFolder, config: Config, *, overwrite: bool, progress: bool) -> dict[str, Any]:
    """Embeddings from the trained network (``embedding.source: network``): every cell's projection layer, from
    the crop store, written per image like the backbone's."""
    started = time.perf_counter()
    device = inference_device(config.training.accelerator)
    bundle = load_bundle(run.require(run.bundle, "train"))
    settings = {"source": "network", "bundle": str(run.bundle), "trained": bundle.meta.get("best_checkpoint_epoch")}
    settled_scales(run.embeddings, run.embedding_settings, settings, no_scales, overwrite, redo="embed again")
    cells = run.read_cells()
    todo = [i for i in cells["image_id"].unique() if not run.embedding_path(i).exists()]
    chosen = cells[cells["image_id"].isin(set(todo))].reset_index(drop=True)
    vectors = predict_cells(
        bundle, CropStore(run.crops), chosen, config.evaluation.batch_size, progress, "embedding", device
    )
    columns = embedding_columns(vectors.shape[1])
    if todo:
        run.embedding_means.unlink(missing_ok=True)  # stale the moment one image's embeddings change
    means: dict[str, tuple[np.ndarray, int]] = {}
    for image_id, part in chosen.groupby("image_id", sort=False):
        rows = vectors[part.index.to_numpy()]
        write_embeddings(run.embedding_path(str(image_id)), part, rows, columns)
        means[str(image_id)] = (rows.mean(axis=0, dtype=np.float64), len(rows))
    write_embedding_means(run, [str(i) for i in cells["image_id"].unique()], means, columns)
    summary = {
        "images": int(cells["image_id"].nunique()),
        "embedded_now": len(todo),
        "cells_embedded_now": len(chosen),
        "dims": len(columns),
        "settings": settings,
        "device": device_name(device),
        "seconds": round(time.perf_counter() - started, 2),
    }
    run.record_stage("embed", summary)
    log.info("embedded %d cells with the trained network's projection layer (%d dims)", len(chosen), len(columns))
    return summary


_EMBEDDERS: dict[str, Embedder] = {}


def _embedder(config: Config) -> Embedder:
    # Built once per worker process and kept: loading the backbone for every image would dominate the run.
    e = config.embedding
    device = inference_device(config.training.accelerator)
    # on a worker of a local cluster of a machine with several GPUs: one GPU a worker, not all on the first
    device = worker_device(device, worker_number(), torch.cuda.device_count() if device.type == "cuda" else 0)
    key = e.model_dump_json() + str(device)
    if key not in _EMBEDDERS:
        batch_size = embedding_batch_size(e.batch_size, device)
        _EMBEDDERS[key] = Embedder(e.backbone, e.pretrained, e.input_size, e.mode, batch_size, device)
    return _EMBEDDERS[key]


def read_windows(run: RunFolder, row: dict, names: list[str], settings: dict, scales: dict, config: Config) -> tuple:
    """One image's cell ids and the windows around its cells (per-plate scales applied)."""
    cells = pd.read_parquet(run.cells_path(row["image_id"]), columns=["label", "centroid_y", "centroid_x"])
    cells = sampled_cells(cells, row["image_id"], settings.get("max_cells_per_image"))
    cells.insert(0, "image_id", row["image_id"])
    cells.insert(0, "cell_id", cell_ids(row["image_id"], cells["label"]))
    return _windows(row, cells, names, settings, scales, config)


def embed_one(row: dict, *, config_json: str, run_root: str, names: list[str], settings: dict, scales: dict) -> dict:
    """Embed one image's cells on a Dask worker (its backbone loaded once and kept); returns the image's mean
    embedding and cell count for ``embedding_means.parquet``."""
    config = config_from_json(config_json)
    run = RunFolder(Path(run_root))
    image_id, ids, windows = read_windows(run, row, names, settings, scales, config)
    embedder = _embedder(config)
    columns = embedding_columns(embedder.dims(len(settings["channels"])))
    vectors = embedder(windows) if len(windows) else np.zeros((0, len(columns)), np.float32)
    write_embeddings(run.embedding_path(image_id), ids, vectors, columns)
    mean = vectors.mean(axis=0, dtype=np.float64).tolist() if len(vectors) else None
    return {"mean": mean, "cells": len(vectors)}


def on_workers(config: Config) -> bool:
    """``embedding.execution``: on the Dask workers where asked, or (``auto``) where a scheduler names a cluster;
    in this process otherwise (on one machine it is the faster: docs/benchmarks.md)."""
    execution = config.embedding.execution
    return execution == "workers" or (execution == "auto" and bool(config.runtime.scheduler))


def embed_on_workers(
    run: RunFolder, config: Config, todo: list[dict], names: list[str], settings: dict, scales: dict, progress: bool
) -> tuple[dict[str, tuple[np.ndarray, int]], int]:
    """Every image of ``todo`` embedded by a task on the Dask workers (``runtime.workers`` / ``--scheduler``);
    returns the means and the cells embedded."""
    outcome = map_stage("embed", embed_one, run, config, todo, is_done=lambda r: False, progress=progress,
                        names=names, settings=settings, scales=scales)  # fmt: skip
    if outcome.failed:
        failed = outcome.failed[0]
        raise InputError(f"embed failed on image {failed.image_id}: {failed.error}")
    means = {r.image_id: (np.asarray(r.info["mean"]), r.info["cells"]) for r in outcome.done if r.info["cells"]}
    return means, sum(r.info["cells"] for r in outcome.done)


def embed_in_process(
    run: RunFolder, embedder: Embedder, todo: list[dict], names: list[str], settings: dict, scales: dict,
    config: Config, progress: bool,
) -> tuple[dict[str, tuple[np.ndarray, int]], int, float]:  # fmt: skip
    """Every image of ``todo`` embedded here, on all cores, over batches gathered across images while a thread
    reads the next ones; returns the means, the cells embedded and the seconds the network took."""
    columns = embedding_columns(embedder.dims(len(settings["channels"])))
    means: dict[str, tuple[np.ndarray, int]] = {}
    bar = tqdm(total=len(todo), desc="embed", unit="image", disable=not progress)
    embedded, network_seconds = 0, 0.0

    def load(row: dict) -> tuple[str, pd.DataFrame, np.ndarray]:
        return read_windows(run, row, names, settings, scales, config)

    images = prefetched(load, todo, PREFETCH)
    with ThreadPoolExecutor(max_workers=1) as writer:
        written = []
        for group in gathered(images, GATHER, count=lambda part: len(part[2])):
            windows = np.concatenate([part[2] for part in group])
            began = time.perf_counter()
            vectors = embedder(windows) if len(windows) else np.zeros((0, len(columns)), np.float32)
            network_seconds += time.perf_counter() - began
            start = 0
            for image_id, ids, part in group:
                chunk = vectors[start : start + len(part)]
                written.append(writer.submit(write_embeddings, run.embedding_path(image_id), ids, chunk, columns))
                if len(chunk):
                    means[image_id] = (chunk.mean(axis=0, dtype=np.float64), len(chunk))
                start += len(part)
                bar.update(1)
            embedded += len(windows)
        for future in written:
            future.result()  # a failed write fails the stage here (a finished write's future holds nothing)
    bar.close()
    return means, embedded, network_seconds


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Embed every measured cell; images with an embedding file are skipped."""
    if config.embedding.source == "network":
        return embed_with_network(run, config, overwrite=overwrite, progress=progress)
    started = time.perf_counter()
    rows, names = image_rows(run)
    require_outputs(run, [r["image_id"] for r in rows], run.cells_path, "measurements", "measure")
    median_diameter = run.read_summary("segment").get("median_diameter")
    settings = embed_settings(config, names, median_diameter)
    scales = settled_scales(
        run.embeddings,
        run.embedding_settings,
        settings,
        lambda: channel_scales(run, rows, names, settings["channels"], config),
        overwrite,
        redo="embed again",
        wanted_scope=config.input.intensity_scale,
    )
    remove_stale_temporaries(run.embeddings)
    todo = [row for row in rows if not run.embedding_path(row["image_id"]).exists()]
    if todo:
        run.embedding_means.unlink(missing_ok=True)  # stale the moment one image's embeddings change
    e = config.embedding
    device = inference_device(config.training.accelerator)
    batch_size = embedding_batch_size(e.batch_size, device)
    workers = on_workers(config)
    columns = embedding_columns(embedding_width(e.mode, len(settings["channels"])))
    means: dict[str, tuple[np.ndarray, int]] = {}
    embedded, network_seconds = 0, None
    if todo and workers:
        means, embedded = embed_on_workers(run, config, todo, names, settings, scales, progress)
    elif todo:  # the backbone is loaded only when there is something to embed (a resumed run or predict has not)
        embedder = Embedder(e.backbone, e.pretrained, e.input_size, e.mode, batch_size, device)
        columns = embedding_columns(embedder.dims(len(settings["channels"])))
        means, embedded, network_seconds = embed_in_process(run, embedder, todo, names, settings, scales, config,
                                                            progress)  # fmt: skip
    write_embedding_means(run, [row["image_id"] for row in rows], means, columns)
    seconds = time.perf_counter() - started
    summary = {
        "images": len(rows),
        "embedded_now": len(todo),
        "skipped_done": len(rows) - len(todo),
        "failed": 0,
        "cells_embedded_now": embedded,
        "dims": len(columns),
        "settings": settings,
        "execution": "Dask workers" if workers else "this process",
        "device": device_name(device),
        "batch_size": batch_size,
        "cells_per_second": round(embedded / seconds, 1) if embedded else None,
        "network_seconds": round(network_seconds, 2) if network_seconds is not None else None,
        "seconds": round(seconds, 2),
    }
    run.record_stage("embed", summary)
    if embedded:
        log.info(
            "embedded %d cells (%d dims, %s) in %.0f s — %s cells/s (%s)",
            embedded,
            len(columns),
            ", ".join(settings["channels"]),
            seconds,
            summary["cells_per_second"],
            summary["execution"],
        )
    else:  # a resumed run with every image done: no rate to report
        log.info("embeddings already there for all %d images: nothing to embed", len(rows))
    return summary

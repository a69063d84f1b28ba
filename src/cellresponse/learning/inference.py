"""The trained network on cells' crops: class probabilities, or its projection layer, for crop-store rows (prepared
as in training, batched, on the device given); a new plate's cell calls a plate at a time, voted into images and
wells. What a prediction needs before the network runs, and the profile models' calls: ``prediction``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cellresponse.config import Config, EvaluationConfig
from cellresponse.evaluation.prediction_tables import (
    prediction_table,
    well_votes,
    write_image_predictions,
    write_well_predictions,
)
from cellresponse.evaluation.votes import Votes, merged_votes, vote
from cellresponse.features.crop_store import CropStore
from cellresponse.input.io import write_parquet_parts
from cellresponse.input.runfolder import RunFolder
from cellresponse.input.transforms import IMAGE_CHANNELS, prepare_batch
from cellresponse.learning.bundle import NETWORK, Bundle
from cellresponse.networks.model import CellResponseNet

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_probabilities(
    model: CellResponseNet,
    store: CropStore,
    rows: np.ndarray,
    features: np.ndarray,
    config: Config,
    batch_size: int = 256,
    progress: bool = False,
    output: str = "probabilities",
    device: torch.device | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, classes)`` — or, with ``output="embedding"``, the network's projection layer
    ``(N, projection)`` — for store rows (eval mode, batched); crops are prepared as in training
    (``config.crops``: size, mean, std). The network moves to ``device`` first (default: where it is)."""
    if device is not None:
        model = model.to(device)
    device = next(model.parameters()).device
    model.eval()
    channels_last = config.training.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits it
    c = config.crops
    width = model.classifier.out_features if output == "probabilities" else model.classifier.in_features
    out = np.zeros((len(rows), width), dtype=np.float32)
    for start in tqdm(range(0, len(rows), batch_size), desc="predict", unit="batch", disable=not progress):
        stop = start + batch_size
        crops = torch.from_numpy(store.batch(rows[start:stop])).to(device)
        x = prepare_batch(crops, c.size, c.mean, c.std, channels_last)
        table = torch.from_numpy(features[start:stop]).to(device)
        if output == "probabilities":
            out[start:stop] = torch.softmax(model.forward_crops(x, table), dim=1).cpu().numpy()
        else:
            out[start:stop] = model.embed(x[:, :IMAGE_CHANNELS], x[:, IMAGE_CHANNELS:], table).cpu().numpy()
    return out


def predict_cells(
    bundle: Bundle,
    store: CropStore,
    cells: pd.DataFrame,
    batch_size: int = 256,
    progress: bool = False,
    output: str = "probabilities",
    device: torch.device | None = None,
) -> np.ndarray:
    """The bundle's network on ``cells`` (a cell table with ``image_id``, the mask ``label`` and the bundle's
    feature columns): their crops from ``store``, their table rows scaled with the bundle's scaler; ``output`` and
    ``device`` as in :func:`predict_probabilities`."""
    if bundle.model is None:
        raise ValueError("this bundle was loaded without its network (load_bundle(..., network=False))")
    return predict_probabilities(
        bundle.model,
        store,
        store.rows_for(cells),
        bundle.scaler.transform(cells),
        bundle.config,
        batch_size=batch_size,
        progress=progress,
        output=output,
        device=device,
    )


# The columns of a new plate's cell calls (``predict``): a cell and where it sits.
CALL_COLUMNS = ["cell_id", "image_id", "plate", "well"]


def write_cell_calls(
    bundle: Bundle,
    store: CropStore,
    plates: Iterable[pd.DataFrame],
    path: Path,
    evaluation: EvaluationConfig,
    keep: Callable[[pd.DataFrame, np.ndarray], None],
    columns: list[str] = CALL_COLUMNS,
    grouping: tuple[str, dict[str, str]] | None = None,
    progress: bool = False,
    device: torch.device | None = None,
) -> int:
    """The bundle's network on cells that come a plate at a time (``plates``: cell tables with ``columns``, the
    mask label and the scaler's columns): each plate's calls written as a row group of ``path`` (the cell
    prediction table, prediction_tables.prediction_table, with ``grouping``'s column) and handed with the plate's
    cells to ``keep`` (what the caller keeps of them: votes, a tally) before the next plate is read — a screen holds
    one plate's cells. Returns the cells called."""
    e, classes = evaluation, bundle.encoder.classes

    def plate_calls(cells: pd.DataFrame) -> pd.DataFrame:
        if cells.empty:  # a plate without cells: no calls, nothing to keep (write_parquet_parts adds no rows)
            return cells[columns]
        probs = predict_cells(bundle, store, cells, e.batch_size, progress, device=device)
        keep(cells, probs)
        return prediction_table(cells[columns], probs, classes, e.top_k, grouping)

    return write_parquet_parts(path, map(plate_calls, plates))


def predict_plates(
    bundle: Bundle,
    store: CropStore,
    plates: Iterable[pd.DataFrame],
    path: Path,
    evaluation: EvaluationConfig,
    progress: bool = False,
    device: torch.device | None = None,
) -> tuple[int, Votes, Votes]:
    """A new plate's cell calls (:func:`write_cell_calls`, ``plates`` with :data:`CALL_COLUMNS`), each plate's voted
    into its images and wells (``evaluation.vote``). Returns the cells called and the image and well votes, in the
    order one vote over every cell gives."""
    votes: dict[str, list[Votes]] = {"image": [], "well": []}

    def keep(cells: pd.DataFrame, probs: np.ndarray) -> None:
        votes["image"].append(vote(cells["image_id"].to_numpy(), probs, evaluation.vote))
        votes["well"].append(well_votes(cells, probs, evaluation.vote))

    called = write_cell_calls(
        bundle, store, plates, path, evaluation, keep, grouping=bundle.label_grouping, progress=progress, device=device
    )
    n_classes = len(bundle.encoder.classes)
    return called, merged_votes(votes["image"], n_classes), merged_votes(votes["well"], n_classes)


def network_predictions(
    bundle: Bundle,
    meta: pd.DataFrame,
    out: RunFolder,
    config: Config,
    progress: bool = False,
    device: torch.device | None = None,
) -> list[Path]:
    """The bundle's network on a new plate's cells (their crops cut in ``out``), a plate at a time: each plate's
    cell predictions written as a row group of ``cell_predictions.parquet`` and voted into its images and wells
    (``image_predictions``, ``well_predictions``) before the next plate is read. ``meta``: the image table indexed
    by image_id. Returns the files written."""
    e, classes, grouping = config.evaluation, bundle.encoder.classes, bundle.label_grouping

    def with_wells(cells: pd.DataFrame) -> pd.DataFrame:
        return cells.assign(plate=cells["image_id"].map(meta["plate"]), well=cells["image_id"].map(meta["well"]))

    plates = map(with_wells, out.cell_parts(meta.index, ["cell_id", "image_id", "label", *bundle.scaler.columns]))
    called = predict_plates(bundle, CropStore(out.crops), plates, out.cell_predictions, e, progress, device)
    n_cells, (groups, scores), well_calls = called
    image_table = meta.loc[groups].reset_index()
    write_image_predictions(
        out.image_predictions, image_table, scores, classes, e, config.input.label, NETWORK, grouping
    )
    validation = (bundle.choice or {}).get("scores", {}).get(NETWORK)
    write_well_predictions(
        out.well_predictions, well_calls, meta.reset_index(), classes, e, NETWORK, validation, grouping
    )
    log.info("predicted %d cells in %d images", n_cells, len(groups))
    return [out.cell_predictions, out.image_predictions, out.well_predictions]

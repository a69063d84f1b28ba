"""A bundle's models on a new plate: what the plate must share with the bundle (channels, crop settings, the
settings a user may change), which model predicts (``auto`` the bundle's choice), the trained network on the cells'
crops (a plate at a time, voted into images and wells), a profile model on per-image profiles, and which cell
features and embeddings the bundle's reference profiles need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cellresponse.config import Config, EvaluationConfig, apply_overrides
from cellresponse.errors import InputError
from cellresponse.evaluation.prediction_tables import (
    prediction_table,
    well_votes,
    write_image_predictions,
    write_well_predictions,
)
from cellresponse.evaluation.votes import Votes, merged_votes, vote
from cellresponse.features.crop_store import CropStore
from cellresponse.features.crops import changed_settings
from cellresponse.input.io import write_parquet_parts
from cellresponse.input.runfolder import RunFolder
from cellresponse.input.transforms import IMAGE_CHANNELS, prepare_batch
from cellresponse.learning.bundle import MODEL_CHOICES, NETWORK, Bundle
from cellresponse.networks.model import CellResponseNet
from cellresponse.profiling.profile_models import (
    features_model_probabilities,
    image_profiles,
    profile_cell_columns,
    require_cell_features,
)
from cellresponse.profiling.references import DEEP_PREFIX, References

log = logging.getLogger(__name__)

# Settings a user may change for prediction: how it runs, not what the model sees.
RUNTIME_KEYS = (
    "runtime.",
    "input.join",
    "input.label",
    "input.control_label",
    "training.accelerator",
    "references.kind",
    "references.moa_space",
    "references.novelty_quantile",
    "references.query_normalization",
    "references.activity_fdr",
    "references.neighbours",
    "profiles.treatment",
    "profiles.compound",
)
# Names of earlier versions: `--model cnn` is the network, `--model features` the measured-profile model.
MODEL_ALIASES = {"cnn": NETWORK, "features": "measured"}


def check_compatible(bundle_channels: list[str], names: list[str], bundle_crops: dict, crop_settings: dict) -> None:
    """The images must have the bundle's channels (same names, same order) and the same crop settings."""
    if list(bundle_channels) != list(names):
        raise InputError(
            f"the model was trained on channels {list(bundle_channels)}, these images have {list(names)} — "
            "predict needs the same channels in the same order: give a load_data.csv whose FileName_Orig<name> "
            "columns carry the model's names (a Phenix folder names its channels ch1, ch2, …)"
        )
    changed = changed_settings(bundle_crops, crop_settings)
    if changed:
        raise InputError(f"crop settings differ from the model bundle's in {changed}; use the bundle's settings")


def prediction_config(bundle_config: Config, overrides: list[str]) -> Config:
    """The bundle's settings with ``overrides`` of the runtime keys; the network runs where this machine allows
    (``training.accelerator=auto``) — the machine it was trained on does not bind the one it predicts on."""
    for text in overrides:
        if not text.startswith(RUNTIME_KEYS):
            raise InputError(
                f"--set {text}: predict takes the bundle's settings; only "
                + ", ".join(k.rstrip(".") + ("*" if k.endswith(".") else "") for k in RUNTIME_KEYS)
                + " may change"
            )
    return apply_overrides(bundle_config, ["training.accelerator=auto", *overrides], "model bundle")


def resolve_model(requested: str, bundle: Bundle, bundle_path: str | Path) -> str:
    """The model to run: ``auto`` → the bundle's recorded choice; a profile model the bundle lacks is an error."""
    name = MODEL_ALIASES.get(requested, requested)
    if name not in MODEL_CHOICES:
        raise InputError(f"unknown model {requested!r}; choose one of: {', '.join(MODEL_CHOICES)}")
    if name == "auto":
        if bundle.choice is None:
            log.info("%s records no model choice (an earlier version): the network predicts", bundle_path)
            return NETWORK
        name = bundle.choice["auto"]
        log.info("model auto: %s, the best on %s", name, bundle.choice["scored_on"])
    if name != NETWORK and name not in bundle.profile_models:
        kinds = ", ".join(bundle.profile_models) or "none"
        raise InputError(f"{bundle_path} has no {name} profile model (it has: {kinds}); use --model network")
    return name


def chosen_references(bundle: Bundle, kind: str) -> References | None:
    """The bundle's references of ``kind`` (references.kind; ``auto`` the kind train chose), with a line saying
    what another kind than the chosen one costs in leave-one-compound-out accuracy."""
    references = bundle.references_of(kind)
    if references is not bundle.references:

        def accuracy(refs: References) -> str:
            return f"{refs.calibration.get('field', {}).get('accuracy', float('nan')):.3f}"

        log.info(
            "references: %s profiles (references.kind), not the %s that train chose — mechanism right on %s of "
            "reference fields left out against %s",
            references.kind,
            bundle.references.kind,
            accuracy(references),
            accuracy(bundle.references),
        )
    return references


def embedding_config(config: Config, bundle: Bundle) -> Config:
    """The bundle's embedding settings with the training run's window fixed, so new cells are cut as the
    profile model's were (the default window follows each run's median cell diameter)."""
    window = (bundle.meta.get("embedding") or {}).get("window")
    if not window:
        return config
    return apply_overrides(config, [f"embedding.crop_size={window}"], "model bundle")


def predict_with_profiles(
    kind: str, bundle: Bundle, meta: pd.DataFrame, blocks: dict[str, pd.DataFrame], out: RunFolder, config: Config
) -> list[Path]:
    """Image predictions of one of the bundle's profile models from the new images' per-image profile ``blocks``
    (the predict stage's ``profile_blocks``; no crops)."""
    model = bundle.profile_models[kind]
    measured = blocks.get("measured")
    features = image_profiles(kind, measured_of(measured, model_cell_columns(model)), blocks.get("deep"))
    probs = features_model_probabilities(model, features)
    table = meta.loc[features.index].reset_index()
    e, grouping = config.evaluation, bundle.label_grouping
    write_image_predictions(
        out.image_predictions, table, probs, model["classes"], e, config.input.label, kind, grouping
    )
    validation = (bundle.choice or {}).get("scores", {}).get(kind)
    votes = well_votes(table, probs, e.vote)
    write_well_predictions(
        out.well_predictions, votes, meta.reset_index(), model["classes"], e, kind, validation, grouping
    )
    log.info("predicted %d images with the %s profile model", len(features), kind)
    return [out.image_predictions, out.well_predictions]


def model_cell_columns(model: dict) -> list[str]:
    """The cell feature columns a profile model's per-image statistics are made of."""
    return model.get("cell_columns") or profile_cell_columns(model["columns"])


def measured_of(table: pd.DataFrame | None, cell_columns: list[str]) -> pd.DataFrame | None:
    """The per-image statistics of ``cell_columns`` (and the cell count) out of a table made of more cell columns:
    the same table profile_models.plate_by_plate_feature_table gives for them alone (its missing values are filled
    column by column)."""
    if table is None:
        return None
    keep = set(cell_columns)
    return table[[c for c in table.columns if "__" not in c or c.rsplit("__", 1)[0] in keep]]


def reference_needs(bundle: Bundle, out: RunFolder) -> tuple[list[str], bool] | None:
    """The cell feature columns and whether the embeddings are needed to answer with the bundle's references; None
    (said in one line) where the bundle keeps none or the new cells lack their features."""
    references = bundle.references
    if references is None:
        log.warning(
            "this bundle keeps no reference profiles (made before they were kept, or train found none to keep: its "
            "log says why): no activity, nearest references or mechanism calls — retrain it (cellresponse train RUN "
            "--overwrite) to get them"
        )
        return None
    cell_columns = profile_cell_columns(references.features)
    try:
        require_cell_features(out.cell_columns(), cell_columns, "the bundle's references")
    except InputError as error:
        log.warning("%s — no activity, nearest references or mechanism calls this time", error)
        return None
    return cell_columns, any(c.startswith(DEEP_PREFIX) for c in references.features)


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
        model = model.to(memory_format=torch.channels_last)
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

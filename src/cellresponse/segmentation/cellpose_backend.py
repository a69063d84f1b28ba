"""The Cellpose backend: where its weights are, getting them, and the network with the study's parameters.

Weights come from a local folder (``segmentation.weights_dir``, else ``CELLPOSE_LOCAL_MODELS_PATH``, else
Cellpose's cache ``~/.cellpose/models``), in Cellpose's own file names, or from Cellpose's own download into its
cache. Nothing here changes the environment or Cellpose's module state: a local folder's files are handed to
``CellposeModel`` / ``SizeModel`` by path.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellresponse.config import SegmentationConfig
from cellresponse.errors import WeightsUnavailableError

# Cellpose's built-in "diameter" of its cytoplasm models (nuclei: 17): the size images are rescaled to, and the
# diameter assumed when there is no size model to estimate it.
CYTO_DIAMETER = 30.0
NUCLEI_DIAMETER = 17.0
LEGACY_MODELS = frozenset({"cyto", "cyto2", "nuclei"})  # files named "<model>torch_0"
SIZE_MODELS = frozenset({"cyto", "cyto2", "cyto3", "nuclei"})  # models that ship a size model


def default_weights_dir() -> Path:
    """Cellpose's own model folder: ``CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def cellpose_weight_files(model: str, weights_dir: str | Path | None = None) -> list[Path]:
    """The files Cellpose 3 needs for ``model`` (its own naming): the network, and for the built-in
    cyto/nuclei models the size model that estimates the diameter."""
    folder = Path(weights_dir) if weights_dir else default_weights_dir()
    legacy = model in LEGACY_MODELS
    files = [folder / (f"{model}torch_0" if legacy else model)]
    if legacy:
        files.append(folder / f"size_{model}torch_0.npy")
    elif model == "cyto3":
        files.append(folder / "size_cyto3.npy")
    return files


def cellpose_weights_available(model: str, weights_dir: str | Path | None = None) -> bool:
    return all(path.is_file() for path in cellpose_weight_files(model, weights_dir))


def ensure_cellpose_weights(model: str, weights_dir: str | Path | None = None) -> list[Path]:
    """The weight files of ``model``, downloaded with Cellpose's own code into its cache when allowed.

    Cellpose falls back to another model when a name is unknown and retries downloads without a
    clear message; here a missing model is one clear line instead.
    """
    if cellpose_weights_available(model, weights_dir):
        return cellpose_weight_files(model, weights_dir)
    if weights_dir:
        missing = [str(p) for p in cellpose_weight_files(model, weights_dir) if not p.is_file()]
        raise WeightsUnavailableError(
            f"Cellpose weights for {model!r} are not in {weights_dir} (missing {', '.join(missing)}); copy them "
            "there with Cellpose's file names, or use segmentation.backend=offline"
        )
    try:
        # Cellpose (and torch with it) is imported only when it is used: the offline backend's workers never pay
        # its ~5 s import.
        from cellpose import models as cp_models

        if model not in cp_models.MODEL_NAMES:
            raise WeightsUnavailableError(
                f"Cellpose model {model!r} is not a built-in model ({', '.join(cp_models.MODEL_NAMES[:8])}, ...); "
                "give a built-in name or a folder with the weights (segmentation.weights_dir)"
            )
        files = [Path(cp_models.model_path(model))]  # Cellpose's own download into its cache
        if model in SIZE_MODELS:
            files.append(Path(cp_models.size_model_path(model)))
    except WeightsUnavailableError:
        raise
    except Exception as exc:
        raise WeightsUnavailableError(
            f"Cellpose weights for {model!r} are not in {default_weights_dir()} and could not be downloaded "
            f"({type(exc).__name__}). Copy them there (or set CELLPOSE_LOCAL_MODELS_PATH / "
            "segmentation.weights_dir), or use segmentation.backend=offline"
        ) from None
    return files


class CellposeSegmenter:
    """Cellpose 3 with the study's parameters; the network is built once per worker process.

    ``segmenter(image) -> (labels, flows, diameter)``, flows ``(3, H, W)``: dY, dX, cell-probability logit.
    """

    def __init__(self, config: SegmentationConfig, pretrained: bool = True):
        import torch  # with Cellpose, only where it is used (see ensure_cellpose_weights)
        from cellpose import models as cp_models

        self.config = config
        gpu = torch.cuda.is_available()
        self.size_model = None
        if pretrained:
            files = ensure_cellpose_weights(config.model, config.weights_dir)
            diameter = NUCLEI_DIAMETER if "nuclei" in config.model else CYTO_DIAMETER
            self.model = cp_models.CellposeModel(gpu=gpu, pretrained_model=str(files[0]), diam_mean=diameter)
            if len(files) > 1:
                self.size_model = cp_models.SizeModel(cp_model=self.model, pretrained_size=str(files[1]))
        else:
            # Random weights: exercises the wiring (shapes, thresholds, outputs) without any download.
            self.model = cp_models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=CYTO_DIAMETER)

    def __call__(self, seg_input: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        channels = [0, 0]
        diameter = self.config.diameter
        with without_cellpose_noise():
            if diameter is None and self.size_model is not None:
                estimated, _ = self.size_model.eval(seg_input, channels=channels)
                diameter = float(np.atleast_1d(estimated)[0])
            diameter = float(diameter or CYTO_DIAMETER)
            masks, flows, _ = self.model.eval(
                seg_input,
                channels=channels,
                diameter=diameter,
                flow_threshold=self.config.flow_threshold,
                cellprob_threshold=self.config.cellprob_threshold,
            )
        dp, prob = flows[1], flows[2]
        out = np.stack([dp[0], dp[1], prob]).astype(np.float32)
        return masks.astype(np.uint32), out, diameter


@contextlib.contextmanager
def without_cellpose_noise() -> Iterator[None]:
    """Two kinds of lines Cellpose's own code makes a user read, neither about their images:

    * on a field where it finds no cells (an empty or out-of-focus site) it measures the diameter of no masks, the
      median of nothing, which numpy warns about twice (once more with the size model) before Cellpose falls back to
      its default diameter itself — a plate with blank sites printed them for each (the segment stage reports every
      image's cell count instead);
    * torch's "Sparse invariant checks are implicitly disabled ... Memory errors (e.g. SEGFAULT) will occur", once
      per worker, about the sparse tensor Cellpose builds from its own flow coordinates to follow them into masks.
    """
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled", UserWarning)
        yield

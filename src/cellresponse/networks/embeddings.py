"""Per-cell embeddings from a frozen pretrained EfficientNet: windows centred on each cell, shown to the network as
an RGB image (three fluorescence channels) or one grey channel at a time, pooled to 1280 numbers per view.

The window is centred on the cell's centroid (not cut to its bbox) so that every cell is seen at the same scale with
its surroundings, as DeepProfiler and the JUMP embeddings do; pixels outside the field are zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellresponse.features.embedding_tables import PREFIX, embedding_columns  # noqa: F401
from cellresponse.networks.model import FEATURES, INPUT_STATISTICS, fold_batch_norm, pretrained_trunk


def cell_windows(planes: np.ndarray, centroids: np.ndarray, side: int) -> np.ndarray:
    """uint8 windows ``(N, C, side, side)`` centred on each ``(row, col)`` centroid of ``planes`` ``(C, H, W)``
    (values in [0, 1], stored as uint8 to keep batches small); zero outside the field. One strided gather per
    field, no Python loop per cell (the reading thread must leave the interpreter to the network)."""
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    scaled = np.round(np.clip(planes, 0.0, 1.0) * 255.0).astype(np.uint8)
    padded = np.pad(scaled, ((0, 0), (side, side), (side, side)))
    tops = np.floor(centroids[:, 0] - side / 2.0 + 0.5).astype(np.int64) + side
    lefts = np.floor(centroids[:, 1] - side / 2.0 + 0.5).astype(np.int64) + side
    # numpy's stub takes one axis; the function takes a tuple (numpy docs)
    views = np.lib.stride_tricks.sliding_window_view(padded, (side, side), axis=(1, 2))  # type: ignore[call-overload]
    return np.ascontiguousarray(views[:, tops, lefts].transpose(1, 0, 2, 3))


def embedding_width(mode: str, channels: int) -> int:
    """Columns of an embedding: the backbone's pooled width, once per channel in ``per_channel`` mode."""
    return FEATURES * (channels if mode == "per_channel" else 1)


class Embedder:
    """A frozen pretrained trunk: ``embedder(windows)`` → float32 ``(N, dims)``.

    ``mode="rgb"`` shows three channels as one RGB image (``dims`` = 1280); ``mode="per_channel"`` shows each
    channel as a grey image (the same plane in R, G and B) and concatenates the views (``dims`` = 1280 × channels).
    """

    def __init__(
        self,
        backbone: str = "efficientnet-lite0",
        pretrained: str | None = "imagenet",
        input_size: int = 96,
        mode: str = "rgb",
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        pad_batches: bool | None = None,
    ):
        trunk = fold_batch_norm(pretrained_trunk(backbone, pretrained, in_channels=3).eval())
        for parameter in trunk.parameters():
            parameter.requires_grad_(False)
        mean, std = INPUT_STATISTICS[backbone]
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.input_size, self.mode, self.batch_size = input_size, mode, batch_size
        self.trunk = trunk.to(self.device)
        # a last, partial batch padded to the full size: on a GPU by default (one input shape, see __call__)
        self.pad_batches = self.device.type != "cpu" if pad_batches is None else pad_batches

    def dims(self, channels: int) -> int:
        return embedding_width(self.mode, channels)

    def _views(self, windows: torch.Tensor) -> list[torch.Tensor]:
        if self.mode == "rgb":
            if windows.shape[1] != 3:
                raise ValueError(f"rgb embeddings need 3 channels, got {windows.shape[1]}")
            return [windows]
        return [windows[:, c : c + 1].expand(-1, 3, -1, -1) for c in range(windows.shape[1])]

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(windows), self.dims(windows.shape[1])), np.float32)
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            x = torch.from_numpy(chunk).to(self.device).float().div_(255.0)
            if self.pad_batches and len(x) < self.batch_size:
                # One input shape on a GPU: each new batch size costs cuDNN a set-up, and the embed stage's groups
                # of whole fields leave a remainder of a new size almost every time (H200, 96 BBBC021-moa fields:
                # 61 s of network time in a process's first pass at batch 256, 2.2 s once the shapes were seen).
                # Batch norm is folded, so the zero rows change no other row's output.
                x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.batch_size - len(x)))
            if x.shape[-1] != self.input_size:
                x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
            views = [(view - self.mean) / self.std for view in self._views(x)]
            pooled = [self.trunk(view.contiguous(memory_format=torch.channels_last)) for view in views]
            out[start : start + len(chunk)] = torch.cat(pooled, dim=1)[: len(chunk)].cpu().numpy()
        return out


# Windows per forward pass when `embedding.batch_size` is null, by device (measured: config.EmbeddingConfig).
CPU_BATCH, GPU_BATCH = 16, 256


def embedding_batch_size(configured: int | None, device: torch.device | str) -> int:
    """``configured`` when set, else 16 on the CPU (batches that stay in its caches) and 256 on a GPU (12 times the
    cells a second of 16 on an H200; no more than the embed stage gathers at a time)."""
    if configured:
        return int(configured)
    return CPU_BATCH if torch.device(device).type == "cpu" else GPU_BATCH


def window_side(crop_size: int | None, median_diameter: float | None, scale: float = 3.0, smallest: int = 16) -> int:
    """The window side: ``crop_size`` when set, else ``scale`` × the run's median cell diameter (even, at least
    ``smallest``) — about a cell and its neighbourhood (48 px for BBBC021-moa's 17-px cells)."""
    if crop_size:
        return int(crop_size)
    if not median_diameter:
        return 2 * smallest
    return max(smallest, 2 * round(scale * median_diameter / 2))


def embed_channels(wanted: Sequence[str], names: Sequence[str], mode: str = "rgb") -> list[str]:
    """The channels shown to the network: ``wanted``, else the first three (``rgb``) or all (``per_channel``).
    For ``rgb`` exactly three: fewer are repeated in turn (a DNA-only plate shows DNA as grey), more are an error."""
    if mode != "rgb":
        return list(wanted) or list(names)
    chosen = list(wanted) or list(names[:3])
    if len(chosen) > 3:
        raise ValueError(f"rgb embeddings show three channels, {len(chosen)} were given: {chosen}")
    return [chosen[i % len(chosen)] for i in range(3)]

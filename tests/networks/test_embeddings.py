"""The frozen embedder of cell windows (networks.embeddings): windows cut around each cell, the channels shown to
the network, batches by device, and padded batches that change no embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellresponse.networks.embeddings import cell_windows, embed_channels, window_side


def test_the_embedding_batch_follows_the_device_unless_set():
    """16 windows a pass on the CPU (its caches), 256 on a GPU (12 times the cells a second of 16 on an H200:
    benchmarks/gpu_inference.py); a configured size is kept on either."""
    from cellresponse.config import Config
    from cellresponse.networks.embeddings import embedding_batch_size

    assert Config().embedding.batch_size is None
    assert embedding_batch_size(None, "cpu") == 16 and embedding_batch_size(None, torch.device("cuda", 0)) == 256
    assert embedding_batch_size(64, "cpu") == 64 and embedding_batch_size(8, "cuda") == 8


def test_padding_the_last_batch_changes_no_embedding():
    """A GPU sees one batch shape (the last, partial batch padded with zero windows): every cell's embedding is
    the one it gets unpadded, since batch norm is folded and rows never mix."""
    from cellresponse.networks.embeddings import Embedder

    windows = np.random.default_rng(0).integers(0, 256, (21, 3, 40, 40), np.uint8)
    plain = Embedder("efficientnet-lite0", "none", 64, "per_channel", 8, pad_batches=False)
    padded = Embedder("efficientnet-lite0", "none", 64, "per_channel", 8, pad_batches=True)
    padded.trunk.load_state_dict(plain.trunk.state_dict())
    assert padded.pad_batches and not plain.pad_batches and not Embedder("efficientnet-lite0", "none").pad_batches
    seen = {"plain": [], "padded": []}
    for name, embedder in (("plain", plain), ("padded", padded)):
        embedder.trunk.register_forward_pre_hook(lambda _, inputs, name=name: seen[name].append(len(inputs[0])))
    expected, got = plain(windows), padded(windows)
    assert set(seen["padded"]) == {8} and set(seen["plain"]) == {8, 5}  # one shape padded; 21 = 8 + 8 + 5 plain
    assert got.shape == expected.shape == (21, 3 * 1280)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_cell_windows_are_centred_on_the_centroid_and_zero_outside():
    planes = np.zeros((1, 20, 20), np.float32)
    planes[0, 10, 10] = 1.0
    windows = cell_windows(planes, np.array([[10.0, 10.0], [0.0, 0.0]]), 6)
    assert windows.shape == (2, 1, 6, 6) and windows.dtype == np.uint8
    assert windows[0, 0, 3, 3] == 255 and windows[0].sum() == 255  # the centre pixel sits at the window's centre
    assert windows[1, 0, :3, :3].sum() == 0  # outside the field: zeros


def test_cell_windows_equal_cutting_each_square():
    from cellresponse.features.crops import cut_square

    rng = np.random.default_rng(0)
    planes = rng.random((3, 50, 60)).astype(np.float32)
    centroids = np.c_[rng.uniform(0, 49, 40), rng.uniform(0, 59, 40)]
    scaled = np.round(planes * 255).astype(np.uint8)
    for side in (12, 13):
        expected = np.stack(
            [cut_square(scaled, int(np.floor(r - side / 2 + 0.5)), int(np.floor(c - side / 2 + 0.5)), side)
             for r, c in centroids]
        )  # fmt: skip
        np.testing.assert_array_equal(cell_windows(planes, centroids, side), expected)


def test_window_side_and_channels():
    assert window_side(None, 17.0) == 52 and window_side(40, 17.0) == 40 and window_side(None, None) == 32
    assert embed_channels([], ["DNA"]) == ["DNA", "DNA", "DNA"]
    assert embed_channels([], ["a", "b", "c", "d"]) == ["a", "b", "c"]
    assert embed_channels([], ["a", "b", "c", "d"], "per_channel") == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="three channels"):
        embed_channels(["a", "b", "c", "d"], ["a", "b", "c", "d"])

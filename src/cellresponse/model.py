"""The study's multi-input network as one ``nn.Module``.

    mask crop (4 ch) ─ EfficientNet-B0 ─ global average pool ─ 1280 ┐
    flow crop (4 ch) ─ EfficientNet-B0 ─ global average pool ─ 1280 ├ concat ─ × attention gate ─ projection ─ classes
    table row        ─ Linear ─ ReLU ─ BatchNorm ─ Dropout ─ 32     ┘

EfficientNet-B0 comes from MONAI (``EfficientNetBN``): it builds a 4-channel B0 directly and needs no
torchvision (timm and torchvision's own models import torchvision, which this project keeps out).
ImageNet weights are optional and read from a local file; the extra input channel's kernel is
initialised from the mean of the RGB kernels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.networks.nets import EfficientNetBN
from safetensors.torch import load_file
from torch import nn

from cellresponse.config import TrainingConfig
from cellresponse.errors import WeightsUnavailableError
from cellresponse.transforms import IMAGE_CHANNELS

log = logging.getLogger(__name__)

B0_FEATURES = 1280


def efficientnet_b0(in_channels: int = IMAGE_CHANNELS) -> nn.Module:
    """A randomly initialised EfficientNet-B0 trunk returning pooled 1280-d features."""
    net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=1)
    net._fc = nn.Identity()  # keep the pooled features; the study's head comes after the fusion
    net._dropout = nn.Identity()
    return net


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a ``torch.save``-d state dict (``weights_only``: no pickle code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem kernels → ``in_channels`` kernels: RGB kept, extra channels get the RGB mean."""
    if weight.shape[1] == in_channels:
        return weight
    extra = weight.mean(dim=1, keepdim=True).repeat(1, max(0, in_channels - weight.shape[1]), 1, 1)
    return torch.cat([weight[:, :in_channels], extra], dim=1)


def load_imagenet(trunk: nn.Module, path: str | Path, in_channels: int = IMAGE_CHANNELS) -> None:
    """Load EfficientNet-B0 ImageNet weights (efficientnet_pytorch / MONAI key names) from a local file."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("_fc.")}
    if "_conv_stem.weight" in state:
        state["_conv_stem.weight"] = adapt_stem(state["_conv_stem.weight"], in_channels)
    own = trunk.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < 0.9 * len([k for k in own if not k.startswith("_fc.")]):
        raise WeightsUnavailableError(
            f"{path} does not look like EfficientNet-B0 weights: {len(usable)} of {len(own)} tensors match"
        )
    trunk.load_state_dict(usable, strict=False)
    log.info("loaded ImageNet weights from %s (%d tensors)", path, len(usable))


class CellResponseNet(nn.Module):
    """Two EfficientNet-B0 branches + a tabular branch, fused by an attention gate (the study's model)."""

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        tabular_hidden: int = 32,
        dropout: float = 0.3,
        attention_hidden: int = 256,
        projection: int = 256,
        pretrained_weights: str | Path | None = None,
    ):
        super().__init__()
        self.mask_branch = efficientnet_b0(IMAGE_CHANNELS)
        self.flow_branch = efficientnet_b0(IMAGE_CHANNELS)
        if pretrained_weights:
            load_imagenet(self.mask_branch, pretrained_weights)
            load_imagenet(self.flow_branch, pretrained_weights)
        self.tabular = nn.Sequential(
            nn.Linear(max(n_features, 1), tabular_hidden),
            nn.ReLU(),
            nn.BatchNorm1d(tabular_hidden),
            nn.Dropout(dropout),
        )
        fused = 2 * B0_FEATURES + tabular_hidden
        self.attention = nn.Sequential(
            nn.Linear(fused, attention_hidden),
            nn.ReLU(),
            nn.Linear(attention_hidden, fused),
            nn.Sigmoid(),
        )
        self.projection = nn.Sequential(nn.Linear(fused, projection), nn.ReLU())
        self.classifier = nn.Linear(projection, n_classes)
        self.n_features = n_features

    @classmethod
    def from_config(
        cls, n_features: int, n_classes: int, training: TrainingConfig, pretrained: bool = True
    ) -> CellResponseNet:
        """The network a training config describes (``pretrained=False``: no ImageNet file is read, e.g. when
        a bundle's weights replace the initialisation)."""
        return cls(
            n_features,
            n_classes,
            tabular_hidden=training.tabular_hidden,
            dropout=training.dropout,
            attention_hidden=training.attention_hidden,
            projection=training.projection,
            pretrained_weights=training.pretrained_weights if pretrained else None,
        )

    def forward_crops(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Logits for prepared 8-channel crops (``transforms.prepare_batch``): image half, flow half."""
        return self(x[:, :IMAGE_CHANNELS], x[:, IMAGE_CHANNELS:], table)

    def forward(self, mask: torch.Tensor, flow: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if self.n_features == 0:  # no table columns: a constant input keeps the layer shapes fixed
            table = torch.zeros(mask.shape[0], 1, device=mask.device, dtype=mask.dtype)
        fused = torch.cat([self.mask_branch(mask), self.flow_branch(flow), self.tabular(table)], dim=1)
        fused = fused * self.attention(fused)
        return self.classifier(self.projection(fused))

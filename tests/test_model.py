"""The U-Net: size, shapes, input checks, output activation, FLOP count."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from chunked_fnet.model import FnetUNet, UNetConfig, count_flops_per_voxel, count_parameters

TINY = UNetConfig(depth=2, width=4)



def tiny(**kw) -> FnetUNet:
    torch.manual_seed(0)
    return FnetUNet(TINY.model_copy(update=kw)).eval()


def test_default_parameter_count():
    model = FnetUNet()
    assert model.config == UNetConfig()
    assert count_parameters(model) == 23_280_769
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 23_280_769


def test_default_channels_per_level():
    model = FnetUNet()
    assert [enc.conv2.out_channels for enc in model.encoders] == [32, 64, 128, 256]
    assert model.bottleneck.conv2.out_channels == 512
    assert [dec.conv1.in_channels for dec in model.decoders] == [64, 128, 256, 512]
    assert all(d.conv.kernel_size == (2, 2, 2) and d.conv.stride == (2, 2, 2) for d in model.downs)
    assert all(isinstance(u.conv, nn.ConvTranspose3d) and u.conv.stride == (2, 2, 2) for u in model.ups)
    assert model.head.kernel_size == (3, 3, 3) and model.head.out_channels == 1


def test_default_output_shape_3d():
    model = FnetUNet().eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("zyx", [(4, 4, 4), (8, 12, 4), (12, 16, 20), (4, 32, 8)])
def test_output_shape_equals_input_shape_3d(zyx):
    model = tiny()
    x = torch.randn(2, 1, *zyx)
    with torch.no_grad():
        assert model(x).shape == x.shape


@pytest.mark.parametrize("yx", [(4, 4), (8, 12), (32, 16)])
def test_output_shape_equals_input_shape_2d(yx):
    model = tiny(dims=2)
    assert isinstance(model.head, nn.Conv2d)
    x = torch.randn(3, 1, *yx)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_2d_default_parameter_count_follows_the_layers():
    # same layout with 2D kernels: every 3x3x3 kernel has 9 instead of 27 taps, 2x2x2 has 4 instead of 8
    model = FnetUNet(UNetConfig(dims=2))
    expected = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            expected += m.weight.numel() + m.bias.numel()
        elif isinstance(m, nn.BatchNorm2d):
            expected += 2 * m.num_features
    assert count_parameters(model) == expected
    assert not any(isinstance(m, (nn.Conv3d, nn.BatchNorm3d)) for m in model.modules())


def test_multichannel_in_and_out():
    model = tiny(in_channels=3, out_channels=2)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 8, 8, 8))
    assert y.shape == (1, 2, 8, 8, 8)


def test_depth_zero_is_a_plain_conv_stack():
    model = FnetUNet(UNetConfig(depth=0, width=4)).eval()
    assert model.multiple == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 3, 5, 7)).shape == (1, 1, 3, 5, 7)


@pytest.mark.parametrize(
    "shape, size, axis",
    [((1, 1, 6, 8, 8), 6, "z"), ((1, 1, 8, 10, 8), 10, "y"), ((1, 1, 8, 8, 2), 2, "x")],
)
def test_not_divisible_raises_clear_error(shape, size, axis):
    model = tiny()
    with pytest.raises(ValueError, match=rf"input size {size} along {axis} is not divisible by 4"):
        model(torch.randn(*shape))


def test_not_divisible_default_names_16():
    model = FnetUNet(UNetConfig(width=1))
    assert model.multiple == 16 and model.config.multiple == 16
    with pytest.raises(ValueError, match=r"input size 24 along y is not divisible by 16"):
        model(torch.randn(1, 1, 16, 24, 16))


def test_wrong_rank_or_channels_raise():
    model = tiny()
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match="expects 1 input channel"):
        model(torch.randn(1, 2, 8, 8, 8))


def test_no_activation_on_output():
    model = tiny()
    with torch.no_grad():
        model.head.bias.fill_(-1.0)  # a ReLU/sigmoid after the head could not produce this
        y = model(torch.randn(1, 1, 8, 8, 8))
    assert (y < 0).any() and (y > -1.0).any() and (y < -1.0).any()


def test_trains_one_step():
    model = tiny().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, t = torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 8, 8, 8)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = torch.mean((model(x) - t) ** 2)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_init_weights_is_pytorch_fnet_style_and_seedable():
    a = tiny().init_weights(generator=torch.Generator().manual_seed(1))
    b = tiny().init_weights(generator=torch.Generator().manual_seed(1))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert a.encoders[0].conv1.weight.std() < 0.05
    assert torch.allclose(a.encoders[0].bn1.weight, torch.ones(4), atol=0.1)
    assert torch.equal(a.encoders[0].bn1.bias, torch.zeros(4))


def test_config_validation():
    with pytest.raises(pydantic.ValidationError):
        UNetConfig(depth=-1)
    with pytest.raises(pydantic.ValidationError):
        UNetConfig(dims=1)
    with pytest.raises(pydantic.ValidationError):
        UNetConfig(widht=8)  # unknown field
    cfg = UNetConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.depth = 3  # frozen
    assert UNetConfig(depth=3).multiple == 8
    assert FnetUNet(depth=1, width=2).config == UNetConfig(depth=1, width=2)


def test_flops_default_about_046_mflop_per_voxel():
    flops = count_flops_per_voxel(UNetConfig())
    assert 0.3e6 < flops < 0.6e6
    small = FnetUNet(UNetConfig(width=1))
    assert (
        small.flops_per_voxel() == count_flops_per_voxel(small) == count_flops_per_voxel(UNetConfig(width=1))
    )


def test_flops_scale_with_width_squared():
    base = count_flops_per_voxel(UNetConfig(width=16))
    assert 3.8 < count_flops_per_voxel(UNetConfig(width=32)) / base <= 4.0
    assert 15.5 < count_flops_per_voxel(UNetConfig(width=64)) / base <= 16.0


@pytest.mark.parametrize(
    "cfg",
    [TINY, UNetConfig(depth=3, width=2, in_channels=2, out_channels=3), UNetConfig(dims=2, depth=3, width=4)],
)
def test_flops_match_torch_flop_counter(cfg):
    model = FnetUNet(cfg).eval()
    x = torch.randn(1, cfg.in_channels, *([16] * cfg.dims))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    per_voxel = counter.get_total_flops() / x[0, 0].numel()
    assert per_voxel == pytest.approx(count_flops_per_voxel(cfg), rel=1e-9)


@pytest.mark.parametrize("dims, shape", [(3, (2, 1, 16, 32, 32)), (2, (2, 1, 32, 32))])
def test_inference_copy_folds_batch_norm_and_computes_the_same_function(dims, shape):
    torch.manual_seed(0)
    model = FnetUNet(UNetConfig(dims=dims, depth=2, width=8)).init_weights()
    with torch.no_grad():  # trained-looking statistics, so a wrong fold (or a wrong transpose) shows
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0.0, 0.3)
    model.train()
    norms = sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules())
    assert norms == 14  # depth 2: 2 per conv block (2 encoders, bottleneck, 2 decoders), 1 per resample (2 down, 2 up)
    folded = model.inference_copy()
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in folded.modules())
    assert not folded.training
    assert model.training and sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules()) == norms
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = model.eval()(x)
        got = folded(x)
    assert expected.abs().max() > 0.01
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_workers_cache_the_folded_model(tmp_path):
    from chunked_fnet.model import ModelCard, checkpoint_hash, save_checkpoint
    from chunked_fnet.predict.ensemble import cached_model

    model = FnetUNet(UNetConfig(depth=1, width=4))
    card = ModelCard(
        structure="dna", architecture=model.config, voxel_size=(0.3, 0.3, 0.3), input={"modality": "brightfield", "channel": "bf"},
        training={"dataset": "none", "iterations": 0, "seed": 0, "batch_size": 1, "patch_shape": [8, 8, 8], "learning_rate": 0.001},
    )
    path = save_checkpoint(tmp_path / "dna.ckpt", model, card)
    cached = cached_model(str(path), checkpoint_hash(path), "cpu")
    assert cached is cached_model(str(path), checkpoint_hash(path), "cpu")
    assert not any(isinstance(m, nn.BatchNorm3d) for m in cached.modules())

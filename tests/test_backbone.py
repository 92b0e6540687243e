"""The shared U-Net: shapes over image sizes and channels, conditioning, and the embedding."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.backbone import Backbone, norm_groups, sinusoidal_embedding

SHAPES = [(8, 1), (16, 1), (28, 1), (32, 3)]


def make(in_channels=1, out_channels=1, size=8, num_classes=10, **kwargs) -> Backbone:
    torch.manual_seed(0)
    kwargs = {"width": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1, **kwargs}
    return Backbone(in_channels, out_channels, size, num_classes, **kwargs)


def randomize_zero_inits(model: torch.nn.Module) -> None:
    """Give the zero-initialized output convolutions random weights, so every path carries signal."""
    with torch.no_grad():
        for param in model.parameters():
            if torch.count_nonzero(param) == 0:
                param.normal_(0.0, 0.1)


@pytest.mark.parametrize("size,channels", SHAPES)
@pytest.mark.parametrize("out_factor", [1, 16])
def test_output_shape(size, channels, out_factor):
    model = make(channels + 1, channels * out_factor, size)
    x = torch.randn(2, channels + 1, size, size)
    out = model(x, torch.rand(2), torch.tensor([0, 10]))
    assert out.shape == (2, channels * out_factor, size, size)


@pytest.mark.parametrize(
    "size,expected",
    [(8, [True, True]), (16, [True, True]), (28, [True, True]), (32, [True, True]), (7, [False, False]), (14, [True, False])],
)
def test_downsampling_only_on_even_sides(size, expected):
    model = make(size=size)
    assert model.downsampled == expected
    assert model(torch.randn(1, 1, size, size), torch.zeros(1), torch.zeros(1, dtype=torch.long)).shape == (1, 1, size, size)


def test_output_zero_at_init():
    model = make()
    out = model(torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 3]))
    assert torch.equal(out, torch.zeros_like(out))


def test_label_and_scalar_change_output():
    model = make()
    randomize_zero_inits(model)
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    by_label = model(x, torch.zeros(2), torch.tensor([3, 10]))
    by_scalar = model(x, torch.tensor([0.1, 0.9]), torch.tensor([3, 3]))
    assert not torch.allclose(by_label[0], by_label[1])
    assert not torch.allclose(by_scalar[0], by_scalar[1])


def test_no_label_is_last_embedding_row():
    model = make(num_classes=10)
    assert model.label_emb.num_embeddings == 11
    with pytest.raises(IndexError):
        model(torch.randn(1, 1, 8, 8), torch.zeros(1), torch.tensor([11]))


def test_examples_independent_of_batch():
    model = make(size=16).eval()
    randomize_zero_inits(model)
    x, s, y = torch.randn(4, 1, 16, 16), torch.rand(4), torch.tensor([0, 1, 2, 10])
    together = model(x, s, y)
    alone = model(x[2:3], s[2:3], y[2:3])
    torch.testing.assert_close(together[2:3], alone, rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_gradient():
    model = make(in_channels=2, out_channels=3, size=28)
    randomize_zero_inits(model)
    out = model(torch.randn(2, 2, 28, 28), torch.rand(2), torch.tensor([0, 10]))
    out.square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_sinusoidal_embedding_closed_form():
    # dim 4: frequencies 1 and 10000 ** -0.5 = 0.01, applied to 1000 * s.
    emb = sinusoidal_embedding(torch.tensor([0.0, 0.5]), 4)
    args = [500.0, 5.0]
    expected_half = [math.cos(args[0]), math.cos(args[1]), math.sin(args[0]), math.sin(args[1])]
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(emb[1], torch.tensor(expected_half), rtol=1e-5, atol=1e-5)
    assert sinusoidal_embedding(torch.zeros(2), 5).shape == (2, 5)


@pytest.mark.parametrize("channels,groups", [(8, 2), (16, 4), (32, 8), (64, 16), (128, 32), (256, 32), (12, 2), (3, 1)])
def test_norm_groups_table(channels, groups):
    assert norm_groups(channels) == groups


def test_widths_follow_channel_mult():
    model = make(width=8, channel_mult=(1, 2, 4))
    assert model.conv_in.out_channels == 8
    assert model.middle[0].conv1.out_channels == 32

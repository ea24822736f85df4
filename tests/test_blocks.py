"""Tests of the residual blocks and norms (speechbrain_s4m.nnet.blocks)."""

import pytest
import torch

from speechbrain_s4m.nnet import (
    ChannelLayerNorm,
    FeedForwardBlock,
    GlobalLayerNorm,
    S4Block,
)
from speechbrain_s4m.nnet.blocks import gln_statistics


def test_global_layer_norm_reference():
    torch.manual_seed(0)
    gln = GlobalLayerNorm(3, eps=1e-8).double()
    with torch.no_grad():
        gln.weight.copy_(torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1))
        gln.bias.copy_(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1))
    x = 5 * torch.randn(2, 3, 7, dtype=torch.float64) + 2
    y = gln(x)
    for b in range(2):
        xb = x[b]
        mu = xb.mean()
        var = ((xb - mu) ** 2).mean()
        ref = (xb - mu) / torch.sqrt(var + 1e-8)
        ref = ref * gln.weight[0] + gln.bias[0]
        torch.testing.assert_close(y[b], ref)
    # statistics per utterance: scaling one utterance does not change another
    x2 = x.clone()
    x2[1] *= 10
    torch.testing.assert_close(gln(x2)[0], y[0])
    gln.reset_parameters()
    assert (gln.weight == 1).all() and (gln.bias == 0).all()


def test_global_layer_norm_half_precision():
    gln = GlobalLayerNorm(4)
    x = 300 * torch.randn(2, 4, 1000)
    ref = gln(x)
    y = gln(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, atol=1e-2, rtol=1e-2)


def test_channel_layer_norm_is_per_frame():
    torch.manual_seed(1)
    norm = ChannelLayerNorm(5)
    x = torch.randn(2, 5, 9)
    ref = torch.nn.functional.layer_norm(x.transpose(1, 2), (5,)).transpose(
        1, 2
    )
    torch.testing.assert_close(norm(x), ref)


@pytest.mark.parametrize("mode", ["s4d", "nplr"])
def test_s4_block_is_prenorm_residual(mode):
    torch.manual_seed(2)
    block = S4Block(6, d_state=4, mode=mode, dt_min=0.01, dt_max=0.2)
    assert block.s4.bidirectional and block.s4.mode == mode
    assert block.s4.dt_max == 0.2
    x = torch.randn(2, 6, 11)
    expected = x + block.s4(block.norm(x))
    torch.testing.assert_close(block(x), expected)
    k = block.s4.kernel(11)
    torch.testing.assert_close(block(x, kernel=k), expected)
    # causal variant
    causal = S4Block(6, d_state=4, mode=mode, bidirectional=False)
    assert causal.s4.kernel(11).shape == (6, 11)


def test_feed_forward_block():
    torch.manual_seed(3)
    ff = FeedForwardBlock(4, expansion=2)
    assert ff.linear1.out_channels == 8 and ff.linear2.in_channels == 8
    x = torch.randn(3, 4, 7)
    h = torch.nn.functional.gelu(ff.linear1(ff.norm(x)))
    torch.testing.assert_close(ff(x), x + ff.linear2(h))
    # a 1x1 conv acts frame by frame: permuting time permutes the output
    perm = torch.randperm(7)
    torch.testing.assert_close(ff(x[..., perm]), ff(x)[..., perm])
    n_params = sum(p.numel() for p in ff.parameters())
    assert n_params == 2 * 4 + (4 * 8 + 8) + (8 * 4 + 4)


def test_blocks_train_and_dropout():
    torch.manual_seed(4)
    block = torch.nn.Sequential(
        S4Block(4, d_state=4, dropout=0.5), FeedForwardBlock(4, dropout=0.5)
    )
    x = torch.randn(2, 4, 16, requires_grad=True)
    block.train()
    y1, y2 = block(x), block(x)
    assert not torch.allclose(y1, y2)  # dropout active
    y1.square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())
    block.eval()
    torch.testing.assert_close(block(x), block(x))


@pytest.mark.parametrize("weighted", [False, True])
def test_gln_statistics_large_mean_against_float64(weighted):
    """float32 statistics at mean/std = 1000 match float64 (stable form).

    ``E[x^2] - E[x]^2`` from float32 sums loses about ``eps * (mean/std)^2``
    of the variance (1.5e-3 here); a stable computation stays near 1e-6.
    """
    torch.manual_seed(5)
    x64 = 1000.0 + torch.randn(3, 64, 4001, dtype=torch.float64)
    x64[1] = 2000.0 + 2 * torch.randn(64, 4001, dtype=torch.float64)
    w64 = 1 + 0.1 * torch.rand(64, dtype=torch.float64) if weighted else None
    y64 = x64 if w64 is None else x64 * w64.view(1, -1, 1)
    ref_var = y64.var(dim=(1, 2), unbiased=False)
    ref_mean = y64.mean(dim=(1, 2))
    x = x64.float()
    w = None if w64 is None else w64.float()
    var, mean = gln_statistics(x, w)
    assert var.dtype == torch.float32 and var.shape == (3, 1, 1)
    rel_var = ((var.flatten().double() - ref_var) / ref_var).abs().max()
    rel_mean = ((mean.flatten().double() - ref_mean) / ref_mean).abs().max()
    assert rel_var < 2e-5, rel_var.item()
    assert rel_mean < 1e-6, rel_mean.item()


@pytest.mark.parametrize("weighted", [False, True])
def test_gln_statistics_gradient(weighted):
    """Gradients of (var, mean) w.r.t. the input and the channel weights."""
    torch.manual_seed(6)
    x = (3 + torch.randn(2, 5, 9, dtype=torch.float64)).requires_grad_()
    w = None
    inputs = (x,)
    if weighted:
        w = (1 + 0.3 * torch.randn(5, dtype=torch.float64)).requires_grad_()
        inputs = (x, w)
    torch.autograd.gradcheck(lambda *a: gln_statistics(*a), inputs)
    # and against the obvious formula
    var, mean = gln_statistics(x, w)
    y = x if w is None else x * w.view(1, -1, 1)
    gv, gm = torch.randn(2, dtype=torch.float64), torch.randn(2).double()
    got = torch.autograd.grad(
        (var.flatten() * gv + mean.flatten() * gm).sum(), inputs
    )
    ref = torch.autograd.grad(
        (y.var((1, 2), unbiased=False) * gv + y.mean((1, 2)) * gm).sum(),
        inputs,
    )
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_gln_statistics_mixed_channels_against_float64():
    """Channels with small and large mean/std in one batch (both the
    one-pass and the centred computation, per channel) match float64."""
    torch.manual_seed(7)
    ratio = torch.tensor([0.0, 1.0, 3.8, 3.9, 5.0, 30.0, 1000.0, -1000.0])
    x64 = torch.randn(3, 8, 2001, dtype=torch.float64)
    std = torch.rand(3, 8, 1, dtype=torch.float64) + 0.5
    x64 = std * (x64 + ratio.double()[torch.randperm(8)].view(1, 8, 1))
    x64[1] = x64[1].flip(0)  # a different channel order per utterance
    w64 = 1 + 0.2 * torch.rand(8, dtype=torch.float64)
    for w in (None, w64):
        y64 = x64 if w is None else x64 * w.view(1, -1, 1)
        ref = y64.var(dim=(1, 2), unbiased=False)
        var, mean = gln_statistics(
            x64.float(), None if w is None else w.float()
        )
        rel = ((var.flatten().double() - ref) / ref).abs().max()
        assert rel < 2e-5, rel.item()
        torch.testing.assert_close(
            mean.flatten().double(), y64.mean((1, 2)), rtol=1e-6, atol=1e-5
        )

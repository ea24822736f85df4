"""Tests of the causal S4M (``S4MMaskNet(causal=True)``), its fragments and
cumulative layer norm: causality is checked, not assumed."""

from pathlib import Path

import pytest
import torch

from speechbrain_s4m.config import load_model_config
from speechbrain_s4m.lobes import S4MMaskNet
from speechbrain_s4m.lobes.s4m_stream import decode_flush, decode_stream
from speechbrain_s4m.lobes.separator import Separator
from speechbrain_s4m.nnet import CumulativeLayerNorm
from speechbrain_s4m.nnet.blocks import cln_statistics

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SMALL = {
    "out_channels": 8,
    "hidden_channels": 16,
    "num_iterations": 3,
    "d_state": 4,
}


def _randomise(net):
    """Non-trivial norm gains/biases (so that every path matters)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("norm.weight", "norm.bias")):
                p.copy_(1 + 0.3 * torch.randn_like(p))


def _max_change_before(f, x, t, n_out):
    """Largest change of ``f(x)[..., :n_out]`` when ``x[..., t:]`` changes,
    and the largest change of the rest."""
    y = f(x)
    x2 = x.clone()
    x2[..., t:] = torch.randn_like(x2[..., t:])
    y2 = f(x2)
    before = (y2[..., :n_out] - y[..., :n_out]).abs().max().item()
    after = (y2[..., n_out:] - y[..., n_out:]).abs().max().item()
    return before, after


@pytest.mark.parametrize("quirk", [True, False])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_masknet_is_causal(depth, quirk):
    """Changing input frames >= t leaves mask frames < t unchanged."""
    torch.manual_seed(depth)
    net = S4MMaskNet(
        17, depth=depth, fusion_index_quirk=quirk, causal=True, **SMALL
    ).double()
    _randomise(net)
    assert net.latency_frames == 0
    x = torch.rand(2, 17, 1001, dtype=torch.float64)
    with torch.no_grad():
        for t in (1, 2, 7, 8, 9, 500, 777, 1000):
            before, after = _max_change_before(net, x, t, t)
            assert before < 1e-12, (t, before)
            assert after > 1e-3, (t, after)  # the future does matter


def test_offline_masknet_fails_the_causality_check():
    """The check can fail: the offline masknet looks at the future."""
    torch.manual_seed(0)
    net = S4MMaskNet(17, depth=4, **SMALL).double()
    assert net.latency_frames is None and net.latency_samples(32) is None
    x = torch.rand(2, 17, 1001, dtype=torch.float64)
    with torch.no_grad():
        before, _ = _max_change_before(net, x, 777, 777)
    assert before > 1e-3


def _separator(name, **overrides):
    hp = load_model_config(name, overrides={**SMALL, **overrides})
    sep = Separator(hp["Encoder"], hp["MaskNet"], hp["Decoder"], 2)
    _randomise(sep.masknet)
    return sep.double().eval()


@pytest.mark.parametrize("length", [2001, 2007])
def test_separator_is_causal_with_latency(length):
    """Encoder -> causal masknet -> decoder: output samples before
    ``t - latency`` do not depend on input samples from ``t`` on."""
    torch.manual_seed(1)
    sep = _separator("s4m_tiny_causal")
    enc = sep.encoder
    latency = sep.masknet.latency_samples(enc.kernel_size, enc.stride)
    assert latency == 31 == enc.kernel_size - 1
    mix = torch.randn(2, length, dtype=torch.float64)

    def run(x):
        return sep(x).transpose(1, 2)  # [batch, spks, time]

    with torch.no_grad():
        for t in (40, 41, 1000, 1003, length - 1):
            before, after = _max_change_before(run, mix, t, t - latency)
            assert before < 1e-12, (t, before)
            assert after > 1e-6, (t, after)
        # the latency is tight: with t on a frame boundary, output sample
        # t - latency reads input sample t
        t = 1000
        y, y2 = run(mix), None
        x2 = mix.clone()
        x2[..., t:] += 1.0
        y2 = run(x2)
        assert (y2[..., t - latency] - y[..., t - latency]).abs().max() > 0


def test_offline_separator_fails_the_causality_check():
    torch.manual_seed(2)
    sep = _separator("s4m_tiny")
    mix = torch.randn(1, 2001, dtype=torch.float64)
    with torch.no_grad():
        before, _ = _max_change_before(
            lambda x: sep(x).transpose(1, 2), mix, 1000, 1000 - 31
        )
    assert before > 1e-3


@pytest.mark.parametrize(
    "name, expected",
    [("s4m_tiny_causal", 1_814_535), ("s4m_causal", 3_593_991)],
)
def test_causal_fragments(name, expected):
    """Parameter counts; causal modules; the offline fragment's sizes."""
    hp = load_model_config(name)
    mods = (hp["Encoder"], hp["MaskNet"], hp["Decoder"])
    assert sum(p.numel() for m in mods for p in m.parameters()) == expected
    net = hp["MaskNet"]
    assert net.causal and not net.block.s4.s4.bidirectional
    assert isinstance(net.norm, CumulativeLayerNorm)
    offline = load_model_config(name.replace("_causal", ""))
    for key in ("kernel_size", "out_channels", "hidden_channels", "depth"):
        assert hp[key] == offline[key]


@pytest.mark.parametrize("dataset", ["WSJ0Mix", "LibriMix", "WHAM", "SynthMix"])
def test_recipe_causal_hparams_differ_only_in_the_model(dataset):
    """The causal recipe hparams are the recipe's s4m_tiny.yaml with the
    causal fragment (comments and the experiment name aside)."""
    folder = RECIPES / dataset / "separation" / "hparams"

    def settings(name):
        lines = (folder / name).read_text().splitlines()
        return [
            line.replace("s4m_tiny_causal", "s4m_tiny")
            for line in lines
            if line.strip() and not line.lstrip().startswith("#")
        ]

    causal = settings("s4m_tiny_causal.yaml")
    assert causal == settings("s4m_tiny.yaml")
    text = (folder / "s4m_tiny_causal.yaml").read_text()
    assert "hparams/models/s4m_tiny_causal.yaml" in text
    assert "experiment_name: s4m_tiny_causal" in text


# ----------------------------------------------------------------------
# cumulative layer norm
# ----------------------------------------------------------------------
def test_cumulative_layer_norm_reference():
    """cLN against the definition, frame by frame (float64)."""
    torch.manual_seed(3)
    cln = CumulativeLayerNorm(3).double()
    with torch.no_grad():
        cln.weight.copy_(torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1))
        cln.bias.copy_(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1))
    x = 5 * torch.randn(2, 3, 11, dtype=torch.float64) + 2
    y = cln(x)
    for t in range(11):
        past = x[..., : t + 1]
        mu = past.mean(dim=(1, 2), keepdim=True)
        var = past.var(dim=(1, 2), unbiased=False, keepdim=True)
        ref = (x[..., t : t + 1] - mu) / torch.sqrt(var + cln.eps)
        ref = ref * cln.weight + cln.bias
        torch.testing.assert_close(y[..., t : t + 1], ref)


def test_cln_statistics_stable_and_streamable():
    """float32 at mean/std = 1000 against float64; chunks with state."""
    torch.manual_seed(4)
    x64 = 1000 + torch.randn(2, 64, 300, dtype=torch.float64)
    var, mean, _ = cln_statistics(x64.float())
    ref_var = torch.stack(
        [x64[..., : t + 1].var(dim=(1, 2), unbiased=False) for t in range(300)],
        dim=-1,
    )
    rel = ((var.squeeze(1).double() - ref_var) / ref_var).abs().max()
    assert rel < 5e-5, rel.item()
    # any chunking of the stream gives the statistics of the whole signal
    x = torch.randn(2, 5, 40, dtype=torch.float64) + 3
    whole = cln_statistics(x)[:2]
    state, parts = None, []
    for a, b in [(0, 1), (1, 8), (8, 8), (8, 23), (23, 40)]:
        v, m, state = cln_statistics(x[..., a:b], state)
        parts.append((v, m))
    torch.testing.assert_close(torch.cat([p[0] for p in parts], -1), whole[0])
    torch.testing.assert_close(torch.cat([p[1] for p in parts], -1), whole[1])


# ----------------------------------------------------------------------
# streaming (model side): forward_stream == forward on the whole signal
# ----------------------------------------------------------------------
def _chunks(total, size, seed=0, largest=20):
    """Chunk sizes: a fixed size, or random sizes (0 included) if None."""
    if size is not None:
        return [min(size, total - a) for a in range(0, total, size)]
    gen = torch.Generator().manual_seed(seed)
    sizes, a = [], 0
    while a < total:
        n = int(torch.randint(0, largest, (1,), generator=gen))
        n = min(n, total - a)
        sizes.append(n)
        a += n
    return sizes


def _stream(net, x, sizes):
    state = net.init_stream_state(x.shape[0])
    outs, a = [], 0
    for n in sizes:
        m, state = net.forward_stream(x[..., a : a + n], state)
        assert m.shape[-1] == n
        outs.append(m)
        a += n
    return torch.cat(outs, dim=-1), state


@pytest.mark.parametrize("quirk", [True, False])
@pytest.mark.parametrize("size", [1, 7, 8, 64, None])
def test_forward_stream_equals_forward(size, quirk):
    """Chunked streaming gives the whole-signal causal masks (float64)."""
    torch.manual_seed(5)
    net = S4MMaskNet(
        17, depth=4, fusion_index_quirk=quirk, causal=True, **SMALL
    ).double()
    _randomise(net)
    net.eval()
    x = torch.rand(2, 17, 203, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        out, state = _stream(net, x, _chunks(203, size))
    assert state["frames"] == 203
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-11)


def _state_elements(state):
    if isinstance(state, dict):
        return sum(_state_elements(v) for v in state.values())
    if isinstance(state, (tuple, list)):
        return sum(_state_elements(v) for v in state)
    return state.numel() if torch.is_tensor(state) else 0


def test_stream_state_does_not_grow():
    """The state after 384 frames is as large as after 192."""
    torch.manual_seed(6)
    net = S4MMaskNet(17, depth=4, causal=True, **SMALL).eval()
    x = torch.rand(1, 17, 384)
    with torch.no_grad():
        _, s1 = _stream(net, x[..., :192], [64] * 3)
        _, s2 = _stream(net, x, [64] * 6)
    assert _state_elements(s1) == _state_elements(s2) > 0
    with pytest.raises(RuntimeError):
        S4MMaskNet(17, **SMALL).init_stream_state()


# ----------------------------------------------------------------------
# Independent reference of the causal masknet: the causal spec written out
# with plain torch ops and loops (float64), using only parameter tensors.
# ----------------------------------------------------------------------
def _ref_cln(x, norm):
    """cLN frame by frame: statistics over channels of frames 0..t."""
    out = torch.empty_like(x)
    for t in range(x.shape[-1]):
        past = x[..., : t + 1]
        mu = past.mean(dim=(1, 2), keepdim=True)
        var = ((past - mu) ** 2).mean(dim=(1, 2), keepdim=True)
        out[..., t : t + 1] = (x[..., t : t + 1] - mu) / torch.sqrt(
            var + norm.eps
        )
    return out * norm.weight.reshape(1, -1, 1) + norm.bias.reshape(1, -1, 1)


def _ref_frame_ln(x, norm):
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + norm.eps)
    return y * norm.weight.reshape(1, -1, 1) + norm.bias.reshape(1, -1, 1)


def _ref_causal_conv(x, conv):
    """Output j = sum_m w[m] x[stride*j - (k-1) + m] (zeros before 0)."""
    k, s = conv.weight.shape[-1], conv.stride[0]
    t_out = -(-x.shape[-1] // s)
    xp = torch.nn.functional.pad(x, (k - 1, 0))
    cols = torch.stack(
        [xp[..., s * j : s * j + k] for j in range(t_out)], dim=-2
    )  # [batch, C_in, t_out, k]
    if conv.groups == 1:
        y = torch.einsum("bctk,ock->bot", cols, conv.weight)
    else:  # depthwise
        y = torch.einsum("bctk,ck->bct", cols, conv.weight[:, 0])
    return y if conv.bias is None else y + conv.bias.reshape(1, -1, 1)


def _ref_conv_norm(x, cn):
    return _ref_cln(_ref_causal_conv(x, cn.conv), cn.norm)


def _ref_prelu(x, act):
    return torch.where(x >= 0, x, act.weight * x)


def _ref_pool(x, r):
    """Coarse j = mean of fine frames r*j - r + 1 .. r*j (zeros before 0)."""
    t_c = -(-x.shape[-1] // r)
    out = []
    for j in range(t_c):
        idx = [i for i in range(r * j - r + 1, r * j + 1) if i >= 0]
        out.append(x[..., idx].sum(-1) / r)
    return torch.stack(out, dim=-1)


def _ref_resize(g, shift, length):
    """Fine i <- coarse i // 2**shift; coarse j <- fine j * 2**-shift."""
    if shift >= 0:
        idx = [i // 2**shift for i in range(length)]
    else:
        idx = [j * 2**-shift for j in range(length)]
    return g[..., idx]


def _ref_fusion(local, glob, shift, fu):
    loc = _ref_conv_norm(local, fu.local_embedding)
    gate = torch.sigmoid(_ref_conv_norm(glob, fu.global_gate))
    emb = _ref_conv_norm(glob, fu.global_embedding)
    t = local.shape[-1]
    return loc * _ref_resize(gate, shift, t) + _ref_resize(emb, shift, t)


def _ref_causal_s4(u, s4):
    """Causal S4 layer: y_t = sum_{s<=t} K[t-s] u_s + D u_t, GELU, GLU."""
    F = torch.nn.functional
    L = u.shape[-1]
    k = s4.kernel(L)  # [H, L]
    y = torch.zeros_like(u)
    for t in range(L):
        y[..., t] = (k[:, : t + 1].flip(-1) * u[..., : t + 1]).sum(-1)
    y = F.gelu(y + s4.D.reshape(1, -1, 1) * u)
    lin = s4.output_linear
    y = F.conv1d(y, lin.weight, lin.bias)
    return y[:, : u.shape[1]] * torch.sigmoid(y[:, u.shape[1] :])


def _ref_causal_block(x, blk):
    F = torch.nn.functional
    y = _ref_cln(F.conv1d(x, blk.proj.weight, blk.proj.bias), blk.proj_norm)
    y = _ref_prelu(y, blk.proj_act)
    scales = []
    for layer in blk.pyramid:
        y = _ref_conv_norm(y, layer)
        scales.append(y)
    depth = len(scales)
    glob = scales[-1] + sum(
        _ref_pool(s, 2 ** (depth - 1 - k)) for k, s in enumerate(scales[:-1])
    )
    glob = glob + _ref_causal_s4(_ref_frame_ln(glob, blk.s4.norm), blk.s4.s4)
    ff = blk.ffn
    h = F.gelu(
        F.conv1d(
            _ref_frame_ln(glob, ff.norm), ff.linear1.weight, ff.linear1.bias
        )
    )
    glob = glob + F.conv1d(h, ff.linear2.weight, ff.linear2.bias)
    fused = {
        k: _ref_fusion(scales[k], glob, depth - 1 - k, blk.fuse[str(k)])
        for k in range(depth)
        if str(k) in blk.fuse
    }
    top = depth - 2
    src = (depth - 3) % depth if blk.fusion_index_quirk else depth - 1
    out = _ref_fusion(fused[top], fused[src], src - top, blk.merge[top])
    for i in range(top - 1, -1, -1):
        out = _ref_fusion(fused[i], out, 1, blk.merge[i])
    return F.conv1d(out, blk.res_conv.weight, blk.res_conv.bias) + x


def _ref_causal_masknet(net, x):
    F = torch.nn.functional
    x0 = F.conv1d(_ref_cln(x, net.norm), net.bottleneck.weight)
    x0 = x0 + net.bottleneck.bias.reshape(1, -1, 1)
    h = _ref_causal_block(x0, net.block)
    for _ in range(net.num_iterations - 1):
        ic = net.iter_conv
        inp = F.conv1d(x0 + h, ic.weight, ic.bias, groups=ic.groups)
        h = _ref_causal_block(_ref_prelu(inp, net.iter_act), net.block)
    mc = net.mask_conv
    m = F.relu(F.conv1d(_ref_prelu(h, net.mask_act), mc.weight, mc.bias))
    return m.view(x.shape[0], net.num_spks, net.in_channels, -1).transpose(0, 1)


@pytest.mark.parametrize("quirk", [True, False])
@pytest.mark.parametrize("depth, frames", [(4, 101), (4, 64), (3, 37), (2, 9)])
def test_causal_masknet_matches_reference(depth, frames, quirk):
    """Causal masknet == the causal spec written out (float64)."""
    torch.manual_seed(7)
    net = S4MMaskNet(
        17, depth=depth, fusion_index_quirk=quirk, causal=True, **SMALL
    ).double()
    _randomise(net)
    x = torch.rand(2, 17, frames, dtype=torch.float64)
    with torch.no_grad():
        out = net(x)
        ref = _ref_causal_masknet(net, x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def test_causal_masknet_gradients():
    """Every parameter gets a gradient; cLN statistics pass gradcheck."""
    torch.manual_seed(8)
    net = S4MMaskNet(17, depth=4, causal=True, **SMALL)
    net(torch.rand(2, 17, 45)).square().mean().backward()
    missing = [
        n
        for n, p in net.named_parameters()
        if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert not missing
    x = (2 + torch.randn(2, 3, 6, dtype=torch.float64)).requires_grad_()
    torch.autograd.gradcheck(lambda v: cln_statistics(v)[:2], (x,))


def _stream_separator(sep, mix, sizes):
    """Encoder, masknet and decoder streamed chunk by chunk (the recipe a
    streamer follows); returns ``[batch, time, spks]`` and the number of
    finished samples after each chunk."""
    enc, net, dec = sep.encoder, sep.masknet, sep.decoder
    enc_state, dec_state = None, None
    mask_state = net.init_stream_state(mix.shape[0])
    outs, ready = [], []

    def separate(frames):
        nonlocal mask_state, dec_state
        masks, mask_state = net.forward_stream(frames, mask_state)
        sep_h = frames.unsqueeze(0) * masks  # [spks, batch, E, m]
        sep_h = sep_h.reshape(sep_h.shape[0] * sep_h.shape[1], *sep_h.shape[2:])
        y, dec_state = decode_stream(dec, sep_h, dec_state)
        outs.append(y)

    a = 0
    for n in sizes:
        frames, enc_state = enc.forward_stream(mix[:, a : a + n], enc_state)
        separate(frames)
        a += n
        ready.append(sum(o.shape[-1] for o in outs))
    separate(enc.flush_stream(enc_state))
    outs.append(decode_flush(dec, dec_state))
    est = torch.cat(outs, dim=-1)[:, : mix.shape[-1]]
    est = est.reshape(2, mix.shape[0], -1).permute(1, 2, 0)
    return est, ready


@pytest.mark.parametrize("size", [1, 80, 256, None])
def test_streamed_separator_equals_whole_signal(size):
    """Encoder/masknet/decoder streaming == Separator on the whole signal
    (float64), and after n input samples at least n - latency output
    samples are finished."""
    torch.manual_seed(9)
    sep = _separator("s4m_tiny_causal", num_iterations=2)
    enc = sep.encoder
    latency = sep.masknet.latency_samples(enc.kernel_size, enc.stride)
    mix = torch.randn(2, 1003, dtype=torch.float64)
    sizes = _chunks(1003, size, seed=3, largest=140)
    with torch.no_grad():
        ref = sep(mix)
        est, ready = _stream_separator(sep, mix, sizes)
    torch.testing.assert_close(est, ref, rtol=1e-10, atol=1e-11)
    seen = 0
    for n, r in zip(sizes, ready):
        seen += n
        assert r >= seen - latency, (seen, r)
        assert r <= seen  # nothing is emitted before its input arrived

"""The authors' S4M (JusperLee/S4M) written out from its description.

A slow reference for the tests: every step of their forward spelled out with
plain torch operations on a state dict with *their* names and shapes, no
module of this package used. The S4 kernel is dense linear algebra on the
conjugate-completed state (powers of Ā by repeated products), not the
Cauchy / FFT path under test.
"""

import math

import torch
import torch.nn.functional as F

BLOCK = "sm.unet."
KERNEL = BLOCK + "s4.layer.kernel.kernel."


def authors_state_dict(
    E=9,
    K=16,
    C=8,
    D=16,
    depth=4,
    N=4,
    spks=2,
    L=40,
    seed=0,
    dtype=torch.float64,
):
    """Random weights under the authors' names and shapes (116 tensors for
    depth 4), away from any initialisation so that every term matters."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.3, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g, dtype=dtype)

    sd = {
        "encoder.weight": rnd(E, 1, K),
        "ln.gamma": rnd(E, mean=1.0),
        "ln.beta": rnd(E),
        "bottleneck.weight": rnd(C, E, 1),
        "bottleneck.bias": rnd(C),
        BLOCK + "proj_1x1.conv.weight": rnd(D, C, 1),
        BLOCK + "proj_1x1.conv.bias": rnd(D),
        BLOCK + "proj_1x1.norm.gamma": rnd(D, mean=1.0),
        BLOCK + "proj_1x1.norm.beta": rnd(D),
        BLOCK + "proj_1x1.act.weight": rnd(1, mean=0.25),
        BLOCK + "res_conv.weight": rnd(C, D, 1),
        BLOCK + "res_conv.bias": rnd(C),
        BLOCK + "s4.norm.weight": rnd(D, mean=1.0),
        BLOCK + "s4.norm.bias": rnd(D),
        BLOCK + "s4.layer.D": rnd(1, D, scale=1.0),
        BLOCK + "s4.layer.output_linear.0.weight": rnd(2 * D, D, 1),
        BLOCK + "s4.layer.output_linear.0.bias": rnd(2 * D),
        BLOCK + "ff.norm.weight": rnd(D, mean=1.0),
        BLOCK + "ff.norm.bias": rnd(D),
        BLOCK + "ff.layer.ff.0.0.weight": rnd(2 * D, D, 1),
        BLOCK + "ff.layer.ff.0.0.bias": rnd(2 * D),
        BLOCK + "ff.layer.ff.2.weight": rnd(D, 2 * D, 1),
        BLOCK + "ff.layer.ff.2.bias": rnd(D),
        "sm.concat_block.0.weight": rnd(C, 1, 1, mean=1.0),
        "sm.concat_block.0.bias": rnd(C),
        "sm.concat_block.1.weight": rnd(1, mean=0.25),
        "mask_net.0.weight": rnd(1, mean=0.25),
        "mask_net.1.weight": rnd(spks * E, C, 1),
        "mask_net.1.bias": rnd(spks * E, mean=0.5),
        "decoder.weight": rnd(spks * E, spks, K),
        # S4 (NPLR): dt in [e^-5, e^-2], A = -exp(inv_w_real) + i w_imag
        KERNEL + "log_dt": -5 + 3 * torch.rand(D, generator=g, dtype=dtype),
        KERNEL + "inv_w_real": rnd(D, N // 2, mean=math.log(0.5)),
        KERNEL + "w_imag": math.pi * torch.arange(N // 2, dtype=dtype)
        + rnd(D, N // 2),
        KERNEL + "B": rnd(1, D, N // 2, 2, scale=1.0),
        KERNEL + "P": rnd(1, D, N // 2, 2, scale=0.5),
        KERNEL + "C": rnd(2, D, N // 2, 2, scale=1.0),
        KERNEL + "L": torch.tensor(L),
    }
    for k in range(depth):
        p = f"{BLOCK}spp_dw.{k}."
        sd[p + "conv.weight"] = rnd(D, 1, 5)
        sd[p + "conv.bias"] = rnd(D)
        sd[p + "norm.gamma"] = rnd(D, mean=1.0)
        sd[p + "norm.beta"] = rnd(D)
    for prefix, count, ksize in [
        ("loc_glo_fus", depth, 1),
        ("last_layer", depth - 1, 5),
    ]:
        for k in range(count):
            for part in ("local_embedding", "global_embedding", "global_act"):
                p = f"{BLOCK}{prefix}.{k}.{part}."
                sd[p + "conv.weight"] = rnd(D, 1, ksize, mean=0.5)
                sd[p + "norm.gamma"] = rnd(D, mean=1.0)
                sd[p + "norm.beta"] = rnd(D)
    return sd


def _gln(x, sd, name):
    mean = x.mean(dim=(1, 2), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
    y = (x - mean) / (var + 1e-8).sqrt()
    return sd[name + ".gamma"][:, None] * y + sd[name + ".beta"][:, None]


def _layer_norm(x, sd, name):
    """nn.LayerNorm over the channels of each frame (eps 1e-5)."""
    y = F.layer_norm(x.transpose(1, 2), x.shape[1:2], eps=1e-5)
    y = y * sd[name + ".weight"] + sd[name + ".bias"]
    return y.transpose(1, 2)


def _prelu(x, w):
    return torch.where(x >= 0, x, w * x)


def _conv_norm(x, sd, name, stride=1, bias=True):
    w = sd[name + ".conv.weight"]
    k = w.shape[-1]
    b = sd[name + ".conv.bias"] if bias else None
    groups = x.shape[1] if w.shape[1] == 1 and w.shape[0] == x.shape[1] else 1
    y = F.conv1d(x, w, b, stride=stride, padding=(k - 1) // 2, groups=groups)
    return _gln(y, sd, name + ".norm")


def _lalayer(x_l, x_g, sd, name):
    t = x_l.shape[-1]
    local = _conv_norm(x_l, sd, name + ".local_embedding", bias=False)
    gate = torch.sigmoid(_conv_norm(x_g, sd, name + ".global_act", bias=False))
    emb = _conv_norm(x_g, sd, name + ".global_embedding", bias=False)
    gate = F.interpolate(gate, size=t, mode="nearest")
    emb = F.interpolate(emb, size=t, mode="nearest")
    return local * gate + emb


def authors_s4_kernel(sd, length, prefix=KERNEL):
    """Their kernel ``[channels, H, length]``: ``K_l = C̃ (I - Ā^M)^{-1} Ā^l
    B̄`` with M their length buffer, doubled (C̃ <- C̃ (I + Ā^M), a constant
    for autograd) until M >= length, as their forward does."""
    dt = sd[prefix + "log_dt"].exp()
    lam = torch.complex(-sd[prefix + "inv_w_real"].exp(), sd[prefix + "w_imag"])
    B = torch.view_as_complex(sd[prefix + "B"].contiguous())[0]
    P = torch.view_as_complex(sd[prefix + "P"].contiguous())[0]
    Ct = torch.view_as_complex(sd[prefix + "C"].contiguous())
    M = int(sd[prefix + "L"])
    lam_f = torch.cat([lam, lam.conj()], -1)
    P_f = torch.cat([P, P.conj()], -1)
    A = torch.diag_embed(lam_f) - P_f[:, :, None] * P_f.conj()[:, None, :]
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    half = (dt / 2)[:, None, None].to(A.dtype)
    A_bar = torch.linalg.solve(eye - half * A, eye + half * A)
    B_f = torch.cat([B, B.conj()], -1) * dt[:, None]
    B_bar = torch.linalg.solve(eye - half * A, B_f.unsqueeze(-1))[..., 0]
    Ct_f = torch.cat([Ct, Ct.conj()], -1)  # [channels, H, N]

    def power(m):
        out = eye.expand_as(A_bar)
        for _ in range(m):
            out = out @ A_bar
        return out

    while M < length:
        # their in-place doubling under no_grad: a constant factor
        Ct_f = (Ct_f.unsqueeze(-2) @ (eye + power(M)).detach()).squeeze(-2)
        M *= 2
    C_eff = torch.linalg.solve(
        eye - power(M), Ct_f.unsqueeze(-2), left=False
    ).squeeze(-2)
    out, x = [], B_bar
    for _ in range(length):
        out.append((C_eff * x).sum(-1).real)
        x = (A_bar @ x.unsqueeze(-1))[..., 0]
    return torch.stack(out, -1)


def _s4_layer(u, sd):
    """Bidirectional S4 convolution by explicit sums, D skip, GELU, 1x1
    conv, GLU over the channels."""
    length = u.shape[-1]
    k = authors_s4_kernel(sd, length)
    t = torch.arange(length)
    lag = t[:, None] - t[None, :]  # [t, s]
    fwd = k[0][:, lag.clamp(min=0)] * (lag >= 0)  # s <= t: k0[t - s]
    bwd = k[1][:, (-lag - 1).clamp(min=0)] * (lag < 0)  # s > t: k1[s-t-1]
    y = torch.einsum("hts,bhs->bht", fwd + bwd, u)
    y = F.gelu(y + sd[BLOCK + "s4.layer.D"][0][:, None] * u)
    y = F.conv1d(
        y,
        sd[BLOCK + "s4.layer.output_linear.0.weight"],
        sd[BLOCK + "s4.layer.output_linear.0.bias"],
    )
    return F.glu(y, dim=1)


def _block(x, sd, depth):
    out1 = _prelu(
        _conv_norm(x, sd, BLOCK + "proj_1x1"), sd[BLOCK + "proj_1x1.act.weight"]
    )
    scales = [_conv_norm(out1, sd, BLOCK + "spp_dw.0")]
    for k in range(1, depth):
        scales.append(_conv_norm(scales[-1], sd, f"{BLOCK}spp_dw.{k}", 2))
    t_c = scales[-1].shape[-1]
    g = sum(F.adaptive_avg_pool1d(s, t_c) for s in scales)
    g = g + _s4_layer(_layer_norm(g, sd, BLOCK + "s4.norm"), sd)
    h = _layer_norm(g, sd, BLOCK + "ff.norm")
    h = F.gelu(
        F.conv1d(
            h,
            sd[BLOCK + "ff.layer.ff.0.0.weight"],
            sd[BLOCK + "ff.layer.ff.0.0.bias"],
        )
    )
    g = g + F.conv1d(
        h, sd[BLOCK + "ff.layer.ff.2.weight"], sd[BLOCK + "ff.layer.ff.2.bias"]
    )
    fused = [
        _lalayer(scales[k], g, sd, f"{BLOCK}loc_glo_fus.{k}")
        for k in range(depth)
    ]
    expanded = None
    for i in range(depth - 2, -1, -1):
        name = f"{BLOCK}last_layer.{i}"
        if i == depth - 2:
            # their index: the scale below, not the coarsest fused one
            expanded = _lalayer(fused[i], fused[i - 1], sd, name)
        else:
            expanded = _lalayer(fused[i], expanded, sd, name)
    res = F.conv1d(
        expanded, sd[BLOCK + "res_conv.weight"], sd[BLOCK + "res_conv.bias"]
    )
    return res + x


def authors_forward(sd, mix, num_blocks):
    """Their ``S4M.forward``: ``[batch, n]`` -> ``[batch, spks, n]``."""
    enc_w = sd["encoder.weight"]
    E, K = enc_w.shape[0], enc_w.shape[-1]
    S = K // 4
    depth = sum(
        1
        for k in sd
        if k.startswith(BLOCK + "spp_dw.") and k.endswith(".conv.weight")
    )
    batch, n = mix.shape
    rest = K - (S + n % K) % K
    zeros = mix.new_zeros
    x = torch.cat(
        [zeros(batch, K - S), mix, zeros(batch, rest), zeros(batch, K - S)], 1
    )
    s = F.conv1d(x[:, None], enc_w, stride=S, padding=K // 2)
    x = _gln(s, sd, "ln")
    x = F.conv1d(x, sd["bottleneck.weight"], sd["bottleneck.bias"])
    mixture = x
    for i in range(num_blocks):
        if i == 0:
            x = _block(x, sd, depth)
        else:
            inp = F.conv1d(
                mixture + x,
                sd["sm.concat_block.0.weight"],
                sd["sm.concat_block.0.bias"],
                groups=mixture.shape[1],
            )
            inp = _prelu(inp, sd["sm.concat_block.1.weight"])
            x = _block(inp, sd, depth)
    x = _prelu(x, sd["mask_net.0.weight"])
    x = F.conv1d(x, sd["mask_net.1.weight"], sd["mask_net.1.bias"])
    spks = sd["decoder.weight"].shape[1]
    masks = F.relu(x.view(batch, spks, E, -1))
    y = (masks * s[:, None]).view(batch, spks * E, -1)
    y = F.conv_transpose1d(y, sd["decoder.weight"], stride=S, padding=K // 2)
    return y[:, :, K - S : -(rest + K - S)]

"""Residual S4 and feed-forward blocks and normalisations for S4M.

All modules take and return ``[batch, channels, time]`` tensors.
"""

import torch
from torch import nn

from speechbrain_s4m.nnet.ssm import S4


def _combine_dtype(device):
    """float64 for combining per-channel statistics (float32 on MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


class _GLNStatistics(torch.autograd.Function):
    """:func:`gln_statistics`; the backward needs only ``x`` and the
    per-channel statistics (``d var / d x = 2 w_c (w_c x - mu) / n``, ``d
    mean / d x = w_c / n``, applied to ``x - m_c``: accurate at large means).
    """

    @staticmethod
    def forward(ctx, x, weight):
        acc = torch.promote_types(x.dtype, torch.float32)
        comb = _combine_dtype(x.device)
        t = x.shape[-1]
        n = x.shape[1] * t
        m_c = x.sum(dim=-1, dtype=acc) / t  # [batch, channels]
        # centred second moments; low-precision inputs are upcast first
        xc = x if x.dtype == acc else x.to(acc)
        m2_c = torch.linalg.vector_norm(xc - m_c.unsqueeze(-1), dim=-1)
        m2_c = m2_c.to(comb).square()  # [batch, channels]
        m_c = m_c.to(comb)
        w = None if weight is None else weight.to(comb)
        wm = m_c if w is None else m_c * w  # [batch, channels]
        wm2 = m2_c if w is None else m2_c * w.square()
        mean = wm.mean(dim=1, keepdim=True)  # [batch, 1]
        var = (wm2.sum(dim=1, keepdim=True) / n) + (
            (wm - mean).square().mean(dim=1, keepdim=True)
        )
        ctx.save_for_backward(x, weight, m_c, m2_c, mean)
        return var.to(acc).view(-1, 1, 1), mean.to(acc).view(-1, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_var, g_mean):
        x, weight, m_c, m2_c, mean = ctx.saved_tensors
        comb = m_c.dtype
        t = x.shape[-1]
        n = x.shape[1] * t
        g_var = g_var.reshape(-1, 1).to(comb)  # [batch, 1]
        g_mean = g_mean.reshape(-1, 1).to(comb)
        w = 1.0 if weight is None else weight.to(comb)  # [channels]
        wm = m_c * w
        # grad_x = a * (x - m_c) + b with per-channel a, b  [batch, channels]
        a = 2 * g_var * w * w / n
        b = (2 * g_var * (wm - mean) + g_mean) * w / n
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            acc = torch.promote_types(x.dtype, torch.float32)
            xc = x.to(acc) - m_c.to(acc).unsqueeze(-1)
            grad_x = torch.addcmul(
                b.to(acc).unsqueeze(-1), xc, a.to(acc).unsqueeze(-1)
            ).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # d var / d w_c = 2 (w_c M2_c + t m_c (w_c m_c - mu)) / n
            gw = 2 * g_var * (w * m2_c + t * m_c * (wm - mean))
            gw = (gw + g_mean * t * m_c) / n
            grad_w = gw.sum(0).to(weight.dtype)
        return grad_x, grad_w


def gln_statistics(x, weight=None):
    """Variance and mean ``[batch, 1, 1]`` (float32 at least, also under
    autocast) of ``w_c * x`` over the channels and time of ``x`` ``[batch,
    channels, time]``; ``weight`` ``[channels]`` (default: ones). Stable:
    per-channel centred sums combined in float64 (law of total variance).
    """
    return _GLNStatistics.apply(x, weight)


class ChannelLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm(channels, eps)`` over the channels of each frame."""

    def __init__(self, channels, eps=1e-5):
        super().__init__(channels, eps=eps)

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class S4Block(nn.Module):
    """Pre-norm residual S4 layer: ``x + S4(ChannelLayerNorm(x))``; the
    arguments are :class:`S4`'s (``bidirectional`` by default here).

    Example
    -------
    >>> block = S4Block(8, d_state=4)
    >>> block(torch.randn(2, 8, 10), kernel=block.s4.kernel(10)).shape
    torch.Size([2, 8, 10])
    """

    def __init__(
        self,
        d_model,
        d_state=16,
        mode="nplr",
        bidirectional=True,
        dropout=0.0,
        **s4_kwargs,
    ):
        super().__init__()
        self.norm = ChannelLayerNorm(d_model)
        self.s4 = S4(
            d_model, d_state, mode, bidirectional, dropout=dropout, **s4_kwargs
        )

    def forward(self, x, kernel=None):
        """``kernel``: an optional precomputed ``self.s4.kernel(time)``."""
        return x + self.s4(self.norm(x), kernel=kernel)


class FeedForwardBlock(nn.Module):
    """Pre-norm residual feed-forward layer, ``x + Dropout(W2(Dropout(
    GELU(W1(ChannelLayerNorm(x))))))``, 1x1 convolutions ``W1``: ``d_model``
    -> ``expansion * d_model`` channels and ``W2`` back."""

    def __init__(self, d_model, expansion=2, dropout=0.0):
        super().__init__()
        hidden = expansion * d_model
        self.norm = ChannelLayerNorm(d_model)
        self.linear1 = nn.Conv1d(d_model, hidden, kernel_size=1)
        self.activation = nn.GELU()
        self.linear2 = nn.Conv1d(hidden, d_model, kernel_size=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        h = self.dropout(self.activation(self.linear1(self.norm(x))))
        return x + self.dropout(self.linear2(h))


class GlobalLayerNorm(nn.Module):
    """Global layer norm (gLN): each utterance normalised with the mean and
    variance over all its channels and frames (:func:`gln_statistics`, plus
    ``eps``), then scaled and shifted per channel."""

    def __init__(self, channels, eps=1e-8):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def reset_parameters(self):
        """Unit gain and zero bias."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        return self._normalise(x, *gln_statistics(x))

    def _normalise(self, x, var, mean):
        # y = (x - mean) * rstd * weight + bias = x * scale + shift
        scale = self.weight * torch.rsqrt(var + self.eps)  # [batch, C, .]
        shift = self.bias - mean * scale
        return torch.addcmul(shift, x.to(scale.dtype), scale).to(x.dtype)

    def extra_repr(self):
        return f"{self.channels}, eps={self.eps}"


def cln_statistics(x, state=None):
    """cLN statistics of ``x`` ``[batch, channels, time]``: variance and
    mean ``[batch, 1, time]`` (float32 at least) over the channels of all
    frames up to each frame, and the running sums (float64 where the device
    has it; of frame means shifted by the first one's, for stability): the
    ``state`` of the call on the next frames (``None``: stream start)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    comb = _combine_dtype(x.device)
    channels, t = x.shape[1], x.shape[2]
    xa = x if x.dtype == acc else x.to(acc)
    m = xa.mean(dim=1, keepdim=True)  # [batch, 1, time]
    m2 = (xa - m).square().sum(dim=1)  # [batch, time]
    m = m.squeeze(1).to(comb)
    m2 = m2.to(comb)
    if t == 0:  # nothing new: the running sums are unchanged
        empty = x.new_zeros(x.shape[0], 1, 0, dtype=acc)
        return empty, empty, state
    if state is None:
        zero = m.new_zeros(m.shape[0])
        state = (zero, m[:, 0], zero, zero, zero)
    n0, k, s1_0, s2_0, w0 = state
    d = m - k.unsqueeze(-1)
    n = n0.unsqueeze(-1) + torch.arange(1, t + 1, device=x.device, dtype=comb)
    s1 = s1_0.unsqueeze(-1) + d.cumsum(-1)
    s2 = s2_0.unsqueeze(-1) + d.square().cumsum(-1)
    w = w0.unsqueeze(-1) + m2.cumsum(-1)
    mean = k.unsqueeze(-1) + s1 / n
    var = (w + channels * (s2 - s1.square() / n)) / (channels * n)
    var = var.clamp_min(0)
    state = (n[:, -1], k, s1[:, -1], s2[:, -1], w[:, -1])
    return var.to(acc).unsqueeze(1), mean.to(acc).unsqueeze(1), state


class CumulativeLayerNorm(GlobalLayerNorm):
    """Cumulative layer norm (cLN), the causal gLN: frame ``t`` normalised
    with the statistics of frames ``0..t`` (:func:`cln_statistics`).

    Example
    -------
    >>> cln = CumulativeLayerNorm(4)
    >>> x = torch.randn(2, 4, 6)
    >>> x2 = x.clone(); x2[..., 4:] = 0  # the future does not matter
    >>> torch.equal(cln(x2)[..., :4], cln(x)[..., :4])
    True
    """

    def forward(self, x):
        return self._normalise(x, *cln_statistics(x)[:2])

    def stream_step(self, x, state=None):
        """:func:`cln_stream_step`: the next frames of a stream and the
        state of the previous call (``None``: start) -> ``y``, new state.

        Example
        -------
        >>> cln = CumulativeLayerNorm(4)
        >>> x = torch.randn(2, 4, 9)
        >>> y1, st = cln.stream_step(x[..., :5])
        >>> y2, st = cln.stream_step(x[..., 5:], st)
        >>> torch.allclose(torch.cat([y1, y2], -1), cln(x), atol=1e-6)
        True
        """
        return cln_stream_step(x, state, self.weight, self.bias, self.eps)


def cln_stream_step(x, state, weight, bias, eps):
    """Cumulative layer norm of the next frames ``[..., channels, time]``
    of a stream, in few operations; returns ``y`` and the new state.

    Count and channel sums of ``x - k`` and its square (``k``: the first
    frame's mean) accumulate in float64 by one cumulative sum. Leading
    dimensions are separate norms (``weight``, ``bias`` broadcast to ``[...,
    channels, 1]``). ``state``: None at the start of a stream.
    """
    if x.shape[-1] == 0:
        return x, state
    xd = x.to(torch.float64)
    if state is None:
        k = xd[..., :1].mean(dim=-2, keepdim=True)  # [..., 1, 1]
        state = (k, xd.new_zeros(*x.shape[:-2], 3, 1))
    k, sums = state
    xc = xd - k
    count = xc.new_full((*x.shape[:-2], 1, x.shape[-1]), x.shape[-2])
    inc = torch.cat(
        [count, xc.sum(-2, keepdim=True), xc.square().sum(-2, keepdim=True)],
        dim=-2,
    )
    cum = inc.cumsum(-1).add_(sums)  # [..., 3, time]
    stats = cum[..., 1:, :] / cum[..., :1, :]  # E[x - k], E[(x - k)^2]
    mean, ex2 = stats[..., :1, :], stats[..., 1:, :]
    var = (ex2 - mean.square()).clamp_min_(0)
    rstd = (var + eps).rsqrt_().to(x.dtype)
    scale = weight * rstd  # [..., channels, time]
    shift = bias - (mean + k).to(x.dtype) * scale
    return torch.addcmul(shift, x, scale), (k, cum[..., -1:])

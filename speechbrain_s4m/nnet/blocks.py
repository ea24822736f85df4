"""Residual S4 and feed-forward blocks and normalisations for S4M.

All modules take and return ``[batch, channels, time]`` tensors.

Authors
 * speechbrain-s4m contributors 2026
"""

import torch
from torch import nn

from speechbrain_s4m.nnet.ssm import S4

__all__ = [
    "ChannelLayerNorm",
    "CumulativeLayerNorm",
    "FeedForwardBlock",
    "GlobalLayerNorm",
    "S4Block",
    "cln_statistics",
    "gln_statistics",
]


def _combine_dtype(device):
    """float64 for combining per-channel statistics (float32 on MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


class _GLNStatistics(torch.autograd.Function):
    """Stable gLN statistics with a lean backward (see gln_statistics).

    Forward: per-channel means ``m_c`` (one sum over time), per-channel
    centred sums of squares ``M2_c = ||x_c - m_c||^2`` (the two-pass form,
    no cancellation), combined over channels in float64 with the law of
    total variance. Backward needs only ``x`` and the per-channel
    statistics: ``d var / d x = 2 w_c (w_c x - mu) / n`` and
    ``d mean / d x = w_c / n``, applied to ``x - m_c`` so that it stays
    accurate when the mean is large.
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
    """Mean and variance of ``w_c * x`` over channels and time, per utterance.

    Numerically stable: per-channel means, then per-channel sums of squared
    deviations from them (two passes, in float32 at least), combined over
    channels in float64 (where the device has it) with the law of total
    variance, ``var = mean_c(w_c^2 var_c) + var_c(w_c m_c)``. Unlike
    ``E[x^2] - E[x]^2`` from float32 sums, the relative error does not grow
    with ``(mean / std)^2``. On CPU ``torch.var_mean`` over channels and time
    is an order of magnitude slower. The backward pass is written out, so
    no centred copy of ``x`` is kept for it.

    Arguments
    ---------
    x : torch.Tensor
        ``[batch, channels, time]``.
    weight : torch.Tensor, optional
        ``[channels]`` per-channel factors ``w`` (default: all ones).

    Returns
    -------
    var, mean : torch.Tensor
        Both ``[batch, 1, 1]``, float32 at least (also under autocast).

    Example
    -------
    >>> x = torch.randn(2, 3, 5)
    >>> var, mean = gln_statistics(x)
    >>> torch.allclose(mean.flatten(), x.mean((1, 2)), atol=1e-6)
    True
    >>> torch.allclose(var.flatten(), x.var((1, 2), unbiased=False))
    True
    >>> var, _ = gln_statistics(1000 + torch.randn(1, 64, 4000))
    >>> bool(abs(var.item() - 1) < 0.05)
    True
    """
    return _GLNStatistics.apply(x, weight)


class ChannelLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of each frame.

    Arguments
    ---------
    channels : int
        Number of channels.
    eps : float
        Added to the variance.

    Example
    -------
    >>> norm = ChannelLayerNorm(4)
    >>> y = norm(torch.randn(2, 4, 7))
    >>> y.shape, bool(y.mean(1).abs().max() < 1e-5)
    (torch.Size([2, 4, 7]), True)
    """

    def __init__(self, channels, eps=1e-5):
        super().__init__(channels, eps=eps)

    def forward(self, x):
        """``[batch, channels, time]`` -> ``[batch, channels, time]``."""
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class S4Block(nn.Module):
    """Pre-norm residual S4 layer: ``x + S4(LayerNorm(x))``.

    Arguments
    ---------
    d_model : int
        Number of channels.
    d_state : int
        SSM state size.
    mode : str
        ``"nplr"`` or ``"s4d"`` (see :class:`S4`).
    bidirectional : bool
        Bidirectional S4 (default True).
    dropout : float
        Dropout inside the S4 layer.
    **s4_kwargs
        Further arguments of :class:`S4` (``dt_min``, ``dt_max``,
        ``s4d_init``).

    Example
    -------
    >>> block = S4Block(8, d_state=4)
    >>> x = torch.randn(2, 8, 10)
    >>> k = block.s4.kernel(10)
    >>> block(x, kernel=k).shape
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
            d_model,
            d_state=d_state,
            mode=mode,
            bidirectional=bidirectional,
            dropout=dropout,
            **s4_kwargs,
        )

    def forward(self, x, kernel=None):
        """``[batch, d_model, time]`` -> ``[batch, d_model, time]``.

        ``kernel`` is an optional precomputed ``self.s4.kernel(time)``.
        """
        return x + self.s4(self.norm(x), kernel=kernel)


class FeedForwardBlock(nn.Module):
    """Pre-norm residual feed-forward layer.

    ``x + W2(Dropout(GELU(W1(LayerNorm(x)))))`` with 1x1 convolutions
    ``W1: D -> expansion*D`` and ``W2: expansion*D -> D``.

    Arguments
    ---------
    d_model : int
        Number of channels D.
    expansion : int
        Hidden size factor.
    dropout : float
        Dropout after the GELU and after ``W2``.

    Example
    -------
    >>> ff = FeedForwardBlock(8)
    >>> ff(torch.randn(2, 8, 5)).shape
    torch.Size([2, 8, 5])
    """

    def __init__(self, d_model, expansion=2, dropout=0.0):
        super().__init__()
        hidden = expansion * d_model
        self.norm = ChannelLayerNorm(d_model)
        self.linear1 = nn.Conv1d(d_model, hidden, kernel_size=1)
        self.activation = nn.GELU()
        self.linear2 = nn.Conv1d(hidden, d_model, kernel_size=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        """``[batch, d_model, time]`` -> ``[batch, d_model, time]``."""
        h = self.dropout(self.activation(self.linear1(self.norm(x))))
        return x + self.dropout(self.linear2(h))


class GlobalLayerNorm(nn.Module):
    """Global layer norm (gLN): statistics over channels and time.

    Each utterance is normalised with the mean and variance of all its
    channels and frames, then scaled and shifted per channel. Statistics
    are computed in float32 at least (safe under fp16 autocast).

    Arguments
    ---------
    channels : int
        Number of channels.
    eps : float
        Added to the variance.

    Example
    -------
    >>> gln = GlobalLayerNorm(4)
    >>> y = gln(3 * torch.randn(2, 4, 6) + 1)
    >>> y.shape, bool(y.mean((1, 2)).abs().max() < 1e-5)
    (torch.Size([2, 4, 6]), True)
    """

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
        """``[batch, channels, time]`` -> ``[batch, channels, time]``."""
        var, mean = gln_statistics(x)  # [batch, 1, 1]
        rstd = torch.rsqrt(var + self.eps)
        # y = (x - mean) * rstd * weight + bias = x * scale + shift
        scale = self.weight * rstd  # [batch, C, 1]
        shift = self.bias - mean * scale
        return torch.addcmul(shift, x.to(scale.dtype), scale).to(x.dtype)

    def extra_repr(self):
        return f"{self.channels}, eps={self.eps}"


def cln_statistics(x, state=None):
    """Mean and variance over channels and all frames up to each frame.

    The statistics of cumulative layer norm (cLN): for frame ``t``, over
    the channels of frames ``0..t``, so that no frame reads a later one.
    Numerically stable: each frame's channel mean ``m_t`` and centred sum
    of squares ``M2_t`` (two passes over the channels), then running sums
    in float64 (where the device has it) of ``M2_t``, ``m_t - k`` and
    ``(m_t - k)^2`` with the shift ``k`` = the mean of the stream's first
    frame: ``var_t = (sum M2 + C (sum (m - k)^2 - (sum (m - k))^2 / n))
    / (C n)``.

    A stream cut into consecutive chunks gives the same statistics as the
    whole signal when ``state`` is carried from chunk to chunk.

    Arguments
    ---------
    x : torch.Tensor
        ``[batch, channels, time]``.
    state : tuple of torch.Tensor, optional
        Running sums returned by a previous call on the preceding frames
        (``None``: start of the stream).

    Returns
    -------
    var, mean : torch.Tensor
        Both ``[batch, 1, time]`` in ``x``'s dtype (float32 at least).
    state : tuple of torch.Tensor
        Running sums after the last frame (``[batch]`` tensors: frames,
        shift, sum of ``m - k``, sum of ``(m - k)^2``, sum of ``M2``).

    Example
    -------
    >>> x = torch.randn(2, 3, 10)
    >>> var, mean, state = cln_statistics(x)
    >>> ref = x[..., :4].var((1, 2), unbiased=False)
    >>> torch.allclose(var[:, 0, 3], ref)
    True
    >>> v1, _, s = cln_statistics(x[..., :6])
    >>> v2, _, _ = cln_statistics(x[..., 6:], s)
    >>> torch.allclose(torch.cat([v1, v2], -1), var)
    True
    """
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
    """Cumulative layer norm (cLN): the causal counterpart of gLN.

    Frame ``t`` is normalised with the mean and variance over the channels
    of frames ``0..t`` (:func:`cln_statistics`), then scaled and shifted per
    channel. Same parameters as :class:`GlobalLayerNorm`.

    Arguments
    ---------
    channels : int
        Number of channels.
    eps : float
        Added to the variance.

    Example
    -------
    >>> cln = CumulativeLayerNorm(4)
    >>> x = torch.randn(2, 4, 6)
    >>> y = cln(x)
    >>> x2 = x.clone(); x2[..., 4:] = 0  # the future does not matter
    >>> torch.equal(cln(x2)[..., :4], y[..., :4])
    True
    """

    def forward(self, x):
        """``[batch, channels, time]`` -> ``[batch, channels, time]``."""
        return self.stream(x)[0]

    def stream(self, x, state=None):
        """Normalise the next frames of a stream.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, channels, time]``, the frames that follow those already
            seen (``time`` may be 0).
        state : tuple, optional
            Running sums of the preceding frames (:func:`cln_statistics`);
            ``None`` at the start of a stream.

        Returns
        -------
        y : torch.Tensor
            ``[batch, channels, time]``.
        state : tuple
            Running sums including ``x``.
        """
        var, mean, state = cln_statistics(x, state)  # [batch, 1, time]
        scale = self.weight * torch.rsqrt(var + self.eps)  # [batch, C, time]
        shift = self.bias - mean * scale
        y = torch.addcmul(shift, x.to(scale.dtype), scale).to(x.dtype)
        return y, state

    def stream_step(self, x, state=None):
        """:meth:`stream` with fewer operations, for short chunks.

        Same values as :meth:`stream` (up to rounding) through
        :func:`cln_stream_step`; the state is its own (not interchangeable
        with :meth:`stream`'s).

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, channels, time]``.
        state : tuple, optional
            From the previous call (``None``: start of the stream).

        Returns
        -------
        y, state
            As :meth:`stream`.

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
    """Cumulative layer norm of the next frames, in few operations.

    The channel sums of each frame (of ``x - k``, ``k`` = mean of the
    stream's first frame, and of its square) and the element count are
    accumulated in float64 by ONE cumulative sum over a ``[..., 3, time]``
    tensor; mean and variance follow. Several norms of the same length can
    run as one call (leading dimensions, each with its own gain and bias).

    Arguments
    ---------
    x : torch.Tensor
        ``[..., channels, time]``; statistics over ``channels`` and all
        frames so far, per leading index.
    state : tuple of torch.Tensor or None
        ``(k, sums)``: ``[..., 1, 1]`` shifts and ``[..., 3, 1]`` running
        (count, sum, sum of squares); ``None`` at the start of a stream.
    weight, bias : torch.Tensor
        Gains and biases broadcastable to ``[..., channels, 1]``.
    eps : float
        Added to the variance.

    Returns
    -------
    y : torch.Tensor
        Like ``x``.
    state : tuple of torch.Tensor
        Updated.
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

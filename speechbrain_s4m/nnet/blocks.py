"""Residual S4 and feed-forward blocks and normalisations for S4M.

All modules take and return ``[batch, channels, time]`` tensors.

Authors
 * speechbrain-s4m contributors 2026
"""

import torch
from torch import nn

from speechbrain_s4m.nnet.ssm import S4

__all__ = ["ChannelLayerNorm", "FeedForwardBlock", "GlobalLayerNorm", "S4Block"]


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
        n = x.shape[1] * x.shape[2]
        # per-channel sums (fast vectorised reductions over time, float32
        # at least), combined over channels in float64
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        s1 = x.sum(-1, dtype=acc).double().sum(1)  # [batch]
        s2 = torch.linalg.vector_norm(x, dim=-1, dtype=acc)
        s2 = s2.double().square().sum(1)  # [batch]
        mean = s1 / n
        var = (s2 / n - mean.square()).clamp_min(0.0)
        rstd = torch.rsqrt(var + self.eps)
        # y = (x - mean) * rstd * weight + bias = x * scale + shift
        scale = self.weight * rstd.to(acc)[:, None, None]  # [batch, C, 1]
        shift = self.bias - mean.to(acc)[:, None, None] * scale
        return torch.addcmul(shift, x.to(acc), scale).to(x.dtype)

    def extra_repr(self):
        return f"{self.channels}, eps={self.eps}"

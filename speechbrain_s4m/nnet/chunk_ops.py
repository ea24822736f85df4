"""Convolutions and channel maps on the 2..16 frames of a streaming chunk.

On CPUs ``conv1d`` costs ~0.2-0.7 ms a call (weight re-layout), MKL's ``W
@ x`` with < 16 columns is 4-7x slower than ``x^T @ W^T``, and a depthwise
``unfold`` + matmul ~5x slower than multiply-adds over shifted slices.
"""

import torch
import torch.nn.functional as F

# From this many frames on, ``W @ x`` is as fast as the transposed product.
_WIDE = 16


def linear_frames(x, weight, bias=None):
    """``weight @ x + bias[:, None]`` (``x`` ``[..., in, n]``, ``weight``
    ``[out, in]``, ``bias`` ``[out]``), contiguous, fast for few frames."""
    if x.shape[-1] >= _WIDE:
        y = torch.matmul(weight, x)
        return y if bias is None else y + bias[:, None]
    y = F.linear(x.transpose(-1, -2).contiguous(), weight, bias)
    return y.transpose(-1, -2).contiguous()


def depthwise_taps(window, taps, stride=1):
    """``y[..., c, j] = Σ_i taps[..., c, i] window[..., c, stride j + i]``.

    What ``conv1d(groups=channels)`` computes without padding, as ``k``
    multiply-adds; ``taps`` ``[..., channels, k]`` broadcasts against
    ``window`` ``[..., channels, length]`` (e.g. two kernels ``[2, C, k]``
    on one window ``[batch, 1, C, length]``).

    Example
    -------
    >>> x, w = torch.randn(2, 3, 11), torch.randn(3, 1, 4)
    >>> y = depthwise_taps(x, w[:, 0], stride=2)
    >>> torch.allclose(y, F.conv1d(x, w, stride=2, groups=3), atol=1e-6)
    True
    """
    k = taps.shape[-1]
    n_out = (window.shape[-1] - k) // stride + 1
    span = stride * (n_out - 1) + 1
    y = None
    for i in range(k):
        xi = window[..., i : i + span : stride]
        ti = taps[..., i : i + 1]
        y = xi * ti if y is None else torch.addcmul(y, xi, ti)
    return y


def small_conv(conv, x):
    """``conv(x)`` for the few frames ``[batch, in, length]`` of a chunk,
    fast for 1x1 and depthwise ``nn.Conv1d`` (no padding: causal windows
    come padded).

    Example
    -------
    >>> conv = torch.nn.Conv1d(4, 4, 5, stride=2, groups=4)
    >>> x = torch.randn(1, 4, 13)
    >>> torch.allclose(small_conv(conv, x), conv(x), atol=1e-6)
    True
    >>> conv = torch.nn.Conv1d(4, 6, 1)
    >>> torch.allclose(small_conv(conv, x), conv(x), atol=1e-6)
    True
    """
    w, b = conv.weight, conv.bias
    k, stride = conv.kernel_size[0], conv.stride[0]
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if conv.groups == 1 and k == 1 and stride == 1:
        return linear_frames(x, w[:, :, 0], b)
    if depthwise and k == 1 and stride == 1:
        y = x * w[:, 0]  # a per-channel gain
    elif depthwise:
        y = depthwise_taps(x, w[:, 0], stride)
    else:
        return conv(x)
    return y if b is None else y + b.reshape(-1, 1)

"""Convolutions and channel maps on the few frames of a streaming chunk.

A streamed hop gives each layer a handful of frames (16 at the finest scale
of a 16 ms hop, 2 at the coarsest). On a CPU the general-purpose kernels
are slow on such shapes, whatever the arithmetic:

* ``conv1d`` costs ~0.2-0.7 ms per call (weight re-layout), so 1x1
  convolutions are matrix products and depthwise ones a sum over taps;
* MKL's ``W @ x`` for a weight ``[out, in]`` and ``x`` ``[in, n]`` with
  fewer than 16 columns is 4-7x slower than ``x^T @ W^T`` on a contiguous
  ``x^T`` (measured with one thread: 1024 x 512 times 2 frames, 600 us
  against 90 us; at 16 frames and more both run alike);
* a depthwise convolution as ``unfold`` + batched matmul materialises the
  unfolded taps and runs one tiny GEMM per channel; ``k`` fused
  multiply-adds over shifted slices of the window are ~5x cheaper.

Same values as the whole-signal layers (not bitwise): the streaming tests
compare the streamed output with the whole-signal model.

Authors
 * speechbrain-s4m contributors 2026
"""

import torch
import torch.nn.functional as F

__all__ = ["depthwise_taps", "linear_frames", "small_conv"]

# From this many frames on, ``W @ x`` is as fast as the transposed product.
_WIDE = 16


def linear_frames(x, weight, bias=None):
    """``weight @ x + bias[:, None]`` over channels, fast for few frames.

    Arguments
    ---------
    x : torch.Tensor
        ``[..., in, n]``.
    weight : torch.Tensor
        ``[out, in]``.
    bias : torch.Tensor, optional
        ``[out]``.

    Returns
    -------
    torch.Tensor
        ``[..., out, n]``, contiguous.

    Example
    -------
    >>> x, w, b = torch.randn(2, 6, 3), torch.randn(4, 6), torch.randn(4)
    >>> y = linear_frames(x, w, b)
    >>> ref = torch.einsum("oi,bit->bot", w, x) + b[:, None]
    >>> torch.allclose(y, ref, atol=1e-5)
    True
    """
    if x.shape[-1] >= _WIDE:
        y = torch.matmul(weight, x)
        return y if bias is None else y + bias[:, None]
    y = F.linear(x.transpose(-1, -2).contiguous(), weight, bias)
    return y.transpose(-1, -2).contiguous()


def depthwise_taps(window, taps, stride=1):
    """Depthwise correlation of a padded window with per-channel taps.

    ``y[..., c, j] = sum_i taps[..., c, i] * window[..., c, stride*j + i]``
    (what ``conv1d(groups=channels)`` computes, no padding).

    Arguments
    ---------
    window : torch.Tensor
        ``[..., channels, length]``.
    taps : torch.Tensor
        ``[..., channels, k]`` (broadcast against the window's leading
        dimensions, e.g. ``[2, C, k]`` for two kernels on one window
        ``[batch, 1, C, length]``).
    stride : int
        Output hop.

    Returns
    -------
    torch.Tensor
        ``[..., channels, (length - k) // stride + 1]``.

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
    """``conv(x)`` for the few frames of a streaming chunk (no padding:
    causal windows come padded).

    Arguments
    ---------
    conv : torch.nn.Conv1d
        A 1x1 convolution or a depthwise one (others run as ``conv(x)``).
    x : torch.Tensor
        ``[batch, in_channels, length]``.

    Returns
    -------
    torch.Tensor
        ``conv(x)``.

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

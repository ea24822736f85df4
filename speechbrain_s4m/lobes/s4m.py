"""S4M: the multi-scale state-space mask network and its encoder.

S4M (Chen et al., "A Neural State-Space Modeling Approach to Efficient
Speech Separation", Interspeech 2023) is a TDANet-style masking separator
whose global (coarsest-scale) context is modelled by an S4 layer. The modules
here follow the SpeechBrain separation contract:

* ``S4MEncoder``: ``[batch, time]`` -> ``[batch, E, frames]`` (the authors'
  framing by default);
* ``S4MMaskNet``: ``[batch, E, frames]`` -> ``[num_spks, batch, E, frames]``
  (ReLU masks, like ``speechbrain.lobes.models.dual_path.Dual_Path_Model``);
* ``S4MDecoder``: the authors' joint decoder, all sources' masked encodings
  -> ``[batch, num_spks, time]`` (or each source alone, ``joint=False``).
  SpeechBrain's ``dual_path.Decoder`` works too (the causal models use it).

The separator is ONE multi-scale block applied ``num_iterations`` times with
shared weights. The block's computation is the authors' (see the project's
``docs/model.md``); the implementation avoids memory traffic that does not
change the function:

* the S4 kernel of the coarsest length is computed once per forward and
  reused by all iterations (the weights are shared, so it is identical);
* gLN statistics come from two vectorised per-channel reductions (sum and
  norm) combined in float64; on CPU ``torch.var_mean`` over channels and time
  is 10-60x slower and was 42% of the forward time;
* "depthwise 1x1 conv + gLN" on a full-resolution map is folded into one
  per-channel affine whose statistics come from per-channel sums of the input
  (no intermediate map is written);
* the local/global fusion ``gLN(dw(l)) * up(sigmoid(gLN(dw'(g)))) +
  up(gLN(dw''(g)))`` is computed as ``l' * A + B`` with ``A`` and ``B`` built
  at the coarse resolution and broadcast over the upsampling factor instead of
  materialising the nearest-neighbour upsampled maps.

The causal model (``causal=True``) streams: ``S4MMaskNet.forward_stream``
and ``S4MEncoder.forward_stream`` run chunk by chunk through the state
helpers of :mod:`speechbrain_s4m.lobes.s4m_stream`.

Authors: the speechbrain-s4m contributors
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from speechbrain_s4m.lobes.s4m_stream import (
    fusion_stream,
    s4_stream,
    stream_pool,
    stream_window,
)
from speechbrain_s4m.nnet import (
    CumulativeLayerNorm,
    FeedForwardBlock,
    GlobalLayerNorm,
    S4Block,
)
from speechbrain_s4m.nnet.blocks import gln_statistics
from speechbrain_s4m.nnet.chunk_ops import small_conv


def _gln_affine(norm, mean, var, weight=None, dtype=None):
    """Per-channel scale and shift equivalent to ``norm`` given statistics.

    ``gLN(w * x) = x * scale + shift`` with ``scale = w * gamma / std`` and
    ``shift = beta - mean * gamma / std``.

    Arguments
    ---------
    norm : GlobalLayerNorm
        Provides the gain ``weight``, the ``bias`` and ``eps``.
    mean, var : torch.Tensor
        ``[batch, 1, 1]`` statistics of the (scaled) input.
    weight : torch.Tensor, optional
        ``[channels]`` per-channel factor applied before the norm.
    dtype : torch.dtype, optional
        Cast the results to this type.

    Returns
    -------
    scale, shift : torch.Tensor
        Both ``[batch, channels, 1]``.
    """
    gamma = norm.weight.reshape(1, -1, 1)
    beta = norm.bias.reshape(1, -1, 1)
    inv_std = torch.rsqrt(var + norm.eps)
    g = gamma * inv_std  # [batch, channels, 1]
    shift = beta - mean * g
    if weight is not None:
        g = g * weight.reshape(1, -1, 1)
    if dtype is not None:
        g, shift = g.to(dtype), shift.to(dtype)
    return g, shift


def _gln_scale_shift(norm, y):
    """``(scale, shift)`` with ``norm(y) = y * scale + shift`` (gLN of ``y``).

    Arguments
    ---------
    norm : GlobalLayerNorm
        The norm (gain, bias, eps).
    y : torch.Tensor
        ``[batch, channels, time]``.

    Returns
    -------
    scale, shift : torch.Tensor
        Both ``[batch, channels, 1]``, in the dtype of ``y``.
    """
    var, mean = gln_statistics(y)
    return _gln_affine(norm, mean, var, dtype=y.dtype)


class _ConvNorm(nn.Module):
    """Convolution followed by global layer norm (depthwise or full).

    Causal: the input is left-padded by ``kernel_size - 1`` (output frame
    ``j`` reads input frames ``stride*j - kernel_size + 1 .. stride*j``) and
    the norm is cumulative (:class:`CumulativeLayerNorm`).

    Arguments
    ---------
    in_channels : int
        Input channels.
    out_channels : int
        Output channels.
    kernel_size : int
        Kernel size (odd; "same" padding).
    stride : int
        Stride.
    depthwise : bool
        Use ``groups=in_channels``.
    bias : bool
        Convolution bias.
    causal : bool
        Left padding and cumulative layer norm.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        depthwise=True,
        bias=True,
        causal=False,
    ):
        super().__init__()
        self.causal = causal
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0 if causal else (kernel_size - 1) // 2,
            groups=in_channels if depthwise else 1,
            bias=bias,
        )
        norm = CumulativeLayerNorm if causal else GlobalLayerNorm
        self.norm = norm(out_channels)

    def affine(self, x):
        """Return ``(y, scale, shift)`` with ``forward(x) = y*scale + shift``.

        For a bias-free depthwise 1x1 convolution ``y`` is ``x`` itself: the
        convolution and the norm fold into one per-channel affine whose
        statistics come from per-channel sums of ``x``.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, channels, time]``.

        Returns
        -------
        y : torch.Tensor
            ``[batch, channels, time']``.
        scale, shift : torch.Tensor
            ``[batch, channels, 1]``.
        """
        conv = self.conv
        pointwise_scale = (
            conv.kernel_size[0] == 1
            and conv.stride[0] == 1
            and conv.bias is None
            and conv.groups == conv.in_channels == conv.out_channels
        )
        if not pointwise_scale:
            y = conv(x)
            return (y, *_gln_scale_shift(self.norm, y))
        w = conv.weight.reshape(-1)  # [channels]
        var, mean = gln_statistics(x, w)
        scale, shift = _gln_affine(self.norm, mean, var, w, dtype=x.dtype)
        return x, scale, shift

    def forward(self, x):
        """gLN(conv(x)).

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, in_channels, time]``.

        Returns
        -------
        torch.Tensor
            ``[batch, out_channels, time']``.
        """
        if self.causal:
            k = self.conv.kernel_size[0]
            if k > 1:
                x = F.pad(x, (k - 1, 0))
            return self.norm(self._conv(x))
        y, scale, shift = self.affine(x)
        return torch.addcmul(shift, y, scale)

    def _conv(self, x):
        """The (unpadded) convolution; a depthwise 1x1 one as a product
        (CPU depthwise 1x1 convolutions are ~10x slower)."""
        conv = self.conv
        if conv.kernel_size[0] == 1 and conv.groups == conv.in_channels > 1:
            y = x * conv.weight.reshape(1, -1, 1)
            if conv.bias is not None:
                y = y + conv.bias.reshape(1, -1, 1)
            return y
        return conv(x)

    def stream(self, x, st):
        """Causal ``forward`` on the next frames of a stream (``st``: dict
        state, updated in place); returns the new output frames."""
        conv = self.conv
        window, n_new = stream_window(
            x, st.setdefault("conv", {}), conv.kernel_size[0], conv.stride[0]
        )
        if window is None:
            y = x.new_zeros(x.shape[0], conv.out_channels, 0)
        else:
            y = small_conv(conv, window)
        y, st["norm"] = self.norm.stream_step(y, st.get("norm"))
        return y


def _resize_nearest(x, length):
    """Nearest-neighbour resize of ``[batch, channels, time]`` to ``length``."""
    if x.shape[-1] == length:
        return x
    return F.interpolate(x, size=length, mode="nearest")


def _pool(x, length):
    """Adaptive average pooling of ``[batch, channels, time]`` to ``length``."""
    bsz, ch, t = x.shape
    if t % length == 0:
        # exact factor: a reshape and a mean (faster than adaptive pooling)
        return x.view(bsz, ch, length, t // length).mean(dim=-1)
    return F.adaptive_avg_pool1d(x, length)


def _causal_pool(x, factor):
    """Average of the ``factor`` frames ending at ``factor * j`` (zeros
    before the start): ``[batch, channels, T]`` -> ``[..., ceil(T/factor)]``.

    Coarse frame ``j`` reads fine frames ``factor*j - factor + 1 ..
    factor*j`` only (causal alignment: coarse ``j`` sits at fine
    ``factor * j``).
    """
    if factor == 1:
        return x
    bsz, ch, t = x.shape
    t_c = -(-t // factor)
    x = F.pad(x, (factor - 1, 0))[..., : t_c * factor]
    return x.reshape(bsz, ch, t_c, factor).mean(dim=-1)


def _causal_resize(x, shift, length):
    """Nearest resize between scales of the causal pyramid.

    ``shift`` = (scale of ``x``) - (target scale). Up-sampling by
    ``r = 2**shift``: output ``i`` <- ``x[i // r]``; down-sampling by
    ``r = 2**-shift``: output ``j`` <- ``x[r * j]``. Either way no output
    frame reads a later input frame.
    """
    if shift > 0:
        x = x.repeat_interleave(2**shift, dim=-1)
    elif shift < 0:
        x = x[..., :: 2**-shift]
    return x[..., :length]


class _Fusion(nn.Module):
    """Local/global fusion of TDANet/S4M.

    ``gLN(dw(local)) * up(sigmoid(gLN(dw'(glob)))) + up(gLN(dw''(glob)))``
    with bias-free depthwise convolutions and nearest resizing of the global
    terms to the local length.

    Arguments
    ---------
    channels : int
        Channels of both inputs.
    kernel_size : int
        Kernel size of the three depthwise convolutions.
    causal : bool
        Causal convolutions and norms, and the causal resize
        (:func:`_causal_resize`, which needs the scale difference).
    """

    def __init__(self, channels, kernel_size=1, causal=False):
        super().__init__()
        self.causal = causal
        self.local_embedding = _ConvNorm(
            channels, channels, kernel_size, bias=False, causal=causal
        )
        self.global_gate = _ConvNorm(
            channels, channels, kernel_size, bias=False, causal=causal
        )
        self.global_embedding = _ConvNorm(
            channels, channels, kernel_size, bias=False, causal=causal
        )

    def forward(self, local, glob, scale_shift=0):
        """Fuse.

        Arguments
        ---------
        local : torch.Tensor
            ``[batch, channels, time_l]``.
        glob : torch.Tensor
            ``[batch, channels, time_g]``.
        scale_shift : int
            (scale of ``glob``) - (scale of ``local``); used by the causal
            resize only (the offline one resizes to the length).

        Returns
        -------
        torch.Tensor
            ``[batch, channels, time_l]``.
        """
        if self.causal:
            t_l = local.shape[-1]
            loc = self.local_embedding(local)
            gate = torch.sigmoid(self.global_gate(glob))
            emb = self.global_embedding(glob)
            t_g = glob.shape[-1]
            if scale_shift > 0 and t_l == t_g * 2**scale_shift:
                # nearest up-sampling as a broadcast (no up-sampled maps)
                bsz, ch = loc.shape[:2]
                loc = loc.view(bsz, ch, t_g, -1)
                out = torch.addcmul(emb[..., None], loc, gate[..., None])
                return out.view(bsz, ch, t_l)
            gate = _causal_resize(gate, scale_shift, t_l)
            emb = _causal_resize(emb, scale_shift, t_l)
            return torch.addcmul(emb, loc, gate)
        y, scale, shift = self.local_embedding.affine(local)
        gate = torch.sigmoid(self.global_gate(glob))
        emb = self.global_embedding(glob)
        t_l, t_g = y.shape[-1], gate.shape[-1]
        upsample = t_l > t_g and t_l % t_g == 0
        if not upsample:
            gate = _resize_nearest(gate, t_l)
            emb = _resize_nearest(emb, t_l)
        # (y*scale + shift)*gate + emb = y*A + B, A and B at glob's resolution
        a = scale * gate
        b = torch.addcmul(emb, shift, gate)
        if not upsample:
            return torch.addcmul(b, y, a)
        bsz, ch = y.shape[:2]
        # nearest upsampling by an integer factor r: out[t] = in[t // r]
        y = y.view(bsz, ch, t_g, t_l // t_g)
        out = torch.addcmul(b.unsqueeze(-1), y, a.unsqueeze(-1))
        return out.view(bsz, ch, t_l)


class S4MBlock(nn.Module):
    """One multi-scale S4M block (applied repeatedly with shared weights).

    1x1 conv C -> D + gLN + PReLU; a pyramid of ``depth`` depthwise
    convolutions (+ gLN), stride 1 then stride 2; the sum of all scales pooled
    to the coarsest length goes through a residual S4 layer and a residual
    feed-forward layer; local/global fusion at every scale; top-down merge with
    fusion layers of kernel ``kernel_size``; 1x1 conv D -> C plus the input.

    Arguments
    ---------
    channels : int
        Block input/output channels C.
    hidden_channels : int
        Channels D inside the block.
    depth : int
        Number of scales S (>= 2).
    kernel_size : int
        Kernel of the pyramid and merge convolutions.
    d_state : int
        S4 state size N.
    ssm_mode : str
        S4 kernel parameterisation (``"nplr"`` or ``"s4d"``, see
        ``speechbrain_s4m.nnet.S4``).
    bidirectional : bool, optional
        Bidirectional S4 kernel (default: ``not causal``).
    ffn_expansion : int
        Hidden size factor of the feed-forward layer.
    dropout : float
        Dropout in the S4 and feed-forward layers.
    fusion_index_quirk : bool
        Reproduce the authors' merge (starts by fusing scale S-2 with scale
        S-3, so the coarsest fused scale is unused and its fusion layer is not
        built). ``False`` fuses scale S-2 with scale S-1 as intended.
    causal : bool
        Causal block (see :class:`S4MMaskNet`): left-padded convolutions,
        cumulative layer norms, unidirectional S4, causal pooling and
        resizing. Output frame ``t`` depends on input frames ``<= t`` only.

    Example
    -------
    >>> block = S4MBlock(8, 16, depth=3)
    >>> x = torch.randn(2, 8, 20)
    >>> block(x).shape
    torch.Size([2, 8, 20])
    """

    def __init__(
        self,
        channels,
        hidden_channels,
        depth=4,
        kernel_size=5,
        d_state=16,
        ssm_mode="nplr",
        bidirectional=None,
        ffn_expansion=2,
        dropout=0.0,
        fusion_index_quirk=True,
        causal=False,
    ):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        if bidirectional is None:
            bidirectional = not causal
        if causal and bidirectional:
            raise ValueError("a causal block needs a unidirectional S4")
        self.depth = depth
        self.causal = causal
        self.fusion_index_quirk = fusion_index_quirk
        # the authors index the first merge partner as (S-2)-1 in Python,
        # i.e. (S-3) mod S: the finer scale S-3 for S >= 3
        if fusion_index_quirk:
            self.first_merge_source = (depth - 3) % depth
        else:
            self.first_merge_source = depth - 1
        self.used_scales = sorted(
            set(range(depth - 1)) | {self.first_merge_source}
        )
        self.proj = nn.Conv1d(channels, hidden_channels, 1)
        norm = CumulativeLayerNorm if causal else GlobalLayerNorm
        self.proj_norm = norm(hidden_channels)
        self.proj_act = nn.PReLU()
        self.pyramid = nn.ModuleList(
            _ConvNorm(
                hidden_channels,
                hidden_channels,
                kernel_size,
                stride=1 if i == 0 else 2,
                causal=causal,
            )
            for i in range(depth)
        )
        self.s4 = S4Block(
            hidden_channels,
            d_state=d_state,
            mode=ssm_mode,
            bidirectional=bidirectional,
            dropout=dropout,
        )
        self.ffn = FeedForwardBlock(
            hidden_channels, expansion=ffn_expansion, dropout=dropout
        )
        # local/global fusion, one per used scale (keys are scale indices)
        self.fuse = nn.ModuleDict(
            {
                str(k): _Fusion(hidden_channels, 1, causal=causal)
                for k in self.used_scales
            }
        )
        self.merge = nn.ModuleList(
            _Fusion(hidden_channels, kernel_size, causal=causal)
            for _ in range(depth - 1)
        )
        self.res_conv = nn.Conv1d(hidden_channels, channels, 1)

    def coarsest_length(self, length):
        """Length of the coarsest scale for a block input of ``length``."""
        for _ in range(self.depth - 1):
            length = (length + 1) // 2
        return length

    def forward(self, x, kernel=None):
        """Apply the block.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, channels, time]``.
        kernel : torch.Tensor, optional
            Precomputed S4 kernel for the coarsest length
            (``self.s4.s4.kernel(self.coarsest_length(time))``).

        Returns
        -------
        torch.Tensor
            ``[batch, channels, time]``.
        """
        if self.causal:
            return self._forward_causal(x, kernel)
        y = self.proj(x)
        scale, shift = _gln_scale_shift(self.proj_norm, y)
        y = self.proj_act(torch.addcmul(shift, y, scale))
        # bottom-up pyramid: scale 0 stride 1, others stride 2
        scales = []
        for layer in self.pyramid:
            y = layer(y)
            scales.append(y)
        t_c = scales[-1].shape[-1]
        glob = scales[-1]
        for s in scales[:-1]:
            glob = glob + _pool(s, t_c)
        # state-space modelling at the coarsest scale only
        glob = self.ffn(self.s4(glob, kernel=kernel))
        fused = {
            k: self.fuse[str(k)](scales[k], glob) for k in self.used_scales
        }
        # top-down merge
        top = self.depth - 2
        out = self.merge[top](fused[top], fused[self.first_merge_source])
        for i in range(top - 1, -1, -1):
            out = self.merge[i](fused[i], out)
        return self.res_conv(out) + x

    def _forward_causal(self, x, kernel=None):
        """The causal block (same structure, causal alignment).

        Coarse frame ``j`` of scale ``k`` sits at frame ``2**k * j`` of
        scale 0 and reads nothing later: strided convolutions are
        left-padded, pooling averages the window ending at that frame, and
        nearest up-sampling maps fine frame ``i`` to coarse ``i // r``.
        """
        y = self.proj_act(self.proj_norm(self.proj(x)))
        scales = []
        for layer in self.pyramid:
            y = layer(y)
            scales.append(y)
        top_scale = self.depth - 1
        glob = scales[-1]
        for k, s in enumerate(scales[:-1]):
            glob = glob + _causal_pool(s, 2 ** (top_scale - k))
        glob = self.ffn(self.s4(glob, kernel=kernel))
        fused = {
            k: self.fuse[str(k)](scales[k], glob, top_scale - k)
            for k in self.used_scales
        }
        top, src = self.depth - 2, self.first_merge_source
        out = self.merge[top](fused[top], fused[src], src - top)
        for i in range(top - 1, -1, -1):
            out = self.merge[i](fused[i], out, 1)
        return self.res_conv(out) + x

    def stream(self, x, st, s4_form=None):
        """The causal block on the next frames of a stream.

        Arguments
        ---------
        x : torch.Tensor
            New block input frames ``[batch, channels, n]`` (n >= 1).
        st : dict
            Streaming state of this block application (empty at the start
            of a stream), updated in place: convolution input tails,
            cumulative-norm sums, pooling and resizing buffers, the S4
            recurrent state.
        s4_form : tuple of torch.Tensor, optional
            ``self.s4.s4.stream_form()``, fetched once per chunk by the
            caller (None: the S4 layer runs eager, outside any compiled
            graph).

        Returns
        -------
        torch.Tensor
            The ``n`` new output frames ``[batch, channels, n]``.
        """
        if not self.causal:
            raise RuntimeError("streaming needs a causal block")
        y = small_conv(self.proj, x)
        y, st["proj_norm"] = self.proj_norm.stream_step(y, st.get("proj_norm"))
        y = self.proj_act(y)
        scales = []
        for k, layer in enumerate(self.pyramid):
            y = layer.stream(y, st.setdefault(f"pyramid{k}", {}))
            scales.append(y)
        top_scale = self.depth - 1
        glob = scales[-1]
        for k, s in enumerate(scales[:-1]):
            pool_st = st.setdefault(f"pool{k}", {})
            glob = glob + stream_pool(s, pool_st, 2 ** (top_scale - k))
        if glob.shape[-1]:
            s4 = self.s4
            h, st["s4"] = s4_stream(s4.s4, s4.norm(glob), st.get("s4"), s4_form)
            glob = glob + h
            ff = self.ffn  # eval mode: no dropout
            h = small_conv(ff.linear1, ff.norm(glob))
            glob = glob + small_conv(ff.linear2, ff.activation(h))
        fused = {
            k: fusion_stream(
                self.fuse[str(k)],
                scales[k],
                glob,
                top_scale - k,
                st.setdefault(f"fuse{k}", {}),
            )
            for k in self.used_scales
        }
        top, src = self.depth - 2, self.first_merge_source
        out = fusion_stream(
            self.merge[top],
            fused[top],
            fused[src],
            src - top,
            st.setdefault(f"merge{top}", {}),
        )
        for i in range(top - 1, -1, -1):
            out = fusion_stream(
                self.merge[i], fused[i], out, 1, st.setdefault(f"merge{i}", {})
            )
        return small_conv(self.res_conv, out) + x


class S4MMaskNet(nn.Module):
    """S4M mask network (SpeechBrain ``MaskNet`` contract).

    gLN + 1x1 conv E -> C bottleneck; ONE :class:`S4MBlock` applied
    ``num_iterations`` times with shared weights (iteration 1 takes the
    bottleneck output ``x0``, later ones ``PReLU(dw1x1(x0 + x_prev))``); mask
    head PReLU, 1x1 conv C -> num_spks * E, ReLU.

    Every length is computed exactly, without padding (as in the authors'
    code): the stride-2 pyramid gives ``ceil(T / 2)`` frames per scale, the
    global features are average-pooled adaptively to the coarsest length and
    the fusions resize by nearest interpolation to each scale's length. When
    the lengths are exact multiples these become a reshape-mean and a
    broadcast (same values, faster).

    Arguments
    ---------
    in_channels : int
        Encoder channels E.
    out_channels : int
        Bottleneck channels C.
    hidden_channels : int
        Channels D inside the block.
    depth : int
        Number of scales S.
    num_iterations : int
        Number of applications R of the shared block.
    num_spks : int
        Number of sources.
    d_state : int
        S4 state size N.
    ssm_mode : str
        S4 kernel parameterisation, ``"nplr"`` (authors) or ``"s4d"``.
    kernel_size : int
        Kernel of the pyramid and merge convolutions.
    fusion_index_quirk : bool
        Authors' merge indexing (default) or the fixed one; see
        :class:`S4MBlock`.
    bidirectional : bool, optional
        Bidirectional S4 kernel (default: ``not causal``).
    ffn_expansion : int
        Hidden size factor of the feed-forward layer.
    dropout : float
        Dropout in the S4 and feed-forward layers.
    share_kernel : bool
        Compute the S4 kernel once per forward and reuse it across the
        iterations (same result; ``False`` recomputes it in every iteration as
        the authors' code does; kept for benchmarking).
    checkpoint_iterations : bool
        Activation checkpointing of each application of the shared block
        (``torch.utils.checkpoint``, non-reentrant) while gradients are
        enabled: the block's intermediate maps are recomputed in the
        backward pass instead of stored (less memory, ~1/3 more compute).
        Same outputs and gradients.
    causal : bool
        Causal masknet (default False, the offline model): every operation
        reads only the current and past frames. Cumulative layer norm
        (statistics over the channels of the past frames, per-channel
        affine) replaces gLN; depthwise and strided convolutions are
        left-padded; the S4 layer is unidirectional (convolution mode for
        whole signals); coarse frame ``j`` of scale ``k`` sits at scale-0
        frame ``2**k * j`` (pooling averages the window ending there,
        nearest up-sampling maps fine ``i`` to coarse ``i // r``). Mask frame
        ``t`` then depends on input frames ``<= t`` (``latency_frames`` = 0)
        and a separator's output sample ``t`` on input samples ``<= t + K -
        1`` (:meth:`latency_samples`; K = encoder kernel).

    Example
    -------
    >>> masknet = S4MMaskNet(17, 8, 16, depth=3, num_iterations=2)
    >>> x = torch.rand(2, 17, 21)
    >>> masknet(x).shape
    torch.Size([2, 2, 17, 21])
    """

    def __init__(
        self,
        in_channels,
        out_channels=128,
        hidden_channels=512,
        depth=4,
        num_iterations=16,
        num_spks=2,
        d_state=16,
        ssm_mode="nplr",
        kernel_size=5,
        fusion_index_quirk=True,
        bidirectional=None,
        ffn_expansion=2,
        dropout=0.0,
        share_kernel=True,
        checkpoint_iterations=False,
        causal=False,
    ):
        super().__init__()
        if num_iterations < 1:
            raise ValueError("num_iterations must be >= 1")
        self.in_channels = in_channels
        self.num_spks = num_spks
        self.num_iterations = num_iterations
        self.share_kernel = share_kernel
        self.checkpoint_iterations = checkpoint_iterations
        self.causal = causal
        self.norm = (CumulativeLayerNorm if causal else GlobalLayerNorm)(
            in_channels
        )
        self.bottleneck = nn.Conv1d(in_channels, out_channels, 1)
        self.block = S4MBlock(
            out_channels,
            hidden_channels,
            depth=depth,
            kernel_size=kernel_size,
            d_state=d_state,
            ssm_mode=ssm_mode,
            bidirectional=bidirectional,
            ffn_expansion=ffn_expansion,
            dropout=dropout,
            fusion_index_quirk=fusion_index_quirk,
            causal=causal,
        )
        # input of iterations 2..R: PReLU(depthwise 1x1 conv(x0 + x_prev));
        # not built for a single iteration (it would get no gradient)
        if num_iterations > 1:
            self.iter_conv = nn.Conv1d(
                out_channels, out_channels, 1, groups=out_channels
            )
            self.iter_act = nn.PReLU()
        self.mask_act = nn.PReLU()
        self.mask_conv = nn.Conv1d(out_channels, num_spks * in_channels, 1)

    @property
    def latency_frames(self):
        """Look-ahead in encoder frames: 0 for a causal masknet (mask frame
        ``t`` reads input frames ``<= t``), ``None`` for the offline one
        (every mask frame depends on the whole utterance)."""
        return 0 if self.causal else None

    def latency_samples(self, kernel_size, stride=None):
        """Algorithmic latency of a separator built on this masknet.

        With an encoder whose frame ``j`` covers samples ``[stride*j,
        stride*j + kernel_size)`` and the overlap-add decoder, output sample
        ``t`` of a causal separator depends on input samples ``<= t +
        kernel_size - 1 + stride * latency_frames``: ``kernel_size - 1``
        samples (31 = 3.9 ms for the 4 ms encoder at 8 kHz).

        Arguments
        ---------
        kernel_size : int
            Encoder/decoder kernel in samples.
        stride : int, optional
            Encoder hop (default ``kernel_size // 4``).

        Returns
        -------
        int or None
            Samples of look-ahead; ``None`` for an offline masknet.

        Example
        -------
        >>> S4MMaskNet(17, 8, 16, causal=True).latency_samples(32)
        31
        """
        if not self.causal:
            return None
        stride = stride if stride is not None else max(kernel_size // 4, 1)
        return kernel_size - 1 + stride * self.latency_frames

    def init_stream_state(self, batch_size=None):
        """A fresh streaming state for :meth:`forward_stream`.

        The state is a dict of buffers, created from the shapes of the first
        chunk (so ``batch_size`` is not needed; it is accepted for
        symmetry). Its size does not grow with the stream's length.

        Arguments
        ---------
        batch_size : int, optional
            Unused.

        Returns
        -------
        dict
            ``{"frames": 0}``: frames processed so far; the buffers follow.
        """
        if not self.causal:
            raise RuntimeError("streaming needs a causal masknet (causal=True)")
        return {"frames": 0}

    def forward_stream(self, frames, state=None, block_step=None):
        """Masks for the next encoder frames of a stream.

        Feeding a signal's encoder frames in consecutive chunks of any sizes
        (0 included) gives, concatenated, the masks of :meth:`forward` on
        the whole signal: cumulative norms carry their running sums, the
        convolutions their left context, pooling and resizing their partial
        windows, and the S4 layer of each iteration its recurrent state
        (:meth:`speechbrain_s4m.nnet.S4.forward_stream`). Mask frame ``t``
        is returned as soon as encoder frame ``t`` is given (no look-ahead).
        Use in ``eval()`` mode (dropout would make chunks differ).

        Arguments
        ---------
        frames : torch.Tensor
            New encoder frames ``[batch, in_channels, n]``.
        state : dict, optional
            From :meth:`init_stream_state` or the previous call (``None``:
            a new stream). Updated in place and returned.
        block_step : callable, optional
            Replaces ``self.block.stream`` (same signature), e.g. a
            ``torch.compile`` of it; called with ``s4_form`` (see
            :meth:`S4MBlock.stream`).

        Returns
        -------
        masks : torch.Tensor
            ``[num_spks, batch, in_channels, n]``.
        state : dict
            The updated state.

        Example
        -------
        >>> net = S4MMaskNet(17, 8, 16, num_iterations=2, causal=True).eval()
        >>> x = torch.rand(1, 17, 30)
        >>> state = net.init_stream_state()
        >>> m1, state = net.forward_stream(x[..., :13], state)
        >>> m2, state = net.forward_stream(x[..., 13:], state)
        >>> state["frames"]
        30
        >>> torch.allclose(torch.cat([m1, m2], -1), net(x), atol=1e-5)
        True
        """
        if state is None:
            state = self.init_stream_state()
        bsz, _, n = frames.shape
        if n == 0:
            return frames.new_zeros(self.num_spks, bsz, self.in_channels, 0), (
                state
            )
        x, state["norm"] = self.norm.stream_step(frames, state.get("norm"))
        x0 = small_conv(self.bottleneck, x)  # [batch, C, n]
        step = block_step or self.block.stream
        # the S4 layer's eigenbasis form (cached; None: dense recurrence)
        form = self.block.s4.s4.stream_form()
        h = step(x0, state.setdefault("iteration0", {}), s4_form=form)
        for r in range(1, self.num_iterations):
            h = self.iter_act(small_conv(self.iter_conv, x0 + h))
            h = step(h, state.setdefault(f"iteration{r}", {}), s4_form=form)
        masks = F.relu(small_conv(self.mask_conv, self.mask_act(h)))
        masks = masks.view(bsz, self.num_spks, self.in_channels, n)
        state["frames"] += n
        return masks.transpose(0, 1), state

    def _apply_block(self, x, kernel):
        """One application of the shared block (checkpointed if asked)."""
        if self.checkpoint_iterations and torch.is_grad_enabled():
            return checkpoint(self.block, x, kernel, use_reentrant=False)
        return self.block(x, kernel=kernel)

    def forward(self, x):
        """Estimate the masks.

        Arguments
        ---------
        x : torch.Tensor
            Encoder output ``[batch, in_channels, frames]``.

        Returns
        -------
        torch.Tensor
            ReLU masks ``[num_spks, batch, in_channels, frames]``.
        """
        bsz, _, frames = x.shape
        x0 = self.bottleneck(self.norm(x))  # [batch, C, frames]
        kernel = None
        if self.share_kernel:
            t_c = self.block.coarsest_length(x0.shape[-1])
            kernel = self.block.s4.s4.kernel(t_c)
        h = self._apply_block(x0, kernel)
        for _ in range(self.num_iterations - 1):
            h = self._apply_block(self.iter_act(self.iter_conv(x0 + h)), kernel)
        masks = F.relu(self.mask_conv(self.mask_act(h)))
        masks = masks.view(bsz, self.num_spks, self.in_channels, frames)
        return masks.transpose(0, 1)


FRAMINGS = ("authors", "right")


def _check_framing(framing):
    """Refuse a framing that is not one of :data:`FRAMINGS`."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")


class S4MEncoder(nn.Module):
    """Learned analysis filterbank of S4M (no bias, no nonlinearity).

    A 1-D convolution 1 -> ``out_channels`` with kernel K = ``kernel_size``
    and stride S = ``kernel_size // 4``, over the input framed in one of two
    ways:

    * ``"authors"`` (default; the authors' ``pad_input`` and encoder): the
      input of n samples gets ``rest = K - (S + n % K) % K`` zeros at the
      end (1..K, never 0), then ``K - S`` zeros at both ends, and the
      convolution pads ``K // 2`` more on each side. Frame ``j`` starts at
      input sample ``S j - frame_offset`` with ``frame_offset = K // 2 + K -
      S``; every sample, the first and last included, is covered by K / S
      frames (1010 frames for 8000 samples at K = 32, S = 8).
    * ``"right"``: frame ``j`` covers samples ``[S j, S j + K)``, and the
      input is right-padded to ``ceil(n / S)`` frames (1000 for 8000
      samples). The causal models use it: it is what a stream can compute
      as samples arrive (:meth:`forward_stream`), whereas the authors'
      ``rest`` depends on the length of the whole signal.

    :class:`speechbrain_s4m.lobes.separator.Separator` aligns the decoded
    signal with the input through ``frame_offset``.

    Arguments
    ---------
    kernel_size : int
        Filter length K in samples (the authors use 4 ms: 32 at 8 kHz).
    out_channels : int
        Number of filters E (authors: K // 2 + 1).
    stride : int, optional
        Hop in samples, default ``kernel_size // 4``.
    framing : str
        ``"authors"`` or ``"right"`` (see above).
    xavier_init : bool
        Xavier-uniform initial filters, as the authors' code (default);
        ``False`` keeps PyTorch's default for ``Conv1d``.

    Example
    -------
    >>> enc = S4MEncoder(kernel_size=32, out_channels=17)
    >>> enc(torch.randn(2, 8000)).shape
    torch.Size([2, 17, 1010])
    >>> enc.num_frames(8000), enc.frame_offset
    (1010, 40)
    >>> right = S4MEncoder(kernel_size=32, out_channels=17, framing="right")
    >>> right(torch.randn(2, 8001)).shape
    torch.Size([2, 17, 1001])
    >>> right(torch.randn(2, 32000)).shape[-1]  # 4 s: 500 * 2**3 frames
    4000
    """

    def __init__(
        self,
        kernel_size=32,
        out_channels=17,
        stride=None,
        framing="authors",
        xavier_init=True,
    ):
        super().__init__()
        _check_framing(framing)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else max(kernel_size // 4, 1)
        self.framing = framing
        authors = framing == "authors"
        self.conv1d = nn.Conv1d(
            1,
            out_channels,
            kernel_size,
            stride=self.stride,
            padding=kernel_size // 2 if authors else 0,
            bias=False,
        )
        if xavier_init:
            nn.init.xavier_uniform_(self.conv1d.weight)

    @property
    def frame_offset(self):
        """Frame ``j`` starts at input sample ``stride * j - frame_offset``
        (the zeros in front of the signal: ``K // 2 + K - S`` for the
        authors' framing, 0 for ``"right"``)."""
        if self.framing == "right":
            return 0
        k, s = self.kernel_size, self.stride
        return k // 2 + k - s

    def _rest(self, length):
        """The authors' end padding: ``K - (S + n % K) % K`` zeros."""
        k, s = self.kernel_size, self.stride
        return k - (s + length % k) % k

    def num_frames(self, length):
        """Number of output frames for an input of ``length`` samples.

        ``"right"``: every frame that holds at least one input sample,
        ``ceil(length / stride)`` (at least one). Why not only the frames
        that fit (``1 + ceil((length - K) / stride)``)? Counting the partial
        frames at the end gives every sample the same K / stride
        overlapping frames, and an input of a multiple of ``stride * 2 **
        (depth - 1)`` samples (a 4 s segment: 32000 = 64 * 500) then yields
        a frame count that the masknet's pyramid halves exactly, so its
        fast reshape paths apply. ``"authors"``: those of their padding.
        """
        k, s = self.kernel_size, self.stride
        if self.framing == "right":
            return max(1, -(-length // s))
        padded = length + self._rest(length) + 2 * (k - s) + 2 * (k // 2)
        return (padded - k) // s + 1

    def forward(self, x):
        """Encode.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time]`` or ``[batch, 1, time]``.

        Returns
        -------
        torch.Tensor
            ``[batch, out_channels, frames]``.
        """
        if x.dim() == 2:
            x = x.unsqueeze(1)
        length = x.shape[-1]
        k, s = self.kernel_size, self.stride
        if self.framing == "authors":
            # the convolution adds its own K // 2 on each side
            x = F.pad(x, (k - s, self._rest(length) + k - s))
            return self.conv1d(x)
        padded = k + (self.num_frames(length) - 1) * s
        if padded > length:
            x = F.pad(x, (0, padded - length))
        return self.conv1d(x)

    def _check_streamable(self):
        if self.framing != "right":
            raise RuntimeError(
                "streaming needs the encoder framing 'right' (the causal "
                "models' fragment, s4m_tiny_causal.yaml, sets it): the "
                "authors' framing pads the end by an amount that depends "
                "on the whole signal's length"
            )

    def forward_stream(self, x, state=None):
        """Encode the next samples of a stream.

        Frame ``j`` covers samples ``[stride*j, stride*j + kernel_size)``
        and is returned as soon as its last sample has arrived. The frames
        of all calls followed by :meth:`flush_stream` are those of
        :meth:`forward` on the whole signal.

        Arguments
        ---------
        x : torch.Tensor
            New samples ``[batch, n]`` (n >= 0).
        state : dict, optional
            From the previous call (``None``: a new stream); updated in
            place.

        Returns
        -------
        frames : torch.Tensor
            The new frames ``[batch, out_channels, m]``.
        state : dict
            ``{"samples": samples seen, "frames": frames returned, ...}``.

        Example
        -------
        >>> enc = S4MEncoder(kernel_size=32, out_channels=17, framing="right")
        >>> x = torch.randn(1, 1001)
        >>> f1, state = enc.forward_stream(x[:, :500])
        >>> f2, state = enc.forward_stream(x[:, 500:], state)
        >>> f3 = enc.flush_stream(state)
        >>> f1.shape[-1], f2.shape[-1], f3.shape[-1]
        (59, 63, 4)
        >>> torch.allclose(torch.cat([f1, f2, f3], -1), enc(x), atol=1e-6)
        True
        """
        self._check_streamable()
        if state is None:
            state = {"samples": 0, "frames": 0, "buf": x[:, :0]}
        k, s = self.kernel_size, self.stride
        buf = torch.cat([state["buf"], x], dim=-1)
        state["samples"] += x.shape[-1]
        available = max(0, (state["samples"] - k) // s + 1)
        n_new = available - state["frames"]
        if n_new <= 0:
            state["buf"] = buf
            return buf.new_zeros(buf.shape[0], self.conv1d.out_channels, 0), (
                state
            )
        frames = self.conv1d(buf[:, None, : s * (n_new - 1) + k])
        state["buf"] = buf[:, s * n_new :]
        state["frames"] = available
        return frames, state

    def flush_stream(self, state):
        """The last frames of a stream: those that :meth:`forward` obtains
        by zero-padding the end of the signal.

        Arguments
        ---------
        state : dict
            From :meth:`forward_stream`.

        Returns
        -------
        torch.Tensor
            ``[batch, out_channels, m]``.
        """
        self._check_streamable()
        k, s = self.kernel_size, self.stride
        n_new = self.num_frames(state["samples"]) - state["frames"]
        buf = state["buf"]
        if n_new <= 0:
            return buf.new_zeros(buf.shape[0], self.conv1d.out_channels, 0)
        need = s * (n_new - 1) + k
        buf = F.pad(buf, (0, need - buf.shape[-1]))
        state["frames"] += n_new
        state["buf"] = buf[:, s * n_new :]
        return self.conv1d(buf[:, None, :need])


class S4MDecoder(nn.ConvTranspose1d):
    """S4M's decoder: the masked encodings of all sources -> all sources.

    Input ``[batch, num_spks * E, frames]`` (source-major channels), output
    ``[batch, num_spks, time]``. Two forms:

    * ``joint=True`` (default, the authors'): one ``ConvTranspose1d(num_spks
      * E -> num_spks, K, stride S, no bias)`` over the concatenated masked
      features, so each source's waveform is synthesised from every
      source's features;
    * ``joint=False``: each source decoded alone by one shared
      ``ConvTranspose1d(E -> 1)``, which is SpeechBrain's ``dual_path.Decoder``
      (without bias) applied per source.

    :class:`speechbrain_s4m.lobes.separator.Separator` recognises this
    decoder by ``all_sources = True`` and aligns its output with the input
    through the encoder's ``frame_offset`` and this ``padding``.

    Arguments
    ---------
    in_channels : int
        Encoder channels E per source.
    num_spks : int
        Number of sources.
    kernel_size : int
        K, as the encoder.
    stride : int, optional
        S, as the encoder (default ``kernel_size // 4``).
    framing : str
        The encoder's framing: ``"authors"`` crops ``K // 2`` samples at
        each end (their ``padding``), ``"right"`` none.
    joint : bool
        Joint (default) or per-source decoding (see above).
    xavier_init : bool
        Xavier-uniform initial weights, as the authors' code (default);
        ``False`` keeps PyTorch's default.

    Example
    -------
    >>> dec = S4MDecoder(17, num_spks=2, kernel_size=32)
    >>> dec(torch.randn(3, 34, 1010)).shape  # [batch, spks, samples]
    torch.Size([3, 2, 8072])
    >>> shared = S4MDecoder(17, 2, 32, joint=False)
    >>> x = torch.randn(3, 34, 1010)
    >>> y0 = F.conv_transpose1d(x[:, :17], shared.weight, stride=8, padding=16)
    >>> torch.allclose(shared(x)[:, :1], y0)  # source 0 from its own features
    True
    """

    all_sources = True

    def __init__(
        self,
        in_channels,
        num_spks=2,
        kernel_size=32,
        stride=None,
        framing="authors",
        joint=True,
        xavier_init=True,
    ):
        _check_framing(framing)
        super().__init__(
            in_channels * num_spks if joint else in_channels,
            num_spks if joint else 1,
            kernel_size,
            stride=stride if stride is not None else max(kernel_size // 4, 1),
            padding=kernel_size // 2 if framing == "authors" else 0,
            bias=False,
        )
        self.num_spks = num_spks
        self.joint = joint
        if xavier_init:
            nn.init.xavier_uniform_(self.weight)

    def forward(self, x):
        """Decode.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, num_spks * E, frames]``, source-major.

        Returns
        -------
        torch.Tensor
            ``[batch, num_spks, time]``.
        """
        if self.joint:
            return super().forward(x)
        batch, channels, frames = x.shape
        folded = x.reshape(batch * self.num_spks, -1, frames)
        return super().forward(folded).reshape(batch, self.num_spks, -1)

"""S4M's mask network: ONE multi-scale block with an S4 layer at its
coarsest scale, applied repeatedly with shared weights (Chen et al., "A
Neural State-Space Modeling Approach to Efficient Speech Separation",
Interspeech 2023). The causal model streams through the helpers of
:mod:`speechbrain_s4m.lobes.s4m_stream`.
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


def _gln_affine(norm, mean, var, weight, dtype):
    """``(scale, shift)``, ``[batch, channels, 1]``, with ``norm(weight * x)
    = x * scale + shift`` given the ``[batch, 1, 1]`` statistics of
    ``weight * x`` (``weight``: ``[channels]`` or None)."""
    gamma = norm.weight.reshape(1, -1, 1)
    beta = norm.bias.reshape(1, -1, 1)
    inv_std = torch.rsqrt(var + norm.eps)
    g = gamma * inv_std  # [batch, channels, 1]
    shift = beta - mean * g
    if weight is not None:
        g = g * weight.reshape(1, -1, 1)
    return g.to(dtype), shift.to(dtype)


def _gln_scale_shift(norm, y):
    """``(scale, shift)`` with ``norm(y) = y * scale + shift``."""
    # gln_statistics: two vectorised per-channel reductions combined in
    # float64; on CPU torch.var_mean over channels and time is 10-60x slower
    var, mean = gln_statistics(y)
    return _gln_affine(norm, mean, var, None, y.dtype)


class _ConvNorm(nn.Module):
    """Depthwise convolution ("same" padding, odd kernel) + global layer
    norm. Causal: left padding of ``kernel_size - 1`` (output ``j`` reads
    inputs ``stride*j - kernel_size + 1 .. stride*j``) and cumulative norm.
    """

    def __init__(
        self, channels, kernel_size, stride=1, bias=True, causal=False
    ):
        super().__init__()
        self.causal = causal
        pad = 0 if causal else (kernel_size - 1) // 2
        self.conv = nn.Conv1d(  # dilation 1, groups: depthwise
            channels, channels, kernel_size, stride, pad, 1, channels, bias
        )
        norm = CumulativeLayerNorm if causal else GlobalLayerNorm
        self.norm = norm(channels)

    def affine(self, x):
        """``(y, scale, shift)`` with ``forward(x) = y * scale + shift``."""
        conv = self.conv
        if (
            conv.kernel_size[0] != 1
            or conv.stride[0] != 1
            or conv.bias is not None
        ):
            y = conv(x)
            return (y, *_gln_scale_shift(self.norm, y))
        # bias-free 1x1 conv + gLN: one per-channel affine of x whose
        # statistics come from per-channel sums of x (no map written)
        w = conv.weight.reshape(-1)  # [channels]
        var, mean = gln_statistics(x, w)
        scale, shift = _gln_affine(self.norm, mean, var, w, x.dtype)
        return x, scale, shift

    def forward(self, x):
        """``gLN(conv(x))``, ``[batch, in_channels, time]`` -> ``[batch,
        out_channels, time']``."""
        if self.causal:
            k = self.conv.kernel_size[0]
            if k > 1:
                x = F.pad(x, (k - 1, 0))
            return self.norm(self._conv(x))
        y, scale, shift = self.affine(x)
        return torch.addcmul(shift, y, scale)

    def _conv(self, x):
        """The unpadded convolution; a depthwise 1x1 one as a product (CPU
        depthwise 1x1 convolutions are ~10x slower)."""
        conv = self.conv
        if conv.kernel_size[0] == 1 and conv.in_channels > 1:
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


def _pool(x, length):
    """Adaptive average pooling of ``[batch, channels, time]`` to ``length``."""
    bsz, ch, t = x.shape
    if t % length == 0:
        # exact factor: a reshape and a mean (faster than adaptive pooling)
        return x.view(bsz, ch, length, t // length).mean(dim=-1)
    return F.adaptive_avg_pool1d(x, length)


def _causal_pool(x, factor):
    """Causal pooling: coarse frame ``j`` is the mean of fine frames
    ``factor*j - factor + 1 .. factor*j`` (zeros before the start)."""
    if factor == 1:
        return x
    bsz, ch, t = x.shape
    t_c = -(-t // factor)
    x = F.pad(x, (factor - 1, 0))[..., : t_c * factor]
    return x.reshape(bsz, ch, t_c, factor).mean(dim=-1)


def _causal_resize(x, shift, length):
    """Causal nearest resize by ``2**shift`` (``shift`` = scale of ``x`` -
    target scale): up, output ``i`` <- ``x[i // r]``; down, output ``j``
    <- ``x[r * j]``. No output reads a later input frame."""
    if shift > 0:
        x = x.repeat_interleave(2**shift, dim=-1)
    elif shift < 0:
        x = x[..., :: 2**-shift]
    return x[..., :length]


class _Fusion(nn.Module):
    """Local/global fusion of TDANet/S4M:
    ``gLN(dw(local)) * up(sigmoid(gLN(dw'(glob)))) + up(gLN(dw''(glob)))``
    with bias-free depthwise convolutions of kernel ``kernel_size`` and
    nearest resizing of the global terms to the local length."""

    def __init__(self, channels, kernel_size=1, causal=False):
        super().__init__()
        self.causal = causal
        self.local_embedding, self.global_gate, self.global_embedding = (
            _ConvNorm(channels, kernel_size, bias=False, causal=causal)
            for _ in range(3)
        )

    def forward(self, local, glob, scale_shift=0):
        """Fuse ``local`` ``[batch, channels, time_l]`` with ``glob``
        ``[batch, channels, time_g]``; ``scale_shift`` (scale of ``glob`` -
        scale of ``local``) is used by the causal resize only."""
        if self.causal:
            y = self.local_embedding(local)
        else:
            y, scale, shift = self.local_embedding.affine(local)
        gate = torch.sigmoid(self.global_gate(glob))
        emb = self.global_embedding(glob)
        t_l, t_g = y.shape[-1], gate.shape[-1]
        if self.causal:
            upsample = scale_shift > 0 and t_l == t_g * 2**scale_shift
        else:
            upsample = t_l > t_g and t_l % t_g == 0
        if not upsample:
            # resized before folding: when glob is the finer map, the fold
            # then runs on local's (shorter) length
            if self.causal:
                gate = _causal_resize(gate, scale_shift, t_l)
                emb = _causal_resize(emb, scale_shift, t_l)
            elif t_g != t_l:
                gate = F.interpolate(gate, size=t_l, mode="nearest")
                emb = F.interpolate(emb, size=t_l, mode="nearest")
        if not self.causal:
            # (y*scale + shift)*gate + emb = y*gate' + emb', at gate's
            # resolution (nearest resizing commutes with them)
            gate, emb = scale * gate, torch.addcmul(emb, shift, gate)
        if upsample:
            # nearest upsampling by r as a broadcast, out[t] = in[t // r]
            # (no upsampled maps materialised)
            bsz, ch = y.shape[:2]
            y = y.view(bsz, ch, t_g, t_l // t_g)
            out = torch.addcmul(emb[..., None], y, gate[..., None])
            return out.view(bsz, ch, t_l)
        return torch.addcmul(emb, y, gate)


class S4MBlock(nn.Module):
    """One multi-scale S4M block (applied repeatedly with shared weights).

    1x1 conv C -> D + gLN + PReLU; a pyramid of ``depth`` depthwise
    convolutions (+ gLN), stride 1 then 2; the sum of all scales pooled to
    the coarsest length through a residual S4 and a residual feed-forward
    layer; local/global fusion at every scale; top-down merge; 1x1 conv D ->
    C plus the input. ``channels`` is C, ``hidden_channels`` D; the other
    arguments are :class:`S4MMaskNet`'s.

    Example
    -------
    >>> block = S4MBlock(8, 16, depth=3)
    >>> block(torch.randn(2, 8, 20)).shape
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
        quirk_src = (depth - 3) % depth
        self.first_merge_source = quirk_src if fusion_index_quirk else depth - 1
        self.used_scales = sorted(
            set(range(depth - 1)) | {self.first_merge_source}
        )
        d = hidden_channels
        self.proj = nn.Conv1d(channels, d, 1)
        self.proj_norm = (CumulativeLayerNorm if causal else GlobalLayerNorm)(d)
        self.proj_act = nn.PReLU()
        self.pyramid = nn.ModuleList(
            _ConvNorm(d, kernel_size, 1 if i == 0 else 2, True, causal)
            for i in range(depth)
        )
        self.s4 = S4Block(d, d_state, ssm_mode, bidirectional, dropout)
        self.ffn = FeedForwardBlock(d, ffn_expansion, dropout)
        # local/global fusion, one per used scale (keys are scale indices)
        self.fuse = nn.ModuleDict(
            {str(k): _Fusion(d, 1, causal) for k in self.used_scales}
        )
        self.merge = nn.ModuleList(
            _Fusion(d, kernel_size, causal) for _ in range(depth - 1)
        )
        self.res_conv = nn.Conv1d(d, channels, 1)

    def coarsest_length(self, length):
        """Length of the coarsest scale for a block input of ``length``."""
        for _ in range(self.depth - 1):
            length = (length + 1) // 2
        return length

    def forward(self, x, kernel=None):
        """Apply the block to ``[batch, channels, time]``; ``kernel``: the
        S4 kernel for ``coarsest_length(time)`` if precomputed."""
        y = self.proj(x)
        if self.causal:
            y = self.proj_norm(y)
        else:
            scale, shift = _gln_scale_shift(self.proj_norm, y)
            y = torch.addcmul(shift, y, scale)
        y = self.proj_act(y)
        # bottom-up pyramid: scale 0 stride 1, others stride 2
        scales = []
        for layer in self.pyramid:
            y = layer(y)
            scales.append(y)
        top_scale = self.depth - 1
        glob = scales[-1]
        t_c = glob.shape[-1]
        for k, s in enumerate(scales[:-1]):
            if self.causal:
                glob = glob + _causal_pool(s, 2 ** (top_scale - k))
            else:
                glob = glob + _pool(s, t_c)
        # state-space modelling at the coarsest scale only
        glob = self.ffn(self.s4(glob, kernel=kernel))
        out = self._fuse_merge(scales, glob, lambda f, a, b, r, _: f(a, b, r))
        return self.res_conv(out) + x

    def _fuse_merge(self, scales, glob, fuse):
        """Local/global fusion at every used scale, then the top-down merge;
        ``fuse(layer, local, glob, scale_shift, state_name)`` applies one
        fusion layer."""
        top_scale, top = self.depth - 1, self.depth - 2
        fused = {
            k: fuse(
                self.fuse[str(k)], scales[k], glob, top_scale - k, f"fuse{k}"
            )
            for k in self.used_scales
        }
        src = self.first_merge_source
        out = fuse(
            self.merge[top], fused[top], fused[src], src - top, f"merge{top}"
        )
        for i in range(top - 1, -1, -1):
            out = fuse(self.merge[i], fused[i], out, 1, f"merge{i}")
        return out

    def stream(self, x, st, s4_form=None):
        """The causal block on the next frames ``[batch, channels, n]`` of a
        stream (n >= 1): the ``n`` new output frames. ``st``: this block
        application's state (empty at the start), updated in place;
        ``s4_form``: ``self.s4.s4.stream_form()`` fetched by the caller."""
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

        def fuse(fusion, local, glob, scale_shift, name):
            st_f = st.setdefault(name, {})
            return fusion_stream(fusion, local, glob, scale_shift, st_f)

        out = self._fuse_merge(scales, glob, fuse)
        return small_conv(self.res_conv, out) + x


class S4MMaskNet(nn.Module):
    """S4M mask network (SpeechBrain ``MaskNet`` contract).

    gLN + 1x1 conv E -> C; ONE :class:`S4MBlock` applied ``num_iterations``
    times with shared weights (iteration 1 takes the bottleneck output
    ``x0``, later ones ``PReLU(dw1x1(x0 + x_prev))``); mask head PReLU,
    1x1 conv C -> num_spks * E, ReLU. No padding, as in the authors' code:
    the pyramid gives ``ceil(T / 2)`` frames per scale, pooling is adaptive
    and resizing nearest (a reshape-mean and a broadcast at exact multiples).

    Arguments
    ---------
    in_channels, out_channels, hidden_channels : int
        Encoder channels E, bottleneck channels C, block channels D.
    depth, num_iterations, num_spks : int
        Scales S (>= 2), applications R of the block, sources.
    d_state : int
        S4 state size N.
    ssm_mode : str
        S4 kernel parameterisation, ``"nplr"`` (authors) or ``"s4d"``.
    kernel_size : int
        Kernel of the pyramid and merge convolutions.
    fusion_index_quirk : bool
        The authors' merge (default), which starts by fusing scale S-2 with
        S-3 (the coarsest fused scale is unused and its fusion layer not
        built); ``False`` fuses S-2 with S-1 as intended.
    bidirectional : bool, optional
        Bidirectional S4 kernel (default: ``not causal``).
    ffn_expansion : int
        Hidden size factor of the feed-forward layer.
    dropout : float
        Dropout in the S4 and feed-forward layers.
    share_kernel : bool
        Compute the S4 kernel once per forward for all iterations (same
        result; ``False`` recomputes it each time as the authors' code).
    checkpoint_iterations : bool
        Activation checkpointing of each block application while gradients
        are enabled (less memory, ~1/3 more compute, same results).
    causal : bool
        Mask frame ``t`` depends on input frames ``<= t`` only: left-padded
        convolutions, cumulative layer norms, unidirectional S4, causal
        pooling and resizing (coarse frame ``j`` of scale ``k`` sits at
        scale-0 frame ``2**k * j``); streams with :meth:`forward_stream`.

    Example
    -------
    >>> masknet = S4MMaskNet(17, 8, 16, depth=3, num_iterations=2)
    >>> masknet(torch.rand(2, 17, 21)).shape
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
        """Look-ahead in encoder frames: 0 if causal, ``None`` (the whole
        utterance) otherwise."""
        return 0 if self.causal else None

    def latency_samples(self, kernel_size, stride=None):
        """Algorithmic latency in samples of a separator on this masknet
        (``None`` if offline): output sample ``t`` depends on input samples
        ``<= t + kernel_size - 1 + stride * latency_frames`` (encoder kernel
        and hop, default ``kernel_size // 4``; overlap-add decoder)."""
        if not self.causal:
            return None
        stride = stride if stride is not None else max(kernel_size // 4, 1)
        return kernel_size - 1 + stride * self.latency_frames

    def init_stream_state(self, batch_size=None):
        """A fresh state for :meth:`forward_stream` (``batch_size`` unused:
        the buffers follow from the first chunk)."""
        if not self.causal:
            raise RuntimeError("streaming needs a causal masknet (causal=True)")
        return {"frames": 0}

    def forward_stream(self, frames, state=None, block_step=None):
        """Masks for the next encoder frames of a stream.

        Chunks of any sizes (0 included) give, concatenated, the masks of
        :meth:`forward` on the whole signal; mask frame ``t`` is returned
        with encoder frame ``t``. Use in ``eval()`` mode.

        Arguments
        ---------
        frames : torch.Tensor
            New encoder frames ``[batch, in_channels, n]``.
        state : dict, optional
            From :meth:`init_stream_state` or the previous call (``None``: a
            new stream); updated in place and returned.
        block_step : callable, optional
            Replaces ``self.block.stream``, e.g. a ``torch.compile`` of it.

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
        """ReLU masks ``[num_spks, batch, in_channels, frames]`` for the
        encoder output ``x`` ``[batch, in_channels, frames]``."""
        bsz, _, frames = x.shape
        x0 = self.bottleneck(self.norm(x))  # [batch, C, frames]
        kernel = None
        if self.share_kernel:
            # the weights are shared, so is the coarsest scale's S4 kernel
            t_c = self.block.coarsest_length(x0.shape[-1])
            kernel = self.block.s4.s4.kernel(t_c)
        h = self._apply_block(x0, kernel)
        for _ in range(self.num_iterations - 1):
            h = self._apply_block(self.iter_act(self.iter_conv(x0 + h)), kernel)
        masks = F.relu(self.mask_conv(self.mask_act(h)))
        masks = masks.view(bsz, self.num_spks, self.in_channels, frames)
        return masks.transpose(0, 1)

"""Streaming helpers of the causal S4M (:mod:`.s4m`): the next frames of
each layer, keeping what later frames need in a state dict (updated in
place, not growing); over chunks of any sizes, the outputs are the
whole-signal causal model's.
"""

import torch
import torch.nn.functional as F

from speechbrain_s4m.nnet.blocks import cln_stream_step
from speechbrain_s4m.nnet.chunk_ops import depthwise_taps


def stream_window(x, st, kernel, stride):
    """Input window of a causal strided convolution for its next outputs.

    Output ``j`` reads inputs ``stride*j - kernel + 1 .. stride*j`` (zeros
    before the start); ``st`` keeps the input tail. Returns ``(window,
    n_new)``: the unpadded convolution of ``window`` ``[batch, channels,
    stride * (n_new - 1) + kernel]`` gives the ``n_new`` outputs that the
    frames ``x`` make available (``window`` is None if there are none).
    """
    if kernel == stride == 1:  # every frame is an output: no buffer
        return (x if x.shape[-1] else None), x.shape[-1]
    if "buf" not in st:
        st["buf"] = x.new_zeros(x.shape[0], x.shape[1], kernel - 1)
    # ``buf`` starts at the first input of the next output (zeros before the
    # start of the stream), so the next outputs are those whose last input
    # has arrived; only the tensor is needed (its length is the phase)
    buf = torch.cat([st["buf"], x], dim=-1) if x.shape[-1] else st["buf"]
    n_new = max(0, -(-(buf.shape[-1] - kernel + 1) // stride))
    window = None
    if n_new > 0:
        window = buf[..., : stride * (n_new - 1) + kernel]
    st["buf"] = buf[..., stride * n_new :]
    return window, n_new


def stream_pool(x, st, factor):
    """Streaming causal pooling (``_causal_pool`` of lobes.s4m): new fine
    frames -> new coarse frames."""
    if factor == 1:
        return x
    window, n_new = stream_window(x, st, factor, factor)
    if window is None:
        return x[..., :0]
    bsz, ch = x.shape[:2]
    return window.reshape(bsz, ch, n_new, factor).mean(dim=-1)


def stream_resize(x, st, shift, n_out):
    """Streaming causal resize (``_causal_resize`` of lobes.s4m): the next
    ``n_out`` target frames given the new source frames ``x``; ``st`` keeps
    the source frames that later targets still read."""
    if "buf" not in st:
        st["buf"], st["phase"] = x[..., :0], 0
    buf = torch.cat([st["buf"], x], dim=-1) if x.shape[-1] else st["buf"]
    # ``phase``: where the next target sits relative to the buffer's first
    # source frame (up-sampling: in target frames, target ``i`` reading
    # buffer frame ``i // r``; down-sampling: the buffer frame it reads).
    # Only this offset matters, not the absolute frame numbers.
    phase = st["phase"]
    if shift >= 0:
        r = 2**shift
        if n_out == 0:
            out = buf[..., :0]
        elif phase % r or n_out % r:
            src = torch.arange(phase, phase + n_out, device=x.device) // r
            out = buf.index_select(-1, src)
        else:  # whole groups of r targets: a broadcast of the sources
            first = phase // r
            out = buf[..., first : first + n_out // r, None]
            out = out.expand(-1, -1, -1, r).reshape(*buf.shape[:2], n_out)
        # keep the next target's source frame (it may not have arrived yet)
        keep = min((phase + n_out) // r, buf.shape[-1])
        st["phase"] = phase + n_out - r * keep
    else:
        r = 2**-shift
        out = buf[..., phase : phase + r * (n_out - 1) + 1 : r]
        keep = min(phase + r * n_out, buf.shape[-1])
        st["phase"] = phase + r * n_out - keep
    st["buf"] = buf[..., keep:]
    return out


@torch.compiler.disable
def s4_stream_eager(layer, x, state):
    """``layer.forward_stream(x, state)`` kept out of a compiled graph: the
    dense complex recurrence (inductor on CPU mis-strides complex
    products)."""
    return layer.forward_stream(x, state)


def s4_stream(layer, x, state, form):
    """The S4 layer on the next coarse frames: the eigenbasis recurrence
    (real tensor operations, compilable) when ``form`` is given
    (:meth:`speechbrain_s4m.nnet.S4.stream_form`), else eager."""
    if form is None:
        return s4_stream_eager(layer, x, state)
    return layer.forward_stream(x, state, form=form)


def fusion_stream(fusion, local, glob, scale_shift, st):
    """Causal ``_Fusion`` of lobes.s4m on the next frames of both inputs.

    The gate and embedding branches share one input window, one product
    with both depthwise kernels and one cumulative-norm call.
    """
    loc = fusion.local_embedding.stream(local, st.setdefault("local", {}))
    gate_cn, emb_cn = fusion.global_gate, fusion.global_embedding
    k = gate_cn.conv.kernel_size[0]
    window, n_new = stream_window(glob, st.setdefault("glob", {}), k, 1)
    bsz, ch = glob.shape[:2]
    if window is None:
        both = glob.new_zeros(bsz, 2, ch, 0)
    else:
        # [2, C, k] depthwise taps of both branches on one window
        w = torch.stack([gate_cn.conv.weight, emb_cn.conv.weight])[:, :, 0]
        both = depthwise_taps(window.unsqueeze(1), w)  # [batch, 2, C, n]
    # [2, C, 1] gains and biases of the two norms
    gains = torch.cat([gate_cn.norm.weight, emb_cn.norm.weight])
    biases = torch.cat([gate_cn.norm.bias, emb_cn.norm.bias])
    both, st["glob_norm"] = cln_stream_step(
        both, st.get("glob_norm"), gains, biases, gate_cn.norm.eps
    )
    gate, emb = both.unbind(1)
    both = torch.cat([torch.sigmoid(gate), emb], dim=1)
    both = stream_resize(
        both, st.setdefault("resize", {}), scale_shift, loc.shape[-1]
    )
    gate, emb = both.chunk(2, dim=1)
    return torch.addcmul(emb, loc, gate)


def decode_stream(decoder, frames, state=None):
    """Overlap-add decoding of the next frames of a stream.

    ``decoder``: a transposed convolution with one output channel (kernel
    K, stride s). The finished samples ``[batch, s * m]`` of ``frames``
    ``[batch, channels, m]`` are returned; the last ``K - s`` stay in
    ``state`` (None: a new stream) for :func:`decode_flush`.

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import Decoder
    >>> dec = Decoder(17, 1, kernel_size=32, stride=8, bias=False)
    >>> w = torch.randn(2, 17, 20)
    >>> y1, state = decode_stream(dec, w[..., :7])
    >>> y2, state = decode_stream(dec, w[..., 7:], state)
    >>> y = torch.cat([y1, y2, decode_flush(dec, state)], -1)
    >>> y.shape, torch.allclose(y, dec(w), atol=1e-6)
    (torch.Size([2, 184]), True)
    """
    k, s = decoder.kernel_size[0], decoder.stride[0]
    bsz, m = frames.shape[0], frames.shape[-1]
    if state is None:
        state = {"pending": frames.new_zeros(bsz, k - s)}
    if m == 0:
        return frames.new_zeros(bsz, 0), state
    y = F.conv_transpose1d(frames, decoder.weight, None, stride=s)[:, 0]
    y = torch.cat([y[:, : k - s] + state["pending"], y[:, k - s :]], dim=-1)
    state["pending"] = y[:, s * m :]
    out = y[:, : s * m]
    if decoder.bias is not None:
        out = out + decoder.bias
    return out, state


def decode_flush(decoder, state):
    """The pending ``K - s`` samples ``[batch, K - s]`` at the end of a
    stream (``state`` from :func:`decode_stream`)."""
    out = state["pending"]
    state["pending"] = out[:, :0]
    if decoder.bias is not None:
        out = out + decoder.bias
    return out

"""Streaming separation: signals that arrive in blocks, separated in chunks.

One role: the pieces that let a signal of any length be separated with
memory bounded by one chunk, whatever the source of the blocks (a file read
block by block, a live stream):

* :class:`StreamingResampler`: block-wise resampling equal to resampling the
  whole signal;
* :func:`align_to_reference`: the speaker order of one chunk matched to the
  previous chunk on their overlap;
* :func:`mixture_gains` / :func:`scale_to_mixture`: a meaningful output
  scale and sign (signed least-squares gains so the sources sum to the
  mixture);
* :class:`OverlapAddSeparator`: chunking, scaling, alignment (kept across a
  silent overlap) and cross-fading;
* :func:`separate_stream`: blocks of a mixture at any rate and channel count
  in, separated blocks at any rate out, of exactly the input's length at
  that rate (the file path of ``S4MSeparation``).

Deliberate difference from SpeechBrain: ``SepformerSeparation`` separates a
file in one pass (memory grows with the file, and there is no speaker-order
alignment between chunks); here long audio is chunked and the speaker order
of each chunk is aligned to the previous one.

Authors
 * speechbrain-s4m contributors 2026
"""

import math

import numpy as np
import torch
import torchaudio
from scipy.optimize import linear_sum_assignment


class StreamingResampler:
    """Resamples a signal that arrives in blocks, equal to resampling it whole.

    torchaudio's sinc resampler is periodic with period ``orig/gcd`` input
    samples; each block is resampled with ``context`` input samples on both
    sides (a multiple of that period, wider than the filter) and the outputs
    that depend on the context are dropped, so the concatenated output equals
    ``torchaudio.functional.resample`` on the whole signal.

    Arguments
    ---------
    orig_freq : int
        Input sample rate.
    new_freq : int
        Output sample rate.

    Example
    -------
    >>> x = torch.randn(2, 44100)
    >>> rs = StreamingResampler(44100, 8000)
    >>> outs = [rs.push(b) for b in x.split(5000, dim=-1)] + [rs.flush()]
    >>> y = torch.cat(outs, dim=-1)
    >>> ref = torchaudio.functional.resample(x, 44100, 8000)
    >>> y.shape == ref.shape, bool(torch.allclose(y, ref, atol=1e-5))
    (True, True)
    """

    def __init__(self, orig_freq, new_freq):
        self.orig_freq = int(orig_freq)
        self.new_freq = int(new_freq)
        self.identity = self.orig_freq == self.new_freq
        gcd = math.gcd(self.orig_freq, self.new_freq)
        self.period_in = self.orig_freq // gcd
        self.period_out = self.new_freq // gcd
        if not self.identity:
            self.resampler = torchaudio.transforms.Resample(
                self.orig_freq, self.new_freq
            )
            width = self.resampler.width
            self.context = self.period_in * (width // self.period_in + 2)
        self._buffer = None  # [channels, n] input not yet resampled (+ctx)
        self._seen = 0
        self._emitted = 0

    def _resample(self, x):
        return self.resampler(x)

    def push(self, block):
        """Adds input ``[channels, n]``; returns the output now final."""
        if self.identity:
            return block
        self._seen += block.shape[-1]
        if self._buffer is None:
            pad = block.new_zeros(block.shape[0], self.context)
            self._buffer = torch.cat([pad, block], dim=-1)
        else:
            self._buffer = torch.cat([self._buffer, block], dim=-1)
        ctx = self.context
        # Input samples ready: those with full right context, whole periods.
        ready = (self._buffer.shape[-1] - 2 * ctx) // self.period_in
        ready *= self.period_in
        if ready <= 0:
            return block.new_zeros(block.shape[0], 0)
        segment = self._buffer[:, : ctx + ready + ctx]
        out = self._resample(segment)
        start = ctx * self.period_out // self.period_in
        n_out = ready * self.period_out // self.period_in
        out = out[:, start : start + n_out]
        self._buffer = self._buffer[:, ready:]
        self._emitted += n_out
        return out

    def flush(self):
        """Returns the remaining output (the input is over)."""
        if self.identity or self._buffer is None:
            return None
        total = math.ceil(self.new_freq * self._seen / self.orig_freq)
        remaining = total - self._emitted
        pad = self._buffer.new_zeros(self._buffer.shape[0], self.context)
        segment = torch.cat([self._buffer, pad], dim=-1)
        out = self._resample(segment)
        start = self.context * self.period_out // self.period_in
        out = out[:, start : start + remaining]
        self._buffer = None
        self._emitted += out.shape[-1]
        return out


# ---------------------------------------------------------------------------
# Overlap-add over chunks with speaker-order alignment
# ---------------------------------------------------------------------------
def align_to_reference(estimate, reference, eps=1e-8):
    """Permutes the sources of ``estimate`` to best match ``reference``.

    The score of a pairing is the normalised correlation of the two signals
    (cosine similarity, i.e. a scale-invariant match); the best permutation
    per batch item is found with the Hungarian algorithm.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[batch, time, spks]`` (only the first ``reference`` samples are
        compared; the whole is permuted).
    reference : torch.Tensor
        ``[batch, overlap, spks]``.
    eps : float
        Avoids division by zero on silent sources.

    Returns
    -------
    torch.Tensor
        ``estimate`` with its sources reordered, ``[batch, time, spks]``.

    Example
    -------
    >>> ref = torch.randn(1, 100, 3)
    >>> est = torch.cat([ref, torch.randn(1, 50, 3)], 1)[..., [2, 0, 1]]
    >>> torch.equal(align_to_reference(est, ref)[:, :100], ref)
    True
    """
    perm = permutation_to_reference(estimate, reference, eps)
    return torch.stack([estimate[b][:, p] for b, p in enumerate(perm)])


def permutation_to_reference(estimate, reference, eps=1e-8):
    """The source order of :func:`align_to_reference`, ``[batch, spks]``.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[batch, time, spks]``.
    reference : torch.Tensor
        ``[batch, overlap, spks]``.
    eps : float
        Avoids division by zero on silent sources.

    Returns
    -------
    torch.Tensor
        ``[batch, spks]`` long: output source ``i`` is estimate source
        ``perm[b, i]``.

    Example
    -------
    >>> ref = torch.randn(1, 100, 3)
    >>> permutation_to_reference(ref[..., [2, 0, 1]], ref)
    tensor([[1, 2, 0]])
    """
    n = reference.shape[1]
    head = estimate[:, :n]
    head = head / (head.norm(dim=1, keepdim=True) + eps)
    ref = reference / (reference.norm(dim=1, keepdim=True) + eps)
    # score[b, i, j] = corr(reference source i, estimate source j)
    score = torch.einsum("bti,btj->bij", ref.double(), head.double())
    perms = []
    for b in range(estimate.shape[0]):
        rows, cols = linear_sum_assignment(
            score[b].cpu().numpy(), maximize=True
        )
        perms.append(torch.as_tensor(cols[np.argsort(rows)]))
    return torch.stack(perms)


#: Scalings of the estimates: ``"mixture"`` (least-squares gains, see
#: :func:`scale_to_mixture`) or ``"none"`` (the model's own scale).
SCALE_MODES = ("mixture", "none")


def mixture_gains(estimate, mix, eps=1e-10, rcond=1e-2):
    """Signed per-source gains that make the sources sum to the mixture.

    Solves ``min_g ||mix - sum_k g_k s_k||^2`` with gains of either sign
    (per batch item, in float64). The sign matters: SI-SNR training leaves
    the sign of each output free, and trained models do output inverted
    sources; a negative gain turns such a source back (a gain constrained
    to be nonnegative would silence it instead).

    Sources whose energy is below ``eps`` times the mixture's get gain 1
    (they are silent anyway); a silent mixture gives zero gains. The
    system is solved in the eigenbasis of the sources' correlation matrix,
    leaving out the directions whose eigenvalue is below ``rcond`` times
    the largest (minimum-norm least squares, a truncated SVD): sources
    that are nearly copies of each other (correlation above about 0.98 for
    two) would otherwise get huge gains of opposite signs that cancel in
    the sum; instead they share the mixture's projection on them. The
    energy of the scaled sources is then at most ``1 / rcond`` times
    the mixture's.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[batch, time, spks]`` separated sources (any scale, any sign).
    mix : torch.Tensor
        ``[batch, time]`` the mixture they were separated from.
    eps : float
        Relative energy under which a source counts as silent.
    rcond : float
        Relative eigenvalue under which a direction of the sources'
        correlation matrix is left out (see above).

    Returns
    -------
    torch.Tensor
        ``[batch, spks]`` float64 gains.

    Example
    -------
    >>> s = torch.randn(1, 1000, 2)
    >>> mix = 0.5 * s[..., 0] + 2.0 * s[..., 1]
    >>> mixture_gains(-s * 10, mix).mul(10).round(decimals=6)
    tensor([[-0.5000, -2.0000]], dtype=torch.float64)
    """
    est = estimate.detach().double().cpu()
    mix = mix.detach().double().cpu()
    gains = torch.ones(est.shape[0], est.shape[2], dtype=torch.float64)
    for b in range(est.shape[0]):
        y = mix[b]  # [time]
        mix_energy = float(y.square().sum())
        if mix_energy == 0.0:
            gains[b] = 0.0
            continue
        energy = est[b].square().sum(dim=0)  # [spks]
        active = (energy > eps * mix_energy).nonzero()[:, 0]
        if active.numel() == 0:
            continue
        norms = energy[active].sqrt()
        # Unit-norm columns: the Gram matrix is then the sources'
        # correlation matrix, whose spectrum measures linear dependence
        # only (not the sources' very different raw scales).
        unit = est[b][:, active] / norms  # [time, active]
        gram = unit.t() @ unit  # [active, active]
        corr = unit.t() @ y  # [active]
        eigval, eigvec = torch.linalg.eigh(gram)  # ascending
        keep = eigval > rcond * eigval[-1]
        basis = eigvec[:, keep]
        unit_gains = basis @ ((basis.t() @ corr) / eigval[keep])
        gains[b, active] = unit_gains / norms
    return gains


def scale_to_mixture(estimate, mix):
    """Scales each source with :func:`mixture_gains`.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[batch, time, spks]``.
    mix : torch.Tensor
        ``[batch, time]``.

    Returns
    -------
    torch.Tensor
        ``[batch, time, spks]``, same dtype as ``estimate``.

    Example
    -------
    >>> s = torch.randn(2, 800, 2)
    >>> out = scale_to_mixture(s * 30, s.sum(-1))
    >>> bool(torch.allclose(out, s, atol=1e-5))
    True
    """
    gains = mixture_gains(estimate, mix).to(estimate.dtype)
    return estimate * gains[:, None, :].to(estimate.device)


class OverlapAddSeparator:
    """Separates a stream chunk by chunk, cross-fading the overlaps.

    Chunks of ``chunk`` samples start every ``chunk - overlap`` samples. The
    outputs of each chunk are put in the speaker order of the previous chunk
    (``align_to_reference`` on the overlap), then cross-faded over the overlap
    with complementary ``sin^2``/``cos^2`` windows (they sum to one). Output
    is released as soon as no later chunk can change it, so only one chunk
    is held at a time.

    Scale: with ``scale="mixture"`` each chunk's sources are first scaled
    by :func:`mixture_gains` against that chunk's mixture, so that they sum
    to it in the least-squares sense. The gains are computed per chunk, not
    once per file, because each chunk is a separate forward pass whose
    output scale and sign the (scale- and sign-invariant) training leaves
    free; chunks are long (30 s by default) so the gains are well
    determined, and the cross-fade makes the change between chunks smooth
    (both chunks sum to the mixture on the overlap, so does their
    cross-fade). ``"none"`` keeps the model's own scale.

    Polarity across chunks: the gains are signed, and each chunk takes its
    sign from its own mixture, which is the same signal on both sides of a
    boundary; so a source keeps one polarity across chunks even when the
    model's sign changes from one forward pass to the next. Fixing each
    source's sign once, on the first chunk, would carry that chunk's sign
    to later passes that may invert differently; scaling once after the
    overlap-add would need the whole file in memory. Scaling happens
    before the speaker-order alignment, so the correlations that decide
    the order compare sources of the right sign.

    Speaker order: decided on the overlap only when it carries enough
    energy: its mean power, in the previous chunk's tail and in the new
    chunk's head, must be at least ``min_overlap_power`` (default 1e-3,
    -30 dB) times the new chunk's mean power. Otherwise the correlation
    would pick an arbitrary order, and the permutation of the previous
    chunk is kept.

    Arguments
    ---------
    separate_fn : callable
        ``[batch, n] -> [batch, n, spks]`` (e.g. ``separate_batch``).
    chunk : int
        Chunk length in samples.
    overlap : int
        Overlap between consecutive chunks in samples (``0 < overlap <
        chunk``).
    scale : str
        ``"none"`` (default here: the output of ``separate_fn``) or
        ``"mixture"``.
    min_overlap_power : float
        Relative power of the overlap under which the speaker order is not
        re-decided (see above).

    Example
    -------
    >>> sep = OverlapAddSeparator(lambda x: torch.stack([x, -x], -1), 100, 20)
    >>> x = torch.randn(1, 1000)
    >>> outs = [sep.push(b) for b in x.split(64, -1)] + [sep.flush()]
    >>> y = torch.cat([o for o in outs if o is not None], 1)
    >>> y.shape, bool(torch.allclose(y[..., 0], x, atol=1e-6))
    (torch.Size([1, 1000, 2]), True)
    """

    def __init__(
        self, separate_fn, chunk, overlap, scale="none", min_overlap_power=1e-3
    ):
        chunk, overlap = int(chunk), int(overlap)
        if overlap <= 0 or overlap >= chunk:
            raise ValueError(
                f"need 0 < overlap < chunk, got overlap={overlap} samples "
                f"and chunk={chunk} samples"
            )
        if scale not in SCALE_MODES:
            raise ValueError(
                f"scale must be one of {', '.join(SCALE_MODES)}, got {scale!r}"
            )
        self.scale = scale
        self.min_overlap_power = float(min_overlap_power)
        self._perm = None  # [batch, spks] permutation of the last chunk
        self.separate_fn = separate_fn
        self.chunk = chunk
        self.overlap = overlap
        t = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
        self.fade_in = torch.sin(0.5 * math.pi * t) ** 2  # [overlap]
        self.fade_out = 1.0 - self.fade_in
        self._pending = []  # list of [batch, n] input blocks
        self._pending_len = 0
        self._tail = None  # [batch, overlap, spks] aligned, not yet final
        self.chunks_done = 0

    def _take(self, n):
        """Returns the first n pending samples ``[batch, n]``."""
        x = (
            torch.cat(self._pending, dim=-1)
            if len(self._pending) > 1
            else self._pending[0]
        )
        self._pending = [x]
        return x[:, :n]

    def _drop(self, n):
        x = self._pending[0][:, n:]
        self._pending = [x]
        self._pending_len = x.shape[-1]

    def _process(self, x, final):
        est = self.separate_fn(x).detach().to("cpu", torch.float32)
        if self.scale == "mixture":
            est = scale_to_mixture(est, x.detach().to("cpu", torch.float32))
        ov = self.overlap
        if self._tail is None:  # first chunk: its order is the reference
            self._perm = torch.arange(est.shape[2]).repeat(est.shape[0], 1)
        else:
            n = min(ov, est.shape[1])
            est = self._align(est, self._tail[:, :n])
            fade_in = self.fade_in[:n].to(est.dtype)[None, :, None]
            fade_out = self.fade_out[:n].to(est.dtype)[None, :, None]
            est = est.clone()
            est[:, :n] = self._tail[:, :n] * fade_out + est[:, :n] * fade_in
        self.chunks_done += 1
        if final:
            self._tail = None
            return est
        self._tail = est[:, -ov:]
        return est[:, :-ov]

    def _align(self, est, tail):
        """Orders the sources of ``est`` like ``tail`` (or like the last
        chunk when the overlap is too quiet to decide)."""
        n = tail.shape[1]
        chunk_power = est.double().square().mean(dim=(1, 2))  # [batch]
        head_power = est[:, :n].double().square().mean(dim=(1, 2))
        tail_power = tail.double().square().mean(dim=(1, 2))
        floor = self.min_overlap_power * chunk_power
        decide = (head_power >= floor) & (tail_power >= floor)
        decide &= chunk_power > 0
        out = []
        for b in range(est.shape[0]):
            if decide[b]:
                perm = permutation_to_reference(est[b : b + 1], tail[b : b + 1])
                self._perm[b] = perm[0]
            out.append(est[b][:, self._perm[b]])
        return torch.stack(out)

    def push(self, block):
        """Adds input ``[batch, n]``; returns final output ``[batch, m, spks]``.

        ``m`` may be zero while a chunk is being filled.
        """
        if block.shape[-1] > 0:
            self._pending.append(block)
            self._pending_len += block.shape[-1]
        outs = []
        # Keep at least one sample beyond the chunk so that the last chunk
        # is never a pure copy of the previous overlap.
        while self._pending_len > self.chunk:
            x = self._take(self.chunk)
            outs.append(self._process(x, final=False))
            self._drop(self.chunk - self.overlap)
        if not outs:
            return None
        return torch.cat(outs, dim=1)

    def flush(self):
        """Processes what is left; returns the last output."""
        if self._pending_len == 0:
            return None
        x = self._take(self._pending_len)
        self._pending, self._pending_len = [], 0
        return self._process(x, final=True)


def cat_outputs(parts):
    """Concatenates the non-empty outputs ``[batch, n, spks]`` in time.

    Arguments
    ---------
    parts : list of torch.Tensor or None
        Outputs of :meth:`OverlapAddSeparator.push` / ``flush``.

    Returns
    -------
    torch.Tensor
        ``[batch, time, spks]``.

    Example
    -------
    >>> cat_outputs([None, torch.zeros(1, 3, 2), torch.zeros(1, 0, 2)]).shape
    torch.Size([1, 3, 2])
    """
    parts = [p for p in parts if p is not None and p.shape[1] > 0]
    return torch.cat(parts, dim=1)


def output_length(frames, rate_in, out_rate):
    """Length at ``out_rate`` of ``frames`` samples at ``rate_in``.

    ``ceil(frames * out_rate / rate_in)``, torchaudio's resampling length,
    computed in integers; ``frames`` itself when the rates are equal.

    Arguments
    ---------
    frames : int
        Input length.
    rate_in : int
        Input sample rate.
    out_rate : int
        Output sample rate.

    Returns
    -------
    int

    Example
    -------
    >>> output_length(67727, 44100, 8000), output_length(67727, 44100, 44100)
    (12287, 67727)
    """
    return -(-int(frames) * int(out_rate) // int(rate_in))


class ExactLength:
    """Cuts a stream of output blocks ``[spks, n]`` to an exact length.

    Resampling to the model's rate and back rounds the length up twice: a
    file of 67,727 frames at 44.1 kHz is 12,287 samples at 8 kHz, which
    resample to 67,733 frames at 44.1 kHz. The outputs must have the
    input's length at the output rate (:func:`output_length`): blocks are
    passed through, cut once that length is reached, and :meth:`padding`
    gives the zeros that complete a short stream.

    Arguments
    ---------
    length : int, optional
        Samples in all; may be set later (``keeper.length = n``), before
        the blocks that could exceed it.

    Example
    -------
    >>> keep = ExactLength(5)
    >>> [tuple(keep(torch.ones(2, n)).shape) for n in (3, 4)]
    [(2, 3), (2, 2)]
    >>> keep(torch.ones(2, 1)) is None, keep.padding(2) is None
    (True, True)
    """

    def __init__(self, length=None):
        self.length = length
        self.emitted = 0

    def __call__(self, block):
        """The part of ``block`` within the length (None if empty)."""
        if block is None:
            return None
        if self.length is not None:
            block = block[..., : max(self.length - self.emitted, 0)]
        self.emitted += block.shape[-1]
        return block if block.shape[-1] else None

    def padding(self, channels):
        """Zeros ``[channels, m]`` up to the length (None if complete)."""
        missing = self.length - self.emitted
        if missing <= 0:
            return None
        self.emitted += missing
        return torch.zeros(channels, missing)


def separate_stream(
    blocks,
    separate_fn,
    rate_in,
    model_rate,
    out_rate,
    chunk,
    overlap,
    scale="none",
):
    """Separates a stream of mixture blocks; yields separated blocks.

    Each block is downmixed, resampled to the model's rate, separated chunk
    by chunk (:class:`OverlapAddSeparator`) and the sources resampled to
    ``out_rate``: memory is bounded by the chunk length, whatever the
    stream's length, and the concatenated output does not depend on how the
    input was cut into blocks. The output has exactly the input's length at
    ``out_rate`` (:func:`output_length`; the input's own length when
    ``out_rate == rate_in``).

    Arguments
    ---------
    blocks : iterable of numpy.ndarray or torch.Tensor
        ``[frames, channels]`` mixture blocks at ``rate_in``.
    separate_fn : callable
        ``[batch, n] -> [batch, n, spks]`` at ``model_rate``.
    rate_in : int
        Sample rate of the blocks.
    model_rate : int
        Sample rate ``separate_fn`` works at.
    out_rate : int
        Sample rate of the yielded blocks.
    chunk : int
        Chunk length in samples at ``model_rate``.
    overlap : int
        Overlap between chunks in samples at ``model_rate``.
    scale : str
        ``"none"`` or ``"mixture"`` (see :class:`OverlapAddSeparator`).

    Yields
    ------
    torch.Tensor
        ``[spks, n]`` separated blocks at ``out_rate``.

    Example
    -------
    >>> x = torch.randn(16000, 2)
    >>> fn = lambda m: torch.stack([m, -m], -1)
    >>> out = separate_stream(x.split(3000), fn, 16000, 8000, 16000, 4000, 800)
    >>> y = torch.cat(list(out), dim=-1)
    >>> y.shape
    torch.Size([2, 16000])
    >>> bool(torch.allclose(y[0], -y[1]))
    True
    """
    to_model = StreamingResampler(rate_in, model_rate)
    to_out = StreamingResampler(model_rate, out_rate)
    sep = OverlapAddSeparator(separate_fn, chunk, overlap, scale=scale)
    # Known once the input is over; the outputs before that never exceed
    # it (each resampler only emits samples with their full right context).
    keep = ExactLength()
    frames, spks = 0, None

    def emit(est):
        nonlocal spks
        if est is None or est.shape[1] == 0:
            return None
        spks = est.shape[2]
        out = to_out.push(est[0].t().contiguous())  # [spks, n]
        return keep(out if out.shape[-1] > 0 else None)

    for block in blocks:
        block = torch.as_tensor(block)
        frames += block.shape[0]
        mono = block.mean(dim=1)[None]  # [1, n]
        x = to_model.push(mono)
        if x.shape[-1] > 0:
            out = emit(sep.push(x))
            if out is not None:
                yield out
    keep.length = output_length(frames, rate_in, out_rate)
    rest = to_model.flush()
    if rest is not None and rest.shape[-1] > 0:
        out = emit(sep.push(rest))
        if out is not None:
            yield out
    out = emit(sep.flush())
    if out is not None:
        yield out
    tail = keep(to_out.flush())
    if tail is not None:
        yield tail
    if spks is not None:
        pad = keep.padding(spks)
        if pad is not None:
            yield pad

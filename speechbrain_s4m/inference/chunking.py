"""Chunked overlap-add separation of signals and files of any length.

Memory is bounded by one chunk: the mixture is resampled block-wise
(:class:`StreamingResampler`), separated in overlapping chunks aligned and
cross-faded (:class:`OverlapAddSeparator`), and resampled back to exactly
the input's length (:func:`separate_stream`).
"""

import math

import numpy as np
import torch
import torchaudio
from scipy.optimize import linear_sum_assignment

from speechbrain_s4m import audio


class StreamingResampler:
    """Resamples a signal that arrives in blocks, equal to resampling it whole.

    torchaudio's sinc resampler is periodic with period ``orig/gcd`` input
    samples; each block is resampled with ``context`` input samples on both
    sides (whole periods, wider than the filter) and the outputs that depend
    on the context are dropped.

    Arguments
    ---------
    orig_freq, new_freq : int
        Input and output sample rates.

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
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
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
            self.skip = self.context * self.period_out // self.period_in
        self._buffer = None  # [channels, n] input not yet resampled (+ctx)
        self._seen = self._emitted = 0  # input and output samples

    def _emit(self, segment, n):
        out = self.resampler(segment)[:, self.skip : self.skip + n]
        self._emitted += out.shape[-1]
        return out

    def push(self, block):
        """Adds input ``[channels, n]``; returns the output now final."""
        if self.identity:
            return block
        self._seen += block.shape[-1]
        if self._buffer is None:  # zeros as the left context of the start
            self._buffer = block.new_zeros(block.shape[0], self.context)
        self._buffer = torch.cat([self._buffer, block], dim=-1)
        ctx = self.context
        # Input samples ready: those with full right context, whole periods.
        ready = (self._buffer.shape[-1] - 2 * ctx) // self.period_in
        ready *= self.period_in
        if ready <= 0:
            return block.new_zeros(block.shape[0], 0)
        segment = self._buffer[:, : ctx + ready + ctx]
        self._buffer = self._buffer[:, ready:]
        return self._emit(segment, ready * self.period_out // self.period_in)

    def flush(self):
        """Returns the remaining output (the input is over)."""
        if self.identity or self._buffer is None:
            return None
        total = math.ceil(self.new_freq * self._seen / self.orig_freq)
        pad = self._buffer.new_zeros(self._buffer.shape[0], self.context)
        segment = torch.cat([self._buffer, pad], dim=-1)
        self._buffer = None
        return self._emit(segment, total - self._emitted)


def _permutation(estimate, reference, eps=1e-8):
    """``[batch, spks]``: source ``i`` of ``reference`` ``[batch, overlap,
    spks]`` best matches source ``perm[b, i]`` of ``estimate`` ``[batch,
    time, spks]`` (cosine similarity on the overlap, Hungarian algorithm)."""
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


def mixture_gains(estimate, mix, eps=1e-10, rcond=1e-2):
    """Signed per-source gains that make the sources sum to the mixture.

    Solves ``min_g ||mix - sum_k g_k s_k||^2`` per batch item in float64.
    Gains may be negative: SI-SNR training leaves each output's sign free,
    and a negative gain turns an inverted source back. Sources with energy
    below ``eps`` times the mixture's keep gain 1; a silent mixture gives
    zero gains. Directions of the sources' correlation matrix with an
    eigenvalue below ``rcond`` times the largest are left out (minimum-norm
    least squares): near-copies of a source would otherwise get huge gains
    of opposite signs that cancel.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[batch, time, spks]`` separated sources (any scale, any sign).
    mix : torch.Tensor
        ``[batch, time]`` the mixture they were separated from.
    eps, rcond : float
        Relative energy of a silent source, relative eigenvalue left out.

    Returns
    -------
    torch.Tensor
        ``[batch, spks]`` float64.

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
        # unit-norm columns: the spectrum measures dependence, not scales
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
    """``estimate`` ``[batch, time, spks]`` scaled by :func:`mixture_gains`
    against ``mix`` ``[batch, time]`` (same dtype as ``estimate``)."""
    gains = mixture_gains(estimate, mix).to(estimate.dtype)
    return estimate * gains[:, None, :].to(estimate.device)


class OverlapAddSeparator:
    """Separates a stream chunk by chunk, cross-fading the overlaps.

    Chunks of ``chunk`` samples start every ``chunk - overlap`` samples.
    Each chunk's sources are (with ``scale="mixture"``) scaled by
    :func:`mixture_gains` against that chunk's mixture, put in the speaker
    order of the previous chunk on the overlap, and cross-faded with
    ``sin^2``/``cos^2`` windows. Gains per chunk: each forward pass has its
    own free scale and sign, and both chunks sum to the same mixture on the
    overlap, so a source keeps one polarity across chunks. The speaker
    order is re-decided only when the overlap's mean power, in both chunks,
    is at least ``min_overlap_power`` times the new chunk's; otherwise the
    previous order is kept. Output is released as soon as it is final.

    Arguments
    ---------
    separate_fn : callable
        ``[batch, n] -> [batch, n, spks]`` (e.g. ``separate_batch``).
    chunk, overlap : int
        Chunk and overlap lengths in samples, ``0 < overlap < chunk``.
    scale : str
        ``"none"`` (the output of ``separate_fn``) or ``"mixture"``.
    min_overlap_power : float
        Relative overlap power under which the speaker order is kept.

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
        modes = ("mixture", "none")
        if scale not in modes:
            raise ValueError(
                f"scale must be one of {', '.join(modes)}, got {scale!r}"
            )
        self.separate_fn, self.chunk, self.overlap = separate_fn, chunk, overlap
        self.scale = scale
        self.min_overlap_power = float(min_overlap_power)
        t = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
        self.fade_in = torch.sin(0.5 * math.pi * t) ** 2  # [overlap]
        self.fade_out = 1.0 - self.fade_in
        self._perm = None  # [batch, spks] permutation of the last chunk
        self._pending = []  # [batch, n] input blocks
        self._pending_len = 0
        self._tail = None  # [batch, overlap, spks] aligned, not yet final
        self.chunks_done = 0

    def _process(self, x, final):
        est = self.separate_fn(x).detach().to("cpu", torch.float32)
        if self.scale == "mixture":  # before alignment: signs are right
            est = scale_to_mixture(est, x.detach().to("cpu", torch.float32))
        if self._tail is None:  # first chunk: its order is the reference
            self._perm = torch.arange(est.shape[2]).repeat(est.shape[0], 1)
        else:
            n = min(self.overlap, est.shape[1])
            est = self._align(est, self._tail[:, :n])
            fade_in = self.fade_in[:n].to(est.dtype)[None, :, None]
            fade_out = self.fade_out[:n].to(est.dtype)[None, :, None]
            est = est.clone()
            est[:, :n] = self._tail[:, :n] * fade_out + est[:, :n] * fade_in
        self.chunks_done += 1
        if final:
            self._tail = None
            return est
        self._tail = est[:, -self.overlap :]
        return est[:, : -self.overlap]

    def _align(self, est, tail):
        """``est`` in the order of ``tail`` (or of the last chunk if quiet)."""
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
                perm = _permutation(est[b : b + 1], tail[b : b + 1])
                self._perm[b] = perm[0]
            out.append(est[b][:, self._perm[b]])
        return torch.stack(out)

    def push(self, block):
        """Adds input ``[batch, n]``; returns the output now final,
        ``[batch, m, spks]``, or None while a chunk is being filled."""
        if block.shape[-1] > 0:
            self._pending.append(block)
            self._pending_len += block.shape[-1]
        # At least one sample beyond the chunk is kept, so that the last
        # chunk is never a pure copy of the previous overlap.
        if self._pending_len <= self.chunk:
            return None
        x, outs = self._joined(), []
        while x.shape[-1] > self.chunk:  # chunks are views of one join
            outs.append(self._process(x[:, : self.chunk], final=False))
            x = x[:, self.chunk - self.overlap :]
        self._pending, self._pending_len = [x], x.shape[-1]
        return torch.cat(outs, dim=1)

    def flush(self):
        """Processes what is left; returns the last output (or None)."""
        if self._pending_len == 0:
            return None
        x = self._joined()
        self._pending, self._pending_len = [], 0
        return self._process(x, final=True)

    def _joined(self):
        """The pending input ``[batch, n]``, copied only if in pieces."""
        if len(self._pending) == 1:
            return self._pending[0]
        return torch.cat(self._pending, dim=-1)


def separate_stream(blocks, separator, rate_in, model_rate, out_rate):
    """Separates a stream of mixture blocks; yields separated blocks.

    Each block is downmixed, resampled to ``model_rate`` and pushed to
    ``separator``, whose outputs are resampled to ``out_rate``, cut to the
    input's length there: ``ceil(frames * out_rate / rate_in)``, as
    torchaudio (resampling there and back would round up twice).

    Arguments
    ---------
    blocks : iterable of numpy.ndarray or torch.Tensor
        ``[frames, channels]`` mixture blocks at ``rate_in``.
    separator : OverlapAddSeparator or alike
        ``push([1, n])`` and ``flush()`` give ``[1, m, spks]`` or None.
    rate_in, model_rate, out_rate : int
        Rates of the blocks, of ``separator`` and of the yielded
        ``[spks, n]`` blocks.

    Example
    -------
    >>> x = torch.randn(16000, 2)
    >>> sep = OverlapAddSeparator(lambda m: torch.stack([m, -m], -1), 4000, 800)
    >>> y = torch.cat(list(separate_stream(x.split(3000), sep, 16000, 8000,
    ...                                    16000)), dim=-1)
    >>> y.shape, bool(torch.allclose(y[0], -y[1]))
    (torch.Size([2, 16000]), True)
    """
    to_model = StreamingResampler(rate_in, model_rate)
    to_out = StreamingResampler(model_rate, out_rate)
    frames, done, spks = 0, 0, None

    def outputs(x, last=False):
        """The ``[spks, m]`` outputs at ``out_rate`` of model-rate input."""
        nonlocal spks
        ests = [separator.push(x)] if x is not None and x.shape[-1] else []
        ests += [separator.flush()] if last else []
        for est in ests:
            if est is not None and est.shape[1]:
                spks = est.shape[2]
                yield to_out.push(est[0].t().contiguous())
        if last:
            yield to_out.flush()

    def cut(pieces, length=None):
        """Non-empty ``pieces`` up to ``length`` samples in all."""
        nonlocal done
        for y in pieces:
            if y is not None and length is not None:
                y = y[..., : max(length - done, 0)]
            if y is not None and y.shape[-1]:
                done += y.shape[-1]
                yield y

    for block in blocks:
        block = torch.as_tensor(block)
        frames += block.shape[0]
        # Before the input is over, outputs never pass its length (each
        # resampler only emits samples with their full right context).
        yield from cut(outputs(to_model.push(block.mean(dim=1)[None])))
    length = -(-frames * int(out_rate) // int(rate_in))
    yield from cut(outputs(to_model.flush(), last=True), length)
    if spks is not None and done < length:
        yield torch.zeros(spks, length - done)


def separate_file_blocks(path, make_separator, model_rate, out_rate, min_s):
    """:func:`separate_stream` over an audio file read in blocks, once it
    passed :func:`speechbrain_s4m.audio.check_audio_file` (``min_s``
    seconds at least); ``make_separator()`` gives the separator."""
    info, _ = audio.check_audio_file(path, min_s)
    rate_in = info.samplerate
    blocks = audio.iter_audio_blocks(
        path, max(1, int(audio.READ_BLOCK_SECONDS * rate_in))
    )
    sep = make_separator()
    yield from separate_stream(blocks, sep, rate_in, model_rate, out_rate)

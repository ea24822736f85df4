"""Live streaming separation with a causal S4M: :class:`S4MStreamer`.

A causal separator (``S4MMaskNet(causal=True)``, e.g. the
``s4m_tiny_causal`` fragment) reads no future encoder frame, so it can
separate a stream as it arrives: the encoder, the masknet (its S4 layers in
recurrent mode, with their convolution tails, cumulative-norm sums and
pooling buffers) and the overlap-add decoder each carry a state of fixed
size from one call to the next. Output sample ``t`` is final once input
sample ``t + latency_samples`` has arrived (``K - 1`` samples, K = encoder
kernel: 31 samples = 3.9 ms at 8 kHz), and the concatenated output equals
the causal model run on the whole signal.

This is unlike :class:`~speechbrain_s4m.inference.streaming.\
OverlapAddSeparator`, which re-runs any (offline) model on overlapping
chunks of several seconds.

Authors
 * speechbrain-s4m contributors 2026
"""

import time

import numpy as np
import torch

from speechbrain_s4m.lobes.s4m_stream import decode_flush, decode_stream

#: What to do when the model is not causal (the fix is in the message).
NOT_CAUSAL = (
    "streaming needs a causal model (S4MMaskNet with causal: True); this "
    "model's masknet is not causal. Train or export a model built from a "
    "causal fragment, e.g. hparams/models/s4m_tiny_causal.yaml "
    "(recipe hparams s4m_tiny_causal.yaml)"
)


class StreamerStateError(RuntimeError):
    """The stream was used in the wrong order (e.g. after ``flush``)."""


class S4MStreamer:
    """Separates a live stream hop by hop with a causal model.

    Feed any number of new mixture samples to :meth:`process` (a hop of a
    few milliseconds, or one sample); it returns the separated samples that
    are final. :meth:`flush` returns the rest at the end of the stream and
    :meth:`reset` starts a new one. The state (encoder and decoder tails,
    masknet buffers, S4 recurrent states) does not grow with the stream.

    Arguments
    ---------
    model : S4MSeparation
        A loaded model whose masknet is causal (``model.mods`` holds
        ``encoder``, ``masknet`` and ``decoder``).
    compile : bool
        Opt-in: ``torch.compile`` (inductor) the per-hop step of the
        shared block (one graph serves all iterations; the S4 recurrence
        stays eager). Same outputs; the first hops of each new hop phase
        compile (minutes on CPU), later hops run faster. Best with a fixed
        hop that is a multiple of the coarse period (8 frames = 8 ms at
        8 kHz); see docs/streaming.md for figures.

    Raises
    ------
    ValueError
        If the masknet is not causal (the message names the fix).

    Example
    -------
    >>> from speechbrain_s4m.config import load_model_config
    >>> hp = load_model_config(
    ...     "s4m_tiny_causal",
    ...     overrides={"num_iterations": 2, "out_channels": 8,
    ...                "hidden_channels": 16, "d_state": 4},
    ... )
    >>> streamer = S4MStreamer.from_modules(
    ...     hp["Encoder"], hp["MaskNet"], hp["Decoder"], num_spks=2
    ... )
    >>> streamer.latency_samples
    31
    >>> mix = torch.randn(1, 1000)
    >>> parts = [streamer.process(c) for c in mix.split(128, dim=-1)]
    >>> parts.append(streamer.flush())
    >>> est = torch.cat(parts, dim=1)  # [batch, time, spks]
    >>> est.shape
    torch.Size([1, 1000, 2])
    >>> ref = streamer.separate_whole(mix)
    >>> bool((est - ref).abs().max() < 1e-4)
    True
    """

    def __init__(self, model, compile=False):
        mods = model.mods
        self._init(
            mods["encoder"],
            mods["masknet"],
            mods["decoder"],
            model.num_spks,
            model.sample_rate,
            model.device,
            compile,
        )

    @classmethod
    def from_hparams(cls, source, compile=False, **kwargs):
        """A streamer for a pretrained causal model folder or hub id.

        Arguments
        ---------
        source : str or pathlib.Path
            As :meth:`S4MSeparation.from_hparams`.
        compile : bool
            See the class.
        **kwargs
            Passed to :meth:`S4MSeparation.from_hparams` (e.g.
            ``run_opts={"device": "cpu"}``).

        Returns
        -------
        S4MStreamer
        """
        from speechbrain_s4m.inference.interface import S4MSeparation

        return cls(S4MSeparation.from_hparams(source, **kwargs), compile)

    @classmethod
    def from_modules(
        cls,
        encoder,
        masknet,
        decoder,
        num_spks=2,
        sample_rate=8000,
        compile=False,
    ):
        """A streamer for separate modules (put in ``eval()`` mode).

        Arguments
        ---------
        encoder : S4MEncoder
            With ``forward_stream``/``flush_stream``.
        masknet : S4MMaskNet
            Causal.
        decoder : torch.nn.ConvTranspose1d
            SpeechBrain's ``dual_path.Decoder``.
        num_spks : int
            Number of sources.
        sample_rate : int
            The model's rate (Hz).
        compile : bool
            See the class.

        Returns
        -------
        S4MStreamer
        """
        self = cls.__new__(cls)
        for module in (encoder, masknet, decoder):
            module.eval()
        device = next(masknet.parameters()).device
        self._init(
            encoder, masknet, decoder, num_spks, sample_rate, device, compile
        )
        return self

    def _init(self, encoder, masknet, decoder, num_spks, rate, device, compile):
        if not getattr(masknet, "causal", False) or not hasattr(
            masknet, "forward_stream"
        ):
            raise ValueError(NOT_CAUSAL)
        if not hasattr(encoder, "forward_stream"):
            raise ValueError(
                f"the encoder {type(encoder).__name__} cannot stream "
                "(needs S4MEncoder)"
            )
        self.encoder, self.masknet, self.decoder = encoder, masknet, decoder
        self.num_spks, self.sample_rate = int(num_spks), int(rate)
        self.device = torch.device(device)
        self.dtype = next(masknet.parameters()).dtype
        self._block_step = None
        if compile:
            from torch._dynamo import config

            # one graph per hop phase (and the first hops): room for them
            config.cache_size_limit = max(config.cache_size_limit, 64)
            self._block_step = torch.compile(
                masknet.block.stream, dynamic=False
            )
        self.reset()

    def separate_whole(self, mix):
        """The same modules run on a whole signal (the offline causal
        model, the reference of the stream's output).

        Arguments
        ---------
        mix : torch.Tensor
            ``[batch, time]``.

        Returns
        -------
        torch.Tensor
            ``[batch, time, num_spks]``.
        """
        from speechbrain_s4m.lobes.separator import Separator

        sep = Separator(self.encoder, self.masknet, self.decoder, self.num_spks)
        with torch.no_grad():
            return sep(mix.to(device=self.device, dtype=self.dtype))

    @property
    def latency_samples(self):
        """Algorithmic latency in samples: output sample ``t`` is final
        once input sample ``t + latency_samples`` has been given."""
        enc = self.encoder
        return self.masknet.latency_samples(enc.kernel_size, enc.stride)

    @property
    def latency_ms(self):
        """:attr:`latency_samples` in milliseconds."""
        return 1000.0 * self.latency_samples / self.sample_rate

    def reset(self):
        """Forget the stream: the next :meth:`process` starts a new one."""
        self._enc = None
        self._mask = self.masknet.init_stream_state()
        self._dec = None
        self._batch = None
        self._finished = False
        #: input samples given and output samples returned so far
        self.samples_in, self.samples_out = 0, 0
        #: number of :meth:`process` calls
        self.calls = 0
        #: seconds spent in :meth:`process` / :meth:`flush`
        self.compute_seconds = 0.0

    @property
    def rtf(self):
        """Real-time factor so far: compute time / audio duration."""
        if not self.samples_in:
            return float("nan")
        return self.compute_seconds * self.sample_rate / self.samples_in

    def state_tensors(self):
        """Every tensor of the stream's state (to check that it does not
        grow): encoder and decoder tails, masknet buffers and sums."""
        out = []

        def walk(node):
            if torch.is_tensor(node):
                out.append(node)
            elif isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, (list, tuple)):
                for value in node:
                    walk(value)

        walk([self._enc, self._mask, self._dec])
        return out

    def _check_chunk(self, chunk):
        """The block as ``[batch, n]`` on the model's device and dtype, and
        whether it was 1-D; raises (changing nothing) if it is refused.

        The stream's state is not touched here: :meth:`process` commits the
        batch size only once the block is accepted.
        """
        if self._finished:
            raise StreamerStateError(
                "the stream was flushed; call reset() to start a new one"
            )
        chunk = _as_samples(chunk)
        squeeze = chunk.dim() == 1
        if squeeze:
            chunk = chunk.unsqueeze(0)
        expected = (
            "expected mixture samples [batch, n] (batch streams of n "
            "samples) or [n] (one stream)"
        )
        if chunk.dim() != 2:
            raise ValueError(f"{expected}, got shape {tuple(chunk.shape)}")
        batch, n = chunk.shape
        if self._batch is None and (batch == 0 or 0 < n <= 8 < batch):
            # [frames, channels] as soundfile reads it, taken for
            # [batch, n], would start `frames` streams of a few samples.
            raise ValueError(
                f"{expected}, got shape {tuple(chunk.shape)}, which looks "
                "like [frames, channels] audio: downmix it "
                "(block.mean(axis=1)) to [n], or transpose it to "
                "[channels, n] to separate each channel as a stream (a "
                "stream batch must start with a block of more than 8 "
                "samples)"
            )
        if self._batch is not None and batch != self._batch:
            one = " or [n]" if self._batch == 1 else ""
            raise ValueError(
                f"expected a block of shape [{self._batch}, n]{one}: the "
                f"stream has batch size {self._batch} (fixed by its first "
                f"block), got shape {tuple(chunk.shape)}; call reset() to "
                "start a stream of another batch size"
            )
        finite = torch.isfinite(chunk)
        if not bool(finite.all()):
            bad = (~finite).nonzero()[0].tolist()
            raise ValueError(
                f"the block holds NaN or Inf samples (first at {bad}); it "
                "was not used, the stream continues as if it had not been "
                "sent"
            )
        chunk = chunk.to(device=self.device, dtype=self.dtype)
        return chunk, squeeze

    def _separate(self, frames):
        """Masked decoding of new encoder frames -> ``[batch, m, spks]``."""
        masks, self._mask = self.masknet.forward_stream(
            frames, self._mask, self._block_step
        )
        sep = frames.unsqueeze(0) * masks  # [spks, batch, E, m]
        sep = sep.reshape(sep.shape[0] * sep.shape[1], *sep.shape[2:])
        y, self._dec = decode_stream(self.decoder, sep, self._dec)
        return y

    def _arrange(self, y, squeeze):
        """``[spks * batch, m]`` -> ``[batch, m, spks]`` (``[m, spks]``)."""
        y = y.reshape(self.num_spks, self._batch or 1, y.shape[-1])
        y = y.permute(1, 2, 0)
        self.samples_out += y.shape[1]
        return y[0] if squeeze else y

    def process(self, chunk):
        """Separates the next samples of the stream.

        Each block is checked like ``s4m-separate`` checks files, before
        anything is computed; a refused block raises and leaves the stream
        untouched, which then continues exactly as if the block had never
        been sent.

        Arguments
        ---------
        chunk : torch.Tensor, numpy.ndarray or sequence of numbers
            ``[batch, n]`` (or ``[n]`` for one stream) new mixture samples
            at the model's rate; any ``n`` (0 included). The batch size is
            fixed by the stream's first block (which must then have more
            than 8 samples if ``batch > n``: a ``[frames, channels]`` block
            is refused). Samples must be finite. Float samples (any float
            dtype) are taken as they are; integer PCM samples are rescaled
            to [-1, 1): int16 divided by 32768 (2**15), int32 by 2**31.
            Other dtypes (other integers, bool, complex) are refused.
            Python sequences (lists, nested lists) are converted like
            ``numpy.asarray``: floats are accepted, Python ints become
            int64 and are refused (give floats or an int16/int32 array).

        Raises
        ------
        ValueError
            NaN or Inf samples, or a shape other than ``[batch, n]`` /
            ``[n]``, or a batch size other than the stream's; the message
            says what is expected.
        TypeError
            Not samples (e.g. a string), or a refused dtype.
        StreamerStateError
            After :meth:`flush`, until :meth:`reset`.

        Returns
        -------
        torch.Tensor
            The separated samples that are now final: ``[batch, m,
            num_spks]`` (``[m, num_spks]`` for a 1-D chunk). Across calls,
            the outputs follow each other without gap or overlap; ``m``
            may differ from ``n`` (the output lags the input by at most
            ``latency_samples`` plus one encoder hop).
        """
        start = time.perf_counter()
        chunk, squeeze = self._check_chunk(chunk)  # refused: state unchanged
        self._batch = chunk.shape[0]
        with torch.no_grad():
            frames, self._enc = self.encoder.forward_stream(chunk, self._enc)
            y = self._separate(frames)
        self.samples_in += chunk.shape[-1]
        self.calls += 1
        out = self._arrange(y, squeeze)
        self.compute_seconds += time.perf_counter() - start
        return out

    def flush(self, squeeze=False):
        """Ends the stream: returns the samples not returned yet.

        The input is taken to end with the last sample given (as the
        whole-signal model zero-pads its end). Afterwards :meth:`process`
        raises until :meth:`reset`.

        Arguments
        ---------
        squeeze : bool
            Return ``[m, num_spks]`` (for a stream of 1-D chunks).

        Returns
        -------
        torch.Tensor
            ``[batch, m, num_spks]``: the last ``samples_in - samples_out``
            samples.
        """
        if self._finished:
            raise StreamerStateError(
                "the stream was flushed already; call reset()"
            )
        start = time.perf_counter()
        self._finished = True
        batch = self._batch or 1
        if self._enc is None:  # nothing was given
            empty = torch.zeros(batch, 0, self.num_spks, device=self.device)
            return empty[0] if squeeze else empty
        with torch.no_grad():
            y = self._separate(self.encoder.flush_stream(self._enc))
            y = torch.cat([y, decode_flush(self.decoder, self._dec)], -1)
        y = y[:, : self.samples_in - self.samples_out]
        out = self._arrange(y, squeeze)
        self.compute_seconds += time.perf_counter() - start
        return out


#: Integer sample formats and the factor that maps them to [-1, 1).
INT_SCALES = {torch.int16: 2.0**-15, torch.int32: 2.0**-31}


def _as_samples(block):
    """A block of samples as a float or int16/int32-rescaled tensor.

    Arguments
    ---------
    block : torch.Tensor, numpy.ndarray or sequence of numbers
        Samples.

    Returns
    -------
    torch.Tensor
        Floating-point samples (int16 / int32 rescaled to [-1, 1)).

    Raises
    ------
    TypeError
        Not numbers, or a dtype that has no documented meaning as audio.

    Example
    -------
    >>> _as_samples(np.array([-32768, 16384], dtype=np.int16)).tolist()
    [-1.0, 0.5]
    >>> _as_samples([[0.5, -0.25]]).shape
    torch.Size([1, 2])
    >>> _as_samples([1, 2])
    Traceback (most recent call last):
      ...
    TypeError: samples of dtype int64 are not accepted: give float samples ...
    """
    if not torch.is_tensor(block):
        if isinstance(block, (str, bytes, dict)) or block is None:
            raise TypeError(
                "expected mixture samples (a torch.Tensor, a numpy array or "
                f"a sequence of numbers), got {type(block).__name__}"
            )
        try:
            array = np.asarray(block)
        except ValueError as err:  # ragged nested sequences
            raise ValueError(
                f"the block cannot be read as an array of samples ({err}); "
                "give [batch, n] or [n] numbers"
            ) from None
        if array.dtype.kind not in "biufc":
            raise TypeError(
                "expected mixture samples (numbers), got an array of "
                f"{array.dtype} (e.g. ragged rows or non-numbers); give "
                "[batch, n] or [n] numbers"
            )
        # native byte order and positive strides, which torch requires
        array = np.ascontiguousarray(array, array.dtype.newbyteorder("="))
        block = torch.from_numpy(array)
    if block.dtype in INT_SCALES:
        return block.double() * INT_SCALES[block.dtype]
    if not torch.is_floating_point(block):
        raise TypeError(
            f"samples of dtype {str(block.dtype).replace('torch.', '')} "
            "are not accepted: give float samples in [-1, 1], or int16 / "
            "int32 PCM (rescaled by 2**-15 / 2**-31)"
        )
    return block


def stream_file_blocks(streamer, path, out_rate, hop_samples):
    """Separates an audio file through a streamer, in constant memory.

    The file is read in blocks, downmixed, resampled to the model's rate
    (block-wise, equal to resampling it whole), fed to ``streamer`` in hops
    of ``hop_samples``, and the sources resampled to ``out_rate``, with
    exactly the file's length at that rate.

    Arguments
    ---------
    streamer : S4MStreamer
        Reset before use.
    path : str or pathlib.Path
        The mixture file (checked by ``audio.check_audio_file``).
    out_rate : int
        Rate of the yielded blocks.
    hop_samples : int
        Samples per :meth:`S4MStreamer.process` call, at the model's rate.

    Yields
    ------
    torch.Tensor
        ``[spks, n]`` separated blocks at ``out_rate``.
    """
    from speechbrain_s4m import audio
    from speechbrain_s4m.inference.streaming import (
        ExactLength,
        StreamingResampler,
        output_length,
    )

    info, frames = audio.check_audio_file(path, 0.0)
    rate_in = info.samplerate
    model_rate = streamer.sample_rate
    to_model = StreamingResampler(rate_in, model_rate)
    to_out = StreamingResampler(model_rate, out_rate)
    # the input's length at out_rate (resampling there and back rounds up)
    keep = ExactLength(output_length(frames, rate_in, out_rate))
    streamer.reset()
    pending = torch.zeros(1, 0)

    def separate(mix):
        out = streamer.process(mix)[0].t()  # [spks, m]
        return keep(to_out.push(out))

    block_frames = max(1, int(audio.READ_BLOCK_SECONDS * rate_in))
    for block in audio.iter_audio_blocks(path, block_frames):
        mix = torch.from_numpy(block).mean(dim=1)[None]  # [1, n]
        mix = to_model.push(mix)
        if mix is None or not mix.shape[-1]:
            continue
        pending = torch.cat([pending, mix], dim=-1)
        n_hops = pending.shape[-1] // hop_samples
        for i in range(n_hops):
            hop = pending[:, i * hop_samples : (i + 1) * hop_samples]
            out = separate(hop)
            if out is not None and out.shape[-1]:
                yield out
        pending = pending[:, n_hops * hop_samples :]
    tail = to_model.flush()
    if tail is not None:
        pending = torch.cat([pending, tail], dim=-1)
    for hop in pending.split(hop_samples, dim=-1):
        out = separate(hop)
        if out is not None and out.shape[-1]:
            yield out
    last = keep(to_out.push(streamer.flush()[0].t()))
    rest = keep(to_out.flush())
    for out in (last, rest, keep.padding(streamer.num_spks)):
        if out is not None and out.shape[-1]:
            yield out

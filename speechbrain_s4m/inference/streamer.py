"""Live streaming separation with a causal S4M: :class:`S4MStreamer`.

A causal masknet reads no future encoder frame, so the encoder, the masknet
(S4 layers in recurrent mode) and the decoder each carry a fixed-size state
from one hop to the next; the output equals the causal model on the whole
signal (docs/streaming.md).
"""

import time

import numpy as np
import torch

from speechbrain_s4m.inference.chunking import separate_file_blocks
from speechbrain_s4m.inference.interface import S4MSeparation
from speechbrain_s4m.inference.loading import MODULE_KEYS
from speechbrain_s4m.lobes.s4m_stream import decode_flush, decode_stream
from speechbrain_s4m.lobes.separator import Separator

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

    :meth:`process` takes new mixture samples and returns the separated
    samples now final (output ``t`` once input ``t + latency_samples`` has
    arrived); :meth:`flush` ends the stream, :meth:`reset` starts a new
    one. The state does not grow. A non-causal model is a ``ValueError``.

    Arguments
    ---------
    model : S4MSeparation
        A loaded model whose masknet is causal.
    compile : bool
        Opt-in ``torch.compile`` of the per-hop step: same outputs, faster
        hops once each hop phase is compiled (see docs/streaming.md).

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
    >>> est = torch.cat(parts + [streamer.flush()], dim=1)  # [batch, time, spk]
    >>> est.shape
    torch.Size([1, 1000, 2])
    >>> bool((est - streamer.separate_whole(mix)).abs().max() < 1e-4)
    True
    """

    def __init__(self, model, compile=False):
        enc, mask, dec = (model.mods[k] for k in MODULE_KEYS)
        rate, device = model.sample_rate, model.device
        self._init(enc, mask, dec, model.num_spks, rate, device, compile)

    @classmethod
    def from_hparams(cls, source, compile=False, **kwargs):
        """A streamer for a pretrained causal model folder or hub id;
        ``kwargs`` go to :meth:`S4MSeparation.from_hparams`."""
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
        """A streamer for separate modules (put in ``eval()`` mode): an
        ``S4MEncoder``, a causal ``S4MMaskNet`` and SpeechBrain's
        ``dual_path.Decoder``, at ``sample_rate`` Hz."""
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
        """The same modules on a whole ``[batch, time]`` signal."""
        sep = Separator(self.encoder, self.masknet, self.decoder, self.num_spks)
        with torch.no_grad():
            return sep(mix.to(device=self.device, dtype=self.dtype))

    @property
    def latency_samples(self):
        """Algorithmic latency in samples."""
        enc = self.encoder
        return self.masknet.latency_samples(enc.kernel_size, enc.stride)

    @property
    def latency_ms(self):
        """:attr:`latency_samples` in milliseconds."""
        return 1000.0 * self.latency_samples / self.sample_rate

    def reset(self):
        """Forget the stream: the next :meth:`process` starts a new one."""
        self._enc, self._dec, self._batch = None, None, None
        self._mask = self.masknet.init_stream_state()
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
        """Every tensor of the stream's state (to check it does not grow)."""

        def walk(node):
            if torch.is_tensor(node):
                return [node]
            if isinstance(node, dict):
                node = list(node.values())
            if isinstance(node, (list, tuple)):
                return [t for value in node for t in walk(value)]
            return []

        return walk([self._enc, self._mask, self._dec])

    def _check_chunk(self, chunk):
        """``(chunk as [batch, n] on the model's device, was it 1-D)``."""
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
        return chunk.to(device=self.device, dtype=self.dtype), squeeze

    def _separate(self, frames, squeeze, start, last=None):
        """Masked decoding of new encoder frames; ``last``: at the flush."""
        masks, self._mask = self.masknet.forward_stream(
            frames, self._mask, self._block_step
        )
        sep = frames.unsqueeze(0) * masks  # [spks, batch, E, m]
        sep = sep.reshape(sep.shape[0] * sep.shape[1], *sep.shape[2:])
        y, self._dec = decode_stream(self.decoder, sep, self._dec)
        if last:
            y = torch.cat([y, decode_flush(self.decoder, self._dec)], -1)
            y = y[:, : self.samples_in - self.samples_out]
        y = y.reshape(self.num_spks, self._batch or 1, y.shape[-1])
        y = y.permute(1, 2, 0)
        self.samples_out += y.shape[1]
        self.compute_seconds += time.perf_counter() - start
        return y[0] if squeeze else y

    def process(self, chunk):
        """Separates the next samples of the stream.

        A refused block raises (``ValueError``, ``TypeError``,
        :class:`StreamerStateError` after :meth:`flush`) before anything
        is computed; the stream continues as if it had never been sent.

        Arguments
        ---------
        chunk : torch.Tensor, numpy.ndarray or sequence of numbers
            ``[batch, n]`` (or ``[n]``) new finite samples at the model's
            rate, any ``n``. The first block fixes the batch size (and must
            have more than 8 samples if ``batch > n``). Floats are taken as
            they are, int16 / int32 PCM rescaled by 2**-15 / 2**-31, other
            dtypes (Python ints included) refused.

        Returns
        -------
        torch.Tensor
            ``[batch, m, num_spks]`` (``[m, num_spks]`` for a 1-D chunk),
            following the previous output without gap or overlap.
        """
        start = time.perf_counter()
        chunk, squeeze = self._check_chunk(chunk)  # refused: state unchanged
        self._batch = chunk.shape[0]
        with torch.no_grad():
            frames, self._enc = self.encoder.forward_stream(chunk, self._enc)
            self.samples_in += chunk.shape[-1]
            self.calls += 1
            return self._separate(frames, squeeze, start)

    def flush(self, squeeze=False):
        """Ends the stream (zero-padded, as the whole-signal model) and
        returns the samples not returned yet, ``[batch, m, num_spks]``
        (``[m, num_spks]`` with ``squeeze``)."""
        if self._finished:
            raise StreamerStateError(
                "the stream was flushed already; call reset()"
            )
        start = time.perf_counter()
        self._finished = True
        if self._enc is None:  # nothing was given
            batch = self._batch or 1
            empty = torch.zeros(batch, 0, self.num_spks, device=self.device)
            return empty[0] if squeeze else empty
        with torch.no_grad():
            frames = self.encoder.flush_stream(self._enc)
            return self._separate(frames, squeeze, start, last=True)


#: Integer sample formats and the factor that maps them to [-1, 1).
INT_SCALES = {torch.int16: 2.0**-15, torch.int32: 2.0**-31}


def _as_samples(block):
    """A block of samples as a float tensor (int16 / int32 rescaled)."""
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


class _Hops:
    """A streamer fed in hops of ``hop`` samples, as a ``separate_stream``
    separator (``push`` / ``flush``)."""

    def __init__(self, streamer, hop):
        self.streamer, self.hop = streamer, hop
        self.pending = torch.zeros(1, 0)
        streamer.reset()

    def _run(self, hops):
        return torch.cat([self.streamer.process(h) for h in hops], dim=1)

    def push(self, x):
        x = torch.cat([self.pending, x], dim=-1)
        n = x.shape[-1] // self.hop * self.hop
        self.pending = x[:, n:]
        return self._run(x[:, :n].split(self.hop, dim=-1)) if n else None

    def flush(self):
        outs = self._run(self.pending.split(self.hop, dim=-1))
        return torch.cat([outs, self.streamer.flush()], dim=1)


def stream_file_blocks(streamer, path, out_rate, hop_samples):
    """Separates an audio file through ``streamer`` in hops of
    ``hop_samples``, in constant memory; yields ``[spks, n]`` blocks at
    ``out_rate``, of exactly the file's length at that rate."""
    yield from separate_file_blocks(
        path,
        lambda: _Hops(streamer, hop_samples),
        streamer.sample_rate,
        out_rate,
        0.0,
    )

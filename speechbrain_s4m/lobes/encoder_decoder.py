"""S4M's encoder (learned filterbank, authors' or streamable framing) and
joint decoder; :class:`~speechbrain_s4m.lobes.separator.Separator` aligns
the output through the encoder's ``frame_offset`` and decoder's ``padding``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

FRAMINGS = ("authors", "right")


def _check_framing(framing):
    """Refuse a framing that is not one of :data:`FRAMINGS`."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")


class S4MEncoder(nn.Module):
    """Learned analysis filterbank of S4M (no bias, no nonlinearity).

    A 1-D convolution 1 -> E with kernel K and stride S, over the input
    framed in one of two ways:

    * ``"authors"`` (default; their ``pad_input``): ``rest = K - (S + n %
      K) % K`` zeros at the end, ``K - S`` at both ends, and the convolution
      pads ``K // 2`` more on each side, so every sample is covered by K / S
      frames;
    * ``"right"``: frame ``j`` covers samples ``[S j, S j + K)``, the input
      right-padded to ``ceil(n / S)`` frames. The causal models use it: a
      stream can compute it (:meth:`forward_stream`), whereas ``rest``
      depends on the whole signal's length.

    Arguments
    ---------
    kernel_size : int
        Filter length K in samples (authors: 32 at 8 kHz).
    out_channels : int
        Number of filters E (authors: K // 2 + 1).
    stride : int, optional
        Hop S in samples, default ``kernel_size // 4``.
    framing : str
        ``"authors"`` or ``"right"``.
    xavier_init : bool
        Xavier-uniform initial filters as the authors (default), else
        PyTorch's default.

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
        (``K // 2 + K - S`` for the authors' framing, 0 for ``"right"``)."""
        if self.framing == "right":
            return 0
        k, s = self.kernel_size, self.stride
        return k // 2 + k - s

    def _rest(self, length):
        """The authors' end padding: ``K - (S + n % K) % K`` zeros."""
        k, s = self.kernel_size, self.stride
        return k - (s + length % k) % k

    def num_frames(self, length):
        """Number of output frames for an input of ``length`` samples
        (``"right"``: ``ceil(length / stride)``, at least one)."""
        k, s = self.kernel_size, self.stride
        if self.framing == "right":
            return max(1, -(-length // s))
        padded = length + self._rest(length) + 2 * (k - s) + 2 * (k // 2)
        return (padded - k) // s + 1

    def forward(self, x):
        """Encode ``[batch, time]`` or ``[batch, 1, time]`` to ``[batch,
        out_channels, frames]``."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        length = x.shape[-1]
        k, s = self.kernel_size, self.stride
        if self.framing == "authors":
            # the convolution adds its own K // 2 on each side
            pad = (k - s, self._rest(length) + k - s)
        else:
            pad = (0, max(0, k + (self.num_frames(length) - 1) * s - length))
        return self.conv1d(F.pad(x, pad))

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

        Frame ``j`` is returned as soon as its last sample has arrived; the
        frames of all calls followed by :meth:`flush_stream` are those of
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
        buf = torch.cat([state["buf"], x], dim=-1)
        state["samples"] += x.shape[-1]
        available = (state["samples"] - self.kernel_size) // self.stride + 1
        return self._emit(state, buf, available - state["frames"]), state

    def flush_stream(self, state):
        """The last frames of a stream (``state`` from
        :meth:`forward_stream`): those that :meth:`forward` obtains by
        zero-padding the end, ``[batch, out_channels, m]``."""
        self._check_streamable()
        n_new = self.num_frames(state["samples"]) - state["frames"]
        return self._emit(state, state["buf"], n_new)

    def _emit(self, state, buf, n_new):
        """The next ``n_new`` frames, from ``buf`` zero-padded at the end as
        needed; ``state`` moves past them."""
        state["buf"] = buf
        if n_new <= 0:
            return buf.new_zeros(buf.shape[0], self.conv1d.out_channels, 0)
        k, s = self.kernel_size, self.stride
        need = s * (n_new - 1) + k
        if need > buf.shape[-1]:
            buf = F.pad(buf, (0, need - buf.shape[-1]))
        state["buf"] = buf[:, s * n_new :]
        state["frames"] += n_new
        return self.conv1d(buf[:, None, :need])


class S4MDecoder(nn.ConvTranspose1d):
    """S4M's decoder: ``[batch, num_spks * E, frames]`` (source-major) ->
    ``[batch, num_spks, time]``.

    ``joint=True`` (the authors'): one ``ConvTranspose1d(num_spks * E ->
    num_spks)`` synthesises each source from every source's features;
    ``joint=False``: each source decoded alone by one shared
    ``ConvTranspose1d(E -> 1)``. ``all_sources = True`` tells
    :class:`~speechbrain_s4m.lobes.separator.Separator` to pass all sources.

    Arguments
    ---------
    in_channels, num_spks : int
        Encoder channels E per source; number of sources.
    kernel_size, stride, framing, xavier_init
        As :class:`S4MEncoder` (``"authors"`` crops ``K // 2`` at each end).
    joint : bool
        Joint (default) or per-source decoding.

    Example
    -------
    >>> dec = S4MDecoder(17, num_spks=2, kernel_size=32)
    >>> dec(torch.randn(3, 34, 1010)).shape  # [batch, spks, samples]
    torch.Size([3, 2, 8072])
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
        """Decode ``[batch, num_spks * E, frames]`` to ``[batch, num_spks,
        time]``."""
        if self.joint:
            return super().forward(x)
        batch, channels, frames = x.shape
        folded = x.reshape(batch * self.num_spks, -1, frames)
        return super().forward(folded).reshape(batch, self.num_spks, -1)

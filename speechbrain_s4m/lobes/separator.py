"""The separator's forward: encoder -> masking network -> decoder.

One :class:`Separator` is the model that the training Brain,
:class:`speechbrain_s4m.inference.S4MSeparation` and the benchmark all run,
so that they cannot drift apart. It holds SpeechBrain's three recipe modules
without copying them (over a Brain's DDP-wrapped modules it runs those).
"""

import torch.nn.functional as F
from torch import nn


def _unwrap(module):
    """The module inside a DDP / DataParallel wrapper (or itself)."""
    return getattr(module, "module", module)


class Separator(nn.Module):
    """Encoder -> masks -> masked encodings -> decoder, length-matched.

    Two decoders are understood: SpeechBrain's (``dual_path.Decoder``, each
    source decoded alone with shared weights, the sources folded into the
    batch), and one of all sources at once (``all_sources = True``, e.g.
    :class:`~speechbrain_s4m.lobes.encoder_decoder.S4MDecoder`) that takes
    their masked encodings concatenated source-major over the channels.

    Input sample 0 is output sample ``frame_offset - padding`` (encoder's
    ``frame_offset``, default 0; decoder's crop; ``K - S`` for the authors'
    framing, as their crop); the output is then cut or zero-padded to the
    input's length.

    Arguments
    ---------
    encoder : torch.nn.Module
        ``[batch, time]`` -> ``[batch, channels, frames]``.
    masknet : torch.nn.Module
        ``[batch, channels, frames]`` -> ``[num_spks, batch, channels,
        frames]``.
    decoder : torch.nn.Module
        ``[batch, channels, frames]`` -> ``[batch, time']``.
    num_spks : int
        Number of sources the masking network estimates.

    Example
    -------
    >>> import torch
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> from speechbrain_s4m.lobes.s4m import S4MMaskNet
    >>> sep = Separator(
    ...     Encoder(kernel_size=16, out_channels=8),
    ...     S4MMaskNet(8, 8, 16, depth=3, num_iterations=2),
    ...     Decoder(8, 1, kernel_size=16, stride=8, bias=False),
    ...     num_spks=2,
    ... )
    >>> sep(torch.randn(3, 1001)).shape
    torch.Size([3, 1001, 2])

    The authors' S4M gives every input length back:

    >>> from speechbrain_s4m.lobes import S4MDecoder, S4MEncoder
    >>> sep = Separator(
    ...     S4MEncoder(kernel_size=16, out_channels=9),
    ...     S4MMaskNet(9, 8, 16, depth=3, num_iterations=2),
    ...     S4MDecoder(9, num_spks=2, kernel_size=16),
    ...     num_spks=2,
    ... )
    >>> [sep(torch.randn(1, n)).shape[1] for n in (1, 15, 16, 1001)]
    [1, 15, 16, 1001]
    """

    def __init__(self, encoder, masknet, decoder, num_spks):
        super().__init__()
        self.encoder = encoder
        self.masknet = masknet
        self.decoder = decoder
        self.num_spks = int(num_spks)

    @classmethod
    def from_modules(cls, modules, num_spks):
        """A separator over the ``encoder``, ``masknet`` and ``decoder``
        of ``modules`` (a Brain's ``self.modules`` or a Pretrained
        ``mods``), shared, not copied."""
        return cls(
            modules["encoder"], modules["masknet"], modules["decoder"], num_spks
        )

    def forward(self, mix):
        """Estimated sources ``[batch, time, num_spks]`` of the mixtures
        ``mix`` ``[batch, time]``."""
        mix_w = self.encoder(mix)  # [batch, channels, frames]
        est_mask = self.masknet(mix_w)  # [spks, batch, channels, frames]
        if est_mask.shape[0] != self.num_spks:
            raise ValueError(
                f"The masking network returned {est_mask.shape[0]} masks but "
                f"num_spks is {self.num_spks}."
            )
        sep_h = mix_w.unsqueeze(0) * est_mask  # [spks, batch, ch, frames]
        spks, batch, channels, frames = sep_h.shape
        decoder = _unwrap(self.decoder)
        if getattr(decoder, "all_sources", False):
            # [batch, spks * ch, frames], source-major channels
            joint = sep_h.transpose(0, 1).reshape(batch, -1, frames)
            est = self.decoder(joint).transpose(1, 2)  # [b, t', spks]
        else:
            est = self.decoder(sep_h.reshape(spks * batch, channels, frames))
            est = est.reshape(spks, batch, -1).permute(1, 2, 0)
        # input sample 0 is output sample `start`; then cut or zero-pad the
        # output to the mixture's length
        offset = getattr(_unwrap(self.encoder), "frame_offset", 0)
        start = offset - int(getattr(decoder, "padding", (0,))[0])
        t_mix = mix.shape[-1]
        if start < 0:
            est = F.pad(est, (0, 0, -start, 0))
            start = 0
        est = est[:, start : start + t_mix, :]
        if est.shape[1] < t_mix:
            est = F.pad(est, (0, 0, 0, t_mix - est.shape[1]))
        return est

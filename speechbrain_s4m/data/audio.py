"""Checked audio reading (soundfile): sample rate, mono, sample ranges.

Authors
 * speechbrain-s4m contributors 2026
"""

import logging
import os

import soundfile as sf
import torch

logger = logging.getLogger(__name__)

__all__ = ["AudioFormatError", "audio_frames", "read_audio"]


class AudioFormatError(ValueError):
    """An audio file has the wrong sample rate or channel count."""


def _open(path):
    try:
        return sf.SoundFile(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"audio file '{path}' not found") from err
        raise AudioFormatError(
            f"cannot read audio file '{path}': {err}"
        ) from err


def audio_frames(path):
    """Number of samples and sample rate of an audio file.

    Arguments
    ---------
    path : str
        Audio file.

    Returns
    -------
    frames : int
        Number of samples.
    sample_rate : int
        Sample rate (Hz).

    Example
    -------
    >>> import numpy as np
    >>> path = getfixture("tmp_path") / "a.wav"
    >>> sf.write(path, np.zeros(800), 8000)
    >>> audio_frames(path)
    (800, 8000)
    """
    with _open(path) as f:
        return f.frames, f.samplerate


def read_audio(path, sample_rate=None, start=0, stop=None, resample=False):
    """Reads a mono audio file (or a sample range of it) as float32.

    Arguments
    ---------
    path : str
        Audio file (any format libsndfile reads: wav, flac, ...).
    sample_rate : int or None
        Expected sample rate. A file at another rate raises
        :class:`AudioFormatError` naming the file, unless ``resample``.
    start : int
        First sample to read (in the file's own rate).
    stop : int or None
        One past the last sample to read (None: to the end).
    resample : bool
        Resample (``torchaudio.functional.resample``) to ``sample_rate``
        instead of failing.

    Returns
    -------
    wav : torch.Tensor
        ``[time]`` float32 in [-1, 1].

    Example
    -------
    >>> import numpy as np
    >>> path = getfixture("tmp_path") / "a.wav"
    >>> sf.write(path, np.linspace(-0.5, 0.5, 800), 8000)
    >>> read_audio(path, 8000, start=100, stop=300).shape
    torch.Size([200])
    >>> read_audio(path, 16000, resample=True).shape
    torch.Size([1600])
    """
    with _open(path) as f:
        if f.channels != 1:
            raise AudioFormatError(
                f"'{path}' has {f.channels} channels; a mono file is expected"
            )
        rate = f.samplerate
        if sample_rate is not None and rate != sample_rate and not resample:
            raise AudioFormatError(
                f"'{path}' has a sample rate of {rate} Hz but "
                f"sample_rate={sample_rate} was requested (resample the "
                "data or set sample_rate accordingly)"
            )
        if start:
            f.seek(start)
        frames = -1 if stop is None else max(0, stop - start)
        data = f.read(frames, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data[:, 0].copy())
    if sample_rate is not None and rate != sample_rate:
        import torchaudio

        wav = torchaudio.functional.resample(wav, rate, sample_rate)
    return wav

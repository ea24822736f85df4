"""Reading and checking audio files and tensors, for the whole package.

One error family (:class:`AudioError`, a ``ValueError`` naming the file)
and one list of extensions. Unlike SpeechBrain's ``read_audio``, a dataset
file at another rate or with several channels is an error.
"""

import os
import struct

import numpy as np
import soundfile as sf
import torch

#: Extensions (lower case) of the audio files picked up in a folder.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
#: Extensions of dataset files (the dataset layouts are lossless).
DATASET_EXTENSIONS = (".wav", ".flac")
#: Audio is read from disk in blocks of this many seconds (streaming path).
READ_BLOCK_SECONDS = 5.0


class AudioError(ValueError):
    """Base of the audio errors: audio that cannot be read or used."""


class AudioFormatError(AudioError):
    """A dataset file at the wrong rate or channel count, or unreadable."""


class AudioInputError(AudioError):
    """An input that cannot be separated (unreadable, empty, silent...)."""


def is_audio_file(path, extensions=AUDIO_EXTENSIONS):
    """Whether ``path`` ends with one of ``extensions`` (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in extensions


def _open(path):
    """``sf.SoundFile(path)``; FileNotFoundError or AudioFormatError."""
    try:
        return sf.SoundFile(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"audio file '{path}' not found") from err
        raise AudioFormatError(
            f"cannot read audio file '{path}': {err}"
        ) from err


def audio_frames(path):
    """``(frames, sample_rate)`` of an audio file (header only)."""
    with _open(path) as f:
        return f.frames, f.samplerate


def read_audio(path, sample_rate=None, start=0, stop=None, resample=False):
    """Reads a mono audio file (or a sample range of it) as float32.

    Arguments
    ---------
    path : str
        Audio file (any format libsndfile reads).
    sample_rate : int or None
        Expected rate: another raises :class:`AudioFormatError`.
    start, stop : int, int or None
        Sample range, at the file's rate (None: to the end).
    resample : bool
        Resample to ``sample_rate`` instead of failing.

    Returns
    -------
    torch.Tensor
        ``[time]`` float32.
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


def audio_info(path):
    """An input file's header (``sf.info``: ``samplerate``, ``channels``,
    ``frames``); any problem, truncated WAV data included, raises
    :class:`AudioInputError` naming the file.

    Example
    -------
    >>> audio_info(getfixture("tmp_path") / "none.wav")
    Traceback (most recent call last):
      ...
    speechbrain_s4m.audio.AudioInputError: ...none.wav: no such file
    """
    path = str(path)
    if not os.path.exists(path):
        raise AudioInputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioInputError(f"{path}: is a folder, not an audio file")
    try:
        info = sf.info(path)
    except TypeError as err:  # headerless audio: soundfile wants a rate
        raise AudioInputError(
            f"{path}: unknown sample rate (headerless/raw audio); convert it "
            "to a format with a header such as WAV or FLAC"
        ) from err
    except Exception as err:
        reason = str(err).split(": ", 1)[-1] if str(err) else type(err)
        raise AudioInputError(
            f"{path}: unreadable or corrupt audio file ({reason})"
        ) from err
    if not info.samplerate or info.samplerate <= 0:
        raise AudioInputError(f"{path}: unknown sample rate")
    if info.format == "WAV":
        _check_wav_data_size(path)
    return info


def _check_wav_data_size(path):
    """Raises AudioInputError if a RIFF/RIFX WAVE file holds less sample
    data than its header declares (libsndfile does not notice).

    Walks the chunks reading a few bytes each, never the samples. RF64,
    files without a data chunk and an unknown data size (0xFFFFFFFF,
    written by tools streaming to a pipe) are not checked.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
        fmt = {b"RIFF": "<I", b"RIFX": ">I"}.get(head[:4])
        if len(head) < 12 or head[8:12] != b"WAVE" or fmt is None:
            return
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return
            (length,) = struct.unpack(fmt, chunk[4:8])
            if chunk[:4] == b"data":
                available = size - pos - 8
                if length != 0xFFFFFFFF and available < length:
                    raise AudioInputError(
                        f"{path}: corrupt audio file (truncated: the header "
                        f"declares {length} bytes of samples, the file holds "
                        f"{available})"
                    )
                return
            pos += 8 + length + (length & 1)  # chunks are word aligned


def check_audio_header(path, sample_rate=None, channels=None):
    """Checks an audio file from its header alone (no decoding; fast):
    :func:`audio_info`'s checks, then the expected ``sample_rate`` and
    ``channels`` (others: :class:`AudioFormatError`); returns the info."""
    info = audio_info(path)
    if sample_rate is not None and info.samplerate != int(sample_rate):
        raise AudioFormatError(
            f"{path} has a sample rate of {info.samplerate} Hz; "
            f"{sample_rate} Hz is expected"
        )
    if channels is not None and info.channels != int(channels):
        raise AudioFormatError(
            f"{path} has {info.channels} channel(s); {channels} expected"
        )
    return info


def iter_audio_blocks(path, block_frames):
    """Yields float32 ``[frames, channels]`` blocks of an audio file."""
    try:
        with sf.SoundFile(str(path)) as fh:
            yield from fh.blocks(
                blocksize=block_frames, dtype="float32", always_2d=True
            )
    except (RuntimeError, sf.SoundFileError, OSError) as err:
        raise AudioInputError(
            f"{path}: unreadable or corrupt audio file ({err})"
        ) from err


def check_audio_file(path, min_seconds=0.1, block_seconds=None):
    """Reads a file once, in blocks, and rejects what cannot be separated:
    bad header (:func:`audio_info`), undecodable frames, shorter than
    ``min_seconds``, non-finite or all-zero samples.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio file.
    min_seconds : float
        Shortest accepted duration.
    block_seconds : float, optional
        Read block length (default :data:`READ_BLOCK_SECONDS`).

    Returns
    -------
    info : soundfile._SoundFileInfo
        The header information.
    frames : int
        Number of frames read.
    """
    info = audio_info(path)
    if block_seconds is None:
        block_seconds = READ_BLOCK_SECONDS
    frames, nonzero = 0, False
    block_frames = max(1, int(block_seconds * info.samplerate))
    for block in iter_audio_blocks(path, block_frames):
        finite = np.isfinite(block)
        if not finite.all():
            first = int(np.argmin(finite.all(axis=1)))
            raise AudioInputError(
                f"{path}: contains NaN or Inf samples (first at "
                f"{(frames + first) / info.samplerate:.3f} s)"
            )
        nonzero = nonzero or bool(np.any(block != 0))
        frames += block.shape[0]
    if frames < info.frames:
        raise AudioInputError(
            f"{path}: corrupt audio file (truncated: the header declares "
            f"{info.frames} frames, only {frames} could be read)"
        )
    _check_length(path, frames, info.samplerate, min_seconds)
    if not nonzero:
        raise AudioInputError(f"{path}: audio is silent (all samples zero)")
    return info, frames


def _check_length(name, frames, sample_rate, min_seconds):
    """Raises AudioInputError for empty or too short audio."""
    if frames == 0:
        raise AudioInputError(f"{name}: audio is empty (0 samples)")
    if frames < min_seconds * sample_rate:
        raise AudioInputError(
            f"{name}: audio is too short ({frames / sample_rate:.3f} s; "
            f"at least {min_seconds} s needed)"
        )


def check_audio_tensor(mix, sample_rate, min_seconds=0.1, name="input"):
    """Rejects tensors that cannot be separated (same rules as files).

    Arguments
    ---------
    mix : torch.Tensor
        ``[batch, time]`` or ``[time]``, at ``sample_rate``.
    sample_rate : int
        Its rate.
    min_seconds : float
        Shortest accepted duration.
    name : str
        Used in the messages.

    Example
    -------
    >>> check_audio_tensor(torch.zeros(1, 8000), 8000)
    Traceback (most recent call last):
      ...
    speechbrain_s4m.audio.AudioInputError: input: audio is silent ...
    """
    if sample_rate is None or int(sample_rate) <= 0:
        raise AudioInputError(f"{name}: unknown sample rate ({sample_rate})")
    if not torch.is_floating_point(mix):
        raise AudioInputError(
            f"{name}: expected float samples, got {mix.dtype}"
        )
    _check_length(name, mix.shape[-1], sample_rate, min_seconds)
    if not torch.isfinite(mix).all():
        raise AudioInputError(f"{name}: contains NaN or Inf samples")
    silent = (mix.reshape(-1, mix.shape[-1]) == 0).all(dim=-1)
    if silent.any():
        item = int(silent.int().argmax())
        which = f" (batch item {item})" if mix.dim() > 1 else ""
        raise AudioInputError(
            f"{name}: audio is silent (all samples zero){which}"
        )

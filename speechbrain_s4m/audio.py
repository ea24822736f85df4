"""Reading and checking audio files and tensors, for the whole package.

One role: everything that opens an audio file or decides whether audio can
be used. Data preparation, dataset loading, dynamic mixing, the pretrained
interface and the command line all read audio through this module, so there
is one error family and one list of audio file extensions:

* :class:`AudioError` (a ``ValueError``) is the base of every audio error;
  :class:`AudioFormatError` (a file at the wrong rate or channel count, or
  unreadable, when reading datasets) and :class:`AudioInputError` (an input
  that cannot be separated: unreadable, empty, too short, silent, non-finite,
  unknown rate, truncated) are its two kinds. Each message names the file.
* :func:`check_audio_header` checks a file from its header alone (fast, no
  decoding): readable, rate, channels, and for WAV the data size the header
  declares against the bytes the file holds (a truncated file is corrupt).
* :data:`AUDIO_EXTENSIONS` are the files the command line picks up in a
  folder; :data:`DATASET_EXTENSIONS` is the lossless subset that dataset
  layouts hold.

Deliberate differences from SpeechBrain (``speechbrain.dataio.dataio.
read_audio``, torchaudio based): a dataset file at another sample rate or
with several channels is an error naming the file, not a silent mismatch;
files are read with soundfile, in blocks where memory matters.

Authors
 * speechbrain-s4m contributors 2026
"""

import os
import struct

import numpy as np
import soundfile as sf
import torch

__all__ = [
    "AUDIO_EXTENSIONS",
    "DATASET_EXTENSIONS",
    "READ_BLOCK_SECONDS",
    "AudioError",
    "AudioFormatError",
    "AudioInputError",
    "audio_frames",
    "audio_info",
    "check_audio_file",
    "check_audio_header",
    "check_audio_tensor",
    "is_audio_file",
    "iter_audio_blocks",
    "read_audio",
]

#: Extensions (lower case) of the audio files picked up in a folder.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
#: Extensions of dataset files: the layouts (WSJ0-2mix, LibriMix, WHAM!,
#: LibriSpeech) hold lossless audio only.
DATASET_EXTENSIONS = (".wav", ".flac")
#: Audio is read from disk in blocks of this many seconds (streaming path).
READ_BLOCK_SECONDS = 5.0


class AudioError(ValueError):
    """Base of the audio errors: audio that cannot be read or used."""


class AudioFormatError(AudioError):
    """An audio file has the wrong sample rate or channel count."""


class AudioInputError(AudioError):
    """An input audio file or tensor that cannot be separated.

    The message names the file and the reason (unreadable, empty, too short,
    silent, non-finite samples, unknown sample rate).
    """


def is_audio_file(path, extensions=AUDIO_EXTENSIONS):
    """Whether ``path`` has an audio file extension (case-insensitive).

    Arguments
    ---------
    path : str or pathlib.Path
        A file name.
    extensions : tuple of str
        Accepted extensions (default :data:`AUDIO_EXTENSIONS`).

    Returns
    -------
    bool

    Example
    -------
    >>> is_audio_file("a/b.FLAC"), is_audio_file("notes.txt")
    (True, False)
    >>> is_audio_file("a.mp3", DATASET_EXTENSIONS)
    False
    """
    return os.path.splitext(str(path))[1].lower() in extensions


# ---------------------------------------------------------------------------
# Dataset files: checked rate and channel count
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# Inputs to separate: any rate and channel count, read in blocks, checked
# ---------------------------------------------------------------------------
def audio_info(path):
    """Opens an audio file's header; failures become ``AudioInputError``.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio file.

    Returns
    -------
    soundfile._SoundFileInfo
        With ``samplerate``, ``channels`` and ``frames``.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "st.wav", np.zeros((800, 2)), 8000)
    >>> info = audio_info(tmp / "st.wav")
    >>> info.samplerate, info.channels, info.frames
    (8000, 2, 800)
    >>> audio_info(tmp / "none.wav")
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
    _check_wav_data_size(path, info)
    return info


def _wav_data_chunk(path):
    """``(declared, available)`` bytes of a RIFF/WAVE file's data chunk.

    Walks the RIFF chunks from the header (reads a few bytes per chunk,
    never the samples). Returns None when the file is not a plain RIFF/RIFX
    WAVE file, has no data chunk, or declares an unknown size (0xFFFFFFFF,
    written by tools that stream to a pipe).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE":
            return None
        if head[:4] == b"RIFF":
            fmt = "<I"
        elif head[:4] == b"RIFX":
            fmt = ">I"
        else:  # RF64 and others: sizes live elsewhere
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            (length,) = struct.unpack(fmt, chunk[4:8])
            if chunk[:4] == b"data":
                if length == 0xFFFFFFFF:
                    return None
                return length, size - pos - 8
            pos += 8 + length + (length & 1)  # chunks are word aligned
    return None


def _check_wav_data_size(path, info):
    """Raises AudioInputError if a WAV file holds less data than declared."""
    if info.format != "WAV":
        return
    sizes = _wav_data_chunk(path)
    if sizes is None:
        return
    declared, available = sizes
    if available < declared:
        raise AudioInputError(
            f"{path}: corrupt audio file (truncated: the header declares "
            f"{declared} bytes of samples, the file holds {available})"
        )


def check_audio_header(path, sample_rate=None, channels=None):
    """Checks an audio file from its header alone (no decoding; fast).

    Checks that the file exists and opens, that its sample rate is known,
    and, for WAV files, that the data size the header declares is present
    (a file cut short is reported as corrupt). Optionally checks the rate
    and channel count. Other formats (FLAC, ...) are checked as far as
    their header allows; :func:`check_audio_file` decodes everything.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio file.
    sample_rate : int, optional
        Expected sample rate; another rate raises :class:`AudioFormatError`.
    channels : int, optional
        Expected channel count; another count raises
        :class:`AudioFormatError`.

    Returns
    -------
    soundfile._SoundFileInfo
        The header information (``samplerate``, ``channels``, ``frames``).

    Raises
    ------
    AudioInputError
        Missing, unreadable, headerless or truncated file.
    AudioFormatError
        Wrong sample rate or channel count.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.zeros(800), 8000, subtype="PCM_16")
    >>> check_audio_header(tmp / "a.wav", sample_rate=8000).frames
    800
    >>> data = (tmp / "a.wav").read_bytes()
    >>> _ = (tmp / "cut.wav").write_bytes(data[:-400])
    >>> check_audio_header(tmp / "cut.wav")
    Traceback (most recent call last):
      ...
    speechbrain_s4m.audio.AudioInputError: ...cut.wav: corrupt audio file ...
    >>> check_audio_header(tmp / "a.wav", channels=2)
    Traceback (most recent call last):
      ...
    speechbrain_s4m.audio.AudioFormatError: ...has 1 channel(s); 2 expected
    """
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
    """Yields float32 blocks ``[frames, channels]`` of an audio file.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio file.
    block_frames : int
        Frames per block (the last one may be shorter).

    Yields
    ------
    numpy.ndarray
        ``[frames, channels]`` float32.

    Example
    -------
    >>> path = getfixture("tmp_path") / "a.wav"
    >>> sf.write(path, np.zeros((1000, 2)), 8000)
    >>> [b.shape for b in iter_audio_blocks(path, 400)]
    [(400, 2), (400, 2), (200, 2)]
    """
    try:
        with sf.SoundFile(str(path)) as fh:
            yield from fh.blocks(
                blocksize=block_frames, dtype="float32", always_2d=True
            )
    except AudioError:
        raise
    except (RuntimeError, sf.SoundFileError, OSError) as err:
        raise AudioInputError(
            f"{path}: unreadable or corrupt audio file ({err})"
        ) from err


def check_audio_file(path, min_seconds=0.1, block_seconds=None):
    """Scans a file once (in blocks) and rejects what cannot be separated.

    Checks: readable, known rate, not truncated (the header's length is
    there: :func:`check_audio_header`, and every frame decodes), not empty,
    at least ``min_seconds`` long, only finite samples, not all zeros.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio file.
    min_seconds : float
        Shortest accepted duration.
    block_seconds : float, optional
        Read block length in seconds (default ``READ_BLOCK_SECONDS``);
        memory stays bounded.

    Returns
    -------
    info : soundfile._SoundFileInfo
        The header information.
    frames : int
        Number of frames actually read.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "ok.wav", np.full(800, 0.1), 8000)
    >>> check_audio_file(tmp / "ok.wav")[1]
    800
    >>> sf.write(tmp / "short.wav", np.full(80, 0.1), 8000)
    >>> check_audio_file(tmp / "short.wav")
    Traceback (most recent call last):
      ...
    speechbrain_s4m.audio.AudioInputError: ...short.wav: audio is too short ...
    """
    info = audio_info(path)
    if block_seconds is None:
        block_seconds = READ_BLOCK_SECONDS
    frames = 0
    nonzero = False
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
        ``[batch, time]`` or ``[time]``.
    sample_rate : int
        Its sample rate.
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
        which = (
            ""
            if mix.dim() == 1
            else f" (batch item {int(silent.int().argmax())})"
        )
        raise AudioInputError(
            f"{name}: audio is silent (all samples zero){which}"
        )

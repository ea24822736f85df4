"""Ready-to-use separation: the pretrained interface and long-audio tools.

``S4MSeparation`` follows SpeechBrain's ``SepformerSeparation`` interface
(``from_hparams``, ``separate_batch``, ``separate_file``) and adds:

* strict loading: a mistyped local path is a ``FileNotFoundError``, a
  checkpoint with missing or unexpected keys is an error (not a warning), and
  a ``savedir`` filled from another source is never reused silently;
* audio files at any rate and channel count (downmixed, then resampled to
  the model's rate), results at the model's or at the input's rate;
* ``separate_long``: overlap-add over chunks with the speaker order of each
  chunk aligned to the previous one on their overlap, and a streaming file
  path (``separate_file_to_folder``) whose memory does not grow with the file;
* clear errors (``AudioInputError``, ``ModelFolderError``) naming the file,
  and outputs written to a temporary name first (never a partial file).

Authors
 * speechbrain-s4m contributors 2026
"""

import math
import os
import pathlib
import tempfile
from contextlib import ExitStack

import numpy as np
import soundfile as sf
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from scipy.optimize import linear_sum_assignment
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch
from speechbrain.utils.parameter_transfer import Pretrainer

from speechbrain_s4m.separation import separate_batch

DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_OVERLAP_SECONDS = 2.0
# Audio is read from disk in blocks of this many seconds (streaming path).
READ_BLOCK_SECONDS = 5.0
MODULE_KEYS = ("encoder", "masknet", "decoder")
SOURCE_MARKER = ".s4m_source"


class AudioInputError(ValueError):
    """An input audio file or tensor that cannot be separated.

    The message names the file and the reason (unreadable, empty, too short,
    silent, non-finite samples, unknown sample rate).
    """


class ModelFolderError(ValueError):
    """A model folder (or hub repository) that cannot be loaded."""


class ModelNotFoundError(ModelFolderError, FileNotFoundError):
    """The model folder (or a file in it) does not exist."""


# ---------------------------------------------------------------------------
# Model source resolution and strict loading
# ---------------------------------------------------------------------------
def looks_like_local_path(source):
    """Whether ``source`` names a local folder rather than a hub repository.

    A hub id is ``owner/name``: one slash, no leading ``.``, ``/`` or ``~``.
    Anything that exists, is a ``pathlib.Path``, starts like a path, uses the
    OS separator (other than one ``/``) or has several components is a path.

    Arguments
    ---------
    source : str or pathlib.Path
        The ``source`` given to ``from_hparams``.

    Returns
    -------
    bool

    Example
    -------
    >>> looks_like_local_path("speechbrain/sepformer-wsj02mix")
    False
    >>> looks_like_local_path("./models/s4m")
    True
    >>> looks_like_local_path("models/s4m/wsj0-2mix")
    True
    """
    if isinstance(source, pathlib.PurePath):
        return True
    source = str(source)
    if os.path.exists(os.path.expanduser(source)):
        return True
    if source.startswith((".", "/", "~")) or source.endswith("/"):
        return True
    if os.sep != "/" and os.sep in source:
        return True
    if source.startswith(("http://", "https://")):
        return False
    return source.count("/") != 1


def _describe_error(err, limit=200):
    """``TypeName: first line of the message`` (cut to ``limit`` chars)."""
    text = str(err)
    first = text.splitlines()[0][:limit] if text else ""
    return f"{type(err).__name__}: {first}"


def _torch_load(path):
    """Loads a checkpoint file, mapping any failure to ModelFolderError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFolderError(
            f"{path}: corrupt or unreadable checkpoint ({_describe_error(err)})"
        ) from err


def load_state_dict_strict(module, path):
    """Loads a plain state dict into ``module``; any key mismatch is an error.

    SpeechBrain's parameter transfer only logs warnings for missing or
    unexpected keys, so a mismatched architecture loads silently. This fails.

    Arguments
    ---------
    module : torch.nn.Module
        The module to fill.
    path : str or pathlib.Path
        A ``.ckpt`` file written with ``torch.save(module.state_dict())``.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> torch.save(torch.nn.Linear(2, 2).state_dict(), tmp / "lin.ckpt")
    >>> load_state_dict_strict(torch.nn.Linear(2, 2), tmp / "lin.ckpt")
    >>> load_state_dict_strict(torch.nn.Linear(2, 3), tmp / "lin.ckpt")
    Traceback (most recent call last):
      ...
    speechbrain_s4m.inference.ModelFolderError: ...lin.ckpt: ...
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: checkpoint file not found")
    state = _torch_load(path)
    if not isinstance(state, dict):
        raise ModelFolderError(
            f"{path}: not a state dict (found {type(state).__name__})"
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelFolderError(
            f"{path}: checkpoint does not match the model defined in "
            f"hyperparams.yaml (missing keys: {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys: "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    bad = [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        k = bad[0]
        raise ModelFolderError(
            f"{path}: shape mismatch for {k}: checkpoint "
            f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    module.load_state_dict(state, strict=True)


def _fetch_hub_folder(source, savedir, names, overwrite, fetch_config):
    """Fetches ``names`` from a hub repository into ``savedir``.

    A marker file in ``savedir`` records the source; a ``savedir`` filled
    from another source is refused unless ``overwrite`` (then re-fetched).
    """
    if savedir is None:
        savedir = pathlib.Path(
            os.environ.get("S4M_CACHE", "~/.cache/speechbrain_s4m")
        ).expanduser() / str(source).replace("/", "--")
    savedir = pathlib.Path(savedir)
    marker = savedir / SOURCE_MARKER
    stale = False
    if marker.exists():
        stale = marker.read_text().strip() != str(source)
    elif savedir.is_dir() and any(savedir.iterdir()):
        stale = True  # filled by something else (e.g. SpeechBrain)
    if stale and not overwrite:
        held = marker.read_text().strip() if marker.exists() else "unknown"
        raise ModelFolderError(
            f"savedir {savedir} already holds files from another source "
            f"({held}), not {source}; use another savedir or overwrite=True"
        )
    savedir.mkdir(parents=True, exist_ok=True)
    config = FetchConfig(
        overwrite=overwrite or stale,
        allow_updates=fetch_config.allow_updates if fetch_config else False,
        allow_network=fetch_config.allow_network if fetch_config else True,
        token=fetch_config.token if fetch_config else False,
        revision=fetch_config.revision if fetch_config else None,
    )
    for name in names:
        try:
            fetch(
                name,
                source=source,
                savedir=savedir,
                local_strategy=LocalStrategy.COPY,
                fetch_config=config,
            )
        except Exception as err:
            raise ModelNotFoundError(
                f"'{source}' is not a local folder, and fetching {name} "
                f"from the hub failed ({_describe_error(err)})"
            ) from err
    marker.write_text(str(source))
    return savedir


def load_model_folder(
    folder,
    hparams_file="hyperparams.yaml",
    overrides=None,
    overrides_must_match=True,
):
    """Builds the modules of a pretrained folder and loads them strictly.

    Arguments
    ---------
    folder : str or pathlib.Path
        A folder with ``hyperparams.yaml`` (with ``modules``, ``sample_rate``,
        ``num_spks`` and a ``pretrainer``) and ``<name>.ckpt`` per loadable.
    hparams_file : str
        Name of the hyperparameter file inside ``folder``.
    overrides : dict, optional
        Overrides for the hyperparameter file.
    overrides_must_match : bool
        Whether an override of an absent key is an error.

    Returns
    -------
    dict
        The loaded hyperparameters (``hparams["modules"]`` filled).
    """
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder}: model folder not found")
    hparams_path = folder / hparams_file
    if not hparams_path.is_file():
        raise ModelNotFoundError(
            f"{folder}: no {hparams_file} in this folder (not a pretrained "
            "model folder; use s4m-export to make one from a recipe output)"
        )
    try:
        with open(hparams_path, encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(
                fin, overrides or {}, overrides_must_match
            )
    except Exception as err:
        raise ModelFolderError(
            f"{hparams_path}: cannot load ({_describe_error(err, 300)})"
        ) from err
    for key in ("modules", "sample_rate", "num_spks"):
        if key not in hparams:
            raise ModelFolderError(f"{hparams_path}: missing key '{key}'")
    missing = [k for k in MODULE_KEYS if k not in hparams["modules"]]
    if missing:
        raise ModelFolderError(
            f"{hparams_path}: 'modules' lacks {', '.join(missing)}"
        )
    pretrainer = hparams.get("pretrainer")
    if isinstance(pretrainer, Pretrainer):
        loadables = dict(pretrainer.loadables)
        paths = dict(pretrainer.paths)
    else:
        loadables = {k: hparams["modules"][k] for k in MODULE_KEYS}
        paths = {}
    for name, module in loadables.items():
        path = folder / f"{name}.ckpt"
        if name in paths:
            given = pathlib.Path(str(paths[name])).expanduser()
            path = given if given.is_absolute() else folder / given
        load_state_dict_strict(module, path)
    return hparams


# ---------------------------------------------------------------------------
# Audio reading, validation and streaming resampling
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
    """
    try:
        with sf.SoundFile(str(path)) as fh:
            yield from fh.blocks(
                blocksize=block_frames, dtype="float32", always_2d=True
            )
    except AudioInputError:
        raise
    except (RuntimeError, sf.SoundFileError, OSError) as err:
        raise AudioInputError(
            f"{path}: unreadable or corrupt audio file ({err})"
        ) from err


def check_audio_file(path, min_seconds=0.1, block_seconds=None):
    """Scans a file once (in blocks) and rejects what cannot be separated.

    Checks: readable, known rate, not empty, at least ``min_seconds`` long,
    only finite samples, not all zeros.

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
    speechbrain_s4m.inference.AudioInputError: input: audio is silent ...
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
    n = reference.shape[1]
    head = estimate[:, :n]
    head = head / (head.norm(dim=1, keepdim=True) + eps)
    ref = reference / (reference.norm(dim=1, keepdim=True) + eps)
    # score[b, i, j] = corr(reference source i, estimate source j)
    score = torch.einsum("bti,btj->bij", ref.double(), head.double())
    out = []
    for b in range(estimate.shape[0]):
        rows, cols = linear_sum_assignment(
            score[b].cpu().numpy(), maximize=True
        )
        out.append(estimate[b][:, torch.as_tensor(cols[np.argsort(rows)])])
    return torch.stack(out)


class OverlapAddSeparator:
    """Separates a stream chunk by chunk, cross-fading the overlaps.

    Chunks of ``chunk`` samples start every ``chunk - overlap`` samples. The
    outputs of each chunk are put in the speaker order of the previous chunk
    (``align_to_reference`` on the overlap), then cross-faded over the overlap
    with complementary ``sin^2``/``cos^2`` windows (they sum to one). Output
    is released as soon as no later chunk can change it, so only one chunk
    is held at a time.

    Arguments
    ---------
    separate_fn : callable
        ``[batch, n] -> [batch, n, spks]`` (e.g. ``separate_batch``).
    chunk : int
        Chunk length in samples.
    overlap : int
        Overlap between consecutive chunks in samples (``0 < overlap <
        chunk``).

    Example
    -------
    >>> sep = OverlapAddSeparator(lambda x: torch.stack([x, -x], -1), 100, 20)
    >>> x = torch.randn(1, 1000)
    >>> outs = [sep.push(b) for b in x.split(64, -1)] + [sep.flush()]
    >>> y = torch.cat([o for o in outs if o is not None], 1)
    >>> y.shape, bool(torch.allclose(y[..., 0], x, atol=1e-6))
    (torch.Size([1, 1000, 2]), True)
    """

    def __init__(self, separate_fn, chunk, overlap):
        chunk, overlap = int(chunk), int(overlap)
        if overlap <= 0 or overlap >= chunk:
            raise ValueError(
                f"need 0 < overlap < chunk, got overlap={overlap} samples "
                f"and chunk={chunk} samples"
            )
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
        ov = self.overlap
        if self._tail is not None:
            n = min(ov, est.shape[1])
            est = align_to_reference(est, self._tail[:, :n])
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


def _default_file_mode():
    """Permissions of a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _cat_outputs(parts):
    parts = [p for p in parts if p is not None and p.shape[1] > 0]
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------
# The pretrained interface
# ---------------------------------------------------------------------------
class S4MSeparation(Pretrained):
    """A ready-to-use speech separation model (S4M or any masknet).

    Drop-in for SpeechBrain's ``SepformerSeparation`` with strict loading,
    any-rate / any-channel files, long-audio separation and clear errors.

    Arguments
    ---------
    *args, **kwargs
        As ``speechbrain.inference.interfaces.Pretrained``; usually built by
        ``S4MSeparation.from_hparams(source=folder_or_hub_id)``.

    Example
    -------
    >>> from speechbrain.lobes.models import dual_path as dp
    >>> enc = dp.Encoder(kernel_size=8, out_channels=8)
    >>> blk = dp.SBTransformerBlock(1, 8, 2, d_ffn=16)
    >>> mask = dp.Dual_Path_Model(8, 8, blk, blk, num_layers=1, K=10)
    >>> dec = dp.Decoder(8, 1, kernel_size=8, stride=4, bias=False)
    >>> model = S4MSeparation(
    ...     modules={"encoder": enc, "masknet": mask, "decoder": dec},
    ...     hparams={"sample_rate": 8000, "num_spks": 2},
    ...     run_opts={"device": "cpu"},
    ... )
    >>> model.separate_batch(torch.randn(1, 800)).shape
    torch.Size([1, 800, 2])
    """

    MODULES_NEEDED = list(MODULE_KEYS)
    HPARAMS_NEEDED = ["sample_rate", "num_spks"]
    #: Shortest input accepted (seconds); shorter audio is an AudioInputError.
    min_seconds = 0.1

    @classmethod
    def from_hparams(
        cls,
        source,
        hparams_file="hyperparams.yaml",
        savedir=None,
        overrides=None,
        run_opts=None,
        overwrite=False,
        fetch_config=None,
        overrides_must_match=True,
        download_only=False,
        local_strategy=None,
        **kwargs,
    ):
        """Loads a pretrained folder (local, offline) or a hub repository.

        Arguments
        ---------
        source : str or pathlib.Path
            A local folder (as written by ``s4m-export``) or a hub id
            ``owner/name``. Something that looks like a path and does not
            exist raises ``ModelNotFoundError`` (a ``FileNotFoundError``):
            it is never sent to the hub.
        hparams_file : str
            Hyperparameter file name in the folder.
        savedir : str or pathlib.Path, optional
            Hub sources only: where to put the fetched files (a local folder
            is read in place). A savedir filled from another source is
            refused unless ``overwrite=True``.
        overrides : dict, optional
            Overrides for the hyperparameter file.
        run_opts : dict, optional
            e.g. ``{"device": "cuda:0"}``.
        overwrite : bool
            Re-fetch hub files into ``savedir`` even when present.
        fetch_config : speechbrain.utils.fetching.FetchConfig, optional
            Hub fetching options (revision, token, ...).
        overrides_must_match : bool
            As SpeechBrain: an override of a key absent from the file is an
            error.
        download_only : bool
            Fetch the hub files only; returns None.
        local_strategy : None
            Accepted for compatibility with SpeechBrain and ignored: local
            folders are read in place, hub files are copied into savedir.
        **kwargs
            Passed to the class (e.g. ``freeze_params``).

        Returns
        -------
        S4MSeparation
        """
        if looks_like_local_path(source):
            folder = pathlib.Path(str(source)).expanduser()
            if not folder.exists():
                raise ModelNotFoundError(
                    f"{source}: model folder not found (local path; hub ids "
                    "look like 'owner/name')"
                )
        else:
            folder = _fetch_hub_folder(
                str(source),
                savedir,
                [hparams_file],
                overwrite,
                fetch_config,
            )
            with open(folder / hparams_file, encoding="utf-8") as fin:
                text = fin.read()
            names = [f"{k}.ckpt" for k in MODULE_KEYS]
            if "pretrainer" in text:
                hp = load_hyperpyyaml(text, overrides or {})
                pre = hp.get("pretrainer")
                if isinstance(pre, Pretrainer):
                    names = [f"{k}.ckpt" for k in pre.loadables]
            _fetch_hub_folder(
                str(source), folder, names, overwrite, fetch_config
            )
        if download_only:
            return None
        hparams = load_model_folder(
            folder, hparams_file, overrides, overrides_must_match
        )
        hparams["savedir"] = str(folder)
        hparams["source"] = str(source)
        return cls(
            modules=hparams["modules"],
            hparams=hparams,
            run_opts=run_opts,
            **kwargs,
        )

    @property
    def sample_rate(self):
        """The model's sample rate (Hz)."""
        return int(self.hparams.sample_rate)

    @property
    def num_spks(self):
        """Number of separated sources."""
        return int(self.hparams.num_spks)

    def separate_batch(self, mix):
        """Separates a batch of mixtures at the model's sample rate.

        Same computation as the training Brain's forward.

        Arguments
        ---------
        mix : torch.Tensor
            ``[batch, time]`` (or ``[time]``).

        Returns
        -------
        torch.Tensor
            ``[batch, time, num_spks]``.
        """
        if mix.dim() == 1:
            mix = mix.unsqueeze(0)
        with torch.no_grad():
            return separate_batch(
                mix.to(self.device),
                self.mods.encoder,
                self.mods.masknet,
                self.mods.decoder,
                self.num_spks,
            )

    def forward(self, mix):
        """Runs ``separate_batch``."""
        return self.separate_batch(mix)

    def _chunk_sizes(self, chunk_seconds, overlap_seconds):
        chunk_seconds = (
            DEFAULT_CHUNK_SECONDS if chunk_seconds is None else chunk_seconds
        )
        overlap_seconds = (
            DEFAULT_OVERLAP_SECONDS
            if overlap_seconds is None
            else overlap_seconds
        )
        chunk = int(round(chunk_seconds * self.sample_rate))
        overlap = int(round(overlap_seconds * self.sample_rate))
        if overlap <= 0 or overlap >= chunk:
            raise ValueError(
                "need 0 < overlap_seconds < chunk_seconds, got "
                f"overlap_seconds={overlap_seconds}, "
                f"chunk_seconds={chunk_seconds}"
            )
        return chunk, overlap

    def separate_long(
        self,
        mix,
        chunk_seconds=None,
        overlap_seconds=None,
        sample_rate=None,
    ):
        """Separates long mixtures chunk by chunk (overlap-add).

        Input that fits in one chunk is separated in one pass (identical to
        ``separate_batch``).

        Arguments
        ---------
        mix : torch.Tensor
            ``[batch, time]`` or ``[time]``.
        chunk_seconds : float
            Chunk length (default ``DEFAULT_CHUNK_SECONDS``).
        overlap_seconds : float
            Overlap between chunks (default ``DEFAULT_OVERLAP_SECONDS``);
            it is used to align the speaker order and is cross-faded.
        sample_rate : int, optional
            Rate of ``mix`` if not the model's (it is resampled first).

        Returns
        -------
        torch.Tensor
            ``[batch, time, num_spks]`` at the model's sample rate.
        """
        if mix.dim() == 1:
            mix = mix.unsqueeze(0)
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        check_audio_tensor(mix, rate, self.min_seconds)
        mix = mix.float().cpu()
        if rate != self.sample_rate:
            mix = torchaudio.functional.resample(mix, rate, self.sample_rate)
        chunk, overlap = self._chunk_sizes(chunk_seconds, overlap_seconds)
        sep = OverlapAddSeparator(self.separate_batch, chunk, overlap)
        parts = [sep.push(b) for b in mix.split(chunk, dim=-1)]
        parts.append(sep.flush())
        return _cat_outputs(parts)

    # -- files ------------------------------------------------------------
    def _resolve_audio_path(self, path, savedir):
        """Local file as is; URLs and hub files fetched afresh (never the
        cached copy of another file with the same basename)."""
        path_str = str(path)
        remote = path_str.startswith(("http://", "https://")) or (
            path_str.count("/") >= 2
            and not path_str.startswith((".", "/", "~"))
        )
        if os.path.exists(path_str) or not remote:
            return path_str, None
        if savedir is not None:
            pathlib.Path(savedir).mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="s4m_audio_", dir=savedir)
        source, name = path_str.rsplit("/", 1)
        try:
            got = fetch(
                name,
                source=source,
                savedir=tmp,
                local_strategy=LocalStrategy.COPY,
                fetch_config=FetchConfig(overwrite=True),
            )
        except Exception as err:
            raise AudioInputError(
                f"{path_str}: no such local file, and fetching it "
                f"failed ({type(err).__name__})"
            ) from err
        return str(got), tmp

    def _stream_file(self, path, chunk_seconds, overlap_seconds, out_rate):
        """Yields output blocks ``[spks, n]`` at ``out_rate`` for a file.

        Reads the file in blocks, downmixes, resamples to the model's rate,
        separates chunk by chunk and resamples back: memory is bounded by
        the chunk length, whatever the file's length.
        """
        info, _ = check_audio_file(path, self.min_seconds)
        rate_in = info.samplerate
        chunk, overlap = self._chunk_sizes(chunk_seconds, overlap_seconds)
        to_model = StreamingResampler(rate_in, self.sample_rate)
        to_out = StreamingResampler(self.sample_rate, out_rate)
        sep = OverlapAddSeparator(self.separate_batch, chunk, overlap)

        def emit(est):
            if est is None or est.shape[1] == 0:
                return None
            out = to_out.push(est[0].t().contiguous())  # [spks, n]
            return out if out.shape[-1] > 0 else None

        block_frames = max(1, int(READ_BLOCK_SECONDS * rate_in))
        for block in iter_audio_blocks(path, block_frames):
            mono = torch.from_numpy(block).mean(dim=1)[None]  # [1, n]
            x = to_model.push(mono)
            if x.shape[-1] > 0:
                out = emit(sep.push(x))
                if out is not None:
                    yield out
        rest = to_model.flush()
        if rest is not None and rest.shape[-1] > 0:
            out = emit(sep.push(rest))
            if out is not None:
                yield out
        out = emit(sep.flush())
        if out is not None:
            yield out
        tail = to_out.flush()
        if tail is not None and tail.shape[-1] > 0:
            yield tail

    def _output_rate(self, output_sample_rate, path):
        if output_sample_rate is None or output_sample_rate == "model":
            return self.sample_rate
        if output_sample_rate == "input":
            return audio_info(path).samplerate
        rate = int(output_sample_rate)
        if rate <= 0:
            raise ValueError(f"invalid output_sample_rate {output_sample_rate}")
        return rate

    def separate_file(
        self,
        path,
        savedir=None,
        output_sample_rate=None,
        normalize=False,
        chunk_seconds=None,
        overlap_seconds=None,
    ):
        """Separates an audio file (any rate, any number of channels).

        The channels are averaged, the result resampled to the model's rate
        and separated; files longer than ``chunk_seconds`` are separated
        chunk by chunk (``separate_long``).

        Arguments
        ---------
        path : str
            Local file (or URL / ``owner/repo/file.wav`` hub path, fetched
            afresh into a new temporary folder every time).
        savedir : str, optional
            Parent folder for such fetched files (default: system temp).
        output_sample_rate : None, "model", "input" or int
            Rate of the result: the model's (default, like SpeechBrain), the
            input file's, or a given rate.
        normalize : bool
            Scale each source so that its peak is 1 (SpeechBrain's
            ``separate_file`` always does this; here it is opt-in so that
            the sources keep their relative levels).
        chunk_seconds, overlap_seconds : float, optional
            Long-audio chunking (see ``separate_long``).

        Returns
        -------
        torch.Tensor
            ``[1, time, num_spks]``.
        """
        local, tmp = self._resolve_audio_path(path, savedir)
        try:
            out_rate = self._output_rate(output_sample_rate, local)
            blocks = list(
                self._stream_file(
                    local, chunk_seconds, overlap_seconds, out_rate
                )
            )
        finally:
            if tmp is not None:
                for f in pathlib.Path(tmp).iterdir():
                    f.unlink()
                os.rmdir(tmp)
        est = torch.cat(blocks, dim=-1).t().unsqueeze(0)  # [1, time, spks]
        if normalize:
            est = est / est.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
        return est

    def separate_file_to_folder(
        self,
        path,
        output_folder,
        output_sample_rate="input",
        normalize=False,
        chunk_seconds=None,
        overlap_seconds=None,
        subtype="FLOAT",
        name=None,
    ):
        """Separates a file into ``<name>_s1.wav``, ``<name>_s2.wav``, ...

        Streaming: the input is read and the outputs written block by block,
        so memory stays flat however long the file is. Outputs go to
        temporary files in ``output_folder`` and are renamed only once
        complete: an error never leaves a partial output file.

        Arguments
        ---------
        path : str
            The mixture file.
        output_folder : str
            Where to write (created if needed).
        output_sample_rate : "input", "model" or int
            Rate of the written files (default: the input's rate).
        normalize : bool
            Peak-normalise each output to 1 (second pass over the temporary
            file, still in blocks).
        chunk_seconds, overlap_seconds : float, optional
            Long-audio chunking (see ``separate_long``).
        subtype : str
            soundfile subtype, e.g. ``"FLOAT"`` or ``"PCM_16"``.
        name : str, optional
            Output base name (default: the input's name without extension).

        Returns
        -------
        list of pathlib.Path
            The written files, one per source.
        """
        path = str(path)
        out_rate = self._output_rate(output_sample_rate, path)
        output_folder = pathlib.Path(output_folder)
        output_folder.mkdir(parents=True, exist_ok=True)
        name = name or pathlib.Path(path).stem
        finals = [
            output_folder / f"{name}_s{i + 1}.wav" for i in range(self.num_spks)
        ]
        temps = []
        try:
            with ExitStack() as stack:
                handles = []
                for final in finals:
                    fd, tmp = tempfile.mkstemp(
                        prefix=f".{final.stem}.",
                        suffix=".part.wav",
                        dir=output_folder,
                    )
                    os.close(fd)
                    temps.append(pathlib.Path(tmp))
                    handles.append(
                        stack.enter_context(
                            sf.SoundFile(
                                tmp,
                                "w",
                                samplerate=out_rate,
                                channels=1,
                                subtype="FLOAT" if normalize else subtype,
                                format="WAV",
                            )
                        )
                    )
                peaks = np.zeros(self.num_spks)
                for block in self._stream_file(
                    path, chunk_seconds, overlap_seconds, out_rate
                ):
                    data = block.numpy()  # [spks, n]
                    peaks = np.maximum(peaks, np.abs(data).max(axis=1))
                    for i, handle in enumerate(handles):
                        handle.write(data[i])
            if normalize:
                temps = self._normalize_files(temps, peaks, subtype, out_rate)
            mode = _default_file_mode()
            for tmp, final in zip(temps, finals):
                os.chmod(tmp, mode)  # mkstemp makes 0600 files
                os.replace(tmp, final)
            temps = []
        finally:
            for tmp in temps:
                pathlib.Path(tmp).unlink(missing_ok=True)
        return finals

    @staticmethod
    def _normalize_files(temps, peaks, subtype, rate):
        """Rewrites each temporary file scaled to peak 1 (in blocks)."""
        new = []
        try:
            for tmp, peak in zip(temps, peaks):
                scale = 1.0 / max(float(peak), 1e-8)
                target = tmp.with_name(tmp.name.replace(".part", ".norm"))
                new.append(target)
                with sf.SoundFile(
                    target,
                    "w",
                    samplerate=rate,
                    channels=1,
                    subtype=subtype,
                    format="WAV",
                ) as out:
                    for block in iter_audio_blocks(tmp, 1 << 16):
                        out.write(block[:, 0] * scale)
                tmp.unlink()
        except BaseException:
            for f in new:
                f.unlink(missing_ok=True)
            raise
        return new

"""Dynamic mixing: new training mixtures drawn at every access.

As SpeechBrain's Sepformer recipes' ``dynamic_mixing``, with RMS levels
instead of pyloudnorm loudness: ``num_spks`` distinct random speakers (wsj0
``si_tr_s`` or LibriSpeech), one random utterance and crop each (cut to the
shortest), a random RMS level per source, WHAM! noise at a random SNR to the
loudest source, and a rescale under a 0.9 peak (levels and SNR unchanged).
"""

import logging
import math
from pathlib import Path

import numpy as np
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_s4m.audio import DATASET_EXTENSIONS, audio_frames, read_audio
from speechbrain_s4m.data.dataio import signal_keys
from speechbrain_s4m.data.layouts import PEAK as _PEAK
from speechbrain_s4m.data.layouts import DatasetLayoutError, check_choice

logger = logging.getLogger(__name__)


_AUDIO_GLOBS = tuple(f"*{ext}" for ext in DATASET_EXTENSIONS)

#: How the speaker of an utterance is read from its file name.
SOURCE_FORMATS = {
    # wsj0: <spk: 3 chars><rest>.wav, e.g. si_tr_s/01a/01aa010b.wav
    "wsj0": lambda stem: stem[:3],
    # LibriSpeech: <spk>/<chapter>/<spk>-<chapter>-<utt>.flac
    "librispeech": lambda stem: stem.split("-")[0],
}


def _audio_files(folder, what):
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetLayoutError(f"{what} folder '{folder}' does not exist")
    files = sorted(f for g in _AUDIO_GLOBS for f in folder.rglob(g))
    if not files:
        hint = ""
        if next(folder.rglob("*.wv1"), None) is not None:
            hint = (
                " (it holds wsj0 .wv1 SPHERE files: convert them to wav "
                "first, e.g. with sph2pipe)"
            )
        raise DatasetLayoutError(
            f"no .wav/.flac files under the {what} folder '{folder}'{hint}"
        )
    return files


def collect_speakers(folder, source_format="wsj0"):
    """Groups the utterances under ``folder`` (recursively) by speaker:
    ``{speaker: [paths]}``, sorted; the speaker is read from each file name
    as :data:`SOURCE_FORMATS` (``wsj0`` or ``librispeech``) says.
    """
    check_choice("source_format", source_format, list(SOURCE_FORMATS))
    speaker_of = SOURCE_FORMATS[source_format]
    speakers = {}
    for path in _audio_files(folder, f"{source_format} source"):
        speakers.setdefault(speaker_of(path.stem), []).append(str(path))
    return dict(sorted(speakers.items()))


def collect_noises(folder):
    """Lists the noise files under ``folder`` (e.g. ``wham_noise/tr``),
    recursively."""
    return [str(p) for p in _audio_files(folder, "noise")]


class DynamicMixer:
    """Draws random mixtures from speaker and noise folders.

    Arguments
    ---------
    base_folder_dm : str
        Folder of single-speaker utterances (see :func:`collect_speakers`).
    num_spks : int
        Sources per mixture (distinct speakers).
    sample_rate : int
        Output rate; sources at another rate are resampled on the fly
        (slower: pre-resample for training at scale).
    training_signal_len : int or None
        Mixture length (samples; random crops, shorter if an utterance is).
        None: whole utterances.
    source_format : str
        ``wsj0`` or ``librispeech``.
    noise_folder : str or None
        Noise files (WHAM! noise): items get ``noise_sig``, in ``mix_sig``.
    level_db : tuple
        Range of the source RMS levels (dBFS) on the mixed samples.
    snr_db : tuple
        Range of the loudest source's SNR over the noise (dB).
    """

    def __init__(
        self,
        base_folder_dm,
        num_spks=2,
        sample_rate=8000,
        training_signal_len=32000,
        source_format="wsj0",
        noise_folder=None,
        level_db=(-27.5, -22.5),
        snr_db=(-6.0, 3.0),
    ):
        self.speakers = collect_speakers(base_folder_dm, source_format)
        if len(self.speakers) < num_spks:
            raise ValueError(
                f"dynamic mixing needs at least num_spks={num_spks} distinct "
                f"speakers, but '{base_folder_dm}' has {len(self.speakers)} "
                f"({', '.join(self.speakers)}) with source_format="
                f"{source_format!r}"
            )
        self.speaker_ids = list(self.speakers)
        self.noises = collect_noises(noise_folder) if noise_folder else None
        self.num_spks = num_spks
        self.sample_rate = sample_rate
        self.length = training_signal_len
        self.level_db = level_db
        self.snr_db = snr_db
        self._warned_rates = set()

    def _read_crop(self, path, length, rng, loop=False):
        """Random crop of ``length`` output samples (resampled if needed)."""
        frames, rate = audio_frames(path)
        if rate != self.sample_rate and rate not in self._warned_rates:
            self._warned_rates.add(rate)
            logger.warning(
                "Dynamic mixing: '%s' is at %d Hz; resampling to %d Hz on "
                "the fly (pre-resample the sources to save time).",
                path,
                rate,
                self.sample_rate,
            )
        if length is None:
            return read_audio(path, self.sample_rate, resample=True)
        need = math.ceil(length * rate / self.sample_rate)
        start = int(rng.integers(0, frames - need + 1)) if frames > need else 0
        wav = read_audio(
            path, self.sample_rate, start, start + need, resample=True
        )[:length]
        if loop and wav.shape[0] < length:  # short noise file: repeat it
            wav = wav.repeat(math.ceil(length / max(1, wav.shape[0])))
            wav = wav[:length]
        return wav

    @staticmethod
    def _set_level(wav, level_db):
        rms = wav.pow(2).mean().sqrt()
        if rms < 1e-8:  # silent crop: leave it silent
            return wav
        return wav * (10 ** (level_db / 20) / rms)

    def draw(self, rng):
        """Draws one mixture with a numpy Generator: ``mix_sig``, ``s1_sig``
        ... (and ``noise_sig``), float32 ``[time]`` tensors, ``mix`` the sum
        of the others."""
        spks = rng.choice(len(self.speaker_ids), self.num_spks, replace=False)
        sources = []
        for s in spks:
            utts = self.speakers[self.speaker_ids[s]]
            path = utts[int(rng.integers(len(utts)))]
            sources.append(self._read_crop(path, self.length, rng))
        # Levels are set on what is mixed: after cutting to the shortest
        # source (else the cut can move the relative gain out of range)
        n = min(w.shape[0] for w in sources)
        sources = [
            self._set_level(w[:n], rng.uniform(*self.level_db)) for w in sources
        ]
        sigs = {f"s{i + 1}_sig": w for i, w in enumerate(sources)}
        mix = torch.stack(sources).sum(0)
        if self.noises is not None:
            path = self.noises[int(rng.integers(len(self.noises)))]
            noise = self._read_crop(path, n, rng, loop=True)
            loudest = max(float(w.pow(2).mean()) for w in sources)
            level = 10 * math.log10(loudest + 1e-12) - rng.uniform(*self.snr_db)
            noise = self._set_level(noise, level)
            sigs["noise_sig"] = noise
            mix = mix + noise
        peak = max(float(x.abs().max()) for x in [mix, *sigs.values()])
        scale = _PEAK / peak if peak > _PEAK else 1.0
        out = {"mix_sig": mix * scale}
        out.update({k: v * scale for k, v in sigs.items()})
        return out


def dynamic_mixing_dataset(
    base_folder_dm,
    num_spks=2,
    sample_rate=8000,
    training_signal_len=32000,
    source_format="wsj0",
    noise_folder=None,
    num_mixtures=None,
    level_db=(-27.5, -22.5),
    snr_db=(-6.0, 3.0),
):
    """Training set of mixtures drawn anew at every access (every epoch).

    The arguments are those of :class:`DynamicMixer`, and ``num_mixtures``,
    the items per epoch (None: number of source utterances // num_spks).
    Items are ``{"id", "mix_sig", "s1_sig", ...[, "noise_sig"]}``, like
    :func:`speechbrain_s4m.data.dataio.make_datasets`. Randomness comes
    from torch's RNG (seeded by the recipe, per dataloader worker) mixed
    with the item index, so items differ across epochs, workers and ranks.

    Example
    -------
    >>> from speechbrain_s4m.data.synthetic import write_wsj0_sources
    >>> root = write_wsj0_sources(
    ...     getfixture("tmp_path"), 2, 2, duration=(0.2, 0.2)
    ... )
    >>> dm = dynamic_mixing_dataset(root, training_signal_len=800)
    >>> len(dm), dm[0]["s2_sig"].shape
    (2, torch.Size([800]))
    """
    mixer = DynamicMixer(
        base_folder_dm,
        num_spks,
        sample_rate,
        training_signal_len,
        source_format,
        noise_folder,
        level_db,
        snr_db,
    )
    if num_mixtures is None:
        utterances = sum(len(v) for v in mixer.speakers.values())
        num_mixtures = max(1, utterances // num_spks)
    data = {f"dm{i:07d}": {"index": i} for i in range(num_mixtures)}
    keys = signal_keys(num_spks, noise=bool(noise_folder))

    def make(index):
        seed = int(torch.randint(0, 2**31 - 1, ()))
        sigs = mixer.draw(np.random.default_rng([seed, index]))
        for key in keys:
            yield sigs[key]

    dataset = DynamicItemDataset(data)
    dataset.add_dynamic_item(make, takes=["index"], provides=keys)
    dataset.set_output_keys(["id"] + keys)
    return dataset

"""Writers of tiny datasets in the official layouts, from generated voices.

The writers produce folders in the exact layouts of the official datasets
(defined in :mod:`speechbrain_s4m.data.layouts` and read by
:mod:`speechbrain_s4m.data.prepare`): WSJ0-2mix/3mix, Libri2Mix/3Mix (with
metadata CSVs) and WHAM!, plus single-speaker source folders (wsj0
``si_tr_s``-like, LibriSpeech-like) and noise folders for dynamic mixing.
The speech and noise come from :mod:`speechbrain_s4m.data.synthetic.voices`.
Files are 16-bit PCM and every mixture is the exact integer sum of its
written sources (e.g. ``mix == s1 + s2`` sample by sample).

Authors
 * speechbrain-s4m contributors 2026
"""

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from speechbrain_s4m.data.layouts import (
    LIBRIMIX_SPLITS,
    LIBRIMIX_TRAIN_SETS,
    METADATA_ID,
    METADATA_LENGTH,
    MIXTURES,
    MODES,
    NOISE_FOLDER,
    PEAK,
    WSJ0MIX_MIX,
    WSJ0MIX_SPLITS,
    librimix_splits,
    metadata_columns,
    metadata_file,
    mixture_parts,
    rate_folder,
    source_folders,
)
from speechbrain_s4m.data.synthetic.voices import (
    random_speaker,
    synth_noise,
    synth_voice,
)

__all__ = [
    "write_wsj0mix",
    "write_librimix",
    "write_wham",
    "write_wsj0_sources",
    "write_librispeech_sources",
    "write_noise_sources",
]


# ---------------------------------------------------------------------------
# helpers of the dataset writers
# ---------------------------------------------------------------------------


def _sizes(sizes, splits):
    """Normalises ``sizes`` (int or dict) to a dict over ``splits``."""
    if isinstance(sizes, int):
        return dict.fromkeys(splits, sizes)
    unknown = set(sizes) - set(splits)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {splits}")
    return {s: int(sizes.get(s, 0)) for s in splits}


def _rate_mode(sample_rate, mode):
    """``wavXk/<mode>``: the folder above the splits (arguments checked)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return Path(rate_folder(sample_rate)) / mode


def _pools(seed, pool_sizes):
    """Disjoint speaker pools: {pool: [(speaker_index, profile)]}."""
    rng = np.random.default_rng([seed, 7])
    pools, index = {}, 0
    for pool, size in pool_sizes.items():
        pools[pool] = []
        for _ in range(size):
            pools[pool].append((index, random_speaker(rng)))
            index += 1
    return pools


def _align(signals, mode):
    """Crops to the shortest (``min``) or zero-pads to the longest."""
    if mode == "min":
        n = min(len(x) for x in signals)
        return [x[:n] for x in signals]
    n = max(len(x) for x in signals)
    return [np.pad(x, (0, n - len(x))) for x in signals]


def _quantise(signals, extra_sums=()):
    """Scales to the ``PEAK`` level (mixtures included), rounds to int16.

    ``signals`` is a list of float arrays (same length); ``extra_sums`` lists
    index tuples whose sums (mixtures) must also stay under the peak.
    Returns the int32 arrays (all within int16 range).
    """
    peak = max(np.abs(x).max() for x in signals)
    for idx in extra_sums:
        peak = max(peak, np.abs(sum(signals[i] for i in idx)).max())
    scale = PEAK / max(peak, 1e-8)
    return [np.round(x * scale * 32767).astype(np.int32) for x in signals]


def _write(path, data, sample_rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.int16), sample_rate, subtype="PCM_16")


def _scaled_db(wav, gain_db):
    return wav / (np.sqrt(np.mean(wav**2)) + 1e-8) * 10 ** (gain_db / 20)


def _wsj_gains(rng, num_spks):
    """wsj0-mix style relative gains (dB): +g, -g (, third in [-g, g])."""
    g = rng.uniform(0.0, 2.5)
    gains = [g, -g]
    if num_spks == 3:
        gains.append(rng.uniform(-g, g))
    return gains


def _wsj_splits(sizes, num_speakers, seed):
    """Mixtures per ``tr``/``cv``/``tt`` split (default 20/5/5) and the
    speaker pools: ``tr`` and ``cv`` draw from ``seen``, ``tt`` from
    ``unseen`` (as wsj0-2mix)."""
    splits = tuple(WSJ0MIX_SPLITS.values())
    default = dict(zip(splits, (20, 5, 5)))
    sizes = _sizes(default if sizes is None else sizes, splits)
    pools = _pools(
        seed, {"seen": num_speakers, "unseen": max(4, num_speakers // 3)}
    )
    return sizes, pools


def _wsj_pool(pools, split):
    """The speaker pool of a wsj0-mix split (unseen speakers for test)."""
    return pools["unseen" if split == WSJ0MIX_SPLITS["test"] else "seen"]


def _draw_duration(rng, duration):
    lo, hi = duration
    return float(rng.uniform(lo, hi))


# ---------------------------------------------------------------------------
# dataset writers
# ---------------------------------------------------------------------------


def write_wsj0mix(
    root,
    num_spks=2,
    sample_rate=8000,
    mode="min",
    sizes=None,
    duration=(2.0, 4.0),
    num_speakers=16,
    seed=0,
):
    """Writes a synthetic WSJ0-2mix/3mix in the official layout.

    ``root/wav8k/min/{tr,cv,tt}/{mix,s1,s2(,s3)}/<utt1>_<g1>_<utt2>_<g2>.wav``
    where utterance names start with their 3-character speaker id (as wsj0)
    and ``g`` are the relative gains in dB. ``tr`` and ``cv`` share a speaker
    pool; ``tt`` has unseen speakers (as wsj0-2mix's si_tr_s vs
    si_dt_05/si_et_05).

    Arguments
    ---------
    root : str or Path
        Output folder (the ``2speakers`` folder of wsj0-mix).
    num_spks : int
        2 or 3.
    sample_rate : int
        8000 or 16000 (``wav8k`` / ``wav16k``).
    mode : str
        ``min`` (cut to the shortest source) or ``max`` (zero-pad).
    sizes : int or dict
        Mixtures per split, ``{"tr": n, "cv": n, "tt": n}`` (default
        ``{"tr": 20, "cv": 5, "tt": 5}``).
    duration : tuple
        Range of the source utterance durations (seconds).
    num_speakers : int
        Speakers in the training pool (the test pool has a third, >= 4).
    seed : int
        Random seed (same seed, same dataset).

    Returns
    -------
    root : Path

    Example
    -------
    >>> root = write_wsj0mix(
    ...     getfixture("tmp_path"), sizes=1, duration=(0.2, 0.2)
    ... )
    >>> sorted(p.name for p in (root / "wav8k" / "min" / "tt").iterdir())
    ['mix', 's1', 's2']
    """
    if num_spks not in (2, 3):
        raise ValueError(f"num_spks must be 2 or 3, got {num_spks}")
    root = Path(root)
    sizes, pools = _wsj_splits(sizes, num_speakers, seed)
    base = root / _rate_mode(sample_rate, mode)
    sources = source_folders(num_spks)
    for s_idx, (split, count) in enumerate(sizes.items()):
        pool = _wsj_pool(pools, split)
        rng = np.random.default_rng([seed, s_idx])
        for m in range(count):
            picks = rng.choice(len(pool), size=num_spks, replace=False)
            parts, wavs = [], []
            for j, (p, g) in enumerate(zip(picks, _wsj_gains(rng, num_spks))):
                spk_index, profile = pool[p]
                wav = synth_voice(
                    profile, _draw_duration(rng, duration), sample_rate, rng
                )
                utt = f"{_wsj_speaker(spk_index)}c{s_idx}{m:03d}{j}"
                parts += [utt, f"{g:.5f}"]
                wavs.append(_scaled_db(wav, g))
            q = _quantise(_align(wavs, mode), [tuple(range(num_spks))])
            name = "_".join(parts) + ".wav"
            for sub, src in zip(sources, q):
                _write(base / split / sub / name, src, sample_rate)
            _write(base / split / WSJ0MIX_MIX / name, sum(q), sample_rate)
    return root


def _wsj_speaker(index):
    """3-character wsj0-like speaker id (e.g. ``01a``)."""
    return f"{index % 100:02d}{chr(ord('a') + index // 100)}"


def _noisy_mixture(rng, pool, num_spks, sample_rate, mode, duration, snr):
    """Sources (s1..sN) + noise aligned and quantised, with their speakers."""
    picks = rng.choice(len(pool), size=num_spks, replace=False)
    wavs, speakers = [], []
    for p in picks:
        spk_index, profile = pool[p]
        wav = synth_voice(
            profile, _draw_duration(rng, duration), sample_rate, rng
        )
        wavs.append(_scaled_db(wav, rng.uniform(-2.5, 2.5)))
        speakers.append(spk_index)
    wavs = _align(wavs, mode)
    n = len(wavs[0])
    noise = synth_noise(n / sample_rate, sample_rate, rng)[:n]
    noise = np.pad(noise, (0, n - len(noise)))
    speech_db = 10 * np.log10(np.mean(wavs[0] ** 2) + 1e-12)
    noise = _scaled_db(noise, speech_db - rng.uniform(*snr))
    sums = list(_mixture_indices(num_spks).values())
    q = _quantise(wavs + [noise], sums)
    return q[:num_spks], q[num_spks], speakers


def _mixture_indices(num_spks):
    """Mixture folder -> indices of its parts in ``[s1, ..., sN, noise]``.

    The parts come from :func:`speechbrain_s4m.data.layouts.mixture_parts`
    (``mix_both``: the sources and the noise, ``mix_clean``: the sources,
    ``mix_single``: ``s1`` and the noise).
    """
    parts = source_folders(num_spks) + [NOISE_FOLDER]
    indices = {}
    for kind in MIXTURES:
        mix, sources, noise = mixture_parts(kind, num_spks)
        summed = sources + ([noise] if noise else [])
        indices[mix] = tuple(parts.index(sub) for sub in summed)
    return indices


def _noisy_mixes(sources, noise):
    """Every LibriMix / WHAM! mixture folder -> its exact (integer) sum."""
    signals = list(sources) + [noise]
    return {
        mix: sum(signals[i] for i in idx)
        for mix, idx in _mixture_indices(len(sources)).items()
    }


def write_librimix(
    root,
    num_spks=2,
    sample_rate=8000,
    mode="min",
    sizes=None,
    duration=(2.0, 4.0),
    num_speakers=16,
    snr=(-3.0, 6.0),
    metadata=True,
    metadata_prefix=None,
    seed=0,
):
    """Writes a synthetic Libri2Mix/Libri3Mix in the official layout.

    ``root/wav8k/min/{train-360,dev,test}/{mix_clean,mix_both,mix_single,
    s1,s2(,s3),noise}/<spk>-<chap>-<utt>_<spk>-<chap>-<utt>.wav`` and, with
    ``metadata``, ``root/wav8k/min/metadata/mixture_<split>_<mix>.csv``
    (columns ``mixture_ID, mixture_path, source_<i>_path[, noise_path],
    length``) with absolute paths. ``mix_clean = s1 + s2``, ``mix_both =
    s1 + s2 + noise`` and ``mix_single = s1 + noise`` exactly (int16).

    Arguments
    ---------
    root : str or Path
        Output folder (the ``Libri2Mix`` folder).
    num_spks : int
        2 or 3.
    sample_rate : int
        8000 or 16000.
    mode : str
        ``min`` or ``max``.
    sizes : int or dict
        Mixtures per split (keys among ``train-360, train-100, dev,
        test``; default ``{"train-360": 20, "dev": 5, "test": 5}``; an int
        gives that many to ``train-360``, ``dev`` and ``test``).
    duration : tuple
        Range of the source durations (seconds).
    num_speakers : int
        Speakers of the training pool (dev and test get disjoint pools).
    snr : tuple
        Range of the s1-to-noise ratio (dB).
    metadata : bool
        Write the metadata CSVs.
    metadata_prefix : str or None
        Absolute path written in place of ``root`` in the metadata (to
        simulate metadata generated on another machine); None: ``root``.
    seed : int
        Random seed.

    Returns
    -------
    root : Path

    Example
    -------
    >>> root = write_librimix(
    ...     getfixture("tmp_path"), sizes=1, duration=(0.2, 0.2)
    ... )
    >>> sorted(p.name for p in (root / "wav8k" / "min").iterdir())
    ['dev', 'metadata', 'test', 'train-360']
    """
    if num_spks not in (2, 3):
        raise ValueError(f"num_spks must be 2 or 3, got {num_spks}")
    root = Path(root).absolute()
    default = tuple(librimix_splits().values())  # train-100 only by name
    if sizes is None:
        sizes = dict(zip(default, (20, 5, 5)))
    elif isinstance(sizes, int):
        sizes = dict.fromkeys(default, sizes)
    sizes = _sizes(sizes, LIBRIMIX_SPLITS)
    small = max(4, num_speakers // 3)
    evals = [s for s in LIBRIMIX_SPLITS if s not in LIBRIMIX_TRAIN_SETS]
    pools = _pools(seed, {"train": num_speakers, **dict.fromkeys(evals, small)})
    rel = _rate_mode(sample_rate, mode)
    base = root / rel
    prefix = Path(metadata_prefix) if metadata_prefix else root
    srcs = source_folders(num_spks)
    for s_idx, (split, count) in enumerate(sizes.items()):
        if count == 0:
            continue
        pool = pools["train" if split in LIBRIMIX_TRAIN_SETS else split]
        rng = np.random.default_rng([seed, 100 + s_idx])
        kinds = [mixture_parts(kind, num_spks) for kind in MIXTURES]
        meta = {mix: [] for mix, _, _ in kinds}
        for m in range(count):
            sources, noise, speakers = _noisy_mixture(
                rng, pool, num_spks, sample_rate, mode, duration, snr
            )
            chap = 1000 + s_idx * 100
            name = "_".join(f"{100 + spk}-{chap}-{m:04d}" for spk in speakers)
            wav = name + ".wav"
            mixes = _noisy_mixes(sources, noise)
            parts = {**dict(zip(srcs, sources)), NOISE_FOLDER: noise}
            for sub, data in {**parts, **mixes}.items():
                _write(base / split / sub / wav, data, sample_rate)
            paths = {
                sub: str(prefix / rel / split / sub / wav)
                for sub in list(parts) + list(mixes)
            }
            for mix, used, noisy in kinds:
                row = {METADATA_ID: name}
                for sub, column in metadata_columns(mix, used, noisy).items():
                    row[column] = paths[sub]
                row[METADATA_LENGTH] = len(noise)
                meta[mix].append(row)
        if metadata:
            for mix, entries in meta.items():
                out = base / metadata_file(split, mix)
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(entries[0]))
                    writer.writeheader()
                    writer.writerows(entries)
    return root


def write_wham(
    root,
    sample_rate=8000,
    mode="min",
    sizes=None,
    duration=(2.0, 4.0),
    num_speakers=16,
    snr=(-3.0, 6.0),
    seed=0,
):
    """Writes a synthetic WHAM! in the official layout.

    ``root/wav8k/min/{tr,cv,tt}/{mix_clean,mix_both,mix_single,s1,s2,
    noise}/<utt1>_<g1>_<utt2>_<g2>.wav`` (wsj0-2mix names).

    Arguments
    ---------
    root : str or Path
        Output folder.
    sample_rate : int
        8000 or 16000.
    mode : str
        ``min`` or ``max``.
    sizes : int or dict
        Mixtures per split ``{"tr", "cv", "tt"}`` (default 20/5/5).
    duration : tuple
        Range of the source durations (seconds).
    num_speakers : int
        Speakers of the training pool (``tt`` gets unseen speakers).
    snr : tuple
        Range of the s1-to-noise ratio (dB).
    seed : int
        Random seed.

    Returns
    -------
    root : Path

    Example
    -------
    >>> root = write_wham(getfixture("tmp_path"), sizes=1, duration=(0.2, 0.2))
    >>> len(list((root / "wav8k" / "min" / "cv").iterdir()))
    6
    """
    root = Path(root)
    sizes, pools = _wsj_splits(sizes, num_speakers, seed)
    base = root / _rate_mode(sample_rate, mode)
    for s_idx, (split, count) in enumerate(sizes.items()):
        pool = _wsj_pool(pools, split)
        rng = np.random.default_rng([seed, 200 + s_idx])
        for m in range(count):
            sources, noise, speakers = _noisy_mixture(
                rng, pool, 2, sample_rate, mode, duration, snr
            )
            g = rng.uniform(0, 2.5)
            name = (
                f"{_wsj_speaker(speakers[0])}c{s_idx}{m:03d}0_{g:.5f}_"
                f"{_wsj_speaker(speakers[1])}c{s_idx}{m:03d}1_{-g:.5f}.wav"
            )
            out = {**dict(zip(source_folders(2), sources)), NOISE_FOLDER: noise}
            out.update(_noisy_mixes(sources, noise))
            for sub, data in out.items():
                _write(base / split / sub / name, data, sample_rate)
    return root


def _write_float(path, wav, sample_rate, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = wav / max(np.abs(wav).max() / PEAK, 1.0)
    sf.write(str(path), wav, sample_rate, subtype="PCM_16", format=fmt)


def write_wsj0_sources(
    root,
    num_speakers=4,
    utts_per_speaker=3,
    sample_rate=8000,
    duration=(1.0, 2.0),
    seed=0,
):
    """Writes single-speaker utterances like wsj0 ``si_tr_s`` (as wav).

    ``root/<spk>/<spk><rest>.wav`` where ``<spk>`` is the 3-character
    speaker id (the first 3 characters of each file name, as wsj0).

    Arguments
    ---------
    root : str or Path
        Output folder (the ``si_tr_s`` folder).
    num_speakers : int
        Number of speakers.
    utts_per_speaker : int
        Utterances per speaker.
    sample_rate : int
        Sample rate (Hz).
    duration : tuple
        Range of the utterance durations (seconds).
    seed : int
        Random seed.

    Returns
    -------
    root : Path

    Example
    -------
    >>> root = write_wsj0_sources(
    ...     getfixture("tmp_path"), 2, 1, duration=(0.2, 0.2)
    ... )
    >>> sorted(p.name for p in root.glob("*/*.wav"))
    ['00ac0000.wav', '01ac0100.wav']
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 300])
    for s in range(num_speakers):
        profile = random_speaker(rng)
        spk = _wsj_speaker(s)
        for u in range(utts_per_speaker):
            wav = synth_voice(
                profile, _draw_duration(rng, duration), sample_rate, rng
            )
            name = f"{spk}c{s:02d}{u:02d}.wav"
            _write_float(root / spk / name, wav, sample_rate)
    return root


def write_librispeech_sources(
    root,
    num_speakers=4,
    utts_per_speaker=3,
    sample_rate=16000,
    duration=(1.0, 2.0),
    seed=0,
):
    """Writes single-speaker utterances like LibriSpeech (flac).

    ``root/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``.

    Arguments
    ---------
    root : str or Path
        Output folder (e.g. ``LibriSpeech/train-clean-360``).
    num_speakers : int
        Number of speakers.
    utts_per_speaker : int
        Utterances per speaker.
    sample_rate : int
        Sample rate (Hz); LibriSpeech is 16 kHz.
    duration : tuple
        Range of the utterance durations (seconds).
    seed : int
        Random seed.

    Returns
    -------
    root : Path

    Example
    -------
    >>> root = write_librispeech_sources(
    ...     getfixture("tmp_path"), 1, 1, duration=(0.2, 0.2)
    ... )
    >>> [p.relative_to(root).as_posix() for p in root.rglob("*.flac")]
    ['100/2000/100-2000-0000.flac']
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 400])
    for s in range(num_speakers):
        profile = random_speaker(rng)
        spk, chap = 100 + s, 2000 + s
        for u in range(utts_per_speaker):
            wav = synth_voice(
                profile, _draw_duration(rng, duration), sample_rate, rng
            )
            path = root / str(spk) / str(chap) / f"{spk}-{chap}-{u:04d}.flac"
            _write_float(path, wav, sample_rate, fmt="FLAC")
    return root


def write_noise_sources(
    root, num_files=3, sample_rate=8000, duration=(2.0, 4.0), seed=0
):
    """Writes noise recordings like the WHAM! noise folders.

    Arguments
    ---------
    root : str or Path
        Output folder (e.g. ``wham_noise/tr``).
    num_files : int
        Number of noise files.
    sample_rate : int
        Sample rate (Hz).
    duration : tuple
        Range of the file durations (seconds).
    seed : int
        Random seed.

    Returns
    -------
    root : Path

    Example
    -------
    >>> root = write_noise_sources(getfixture("tmp_path"), 2, 8000, (0.2, 0.3))
    >>> len(list(root.glob("*.wav")))
    2
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 500])
    for i in range(num_files):
        wav = synth_noise(_draw_duration(rng, duration), sample_rate, rng)
        _write_float(root / f"noise{i:03d}.wav", wav, sample_rate)
    return root

"""Writers of tiny WSJ0-2mix/3mix, Libri2Mix/3Mix and WHAM! datasets in the
official layouts (:mod:`speechbrain_s4m.data.layouts`), and of source and
noise folders for dynamic mixing. Files are 16-bit PCM; every mixture is
the exact integer sum of its written parts.
"""

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from speechbrain_s4m.data import layouts
from speechbrain_s4m.data.layouts import check_choice, source_folders
from speechbrain_s4m.data.synthetic.voices import (
    random_speaker,
    synth_noise,
    synth_voice,
)


def _sizes(sizes, splits, default):
    """Mixtures per split: ``sizes`` None (``default``), an int (for each
    split of ``default``) or a dict over ``splits``."""
    if sizes is None:
        sizes = default
    elif isinstance(sizes, int):
        sizes = dict.fromkeys(default, sizes)
    unknown = set(sizes) - set(splits)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {splits}")
    return {s: int(sizes.get(s, 0)) for s in splits}


def _rate_mode(sample_rate, mode):
    """``wavXk/<mode>``: the folder above the splits (arguments checked)."""
    check_choice("mode", mode, layouts.MODES)
    return Path(layouts.rate_folder(sample_rate)) / mode


def _pools(seed, pool_sizes):
    """Disjoint speaker pools: {pool: [(speaker_index, profile)]}."""
    rng = np.random.default_rng([seed, 7])
    pools, index = {}, 0
    for pool, size in pool_sizes.items():
        pools[pool] = [(index + i, random_speaker(rng)) for i in range(size)]
        index += size
    return pools


def _wsj_splits(sizes, num_speakers, seed):
    """Mixtures per wsj0-mix split (default 20/5/5) and the speaker pool of
    a split: ``tt`` speakers are unseen in ``tr`` and ``cv`` (as wsj0-2mix's
    si_tr_s vs si_dt_05/si_et_05)."""
    splits = tuple(layouts.WSJ0MIX_SPLITS.values())
    sizes = _sizes(sizes, splits, dict(zip(splits, (20, 5, 5))))
    small = max(4, num_speakers // 3)
    pools = _pools(seed, {"seen": num_speakers, "unseen": small})
    test = layouts.WSJ0MIX_SPLITS["test"]
    return sizes, lambda split: pools["unseen" if split == test else "seen"]


def _voices(rng, pool, num_spks, sample_rate, duration, wsj_gains=False):
    """Signals, speakers and gains (dB) of ``num_spks`` distinct speakers of
    ``pool``: gains as wsj0-mix (+g, -g (, in [-g, g])) or each in +-2.5."""
    picks = rng.choice(len(pool), size=num_spks, replace=False)
    gains = []
    if wsj_gains:
        g = rng.uniform(0.0, 2.5)
        gains = [g, -g] + ([rng.uniform(-g, g)] if num_spks == 3 else [])
    wavs, speakers = [], []
    for j, p in enumerate(picks):
        spk_index, profile = pool[p]
        wav = synth_voice(profile, rng.uniform(*duration), sample_rate, rng)
        if not wsj_gains:
            gains.append(rng.uniform(-2.5, 2.5))
        wavs.append(_scaled_db(wav, gains[j]))
        speakers.append(spk_index)
    return wavs, speakers, gains


def _align(signals, mode):
    """Crops to the shortest (``min``) or zero-pads to the longest."""
    if mode == "min":
        n = min(len(x) for x in signals)
        return [x[:n] for x in signals]
    n = max(len(x) for x in signals)
    return [np.pad(x, (0, n - len(x))) for x in signals]


def _quantised(parts, mixes):
    """Scales ``parts`` ({folder: float signal}) so that they and their
    ``mixes`` ({mix folder: summed folders}) peak at ``PEAK``, rounds them to
    int16 steps and adds the exact integer mixtures."""
    peak = max(np.abs(x).max() for x in parts.values())
    for used in mixes.values():
        peak = max(peak, np.abs(sum(parts[p] for p in used)).max())
    scale = layouts.PEAK / max(peak, 1e-8)
    out = {
        k: np.round(x * scale * 32767).astype(np.int32)
        for k, x in parts.items()
    }
    out.update({mix: sum(out[p] for p in used) for mix, used in mixes.items()})
    return out


def _write(path, data, sample_rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.int16), sample_rate, subtype="PCM_16")


def _scaled_db(wav, gain_db):
    return wav / (np.sqrt(np.mean(wav**2)) + 1e-8) * 10 ** (gain_db / 20)


def _wsj_speaker(index):
    """3-character wsj0-like speaker id (e.g. ``01a``)."""
    return f"{index % 100:02d}{chr(ord('a') + index // 100)}"


def _wsj_name(speakers, gains, s_idx, m):
    """wsj0-mix mixture name ``<utt1>_<g1>_<utt2>_<g2>...``."""
    return "_".join(
        f"{_wsj_speaker(spk)}c{s_idx}{m:03d}{j}_{g:.5f}"
        for j, (spk, g) in enumerate(zip(speakers, gains))
    )


def _noisy_mixture(rng, pool, num_spks, sample_rate, mode, duration, snr):
    """Quantised sources, noise, all LibriMix / WHAM! mixtures; speakers."""
    wavs, speakers, _ = _voices(rng, pool, num_spks, sample_rate, duration)
    wavs = _align(wavs, mode)
    n = len(wavs[0])
    noise = synth_noise(n / sample_rate, sample_rate, rng)[:n]
    noise = np.pad(noise, (0, n - len(noise)))
    speech_db = 10 * np.log10(np.mean(wavs[0] ** 2) + 1e-12)
    noise = _scaled_db(noise, speech_db - rng.uniform(*snr))
    parts = dict(zip(source_folders(num_spks), wavs))
    parts[layouts.NOISE_FOLDER] = noise
    mixes = {}
    for kind in layouts.MIXTURES:
        mix, sources, noisy = layouts.mixture_parts(kind, num_spks)
        mixes[mix] = sources + ([noisy] if noisy else [])
    return _quantised(parts, mixes), speakers


def _write_splits(root, sample_rate, mode, sizes, seed, offset, draw):
    """Writes the mixtures ``draw(rng, split, s_idx, m) -> (name, {folder:
    data})`` of every split; returns ``{split: [(name, length)]}``."""
    base = Path(root) / _rate_mode(sample_rate, mode)
    written = {}
    for s_idx, (split, count) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, offset + s_idx])
        for m in range(count):
            name, folders = draw(rng, split, s_idx, m)
            for sub, data in folders.items():
                _write(base / split / sub / f"{name}.wav", data, sample_rate)
            # every folder of a mixture has one length
            written.setdefault(split, []).append((name, len(data)))
    return written


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
    """Writes a synthetic WSJ0-2mix/3mix in the official layout:
    ``root/wav8k/min/{tr,cv,tt}/{mix,s1,s2(,s3)}/<utt1>_<g1>_<utt2>_<g2>.wav``
    (utterance names start with a 3-character speaker id, as wsj0; ``g``
    are the relative gains in dB); ``tt`` speakers are unseen in ``tr``.

    Arguments
    ---------
    root : str or Path
        Output folder (the ``2speakers`` folder of wsj0-mix), returned.
    num_spks, sample_rate, mode
        2 or 3; 8000 or 16000; ``min`` (cut) or ``max`` (zero-pad).
    sizes : int or dict
        Mixtures per split (default ``{"tr": 20, "cv": 5, "tt": 5}``).
    duration : tuple
        Range of the source utterance durations (seconds).
    num_speakers : int
        Speakers of the training pool (the test pool has a third, >= 4).
    seed : int
        Random seed (same seed, same dataset).

    Example
    -------
    >>> root = write_wsj0mix(getfixture("tmp_path"), sizes=1, duration=(1, 1))
    >>> sorted(p.name for p in (root / "wav8k" / "min" / "tt").iterdir())
    ['mix', 's1', 's2']
    """
    check_choice("num_spks", num_spks, (2, 3))
    sizes, pool_of = _wsj_splits(sizes, num_speakers, seed)

    def draw(rng, split, s_idx, m):
        wavs, speakers, gains = _voices(
            rng, pool_of(split), num_spks, sample_rate, duration, True
        )
        sources = dict(zip(source_folders(num_spks), _align(wavs, mode)))
        folders = _quantised(sources, {layouts.WSJ0MIX_MIX: list(sources)})
        return _wsj_name(speakers, gains, s_idx, m), folders

    _write_splits(root, sample_rate, mode, sizes, seed, 0, draw)
    return Path(root)


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
    """Writes a synthetic Libri2Mix/Libri3Mix in the official layout:
    ``root/wav8k/min/{train-360,dev,test}/{mix_clean,mix_both,mix_single,
    s1,s2(,s3),noise}/<spk>-<chap>-<utt>_<spk>-<chap>-<utt>.wav`` and the
    metadata CSVs ``root/wav8k/min/metadata/mixture_<split>_<mix>.csv``.

    Arguments as :func:`write_wsj0mix` (``sizes`` keys among ``train-360,
    train-100, dev, test``; default 20, -, 5, 5), and:

    Arguments
    ---------
    snr : tuple
        Range of the s1-to-noise ratio (dB).
    metadata : bool
        Write the metadata CSVs (with absolute paths).
    metadata_prefix : str or None
        Written in place of ``root`` in the metadata (None: ``root``).

    Example
    -------
    >>> root = write_librimix(getfixture("tmp_path"), sizes=1, duration=(1, 1))
    >>> sorted(p.name for p in (root / "wav8k" / "min").iterdir())
    ['dev', 'metadata', 'test', 'train-360']
    """
    check_choice("num_spks", num_spks, (2, 3))
    default = dict(zip(layouts.librimix_splits().values(), (20, 5, 5)))
    sizes = _sizes(sizes, layouts.LIBRIMIX_SPLITS, default)
    small, train_sets = max(4, num_speakers // 3), layouts.LIBRIMIX_TRAIN_SETS
    evals = [s for s in layouts.LIBRIMIX_SPLITS if s not in train_sets]
    pools = _pools(seed, {"train": num_speakers, **dict.fromkeys(evals, small)})

    def draw(rng, split, s_idx, m):
        pool = pools["train" if split in train_sets else split]
        folders, speakers = _noisy_mixture(
            rng, pool, num_spks, sample_rate, mode, duration, snr
        )
        chap = 1000 + s_idx * 100
        return "_".join(f"{100 + s}-{chap}-{m:04d}" for s in speakers), folders

    root = Path(root).absolute()
    written = _write_splits(root, sample_rate, mode, sizes, seed, 100, draw)
    rel = _rate_mode(sample_rate, mode)
    prefix = Path(metadata_prefix) if metadata_prefix else root
    for split, mixtures in written.items() if metadata else ():
        for kind in layouts.MIXTURES:
            parts = layouts.mixture_parts(kind, num_spks)
            columns = layouts.metadata_columns(*parts)
            header = [*columns.values(), layouts.METADATA_LENGTH]
            out = root / rel / layouts.metadata_file(split, parts[0])
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow([layouts.METADATA_ID, *header])
                for name, length in mixtures:
                    paths = [
                        str(prefix / rel / split / sub / f"{name}.wav")
                        for sub in columns
                    ]
                    writer.writerow([name, *paths, length])
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
    """Writes a synthetic WHAM! in the official layout: ``root/wav8k/min/
    {tr,cv,tt}/{mix_clean,mix_both,mix_single,s1,s2,noise}/`` with the
    wsj0-2mix names (arguments as :func:`write_librimix`).
    """
    sizes, pool_of = _wsj_splits(sizes, num_speakers, seed)

    def draw(rng, split, s_idx, m):
        folders, speakers = _noisy_mixture(
            rng, pool_of(split), 2, sample_rate, mode, duration, snr
        )
        g = rng.uniform(0, 2.5)
        return _wsj_name(speakers, [g, -g], s_idx, m), folders

    _write_splits(root, sample_rate, mode, sizes, seed, 200, draw)
    return Path(root)


def _write_float(path, wav, sample_rate, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = wav / max(np.abs(wav).max() / layouts.PEAK, 1.0)
    sf.write(str(path), wav, sample_rate, subtype="PCM_16", format=fmt)


def _write_speakers(root, num_speakers, utts, sample_rate, duration, rng, path):
    """Writes ``utts`` utterances of each speaker at ``root / path(s, u)``."""
    root, rng = Path(root), np.random.default_rng(rng)
    for s in range(num_speakers):
        profile = random_speaker(rng)
        for u in range(utts):
            wav = synth_voice(profile, rng.uniform(*duration), sample_rate, rng)
            out = root / path(s, u)
            _write_float(out, wav, sample_rate, out.suffix[1:].upper())
    return root


def write_wsj0_sources(
    root,
    num_speakers=4,
    utts_per_speaker=3,
    sample_rate=8000,
    duration=(1.0, 2.0),
    seed=0,
):
    """Writes ``num_speakers`` x ``utts_per_speaker`` utterances like wsj0
    ``si_tr_s``: ``root/<spk>/<spk><rest>.wav`` (``<spk>``: 3 characters);
    ``duration``: range in seconds; returns ``root`` as a Path."""

    def path(s, u):
        spk = _wsj_speaker(s)
        return f"{spk}/{spk}c{s:02d}{u:02d}.wav"

    rng = [seed, 300]
    return _write_speakers(
        root, num_speakers, utts_per_speaker, sample_rate, duration, rng, path
    )


def write_librispeech_sources(
    root,
    num_speakers=4,
    utts_per_speaker=3,
    sample_rate=16000,
    duration=(1.0, 2.0),
    seed=0,
):
    """Writes single-speaker utterances like LibriSpeech (flac):
    ``root/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` (arguments
    as :func:`write_wsj0_sources`)."""

    def path(s, u):
        spk, chap = 100 + s, 2000 + s
        return f"{spk}/{chap}/{spk}-{chap}-{u:04d}.flac"

    rng = [seed, 400]
    return _write_speakers(
        root, num_speakers, utts_per_speaker, sample_rate, duration, rng, path
    )


def write_noise_sources(
    root, num_files=3, sample_rate=8000, duration=(2.0, 4.0), seed=0
):
    """Writes ``num_files`` noise recordings like a WHAM! noise folder:
    ``root/noise<i>.wav`` (other arguments as :func:`write_wsj0_sources`).
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 500])
    for i in range(num_files):
        wav = synth_noise(rng.uniform(*duration), sample_rate, rng)
        _write_float(root / f"noise{i:03d}.wav", wav, sample_rate)
    return root

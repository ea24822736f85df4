"""Procedural speech-like voices and tiny datasets in the real layouts.

No speech corpus can be downloaded here, so tests and the SynthMix recipe use
generated voices: harmonic sources whose pitch moves (intonation glides,
declination, vibrato) filtered by 3 moving formant resonances (vowel targets
with coarticulation), shaped by syllable-rate (3-6 Hz) envelopes with pauses,
plus aspiration and fricative-like noise bursts. Each speaker has its own
pitch range (median f0 in 90-250 Hz), vocal-tract scale, speaking rate,
brightness and breathiness, so that speakers are distinguishable and a
separator can learn them.

The writers produce folders in the exact layouts of the official datasets
(see ``speechbrain_s4m.data.prepare``): WSJ0-2mix/3mix, Libri2Mix/3Mix (with
metadata CSVs) and WHAM!, plus single-speaker source folders (wsj0
``si_tr_s``-like, LibriSpeech-like) and noise folders for dynamic mixing.
Files are 16-bit PCM and every mixture is the exact integer sum of its
written sources (e.g. ``mix == s1 + s2`` sample by sample).

Authors
 * speechbrain-s4m contributors 2026
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "SpeakerProfile",
    "random_speaker",
    "synth_voice",
    "synth_noise",
    "write_wsj0mix",
    "write_librimix",
    "write_wham",
    "write_wsj0_sources",
    "write_librispeech_sources",
    "write_noise_sources",
]

# F1, F2, F3 (Hz) of a few vowels (Peterson & Barney, adult male averages).
_VOWELS = np.array(
    [
        [730, 1090, 2440],  # a
        [270, 2290, 3010],  # i
        [300, 870, 2240],  # u
        [530, 1840, 2480],  # e
        [570, 840, 2410],  # o
        [660, 1720, 2410],  # ae
        [440, 1020, 2240],  # uh
        [490, 1350, 1690],  # er
    ],
    dtype=np.float64,
)
_FORMANT_BW = np.array([90.0, 110.0, 170.0])  # resonance half-widths (Hz)
_FORMANT_GAIN = np.array([1.0, 0.55, 0.3])
_FRAME_S = 0.01  # control rate of pitch, formants and envelopes (10 ms)
_PEAK = 0.9  # peak level after mixing (as the wsj0-mix scripts)


@dataclass
class SpeakerProfile:
    """Parameters of one synthetic speaker.

    Arguments
    ---------
    f0 : float
        Median fundamental frequency (Hz).
    f0_span : float
        Intonation range (semitones, about +-1.5 std of pitch targets).
    formant_scale : float
        Vocal-tract scaling of the formant frequencies.
    rate : float
        Syllables per second (3-6).
    tilt : float
        Spectral tilt exponent of the harmonics (larger = darker voice).
    breath : float
        Level of the aspiration noise relative to the voiced part.
    vibrato_rate : float
        Vibrato frequency (Hz).
    vibrato_depth : float
        Relative vibrato depth of f0.
    """

    f0: float
    f0_span: float
    formant_scale: float
    rate: float
    tilt: float
    breath: float
    vibrato_rate: float
    vibrato_depth: float


def random_speaker(rng, f0_range=(90.0, 250.0)):
    """Draws a random speaker (pitch log-uniform in ``f0_range``).

    Arguments
    ---------
    rng : numpy.random.Generator
        Random generator.
    f0_range : tuple
        Range of the speaker's median f0 (Hz).

    Returns
    -------
    profile : SpeakerProfile

    Example
    -------
    >>> spk = random_speaker(np.random.default_rng(0))
    >>> 90 <= spk.f0 <= 250
    True
    """
    lo, hi = np.log(f0_range[0]), np.log(f0_range[1])
    pos = rng.uniform()
    f0 = float(np.exp(lo + pos * (hi - lo)))
    # higher voices tend to have shorter vocal tracts (higher formants)
    scale = 0.92 + 0.25 * pos + rng.normal(0.0, 0.03)
    return SpeakerProfile(
        f0=f0,
        f0_span=float(rng.uniform(2.0, 6.0)),
        formant_scale=float(np.clip(scale, 0.85, 1.25)),
        rate=float(rng.uniform(3.0, 6.0)),
        tilt=float(rng.uniform(0.6, 1.4)),
        breath=float(rng.uniform(0.01, 0.06)),
        vibrato_rate=float(rng.uniform(4.0, 7.0)),
        vibrato_depth=float(rng.uniform(0.005, 0.02)),
    )


def _smooth(x, width):
    """Moving average along the last axis (edges padded)."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    pad = width // 2
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, width - 1 - pad)], "edge")
    if x.ndim == 1:
        return np.convolve(xp, kernel, mode="valid")
    return np.stack([np.convolve(r, kernel, mode="valid") for r in xp])


def _control_tracks(profile, n_frames, rng):
    """Frame-rate tracks: envelope, voicing, f0, formants, fricative level."""
    env = np.zeros(n_frames)
    semis = np.zeros(n_frames)
    formants = np.zeros((3, n_frames))
    fric = np.zeros(n_frames)
    vowel = _VOWELS[rng.integers(len(_VOWELS))]
    frame = int(rng.integers(0, 12))  # short leading silence
    formants[:, :frame] = vowel[:, None]
    level = 0.0
    spoken = False  # pauses only after a syllable: no utterance is silent
    while frame < n_frames:
        if spoken and rng.uniform() < 0.15:  # pause
            n = int(rng.uniform(0.08, 0.3) / _FRAME_S)
            stop = min(frame + n, n_frames)
            formants[:, frame:stop] = vowel[:, None]
            semis[frame:stop] = level
            frame = stop
            continue
        n = max(4, int(rng.uniform(0.7, 1.3) / profile.rate / _FRAME_S))
        stop = min(frame + n, n_frames)
        m = stop - frame
        x = (np.arange(m) + 0.5) / n
        onset = 0
        if rng.uniform() < 0.45:  # fricative-like onset (consonant)
            onset = min(m // 3, int(rng.uniform(0.03, 0.07) / _FRAME_S))
            fric[frame : frame + onset] = rng.uniform(0.3, 0.8)
        amp = rng.uniform(0.45, 1.0)
        shape = np.sin(np.pi * np.clip((x * n - onset) / (n - onset), 0, 1))
        env[frame:stop] = amp * shape**0.6
        # pitch: glide between two targets (+ declination over time)
        decl = -1.5 * frame / max(n_frames, 1)
        start = level
        level = rng.normal(0.0, profile.f0_span / 3) + decl
        glide = start + (level - start) * np.clip(x * 2.5, 0, 1)
        semis[frame:stop] = glide + rng.normal(0, 0.4) * x
        # formants: move from the previous vowel to a new one
        new = _VOWELS[rng.integers(len(_VOWELS))]
        w = np.clip(x / 0.4, 0, 1)[None, :]
        formants[:, frame:stop] = vowel[:, None] * (1 - w) + new[:, None] * w
        vowel = new
        frame = stop
        spoken = True
    semis = _smooth(semis, 5)
    formants = _smooth(formants, 3) * profile.formant_scale
    return env, semis, formants, fric


def synth_voice(profile, duration, sample_rate, rng):
    """Generates one utterance of a speaker.

    Arguments
    ---------
    profile : SpeakerProfile
        The speaker.
    duration : float
        Duration in seconds.
    sample_rate : int
        Sample rate (Hz).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    wav : numpy.ndarray
        ``[time]`` float32, RMS about 0.1.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> wav = synth_voice(random_speaker(rng), 0.5, 8000, rng)
    >>> wav.shape, wav.dtype
    ((4000,), dtype('float32'))
    """
    n = int(round(duration * sample_rate))
    hop = int(round(_FRAME_S * sample_rate))
    n_frames = n // hop + 2
    env, semis, formants, fric = _control_tracks(profile, n_frames, rng)

    # frame -> sample interpolation weights (shared by every track)
    pos = np.arange(n) / hop
    i0 = pos.astype(np.int64)
    frac = (pos - i0).astype(np.float32)

    def upsample(track):
        track = track.astype(np.float32)
        return track[..., i0] * (1 - frac) + track[..., i0 + 1] * frac

    f0_frames = profile.f0 * 2.0 ** (semis / 12.0)
    t = np.arange(n) / sample_rate
    vib = 1 + profile.vibrato_depth * np.sin(
        2 * np.pi * profile.vibrato_rate * t + rng.uniform(0, 2 * np.pi)
    )
    f0 = upsample(f0_frames) * vib
    phase = 2 * np.pi * np.cumsum(f0.astype(np.float64)) / sample_rate
    phase += rng.uniform(0, 2 * np.pi)

    # harmonic amplitudes at frame rate: tilt x sum of formant resonances
    nyq = 0.92 * sample_rate / 2
    n_harm = max(1, int(nyq / f0_frames.min()))
    k = np.arange(1, n_harm + 1)[:, None]  # [harm, 1]
    freqs = k * f0_frames[None, :]  # [harm, frames]
    res = _FORMANT_GAIN[:, None, None] / (
        1
        + ((freqs[None] - formants[:, None, :]) / _FORMANT_BW[:, None, None])
        ** 2
    )  # [3, harm, frames]
    amps = res.sum(0) * k ** (-profile.tilt) * (freqs < nyq)

    # sum_k a_k(t) sin(k phase) with the Chebyshev recurrence
    s_prev = np.zeros(n, dtype=np.float32)
    s_cur = np.sin(phase).astype(np.float32)
    two_cos = (2 * np.cos(phase)).astype(np.float32)
    voiced = np.zeros(n, dtype=np.float32)
    for h in range(n_harm):
        voiced += upsample(amps[h]) * s_cur
        s_prev, s_cur = s_cur, two_cos * s_cur - s_prev

    # aspiration + fricative bursts: high-passed noise
    noise = rng.standard_normal(n + 1).astype(np.float32)
    noise = noise[1:] - 0.9 * noise[:-1]
    v_rms = np.sqrt(np.mean(voiced**2)) + 1e-8
    env_s = upsample(env)
    wav = env_s * voiced / v_rms
    wav += noise * (profile.breath * env_s + 0.35 * upsample(fric))
    wav *= 0.1 / (np.sqrt(np.mean(wav**2)) + 1e-8)
    return wav.astype(np.float32)


def synth_noise(duration, sample_rate, rng):
    """Ambient-like noise: coloured noise with slow level changes and hum.

    Arguments
    ---------
    duration : float
        Duration in seconds.
    sample_rate : int
        Sample rate (Hz).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    noise : numpy.ndarray
        ``[time]`` float32, RMS about 0.1.

    Example
    -------
    >>> synth_noise(0.25, 8000, np.random.default_rng(0)).shape
    (2000,)
    """
    from scipy.signal import lfilter

    n = int(round(duration * sample_rate))
    white = rng.standard_normal(n)
    pole = rng.uniform(0.3, 0.97)  # random spectral colour
    noise = lfilter([1.0], [1.0, -pole], white)
    t = np.arange(n) / sample_rate
    mod = 1 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t)
    hum = 0.3 * np.sin(2 * np.pi * rng.uniform(50, 300) * t)
    noise = noise / (np.std(noise) + 1e-8) * mod + hum
    return (0.1 * noise / (np.sqrt(np.mean(noise**2)) + 1e-8)).astype(
        np.float32
    )


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


def _rate_dir(sample_rate):
    if sample_rate not in (8000, 16000):
        raise ValueError(f"sample_rate must be 8000 or 16000: {sample_rate}")
    return f"wav{sample_rate // 1000}k"


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
    """Scales to a 0.9 peak (mixtures included) and rounds to int16.

    ``signals`` is a list of float arrays (same length); ``extra_sums`` lists
    index tuples whose sums (mixtures) must also stay under the peak.
    Returns the int32 arrays (all within int16 range).
    """
    peak = max(np.abs(x).max() for x in signals)
    for idx in extra_sums:
        peak = max(peak, np.abs(sum(signals[i] for i in idx)).max())
    scale = _PEAK / max(peak, 1e-8)
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
    sizes = _sizes(
        {"tr": 20, "cv": 5, "tt": 5} if sizes is None else sizes,
        ("tr", "cv", "tt"),
    )
    pools = _pools(
        seed, {"seen": num_speakers, "unseen": max(4, num_speakers // 3)}
    )
    return sizes, pools


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
    base = root / _rate_dir(sample_rate) / mode
    for s_idx, (split, count) in enumerate(sizes.items()):
        pool = pools["unseen" if split == "tt" else "seen"]
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
            for j, src in enumerate(q):
                _write(base / split / f"s{j + 1}" / name, src, sample_rate)
            _write(base / split / "mix" / name, sum(q), sample_rate)
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
    sums = [tuple(range(num_spks + 1)), tuple(range(num_spks)), (0, num_spks)]
    q = _quantise(wavs + [noise], sums)
    return q[:num_spks], q[num_spks], speakers


def _noisy_mixes(sources, noise):
    """``mix_clean``, ``mix_both`` and ``mix_single`` (LibriMix / WHAM!)."""
    return {
        "mix_clean": sum(sources),
        "mix_both": sum(sources) + noise,
        "mix_single": sources[0] + noise,
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
    splits = ("train-360", "train-100", "dev", "test")
    if sizes is None:
        sizes = {"train-360": 20, "dev": 5, "test": 5}
    elif isinstance(sizes, int):  # train-100 only when asked by name
        sizes = {"train-360": sizes, "dev": sizes, "test": sizes}
    sizes = _sizes(sizes, splits)
    small = max(4, num_speakers // 3)
    pools = _pools(seed, {"train": num_speakers, "dev": small, "test": small})
    rel = Path(_rate_dir(sample_rate)) / mode
    base = root / rel
    prefix = Path(metadata_prefix) if metadata_prefix else root
    srcs = [f"s{i + 1}" for i in range(num_spks)]
    for s_idx, (split, count) in enumerate(sizes.items()):
        if count == 0:
            continue
        pool = pools["train" if split.startswith("train") else split]
        rng = np.random.default_rng([seed, 100 + s_idx])
        meta = {"mix_clean": [], "mix_both": [], "mix_single": []}
        for m in range(count):
            sources, noise, speakers = _noisy_mixture(
                rng, pool, num_spks, sample_rate, mode, duration, snr
            )
            chap = 1000 + s_idx * 100
            name = "_".join(f"{100 + spk}-{chap}-{m:04d}" for spk in speakers)
            wav = name + ".wav"
            mixes = _noisy_mixes(sources, noise)
            for sub, data in list(zip(srcs, sources)) + [("noise", noise)]:
                _write(base / split / sub / wav, data, sample_rate)
            for sub, data in mixes.items():
                _write(base / split / sub / wav, data, sample_rate)
            paths = {
                sub: str(prefix / rel / split / sub / wav)
                for sub in srcs + ["noise"] + list(mixes)
            }
            n = len(noise)
            for kind, entries in meta.items():
                row = {"mixture_ID": name, "mixture_path": paths[kind]}
                used = srcs[:1] if kind == "mix_single" else srcs
                for i, sub in enumerate(used):
                    row[f"source_{i + 1}_path"] = paths[sub]
                if kind != "mix_clean":
                    row["noise_path"] = paths["noise"]
                row["length"] = n
                entries.append(row)
        if metadata:
            for kind, entries in meta.items():
                out = base / "metadata" / f"mixture_{split}_{kind}.csv"
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
    base = root / _rate_dir(sample_rate) / mode
    for s_idx, (split, count) in enumerate(sizes.items()):
        pool = pools["unseen" if split == "tt" else "seen"]
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
            out = {"s1": sources[0], "s2": sources[1], "noise": noise}
            out.update(_noisy_mixes(sources, noise))
            for sub, data in out.items():
                _write(base / split / sub / name, data, sample_rate)
    return root


def _write_float(path, wav, sample_rate, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = wav / max(np.abs(wav).max() / _PEAK, 1.0)
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

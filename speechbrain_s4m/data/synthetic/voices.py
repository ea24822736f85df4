"""Procedural speech-like voices and ambient-like noise.

Harmonic sources whose pitch moves (glides, declination, vibrato), filtered
by 3 moving formant resonances (vowel targets with coarticulation), shaped
by syllable-rate (3-6 Hz) envelopes with pauses, plus aspiration and
fricative-like noise. Each speaker has its own pitch range, vocal tract,
speaking rate and voice quality, so that a separator can tell them apart.
"""

from dataclasses import dataclass

import numpy as np

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


@dataclass
class SpeakerProfile:
    """Parameters of one synthetic speaker (see :func:`random_speaker`)."""

    f0: float  # median fundamental frequency (Hz)
    f0_span: float  # intonation range (semitones, ~ +-1.5 std of targets)
    formant_scale: float  # vocal-tract scaling of the formant frequencies
    rate: float  # syllables per second (3-6)
    tilt: float  # spectral tilt exponent of the harmonics (larger: darker)
    breath: float  # aspiration noise level relative to the voiced part
    vibrato_rate: float  # Hz
    vibrato_depth: float  # relative depth of the f0 vibrato


def random_speaker(rng, f0_range=(90.0, 250.0)):
    """Draws a random :class:`SpeakerProfile` from a numpy Generator, its
    median f0 log-uniform in ``f0_range`` (Hz)."""
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
    """One utterance of ``duration`` seconds of speaker ``profile`` at
    ``sample_rate`` Hz, drawn with the numpy Generator ``rng``: ``[time]``
    float32, RMS about 0.1.

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
    """Ambient-like noise: coloured, with slow level changes and hum;
    ``[time]`` float32, RMS about 0.1 (arguments as :func:`synth_voice`)."""
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

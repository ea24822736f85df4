"""Test scores: SI-SNR(i) under PIT, SDR(i) (BSS-eval v3 by
``fast_bss_eval``) and optional PESQ / STOI (``speechbrain-s4m[metrics]``).
"""

import dataclasses
import importlib
import math

import numpy as np
import torch

from speechbrain_s4m.losses import _absolute_lengths, pit_si_snr_loss, si_snr

#: BSS-eval distortion filter length (taps), as mir_eval / fast_bss_eval.
BSS_EVAL_FILTER_LENGTH = 512
#: RMS under which a reference source counts as silent (16-bit LSB ~ 3e-5).
SILENCE_RMS = 1e-6
#: Columns scored on every test utterance (after ``snt_id``).
SCORE_NAMES = ("sdr", "sdr_i", "si-snr", "si-snr_i")
#: Optional metrics: name -> (module to import, PyPI package).
EXTRA_METRICS = {"pesq": ("pesq", "pesq"), "stoi": ("pystoi", "pystoi")}
#: PESQ mode for each sample rate it is defined at (ITU-T P.862 / P.862.2).
PESQ_MODES = {8000: "nb", 16000: "wb"}


def separation_scores(estimate, target, mixture, lengths=None, ids=None):
    """``{"si-snr", "si-snr_i", "sdr", "sdr_i"}``: float64 ``[batch]`` (dB,
    averaged over sources); the strict :func:`score_test_batch` (same
    arguments): ``ValueError`` on an utterance it cannot score."""
    scored = score_test_batch(estimate, target, mixture, lengths, ids)
    for utt in scored:
        if utt.problems:
            raise ValueError(
                f"utterance {utt.snt_id}: {'; '.join(utt.problems)}"
            )
    return {
        k: torch.tensor([u.scores[k] for u in scored], dtype=torch.float64)
        for k in SCORE_NAMES
    }


def extra_metric_names(spec, sample_rate=None):
    """The names of ``spec`` (``"pesq,stoi"``, a list or None), checked:
    ``ValueError`` for an unknown one or PESQ at a ``sample_rate`` other than
    8 / 16 kHz, ``ImportError`` (what to install) for a missing package.

    Example
    -------
    >>> extra_metric_names(" PESQ, stoi,pesq")
    ('pesq', 'stoi')
    """
    if spec is None:
        return ()
    names = []
    for item in spec.split(",") if isinstance(spec, str) else spec:
        name = str(item).strip().lower()
        if name and name not in EXTRA_METRICS:
            raise ValueError(
                f"Unknown extra metric '{name}' in '{spec}'; known: "
                + ", ".join(EXTRA_METRICS)
            )
        if name and name not in names:
            names.append(name)
    for name in names:
        module, package = EXTRA_METRICS[name]
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(
                f"The extra metric '{name}' needs the '{package}' package: "
                f"pip install {package} (or pip install "
                "speechbrain-s4m[metrics])"
            ) from err
    rate = None if sample_rate is None else int(sample_rate)
    if "pesq" in names and rate is not None and rate not in PESQ_MODES:
        raise ValueError(
            f"PESQ is defined at 8000 Hz (narrow-band) and 16000 Hz "
            f"(wide-band) only, not at {sample_rate} Hz"
        )
    return tuple(names)


def score_columns(extra_metrics=()):
    """``SCORE_NAMES``, then each extra metric and its ``<name>_i``."""
    columns = list(SCORE_NAMES)
    for name in extra_metrics:
        columns += [name, f"{name}_i"]
    return columns


@dataclasses.dataclass(eq=False)
class UtteranceScores:
    """One utterance's ``scores`` (NaN where undefined) and ``problems``."""

    snt_id: str
    scores: dict
    problems: list

    @property
    def complete(self):
        """True when every metric was scored."""
        return not self.problems and all(
            math.isfinite(v) for v in self.scores.values()
        )

    def row(self):
        """Its ``test_results.csv`` row (None: an empty cell)."""
        row = {"snt_id": self.snt_id}
        for key, value in self.scores.items():
            row[key] = float(value) if math.isfinite(value) else None
        return row


def score_test_batch(
    estimate,
    target,
    mixture,
    lengths=None,
    ids=None,
    sample_rate=8000,
    extra_metrics=(),
):
    """Scores each utterance of a test batch, never failing on bad data.

    The columns of :func:`score_columns`, averaged over the PIT-matched
    sources; improvements are over the mixture. A metric undefined for an
    utterance is NaN, with the reason in ``problems``.

    Arguments
    ---------
    estimate, target : torch.Tensor
        Estimated and reference sources ``[batch, time, spks]``.
    mixture : torch.Tensor
        ``[batch, time]``.
    lengths : torch.Tensor or None
        Relative lengths ``[batch]``.
    ids : list of str or None
        Utterance ids (default: the batch index).
    sample_rate : int
        Hz, for the optional metrics.
    extra_metrics : tuple of str
        Names from :func:`extra_metric_names`.

    Returns
    -------
    list of UtteranceScores
    """
    extra_metrics = tuple(extra_metrics)
    extra_metric_names(list(extra_metrics), sample_rate)
    columns = score_columns(extra_metrics)
    out = []
    for b, (est, tgt, mix) in enumerate(
        _utterances(estimate, target, mixture, lengths)
    ):
        values, problems, perm = _score_utterance(est, tgt, mix)
        if extra_metrics and perm is not None:
            extra, extra_problems = extra_scores(
                est, tgt, mix, sample_rate, extra_metrics, perm
            )
            values.update(extra)
            problems += extra_problems
        scores = {key: values.get(key, math.nan) for key in columns}
        snt_id = ids[b] if ids is not None else str(b)
        out.append(UtteranceScores(snt_id, scores, problems))
    return out


def average_scores(utterances, columns=None):
    """``(avg, n_scored)``: the ``avg`` row (each of ``columns``, default
    the first utterance's, averaged where defined, else None) and the
    utterances scored per column."""
    if columns is None:
        columns = list(utterances[0].scores) if utterances else []
    avg, n_scored = {"snt_id": "avg"}, {}
    for key in columns:
        values = [
            u.scores[key]
            for u in utterances
            if math.isfinite(u.scores.get(key, math.nan))
        ]
        n_scored[key] = len(values)
        avg[key] = float(np.mean(values)) if values else None
    return avg, n_scored


def _utterances(estimate, target, mixture, lengths):
    """Yields each utterance's float64 ``(est, tgt, mix)``, cut to length."""
    if mixture.dim() != 2 or mixture.shape != target.shape[:2]:
        raise ValueError(
            f"mixture {tuple(mixture.shape)} must be [batch, time] matching "
            f"target {tuple(target.shape)}"
        )
    if estimate.shape != target.shape:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and target "
            f"{tuple(target.shape)} must have the same shape"
        )
    batch, time, _ = target.shape
    if lengths is None:
        lengths = torch.ones(batch)
    abs_len = _absolute_lengths(lengths, time).tolist()
    est64, tgt64, mix64 = (
        x.detach().double().cpu() for x in (estimate, target, mixture)
    )
    for b, n in enumerate(abs_len):
        yield est64[b, :n], tgt64[b, :n], mix64[b, :n]


def _score_utterance(est, tgt, mix):
    """``(values, problems, perm)`` of one utterance's SI-SNR(i), SDR(i)
    (``perm``: as :func:`pit_si_snr_loss`; None when undefined)."""
    signals = {"reference": tgt, "mixture": mix, "estimate": est}
    problems = [
        f"non-finite samples in the {name}"
        for name, signal in signals.items()
        if not torch.isfinite(signal).all()
    ]
    silent = torch.nonzero(tgt.pow(2).mean(0).sqrt() < SILENCE_RMS)[:, 0]
    if not problems and silent.numel():
        problems.append(
            f"reference source(s) {(silent + 1).tolist()} are silent "
            f"(RMS < {SILENCE_RMS})"
        )
    if problems:
        return {}, problems, None
    n, spks = tgt.shape
    loss, perm = pit_si_snr_loss(est[None], tgt[None])
    si_mix = si_snr(mix[None, :, None].expand(1, n, spks), tgt[None])
    values = {"si-snr": -loss[0].item()}
    values["si-snr_i"] = values["si-snr"] - si_mix[0].mean().item()
    try:
        values["sdr"], values["sdr_i"] = _sdr(est, tgt, mix)
    except ValueError as err:
        problems.append(f"SDR undefined: {err}")
    return values, problems, perm[0]


def _sdr(est, tgt, mix):
    """BSS-eval ``(SDR, SDRi)`` over sources; ValueError where undefined."""
    import fast_bss_eval

    (n, spks), taps = tgt.shape, BSS_EVAL_FILTER_LENGTH
    if n < taps:
        raise ValueError(
            f"{n} samples, shorter than the BSS-eval distortion filter "
            f"({taps} taps)"
        )
    ref = tgt.T.contiguous().numpy()  # [spks, n]
    estimates = (
        est.T.contiguous().numpy(),
        np.repeat(mix.numpy()[None], spks, axis=0),
    )
    try:
        with np.errstate(all="ignore"):
            sdr, sdr_mix = (
                float(np.mean(fast_bss_eval.sdr(ref, x, filter_length=taps)))
                for x in estimates
            )
    except (ValueError, np.linalg.LinAlgError) as err:
        raise ValueError(f"BSS-eval failed ({err})") from err
    if not (math.isfinite(sdr) and math.isfinite(sdr_mix)):
        raise ValueError("BSS-eval gave a non-finite value")
    return sdr, sdr - sdr_mix


def _pesq(reference, degraded, sample_rate):
    """PESQ (MOS-LQO) of one source, narrow/wide-band at 8/16 kHz."""
    from pesq import pesq

    mode = PESQ_MODES[int(sample_rate)]
    return float(pesq(int(sample_rate), reference, degraded, mode))


def _stoi(reference, degraded, sample_rate):
    """STOI of one source; raises where pystoi only warns and returns its
    1e-5 placeholder (too few speech frames)."""
    import warnings

    from pystoi import stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(reference, degraded, int(sample_rate)))
    too_short = any("STFT frames" in str(w.message) for w in caught)
    if too_short or value == 1e-5:
        raise ValueError(
            "too few speech frames (pystoi needs 30 after removing the "
            "silent frames)"
        )
    return value


_EXTRA_FUNCTIONS = {"pesq": _pesq, "stoi": _stoi}


def extra_scores(estimate, target, mixture, sample_rate, names, perm=None):
    """``(values, problems)``: the metrics ``names`` of one utterance
    (``[time, spks]`` estimate, target; ``[time]`` mixture), per source
    matched by ``perm`` (None: SI-SNR PIT) and averaged, with ``<name>_i``
    (minus the mixture's); ``problems``: why the others are missing."""
    est, tgt, mix = (
        np.ascontiguousarray(x, dtype=np.float64)
        for x in (estimate, target, mixture)
    )
    if perm is None:
        pair = torch.from_numpy(est)[None], torch.from_numpy(tgt)[None]
        perm = pit_si_snr_loss(*pair)[1][0]
    pairs = [(tgt[:, j], est[:, int(perm[j])]) for j in range(tgt.shape[1])]
    values, problems = {}, []
    for name in names:
        function = _EXTRA_FUNCTIONS[name]
        try:
            with np.errstate(all="ignore"):
                value = np.mean([function(r, d, sample_rate) for r, d in pairs])
                value_mix = np.mean(
                    [function(r, mix, sample_rate) for r, _ in pairs]
                )
        except Exception as err:  # each package has its own error types
            reason = err.args[0] if err.args else err
            if isinstance(reason, bytes):  # pesq's C errors
                reason = reason.decode(errors="replace")
            problems.append(f"{name.upper()} undefined: {reason}")
            continue
        value, value_mix = float(value), float(value_mix)
        if not (math.isfinite(value) and math.isfinite(value_mix)):
            problems.append(f"{name.upper()} undefined: non-finite value")
            continue
        values[name] = value
        values[f"{name}_i"] = value - value_mix
    return values, problems

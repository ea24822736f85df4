"""Test-stage scores of separation.

Per-utterance SI-SNR(i) (under the PIT permutation of the training loss,
:mod:`speechbrain_s4m.losses`), SDR(i) and optional PESQ / STOI; their file,
``test_results.csv``, is :class:`speechbrain_s4m.results.TestReport`.

SDR is BSS-eval v3 SDR (as ``mir_eval.separation.bss_eval_sources``, 512-tap
distortion filter) computed with ``fast_bss_eval``.

The test stage scores with :func:`score_test_batch`, which never fails on bad
data: a metric that is undefined for an utterance (silent reference, too
short, non-finite samples) is NaN with the reason, the others are scored.
Optional metrics (``pip install speechbrain-s4m[metrics]``): PESQ (``pesq``
package; narrow-band at 8 kHz, wide-band at 16 kHz) and STOI (``pystoi``),
per estimated source after PIT matching, with their improvement over the
mixture.

Authors
 * speechbrain-s4m contributors 2026
"""

import math

import numpy as np
import torch

from speechbrain_s4m.losses import _absolute_lengths, pit_si_snr_loss, si_snr

__all__ = [
    "UtteranceScores",
    "average_scores",
    "extra_metric_names",
    "extra_scores",
    "score_columns",
    "score_test_batch",
    "separation_scores",
]

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
    """Per-utterance SI-SNR, SI-SNRi, SDR and SDRi (averaged over sources).

    SI-SNR uses the best permutation (as the PIT loss); SDR is BSS-eval v3
    SDR from ``fast_bss_eval.sdr`` with its own permutation resolution
    (identical to ``mir_eval.separation.bss_eval_sources``). Improvements are
    relative to using the mixture as the estimate of every source. This
    strict version raises on an utterance that cannot be scored; the test
    stage uses :func:`score_test_batch`, which never does.

    Arguments
    ---------
    estimate : torch.Tensor
        Estimated sources ``[batch, time, spks]``.
    target : torch.Tensor
        Reference sources ``[batch, time, spks]``.
    mixture : torch.Tensor
        Input mixture ``[batch, time]``.
    lengths : torch.Tensor or None
        Relative lengths ``[batch]``; each utterance is scored on its valid
        part only.
    ids : list of str or None
        Utterance ids, only used in error messages.

    Returns
    -------
    scores : dict
        ``{"si-snr", "si-snr_i", "sdr", "sdr_i"}``, each a float64 tensor
        ``[batch]`` in dB.

    Raises
    ------
    ValueError
        If a reference source is silent or an utterance is shorter than the
        512-tap BSS-eval filter.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> target = torch.randn(1, 4000, 2, generator=g)
    >>> mixture = target.sum(-1)
    >>> estimate = target + 0.1 * torch.randn(1, 4000, 2, generator=g)
    >>> scores = separation_scores(estimate, target, mixture)
    >>> sorted(scores)
    ['sdr', 'sdr_i', 'si-snr', 'si-snr_i']
    >>> bool(scores["si-snr_i"][0] > 15) and bool(scores["sdr_i"][0] > 15)
    True
    """
    out = {k: [] for k in SCORE_NAMES}
    for b, (est, tgt, mix) in enumerate(
        _utterances(estimate, target, mixture, lengths)
    ):
        name = f"utterance {ids[b] if ids is not None else b}"
        values, problems, _ = _score_utterance(est, tgt, mix)
        if problems:
            raise ValueError(f"{name}: {'; '.join(problems)}")
        for key in SCORE_NAMES:
            out[key].append(values[key])
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


# ----------------------------------------------------------------------
# Test-stage scoring: whatever can be scored, with the reasons for the rest
# ----------------------------------------------------------------------


def extra_metric_names(spec, sample_rate=None):
    """Parses and checks a list of optional metrics (``--extra_metrics``).

    Arguments
    ---------
    spec : str, list of str or None
        ``"pesq,stoi"`` (comma-separated, case and spaces ignored), a list
        of names, or None / ``""`` for none.
    sample_rate : int or None
        If given, also checks that each metric is defined at this rate
        (PESQ: narrow-band at 8 kHz, wide-band at 16 kHz only).

    Returns
    -------
    names : tuple of str
        The metric names, in the order given, without repetitions.

    Raises
    ------
    ValueError
        An unknown name, or PESQ at a rate other than 8 or 16 kHz.
    ImportError
        The package computing a requested metric is not installed (names
        the ``pip install`` that fixes it).

    Example
    -------
    >>> extra_metric_names(" PESQ, stoi,pesq")
    ('pesq', 'stoi')
    >>> extra_metric_names(None)
    ()
    >>> extra_metric_names("pesq,sisdr")
    Traceback (most recent call last):
    ...
    ValueError: Unknown extra metric 'sisdr' in 'pesq,sisdr'; known: pesq, stoi
    """
    import importlib

    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in EXTRA_METRICS:
            raise ValueError(
                f"Unknown extra metric '{name}' in '{spec}'; known: "
                + ", ".join(EXTRA_METRICS)
            )
        if name not in names:
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
    if "pesq" in names and sample_rate is not None:
        if int(sample_rate) not in PESQ_MODES:
            raise ValueError(
                f"PESQ is defined at 8000 Hz (narrow-band) and 16000 Hz "
                f"(wide-band) only, not at {sample_rate} Hz"
            )
    return tuple(names)


def score_columns(extra_metrics=()):
    """The score columns of ``test_results.csv`` (after ``snt_id``).

    Arguments
    ---------
    extra_metrics : tuple of str
        Optional metrics (see :func:`extra_metric_names`); each adds its
        column and its improvement over the mixture (``<name>_i``).

    Returns
    -------
    list of str

    Example
    -------
    >>> score_columns(("pesq", "stoi"))
    ['sdr', 'sdr_i', 'si-snr', 'si-snr_i', 'pesq', 'pesq_i', 'stoi', 'stoi_i']
    """
    columns = list(SCORE_NAMES)
    for name in extra_metrics:
        columns += [name, f"{name}_i"]
    return columns


class UtteranceScores:
    """The scores of one test utterance.

    Arguments
    ---------
    snt_id : str
        Utterance id.
    scores : dict
        Column -> float, NaN where the metric is undefined.
    problems : list of str
        Why each undefined metric is undefined (empty when all are scored).

    Example
    -------
    >>> u = UtteranceScores("a", {"sdr": float("nan"), "si-snr": 3.0}, ["x"])
    >>> u.row()
    {'snt_id': 'a', 'sdr': None, 'si-snr': 3.0}
    >>> u.complete
    False
    """

    def __init__(self, snt_id, scores, problems):
        self.snt_id = snt_id
        self.scores = scores
        self.problems = problems

    @property
    def complete(self):
        """True when every metric was scored."""
        return not self.problems and all(
            math.isfinite(v) for v in self.scores.values()
        )

    def row(self):
        """A ``test_results.csv`` row: ``snt_id`` then the scores, None
        (an empty cell with ``csv.DictWriter``) where undefined."""
        row = {"snt_id": self.snt_id}
        for key, value in self.scores.items():
            row[key] = float(value) if math.isfinite(value) else None
        return row

    def __repr__(self):
        return (
            f"UtteranceScores({self.snt_id!r}, {self.scores!r}, "
            f"{self.problems!r})"
        )


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

    Each utterance gets SI-SNR(i) under the PIT permutation, SDR(i) (as
    :func:`separation_scores`) and the optional metrics, computed per
    estimated source after PIT matching (the SI-SNR permutation) and averaged
    over sources, with their improvement over the mixture used as the
    estimate of every source. A metric that is undefined for an utterance
    (silent reference source, non-finite samples, shorter than the 512-tap
    BSS-eval filter for SDR, too short for PESQ or STOI) is NaN, and the
    reason is in ``problems``; the others are still scored.

    Arguments
    ---------
    estimate : torch.Tensor
        Estimated sources ``[batch, time, spks]``.
    target : torch.Tensor
        Reference sources ``[batch, time, spks]``.
    mixture : torch.Tensor
        Input mixture ``[batch, time]``.
    lengths : torch.Tensor or None
        Relative lengths ``[batch]``; each utterance is scored on its valid
        part only.
    ids : list of str or None
        Utterance ids (default: the batch index as a string).
    sample_rate : int
        Sample rate (Hz), used by the optional metrics.
    extra_metrics : tuple of str
        Names from :func:`extra_metric_names`.

    Returns
    -------
    list of UtteranceScores
        One per utterance, with the columns of
        ``score_columns(extra_metrics)``.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> target = torch.randn(2, 4000, 2, generator=g)
    >>> target[1, :, 1] = 0  # a silent source: nothing is defined
    >>> estimate = target + 0.1 * torch.randn(2, 4000, 2, generator=g)
    >>> scored = score_test_batch(estimate, target, target.sum(-1))
    >>> scored[0].complete, round(scored[0].scores["si-snr"])
    (True, 20)
    >>> scored[1].row()["sdr"] is None, scored[1].problems
    (True, ['reference source(s) [2] are silent (RMS < 1e-06)'])
    """
    extra_metrics = tuple(extra_metrics)
    extra_metric_names(list(extra_metrics), sample_rate)
    columns = score_columns(extra_metrics)
    out = []
    for b, (est, tgt, mix) in enumerate(
        _utterances(estimate, target, mixture, lengths)
    ):
        snt_id = ids[b] if ids is not None else str(b)
        values, problems, perm = _score_utterance(est, tgt, mix)
        if extra_metrics and perm is not None:
            extra, extra_problems = extra_scores(
                est, tgt, mix, sample_rate, extra_metrics, perm
            )
            values.update(extra)
            problems += extra_problems
        scores = {key: values.get(key, math.nan) for key in columns}
        out.append(UtteranceScores(snt_id, scores, problems))
    return out


def average_scores(utterances, columns=None):
    """The ``avg`` row: each metric averaged over the utterances where it
    is defined.

    Arguments
    ---------
    utterances : list of UtteranceScores
        The scored test utterances.
    columns : list of str or None
        The columns to average (default: those of the first utterance).

    Returns
    -------
    avg : dict
        ``{"snt_id": "avg", column: mean or None (no utterance scored)}``.
    n_scored : dict
        Column -> number of utterances where it is defined.

    Example
    -------
    >>> nan = float("nan")
    >>> utts = [UtteranceScores("a", {"sdr": 1.0}, []),
    ...         UtteranceScores("b", {"sdr": nan}, ["too short"]),
    ...         UtteranceScores("c", {"sdr": 2.0}, [])]
    >>> average_scores(utts)
    ({'snt_id': 'avg', 'sdr': 1.5}, {'sdr': 2})
    """
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
    """Yields ``(est [n, spks], tgt [n, spks], mix [n])`` float64 CPU
    tensors, each utterance cut to its valid length."""
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
    est64 = estimate.detach().double().cpu()
    tgt64 = target.detach().double().cpu()
    mix64 = mixture.detach().double().cpu()
    for b in range(batch):
        n = abs_len[b]
        yield est64[b, :n], tgt64[b, :n], mix64[b, :n]


def _score_utterance(est, tgt, mix):
    """SI-SNR(i) and SDR(i) of one utterance (``[n, spks]``, ``[n]``).

    Returns ``(values, problems, perm)``: the defined scores, the reasons
    for the missing ones, and the SI-SNR permutation (``perm[j]`` is the
    estimate matched with target ``j``; None when SI-SNR is undefined).
    """
    import fast_bss_eval

    values, problems = {}, []
    n, spks = tgt.shape
    for name, signal in (
        ("reference", tgt),
        ("mixture", mix),
        ("estimate", est),
    ):
        if not torch.isfinite(signal).all():
            problems.append(f"non-finite samples in the {name}")
    if problems:
        return values, problems, None
    rms = tgt.pow(2).mean(0).sqrt()
    silent = torch.nonzero(rms < SILENCE_RMS)[:, 0]
    if silent.numel():
        problems.append(
            f"reference source(s) {(silent + 1).tolist()} are silent "
            f"(RMS < {SILENCE_RMS})"
        )
        return values, problems, None

    loss, perm = pit_si_snr_loss(est[None], tgt[None])
    si = -loss[0].item()
    si_mix = si_snr(mix[None, :, None].expand(1, n, spks), tgt[None])
    values["si-snr"] = si
    values["si-snr_i"] = si - si_mix[0].mean().item()

    if n < BSS_EVAL_FILTER_LENGTH:
        problems.append(
            f"SDR undefined: {n} samples, shorter than the BSS-eval "
            f"distortion filter ({BSS_EVAL_FILTER_LENGTH} taps)"
        )
        return values, problems, perm[0]
    ref_np = tgt.T.contiguous().numpy()  # [spks, n]
    try:
        with np.errstate(all="ignore"):
            sdr = fast_bss_eval.sdr(
                ref_np,
                est.T.contiguous().numpy(),
                filter_length=BSS_EVAL_FILTER_LENGTH,
            )
            sdr_mix = fast_bss_eval.sdr(
                ref_np,
                np.repeat(mix.numpy()[None], spks, axis=0),
                filter_length=BSS_EVAL_FILTER_LENGTH,
            )
    except (ValueError, np.linalg.LinAlgError) as err:
        problems.append(f"SDR undefined: BSS-eval failed ({err})")
        return values, problems, perm[0]
    sdr, sdr_mix = float(np.mean(sdr)), float(np.mean(sdr_mix))
    if not (math.isfinite(sdr) and math.isfinite(sdr_mix)):
        problems.append("SDR undefined: BSS-eval gave a non-finite value")
        return values, problems, perm[0]
    values["sdr"] = sdr
    values["sdr_i"] = sdr - sdr_mix
    return values, problems, perm[0]


def _pesq(reference, degraded, sample_rate):
    """PESQ (MOS-LQO) of one source: narrow-band at 8 kHz, wide-band at
    16 kHz."""
    from pesq import pesq

    mode = PESQ_MODES[int(sample_rate)]
    return float(pesq(int(sample_rate), reference, degraded, mode))


def _stoi(reference, degraded, sample_rate):
    """STOI of one source; raises when pystoi cannot compute it (it warns
    and returns 1e-5 when too few speech frames remain)."""
    import warnings

    from pystoi import stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(reference, degraded, int(sample_rate)))
    too_short = any("STFT frames" in str(w.message) for w in caught)
    if too_short or value == 1e-5:  # pystoi's placeholder value
        raise ValueError(
            "too few speech frames (pystoi needs 30 after removing the "
            "silent frames)"
        )
    return value


_EXTRA_FUNCTIONS = {"pesq": _pesq, "stoi": _stoi}


def extra_scores(estimate, target, mixture, sample_rate, names, perm=None):
    """Optional metrics of one utterance, per estimated source after PIT
    matching, averaged over sources, with the improvement over the mixture.

    Arguments
    ---------
    estimate : torch.Tensor or numpy.ndarray
        Estimated sources ``[time, spks]``.
    target : torch.Tensor or numpy.ndarray
        Reference sources ``[time, spks]``.
    mixture : torch.Tensor or numpy.ndarray
        The mixture ``[time]``.
    sample_rate : int
        Sample rate (Hz); PESQ is narrow-band at 8000 Hz, wide-band at 16000.
    names : tuple of str
        Metric names (see :func:`extra_metric_names`).
    perm : sequence of int or None
        ``perm[j]`` is the estimate matched with target ``j`` (as returned
        by :func:`pit_si_snr_loss`); None finds it here by SI-SNR PIT.

    Returns
    -------
    values : dict
        ``{name: mean over sources, name + "_i": minus the mixture's}`` for
        each metric that could be computed.
    problems : list of str
        Why each missing metric could not be computed.

    Example
    -------
    >>> from speechbrain_s4m.data.synthetic import random_speaker, synth_voice
    >>> rng = np.random.default_rng(0)
    >>> tgt = np.stack(
    ...     [synth_voice(random_speaker(rng), 1.0, 8000, rng) for _ in "ab"], 1
    ... )
    >>> est = tgt[:, ::-1] + 0.01 * rng.standard_normal(tgt.shape)
    >>> values, problems = extra_scores(est, tgt, tgt.sum(1), 8000, ["stoi"])
    >>> values["stoi"] > 0.9, values["stoi_i"] > 0.1, problems
    (True, True, [])
    """
    est = torch.as_tensor(np.ascontiguousarray(estimate)).double()
    tgt = torch.as_tensor(np.ascontiguousarray(target)).double()
    mix = torch.as_tensor(np.ascontiguousarray(mixture)).double()
    if perm is None:
        perm = pit_si_snr_loss(est[None], tgt[None])[1][0]
    perm = [int(p) for p in perm]
    spks = tgt.shape[1]
    values, problems = {}, []
    for name in names:
        function = _EXTRA_FUNCTIONS[name]
        try:
            with np.errstate(all="ignore"):
                per_source = [
                    function(
                        tgt[:, j].numpy(), est[:, perm[j]].numpy(), sample_rate
                    )
                    for j in range(spks)
                ]
                per_mix = [
                    function(tgt[:, j].numpy(), mix.numpy(), sample_rate)
                    for j in range(spks)
                ]
        except Exception as err:  # each package has its own error types
            reason = err.args[0] if err.args else err
            if isinstance(reason, bytes):  # pesq's C errors
                reason = reason.decode(errors="replace")
            problems.append(f"{name.upper()} undefined: {reason}")
            continue
        value, value_mix = float(np.mean(per_source)), float(np.mean(per_mix))
        if not (math.isfinite(value) and math.isfinite(value_mix)):
            problems.append(f"{name.upper()} undefined: non-finite value")
            continue
        values[name] = value
        values[f"{name}_i"] = value - value_mix
    return values, problems

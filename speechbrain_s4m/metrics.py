"""Separation metrics: SI-SNR with padding masks, PIT loss, SDR scores.

Conventions follow SpeechBrain's separation recipes: signals are
``[batch, time, spks]`` and ``lengths`` are *relative* lengths in ``[0, 1]``
(SpeechBrain's ``wav_lens``). Unlike SpeechBrain's ``cal_si_snr``, the part of
a padded batch beyond each utterance's length is masked out everywhere
(zero-mean over the valid part only, energies over the valid part only), so a
padded batch gives exactly the per-utterance values.

SDR is BSS-eval v3 SDR (as ``mir_eval.separation.bss_eval_sources``, 512-tap
distortion filter) computed with ``fast_bss_eval``.

Authors
 * speechbrain-s4m contributors 2026
"""

import itertools

import numpy as np
import torch

__all__ = [
    "length_mask",
    "si_snr",
    "pairwise_si_snr",
    "pit_si_snr_loss",
    "separation_scores",
]

#: BSS-eval distortion filter length (taps), as mir_eval / fast_bss_eval.
BSS_EVAL_FILTER_LENGTH = 512
#: RMS under which a reference source counts as silent (16-bit LSB ~ 3e-5).
SILENCE_RMS = 1e-6


def _absolute_lengths(lengths, max_len, device=None):
    """Valid samples per item, ``round(lengths * max_len)`` in [1, max_len]."""
    lengths = torch.as_tensor(lengths, device=device)
    return torch.round(lengths.double() * max_len).long().clamp(1, max_len)


def length_mask(lengths, max_len, device=None, dtype=torch.float32):
    """Builds a ``[batch, time]`` mask from relative lengths.

    Arguments
    ---------
    lengths : torch.Tensor or None
        Relative lengths ``[batch]`` in ``[0, 1]`` (SpeechBrain ``wav_lens``);
        the absolute length is ``round(lengths * max_len)``.
    max_len : int
        Padded length (time dimension).
    device : torch.device
        Device of the mask.
    dtype : torch.dtype
        Data type of the mask.

    Returns
    -------
    mask : torch.Tensor
        ``[batch, time]``, 1 on valid samples, 0 on padding.

    Example
    -------
    >>> length_mask(torch.tensor([1.0, 0.5]), 4)
    tensor([[1., 1., 1., 1.],
            [1., 1., 0., 0.]])
    """
    abs_len = _absolute_lengths(lengths, max_len, device)
    steps = torch.arange(max_len, device=abs_len.device)
    return (steps[None, :] < abs_len[:, None]).to(dtype)


def _valid_mask(estimate, lengths):
    """``[batch, time]`` mask of the valid samples (all of them if None)."""
    batch, time = estimate.shape[:2]
    if lengths is None:
        lengths = torch.ones(batch, device=estimate.device)
    return length_mask(lengths, time, estimate.device, estimate.dtype)


def _si_snr_masked(estimate, target, mask, eps):
    """SI-SNR along dim 1 (time) with a ``[batch, time]`` mask.

    ``estimate`` and ``target`` are ``[batch, time, ...]`` (broadcastable);
    returns ``[batch, ...]``.
    """
    # mask: [batch, time] -> [batch, time, 1, ...] to broadcast on sources
    extra = max(estimate.dim(), target.dim()) - 2
    mask = mask.reshape(mask.shape + (1,) * extra)
    n_valid = mask.sum(dim=1, keepdim=True)
    # zero mean over the valid part only; padding stays exactly zero
    estimate = estimate * mask
    target = target * mask
    estimate = (estimate - estimate.sum(1, keepdim=True) / n_valid) * mask
    target = (target - target.sum(1, keepdim=True) / n_valid) * mask
    # projection of the estimate on the target: s_target = <s', s> s / |s|^2
    dot = (estimate * target).sum(dim=1, keepdim=True)
    target_energy = (target**2).sum(dim=1, keepdim=True) + eps
    s_target = dot / target_energy * target
    e_noise = estimate - s_target
    ratio = (s_target**2).sum(dim=1) / ((e_noise**2).sum(dim=1) + eps)
    return 10 * torch.log10(ratio + eps)


def si_snr(estimate, target, lengths=None, eps=1e-8):
    """Scale-invariant SNR (SI-SDR) of each source, in dB.

    Arguments
    ---------
    estimate : torch.Tensor
        Estimated sources ``[batch, time, spks]`` (or ``[batch, time]``).
    target : torch.Tensor
        Reference sources, same shape as ``estimate``.
    lengths : torch.Tensor or None
        Relative lengths ``[batch]`` (SpeechBrain ``wav_lens``). Samples past
        ``round(lengths * time)`` are ignored (zero-mean and energies use
        the valid part only). None means all samples are valid.
    eps : float
        Stabiliser of the divisions and the logarithm.

    Returns
    -------
    si_snr : torch.Tensor
        ``[batch, spks]`` (``[batch]`` for 2-D inputs), in dB, larger is
        better.

    Example
    -------
    >>> torch.manual_seed(0) and None
    >>> target = torch.randn(2, 800, 2)
    >>> estimate = target + 0.1 * torch.randn(2, 800, 2)
    >>> si_snr(estimate, target).shape
    torch.Size([2, 2])
    >>> bool((si_snr(estimate, target) > 15).all())
    True
    """
    if estimate.shape != target.shape:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and target "
            f"{tuple(target.shape)} must have the same shape"
        )
    squeeze = estimate.dim() == 2
    if squeeze:
        estimate, target = estimate.unsqueeze(-1), target.unsqueeze(-1)
    if estimate.dim() != 3:
        raise ValueError(
            "expected [batch, time, spks] or [batch, time] inputs, got "
            f"{tuple(estimate.shape)}"
        )
    mask = _valid_mask(estimate, lengths)
    out = _si_snr_masked(estimate, target, mask, eps)
    return out.squeeze(-1) if squeeze else out


def pairwise_si_snr(estimate, target, lengths=None, eps=1e-8):
    """SI-SNR of every (estimate, target) pair.

    Arguments
    ---------
    estimate : torch.Tensor
        ``[batch, time, spks]``.
    target : torch.Tensor
        ``[batch, time, spks]``.
    lengths : torch.Tensor or None
        Relative lengths ``[batch]``.
    eps : float
        Stabiliser.

    Returns
    -------
    pair : torch.Tensor
        ``[batch, spks_est, spks_target]``: ``pair[b, i, j]`` is the SI-SNR
        of estimate ``i`` against target ``j``.

    Example
    -------
    >>> x = torch.randn(1, 400, 2)
    >>> pairwise_si_snr(x.flip(-1), x).argmax(1)
    tensor([[1, 0]])
    """
    if estimate.shape != target.shape or estimate.dim() != 3:
        raise ValueError(
            "expected estimate and target of the same [batch, time, spks] "
            f"shape, got {tuple(estimate.shape)} and {tuple(target.shape)}"
        )
    mask = _valid_mask(estimate, lengths)
    # [batch, time, spks_est, 1] vs [batch, time, 1, spks_target]
    return _si_snr_masked(
        estimate.unsqueeze(-1), target.unsqueeze(-2), mask, eps
    )


def pit_si_snr_loss(estimate, target, lengths=None, eps=1e-8):
    """Negative SI-SNR under the best utterance-level permutation (uPIT).

    Arguments
    ---------
    estimate : torch.Tensor
        Estimated sources ``[batch, time, spks]``.
    target : torch.Tensor
        Reference sources ``[batch, time, spks]``.
    lengths : torch.Tensor or None
        Relative lengths ``[batch]`` (padding is masked out).
    eps : float
        Stabiliser.

    Returns
    -------
    loss : torch.Tensor
        ``[batch]``: minus the mean SI-SNR (dB) over sources for the best
        permutation of each utterance.
    perm : torch.Tensor
        ``[batch, spks]`` long: ``estimate[b, :, perm[b, j]]`` is the
        estimate assigned to ``target[b, :, j]``, so
        ``estimate.gather(2, perm[:, None, :].expand_as(estimate))`` is
        the estimate reordered like the target.

    Example
    -------
    >>> target = torch.randn(2, 800, 3)
    >>> estimate = target[:, :, [2, 0, 1]] + 0.01 * torch.randn(2, 800, 3)
    >>> loss, perm = pit_si_snr_loss(estimate, target)
    >>> perm
    tensor([[1, 2, 0],
            [1, 2, 0]])
    >>> bool((loss < -30).all())
    True
    """
    pair = pairwise_si_snr(estimate, target, lengths, eps)
    spks = pair.shape[-1]
    perms = torch.tensor(
        list(itertools.permutations(range(spks))), device=pair.device
    )  # [n_perms, spks]
    # scores[b, p] = mean_j pair[b, perms[p, j], j]
    scores = pair[:, perms, torch.arange(spks, device=pair.device)]
    scores = scores.mean(dim=-1)  # [batch, n_perms]
    best, best_idx = scores.max(dim=1)
    return -best, perms[best_idx]


def _check_reference(ref, what):
    """Raises a clear error on silent or too-short reference signals."""
    time = ref.shape[-1]
    if time < BSS_EVAL_FILTER_LENGTH:
        raise ValueError(
            f"{what}: signal of {time} samples is shorter than the BSS-eval "
            f"distortion filter ({BSS_EVAL_FILTER_LENGTH} taps); SDR is "
            "undefined for such short signals"
        )
    rms = np.sqrt(np.mean(ref**2, axis=-1))
    silent = np.nonzero(rms < SILENCE_RMS)[0]
    if silent.size:
        raise ValueError(
            f"{what}: reference source(s) {(silent + 1).tolist()} are silent "
            f"(RMS < {SILENCE_RMS}); SI-SNR/SDR are undefined for a silent "
            "target"
        )


def separation_scores(estimate, target, mixture, lengths=None, ids=None):
    """Per-utterance SI-SNR, SI-SNRi, SDR and SDRi (averaged over sources).

    SI-SNR uses the best permutation (as the PIT loss); SDR is BSS-eval v3
    SDR from ``fast_bss_eval.sdr`` with its own permutation resolution
    (identical to ``mir_eval.separation.bss_eval_sources``). Improvements are
    relative to using the mixture as the estimate of every source.

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
    import fast_bss_eval

    if mixture.dim() != 2 or mixture.shape != target.shape[:2]:
        raise ValueError(
            f"mixture {tuple(mixture.shape)} must be [batch, time] matching "
            f"target {tuple(target.shape)}"
        )
    batch, time, spks = target.shape
    if lengths is None:
        lengths = torch.ones(batch)
    abs_len = _absolute_lengths(lengths, time).tolist()
    est64 = estimate.detach().double().cpu()
    tgt64 = target.detach().double().cpu()
    mix64 = mixture.detach().double().cpu()

    out = {k: [] for k in ("si-snr", "si-snr_i", "sdr", "sdr_i")}
    for b in range(batch):
        n = abs_len[b]
        name = f"utterance {ids[b] if ids is not None else b}"
        est = est64[b : b + 1, :n]  # [1, n, spks]
        tgt = tgt64[b : b + 1, :n]
        mix = mix64[b : b + 1, :n, None].expand(1, n, spks)
        ref_np = tgt[0].T.numpy()  # [spks, n]
        _check_reference(ref_np, name)

        si = -pit_si_snr_loss(est, tgt)[0][0].item()
        si_mix = si_snr(mix, tgt)[0].mean().item()
        sdr = fast_bss_eval.sdr(
            ref_np,
            est[0].T.numpy(),
            filter_length=BSS_EVAL_FILTER_LENGTH,
        )
        sdr_mix = fast_bss_eval.sdr(
            ref_np,
            mix[0].T.contiguous().numpy(),
            filter_length=BSS_EVAL_FILTER_LENGTH,
        )
        out["si-snr"].append(si)
        out["si-snr_i"].append(si - si_mix)
        out["sdr"].append(float(np.mean(sdr)))
        out["sdr_i"].append(float(np.mean(sdr) - np.mean(sdr_mix)))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}

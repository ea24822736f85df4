"""SI-SNR under PIT (the recipes' ``loss``), as SpeechBrain's
``get_si_snr_with_pitwrapper`` (``[batch, time, spks]``, relative
``lengths``) but with the padding masked out: a padded batch gives each
utterance its own value.
"""

import itertools

import torch


def _absolute_lengths(lengths, max_len, device=None):
    """Valid samples per item, ``round(lengths * max_len)`` in [1, max_len]."""
    lengths = torch.as_tensor(lengths, device=device)
    return torch.round(lengths.double() * max_len).long().clamp(1, max_len)


def _valid_mask(estimate, lengths):
    """``[batch, time]`` mask of the valid samples (all of them if None)."""
    batch, time = estimate.shape[:2]
    if lengths is None:
        lengths = torch.ones(batch, device=estimate.device)
    abs_len = _absolute_lengths(lengths, time, estimate.device)
    steps = torch.arange(time, device=abs_len.device)
    return (steps[None, :] < abs_len[:, None]).to(estimate.dtype)


def _si_snr_masked(estimate, target, mask, eps):
    """SI-SNR along dim 1 of broadcastable ``[batch, time, ...]`` inputs."""
    extra = max(estimate.dim(), target.dim()) - 2
    mask = mask.reshape(mask.shape + (1,) * extra)
    n_valid = mask.sum(dim=1, keepdim=True)
    # zero mean over the valid part only; padding stays exactly zero
    estimate = estimate * mask
    target = target * mask
    estimate = (estimate - estimate.sum(1, keepdim=True) / n_valid) * mask
    target = (target - target.sum(1, keepdim=True) / n_valid) * mask
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
    estimate, target : torch.Tensor
        ``[batch, time, spks]`` (or ``[batch, time]``).
    lengths : torch.Tensor or None
        Relative lengths ``[batch]``: samples past ``round(lengths * time)``
        are ignored.
    eps : float
        Stabiliser of the divisions and the logarithm.

    Returns
    -------
    torch.Tensor
        ``[batch, spks]`` (``[batch]`` for 2-D inputs).
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
    out = _si_snr_masked(estimate, target, _valid_mask(estimate, lengths), eps)
    return out.squeeze(-1) if squeeze else out


def pairwise_si_snr(estimate, target, lengths=None, eps=1e-8):
    """SI-SNR of every (estimate, target) pair: ``[batch, spks_est,
    spks_target]`` (arguments of :func:`si_snr`, 3-D only)."""
    if estimate.shape != target.shape or estimate.dim() != 3:
        raise ValueError(
            "expected estimate and target of the same [batch, time, spks] "
            f"shape, got {tuple(estimate.shape)} and {tuple(target.shape)}"
        )
    mask = _valid_mask(estimate, lengths)
    return _si_snr_masked(
        estimate.unsqueeze(-1), target.unsqueeze(-2), mask, eps
    )


def pit_si_snr_loss(estimate, target, lengths=None, eps=1e-8):
    """Negative SI-SNR under the best utterance-level permutation (uPIT);
    arguments of :func:`si_snr` (3-D only).

    Returns
    -------
    loss : torch.Tensor
        ``[batch]``: minus the best permutation's mean SI-SNR (dB).
    perm : torch.Tensor
        ``[batch, spks]``: ``estimate[b, :, perm[b, j]]`` is matched with
        ``target[b, :, j]``.

    Example
    -------
    >>> target = torch.randn(2, 800, 3)
    >>> estimate = target[:, :, [2, 0, 1]] + 0.01 * torch.randn(2, 800, 3)
    >>> pit_si_snr_loss(estimate, target)[1]
    tensor([[1, 2, 0],
            [1, 2, 0]])
    """
    pair = pairwise_si_snr(estimate, target, lengths, eps)
    spks = pair.shape[-1]
    perms = torch.tensor(
        list(itertools.permutations(range(spks))), device=pair.device
    )
    # scores[b, p] = mean_j pair[b, perms[p, j], j]
    scores = pair[:, perms, torch.arange(spks, device=pair.device)].mean(-1)
    best, best_idx = scores.max(dim=1)
    return -best, perms[best_idx]

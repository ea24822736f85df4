"""Learning-rate schedules applied at every optimizer update.

SpeechBrain's separation recipes anneal once per epoch
(``ReduceLROnPlateau``: halve after epochs without improvement). A short
run (the SynthMix main job: 10 epochs) never reaches the plateau, so its
learning rate stays at the peak until the last update.
:class:`WarmupDecayScheduler` instead sets the rate of every update: an
optional linear warm-up, then a linear or cosine decay to a final fraction
of the peak at the last update of the run.

Differences from SpeechBrain's ``LinearWarmupScheduler`` (on purpose):

* every parameter group keeps its own peak rate (the S4 parameters may
  have their own, :func:`speechbrain_s4m.nnet.ssm_aware_optimizer`); the
  schedule multiplies each group's peak by the same factor instead of
  writing one rate into all groups;
* ``total_updates`` may be left ``None``: the recipe runner sets it from the
  run's length (epochs x updates per epoch), so the same hparams work for
  any dataset size, batch size or number of epochs;
* the factor of update ``k`` is set *before* update ``k`` (update 0 of a
  warm-up runs at rate 0 in SpeechBrain's; here at ``1 / warmup_updates``
  of the peak).

Authors
 * speechbrain-s4m contributors 2026
"""

import math

import torch
from speechbrain.utils import checkpoints

__all__ = ["DECAYS", "WarmupDecayScheduler"]

#: The decay shapes of :class:`WarmupDecayScheduler`.
DECAYS = ("none", "linear", "cosine")


@checkpoints.register_checkpoint_hooks
class WarmupDecayScheduler:
    """Per-update learning-rate factor: warm-up, then decay to the end.

    Update ``k`` (counted from 0) runs at ``peak * factor(k)`` in every
    parameter group, where ``peak`` is the group's learning rate when the
    schedule first touched it (kept in the group as ``initial_lr``, so it
    is saved and restored with the optimizer)::

        factor(k) = (k + 1) / warmup_updates                 k < warmup
        factor(k) = final + (1 - final) * shape(p)           otherwise,

    ``p = (k - warmup) / (total - warmup)`` clamped to [0, 1], and
    ``shape(p) = 1 - p`` (linear), ``(1 + cos(pi p)) / 2`` (cosine) or
    ``1`` (none: constant after the warm-up).

    Arguments
    ---------
    total_updates : int, optional
        Updates in the whole run (the decay ends there). ``None``: set by
        the recipe runner (:meth:`set_total_updates`) from the number of
        epochs and the training batches per epoch.
    warmup_updates : int
        Updates of linear warm-up (0: none).
    decay : str
        ``"linear"``, ``"cosine"`` or ``"none"``.
    final_factor : float
        Fraction of the peak reached at the last update (in [0, 1]).

    Example
    -------
    >>> sched = WarmupDecayScheduler(total_updates=5, warmup_updates=1)
    >>> [round(sched.factor(k), 3) for k in range(6)]
    [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    >>> p, q = torch.ones(1).requires_grad_(), torch.ones(1).requires_grad_()
    >>> groups = [{"params": [p], "lr": 0.1}, {"params": [q]}]
    >>> opt = torch.optim.SGD(groups, lr=1.0)
    >>> sched(opt)  # before update 0
    >>> sched(opt)  # before update 1
    >>> sched(opt)  # before update 2: both groups at 75% of their peak
    >>> [round(g["lr"], 6) for g in opt.param_groups]
    [0.075, 0.75]
    """

    def __init__(
        self,
        total_updates=None,
        warmup_updates=0,
        decay="linear",
        final_factor=0.0,
    ):
        if decay not in DECAYS:
            raise ValueError(
                f"decay must be one of {', '.join(DECAYS)}; got {decay!r}"
            )
        if not 0.0 <= final_factor <= 1.0:
            raise ValueError(
                f"final_factor must be in [0, 1]; got {final_factor}"
            )
        if warmup_updates < 0:
            raise ValueError(
                f"warmup_updates must be >= 0; got {warmup_updates}"
            )
        self.decay = decay
        self.final_factor = float(final_factor)
        self.warmup_updates = int(warmup_updates)
        self.total_updates = None
        if total_updates is not None:
            self.set_total_updates(total_updates)
        #: updates scheduled so far (the index of the next one)
        self.update = 0

    def set_total_updates(self, total_updates):
        """Sets the length of the run (the update at which the decay ends).

        Arguments
        ---------
        total_updates : int
            Updates in the whole run (> ``warmup_updates``).
        """
        total_updates = int(total_updates)
        if total_updates <= self.warmup_updates:
            raise ValueError(
                f"total_updates ({total_updates}) must exceed "
                f"warmup_updates ({self.warmup_updates})"
            )
        self.total_updates = total_updates

    def factor(self, update):
        """The fraction of the peak rate for update ``update`` (from 0).

        Arguments
        ---------
        update : int
            Index of the update.

        Returns
        -------
        float
        """
        if update < self.warmup_updates:
            return (update + 1) / self.warmup_updates
        if self.decay == "none":
            return 1.0
        if self.total_updates is None:
            raise RuntimeError(
                "WarmupDecayScheduler needs total_updates: give it in the "
                "hparams or let the recipe runner set it (set_total_updates)"
            )
        span = self.total_updates - self.warmup_updates
        p = min(max((update - self.warmup_updates) / span, 0.0), 1.0)
        if self.decay == "linear":
            shape = 1.0 - p
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * p))
        return self.final_factor + (1.0 - self.final_factor) * shape

    def __call__(self, optimizer):
        """Sets every group's rate for the next update, then counts it.

        Call it once before each optimizer update.

        Arguments
        ---------
        optimizer : torch.optim.Optimizer
            The optimizer (each group's first rate is its peak).
        """
        f = self.factor(self.update)
        for group in optimizer.param_groups:
            peak = group.setdefault("initial_lr", group["lr"])
            group["lr"] = peak * f
        self.update += 1

    @checkpoints.mark_as_saver
    def save(self, path):
        """Saves the update count (the run's length comes from the run)."""
        torch.save({"update": self.update}, path)

    @checkpoints.mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores the update count."""
        del end_of_epoch  # the count is exact at any checkpoint
        self.update = int(torch.load(path)["update"])

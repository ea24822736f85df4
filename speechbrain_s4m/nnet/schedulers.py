"""Learning-rate schedules, and the learning-rate helpers of the Brain.

:class:`WarmupDecayScheduler` sets the rate of every update; unlike
SpeechBrain's ``LinearWarmupScheduler`` it scales each group's own peak (the
S4 group may have its own) and update 0 of a warm-up is not at rate 0.
"""

import math
import warnings

import torch
from speechbrain.nnet.schedulers import ReduceLROnPlateau
from speechbrain.utils import checkpoints

#: The decay shapes of :class:`WarmupDecayScheduler`.
DECAYS = ("none", "linear", "cosine")


@checkpoints.register_checkpoint_hooks
class WarmupDecayScheduler:
    """Per-update learning-rate factor: linear warm-up, then decay.

    Update ``k`` (from 0) runs at ``peak * factor(k)`` in every group, the
    peak being its first rate (torch's ``initial_lr``)::

        factor(k) = (k + 1) / warmup_updates                 k < warmup
        factor(k) = final + (1 - final) * shape(p)           otherwise,

    ``p = (k - warmup) / (total - warmup)`` clamped to [0, 1], ``shape(p)``
    ``1 - p`` (linear), ``(1 + cos(pi p)) / 2`` (cosine) or ``1`` (none).
    Checkpointed as a SpeechBrain recoverable (the update count).

    Arguments
    ---------
    total_updates : int, optional
        Updates in the whole run; ``None``: set by the recipe runner
        (:meth:`set_total_updates`) from epochs x batches per epoch.
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
    >>> opt = torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.1)
    >>> for _ in range(3):  # before updates 0, 1, 2
    ...     sched(opt)
    >>> round(opt.param_groups[0]["lr"], 6)
    0.075
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
        self._lambda_lr = None  # torch's LambdaLR, once given an optimizer
        self._update = 0  # updates scheduled before it exists (a resume)

    def set_total_updates(self, total_updates):
        """Sets the run's length (> ``warmup_updates``), where decay ends."""
        total_updates = int(total_updates)
        if total_updates <= self.warmup_updates:
            raise ValueError(
                f"total_updates ({total_updates}) must exceed "
                f"warmup_updates ({self.warmup_updates})"
            )
        self.total_updates = total_updates

    def factor(self, update):
        """The fraction of the peak rate for update ``update`` (from 0)."""
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

    @property
    def update(self):
        """Updates scheduled so far (the index of the next one)."""
        if self._lambda_lr is None:
            return self._update
        return self._lambda_lr.last_epoch + 1

    def __call__(self, optimizer):
        """Sets every group's rate for the next update; call it once before
        each ``optimizer.step()`` (the first call wraps ``optimizer`` in
        torch's ``LambdaLR``, the next ones step it)."""
        sched = self._lambda_lr
        with warnings.catch_warnings():
            # stepped before optimizer.step() on purpose: this sets the rate
            # of the coming update (torch's order is step, then schedule)
            warnings.filterwarnings(
                "ignore", message="Detected call of `lr_scheduler.step"
            )
            if sched is None or sched.optimizer is not optimizer:
                # LambdaLR's constructor sets the rates of update ``last + 1``
                self._lambda_lr = torch.optim.lr_scheduler.LambdaLR(
                    optimizer,
                    lambda k: self.factor(k),
                    last_epoch=self.update - 1,
                )
            else:
                sched.step()

    @checkpoints.mark_as_saver
    def save(self, path):
        """Saves the update count (the run's length comes from the run)."""
        torch.save({"update": self.update}, path)

    @checkpoints.mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores the update count (the next call continues from it)."""
        del end_of_epoch  # the count is exact at any checkpoint
        self._update = int(torch.load(path)["update"])
        self._lambda_lr = None


def check_lr_scheduler(scheduler):
    """Raises if the Brain would not apply ``scheduler`` (the hparams'
    ``lr_scheduler``), rather than silently ignoring it."""
    if scheduler is None or isinstance(
        scheduler, (ReduceLROnPlateau, WarmupDecayScheduler)
    ):
        return
    raise ValueError(
        f"lr_scheduler: {type(scheduler).__name__} is not applied by this "
        "Brain; use speechbrain.nnet.schedulers.ReduceLROnPlateau (per "
        "epoch) or speechbrain_s4m.nnet.schedulers.WarmupDecayScheduler "
        "(per update), or remove the key"
    )


def learning_rates(optimizer):
    """The rates to log: ``{"lr": ...}`` of the main parameter group, plus
    ``"lr_ssm"`` when the S4 parameters (marked ``_ssm_param``) have their
    own group with another rate."""
    main, ssm = None, None
    for group in optimizer.param_groups:
        params = group["params"]
        is_ssm = bool(params) and all(
            getattr(p, "_ssm_param", False) for p in params
        )
        if is_ssm and ssm is None:
            ssm = group["lr"]
        elif not is_ssm and main is None:
            main = group["lr"]
    if main is None:  # only S4 parameters
        main, ssm = ssm, None
    rates = {"lr": main}
    if ssm is not None and ssm != main:
        rates["lr_ssm"] = ssm
    return rates


def scale_learning_rates(optimizer, factor):
    """Multiplies every parameter group's rate by ``factor`` (keeps their
    ratios, e.g. of the S4 group to the others)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor

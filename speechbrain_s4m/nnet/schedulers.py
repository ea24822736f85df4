"""Learning-rate schedules, and the learning-rate helpers of the Brain.

SpeechBrain's separation recipes anneal once per epoch
(``ReduceLROnPlateau``: halve after epochs without improvement). A short
run (the SynthMix main job: 10 epochs) never reaches the plateau, so its
learning rate stays at the peak until the last update.
:class:`WarmupDecayScheduler` instead sets the rate of every update: an
optional linear warm-up, then a linear or cosine decay to a final fraction
of the peak at the last update of the run; the rates are set by torch's
``LambdaLR`` with :meth:`WarmupDecayScheduler.factor` as its lambda, and
the schedule is checkpointed through SpeechBrain's ``Checkpointer`` (a
recoverable, as ``lr_scheduler`` in the recipes).

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
import warnings

import torch
from speechbrain.nnet.schedulers import ReduceLROnPlateau
from speechbrain.utils import checkpoints

__all__ = [
    "DECAYS",
    "WarmupDecayScheduler",
    "check_lr_scheduler",
    "learning_rates",
    "scale_learning_rates",
]

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
        self._lambda_lr = None  # torch's LambdaLR, once given an optimizer
        self._update = 0  # updates scheduled before it exists (a resume)

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

    @property
    def update(self):
        """Updates scheduled so far (the index of the next one)."""
        if self._lambda_lr is None:
            return self._update
        return self._lambda_lr.last_epoch + 1

    def __call__(self, optimizer):
        """Sets every group's rate for the next update, then counts it.

        Call it once before each optimizer update. The first call wraps
        ``optimizer`` in torch's ``LambdaLR`` (each group's rate then is its
        peak, kept by torch as the group's ``initial_lr``, so it is saved
        and restored with the optimizer); the next ones step it.

        Arguments
        ---------
        optimizer : torch.optim.Optimizer
            The optimizer (each group's first rate is its peak).
        """
        sched = self._lambda_lr
        with warnings.catch_warnings():
            # Stepped before optimizer.step() on purpose: this sets the rate
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


#: The learning-rate schedulers the Brain applies (``None``: constant).
LR_SCHEDULERS = (ReduceLROnPlateau, WarmupDecayScheduler)


def check_lr_scheduler(scheduler):
    """Raises if the Brain would not apply ``scheduler``.

    ``ReduceLROnPlateau`` acts after each validation (every parameter group
    scaled by the same factor), :class:`WarmupDecayScheduler` before each
    update; any other object under the ``lr_scheduler`` key would be
    silently ignored, so it is an error.

    Arguments
    ---------
    scheduler : object or None
        The hparams' ``lr_scheduler``.

    Example
    -------
    >>> check_lr_scheduler(WarmupDecayScheduler(total_updates=10))
    >>> check_lr_scheduler("cosine")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: lr_scheduler: str is not applied by this Brain; use ...
    """
    if scheduler is None or isinstance(scheduler, LR_SCHEDULERS):
        return
    raise ValueError(
        f"lr_scheduler: {type(scheduler).__name__} is not applied by this "
        "Brain; use speechbrain.nnet.schedulers.ReduceLROnPlateau (per "
        "epoch) or speechbrain_s4m.nnet.schedulers.WarmupDecayScheduler "
        "(per update), or remove the key"
    )


def learning_rates(optimizer):
    """The learning rates to log: ``lr`` of the main parameter group and,
    when the S4 parameters (marked ``_ssm_param``) have their own group with
    another learning rate, ``lr_ssm``.

    Arguments
    ---------
    optimizer : torch.optim.Optimizer
        The optimizer.

    Returns
    -------
    dict
        ``{"lr": float}`` or ``{"lr": float, "lr_ssm": float}``.

    Example
    -------
    >>> p, q = torch.ones(1).requires_grad_(), torch.ones(1).requires_grad_()
    >>> q._ssm_param = True
    >>> groups = [{"params": [q], "lr": 4e-4}, {"params": [p]}]
    >>> opt = torch.optim.Adam(groups, lr=1e-3)
    >>> learning_rates(opt)
    {'lr': 0.001, 'lr_ssm': 0.0004}
    >>> learning_rates(torch.optim.Adam([p, q], lr=1e-3))
    {'lr': 0.001}
    """
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
    """Multiplies the learning rate of every parameter group by ``factor``
    (keeps the ratio between e.g. the SSM group and the others).

    Arguments
    ---------
    optimizer : torch.optim.Optimizer
        The optimizer.
    factor : float
        The multiplier.

    Example
    -------
    >>> p, q = torch.ones(1).requires_grad_(), torch.ones(1).requires_grad_()
    >>> groups = [{"params": [p]}, {"params": [q], "lr": 0.1}]
    >>> opt = torch.optim.Adam(groups, lr=1.0)
    >>> scale_learning_rates(opt, 0.5)
    >>> [g["lr"] for g in opt.param_groups]
    [0.5, 0.05]
    """
    if factor == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor

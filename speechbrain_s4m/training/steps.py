"""DDP-consistent skipping and stepping: a Brain mixin.

SpeechBrain's ``Brain.fit_batch`` skips a batch whose loss is not finite on
the replica that saw it, and the separation recipes skip thresholded or
too-large losses the same way; under DDP the other replicas then wait in the
gradient all-reduce for a replica that left (a hang), or step without it.
:class:`ConsistentSteps` replaces ``fit_batch`` so that the decision to skip
is shared by every replica, also with gradient accumulation, and the weights
are never touched by a skipped batch.

Authors
 * speechbrain-s4m contributors 2026
"""

import logging
import math

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.distributed import is_distributed_initialized
from speechbrain.utils.logger import get_logger

from speechbrain_s4m.nnet.schedulers import WarmupDecayScheduler

logger = get_logger(__name__)

__all__ = [
    "NONFINITE_LOSS",
    "ConsistentSteps",
    "NonFiniteLossError",
    "over_replicas",
]

#: The skip reason of a batch whose loss is not finite.
NONFINITE_LOSS = "non-finite loss"


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive training batches are non-finite."""


def over_replicas(values, device, op="max"):
    """``values`` reduced over the DDP replicas (``"max"`` or ``"sum"``),
    the same on every replica; ``values`` themselves without DDP. A
    collective: every replica calls it at the same point.

    Example
    -------
    >>> over_replicas([0, 1, 2.5], "cpu")
    [0.0, 1.0, 2.5]
    """
    values = [float(v) for v in values]
    if is_distributed_initialized():
        t = torch.tensor(values, device=device)
        ops = torch.distributed.ReduceOp
        torch.distributed.all_reduce(t, op=ops.MAX if op == "max" else ops.SUM)
        values = t.tolist()
    return values


@sb.utils.checkpoints.register_checkpoint_hooks
class ConsistentSteps:
    """Brain mixin: training steps that skip a batch on all replicas at once.

    A batch is skipped (no backward, no optimizer update) when every
    utterance is below ``threshold`` (hparams ``threshold_byloss``), when
    the loss is not finite, or when it is above ``loss_upper_lim``; an
    update whose gradient norm is not finite is skipped too. The train loss
    averages the batches that counted (:meth:`update_average`), and more
    than ``nonfinite_patience`` consecutive non-finite batches stop
    training (:class:`NonFiniteLossError`).

    The Brain provides :meth:`training_losses` (the per-utterance loss of a
    batch). The counters (``skipped_batches``, ``counted_batches``,
    ``train_samples``) are saved with SpeechBrain's Brain state, so an
    intra-epoch checkpoint resumes the epoch's mean loss.
    """

    skipped_batches = 0  # training batches skipped in the current epoch
    nonfinite_count = 0  # of which non-finite losses or gradients
    nonfinite_streak = 0  # consecutive non-finite training batches
    counted_batches = 0  # training batches in the epoch's mean loss
    train_samples = 0  # training mixtures seen in the current epoch
    _stage = None  # the current stage (set by on_stage_start)

    def training_losses(self, batch):
        """The per-utterance training loss of ``batch``, `[batch]`."""
        raise NotImplementedError

    def on_stage_start(self, stage, epoch=None):
        """Resets the epoch's counters (unless resuming inside it)."""
        super().on_stage_start(stage, epoch)
        self._stage = stage
        if stage == sb.Stage.TRAIN and self.step == 0:
            self.skipped_batches = 0
            self.counted_batches = 0
            self.train_samples = 0

    def fit_batch(self, batch):
        """Trains on one batch; skips it on all replicas when needed.

        In DDP the decision to skip is shared: if one replica skips, all
        do, so the gradient all-reduce never waits for a replica that left.
        With gradient accumulation, the micro-batches before the one that
        steps run under ``no_sync``: their gradients are all-reduced by the
        backward of the stepping micro-batch. When that one is skipped no
        backward runs, so the accumulated gradients are all-reduced here
        (:meth:`_sync_accumulated_gradients`) before the step: every replica
        applies the update DDP would have applied had the skipped
        micro-batch contributed a zero gradient, and the work of the earlier
        micro-batches is kept.

        Arguments
        ---------
        batch : PaddedBatch
            The batch.

        Returns
        -------
        torch.Tensor
            The training loss of the batch (NaN if the batch was skipped,
            which keeps it out of the epoch's average).
        """
        should_step = self.step % self.grad_accumulation_factor == 0
        self.train_samples += len(batch.id)

        with self.no_sync(not should_step):
            loss = self.training_losses(batch)  # [batch]
            loss, reason = self._select_loss(loss)
            skip, nonfinite = self._any_replica(
                reason is not None, reason == NONFINITE_LOSS
            )
            if skip:
                self._log_skip(reason, nonfinite)
            else:
                self.scaler.scale(
                    loss / self.grad_accumulation_factor
                ).backward()

        if should_step:
            if skip:
                self._sync_accumulated_gradients()
            if self._optimizer_step() == "non-finite gradient":
                nonfinite = True
        self._check_nonfinite_patience(nonfinite, skip)

        if skip:
            return torch.tensor(float("nan"))
        return loss.detach().cpu()

    def _select_loss(self, loss):
        """Applies loss thresholding and the sanity limits.

        Returns the scalar loss to optimise and the reason to skip the batch
        (None when the batch is used).
        """
        if not torch.isfinite(loss).all():
            return loss.mean(), NONFINITE_LOSS
        if getattr(self.hparams, "threshold_byloss", False):
            # Keep only the utterances not yet separated well enough
            loss = loss[loss > self.hparams.threshold]
            if loss.numel() == 0:
                return torch.tensor(0.0), "all utterances below the threshold"
        loss = loss.mean()
        upper = getattr(self.hparams, "loss_upper_lim", None)
        if upper is not None and loss >= upper:
            return loss, f"loss {loss.item():.3g} >= loss_upper_lim {upper}"
        return loss, None

    def _any_replica(self, *flags):
        """Whether each flag is True on any DDP replica (a bool for a single
        flag); the same on every replica."""
        out = tuple(v > 0 for v in over_replicas(flags, self.device))
        return out[0] if len(out) == 1 else out

    def _log_skip(self, reason, nonfinite):
        """Counts and logs a skipped training batch."""
        self.skipped_batches += 1
        if nonfinite:
            self.nonfinite_count += 1
        # Thresholded batches are routine late in training
        routine = reason is not None and "threshold" in reason
        logger.log(
            logging.INFO if routine else logging.WARNING,
            "Skipping a training batch (%s); %d skipped this epoch.",
            reason or "skipped on another replica",
            self.skipped_batches,
        )

    def _check_nonfinite_patience(self, nonfinite, skipped):
        """Counts consecutive non-finite batches; raises past the patience
        (SpeechBrain's run option ``nonfinite_patience``, default 3).

        A batch that trained normally resets the count; a thresholded batch
        leaves it as it is. The flags are the same on every replica, so the
        replicas stop together.
        """
        if nonfinite:
            self.nonfinite_streak += 1
        elif not skipped:
            self.nonfinite_streak = 0
        patience = getattr(self, "nonfinite_patience", 3)
        if self.nonfinite_streak > patience:
            raise NonFiniteLossError(
                f"Training stopped: {self.nonfinite_streak} consecutive "
                "training batches gave a non-finite loss or gradient "
                f"(nonfinite_patience = {patience}; set it with "
                "--nonfinite_patience N or the hparams key "
                "nonfinite_patience). The model produces NaN/inf: lower "
                "the learning rate, train in fp32, or check the data for "
                "NaN, silent or empty files."
            )

    def _trained_parameters(self, with_grad=False):
        """The parameters of every optimizer group (with a gradient)."""
        return [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if (p.grad is not None if with_grad else p.requires_grad)
        ]

    def _sync_accumulated_gradients(self):
        """Averages the gradients accumulated under ``no_sync`` over the DDP
        replicas (what the backward of a stepping micro-batch does).

        A gradient that exists on some replicas only counts as zero on the
        others. Nothing to do without DDP.
        """
        if not is_distributed_initialized():
            return
        params = self._trained_parameters()
        if not params:
            return
        has_grad = torch.tensor(
            [float(p.grad is not None) for p in params], device=self.device
        )
        torch.distributed.all_reduce(
            has_grad, op=torch.distributed.ReduceOp.MAX
        )
        synced = [p for p, h in zip(params, has_grad.tolist()) if h > 0]
        for p in synced:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # One all-reduce per dtype over the flattened gradients
        by_dtype = {}
        for p in synced:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        world = torch.distributed.get_world_size()
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            torch.distributed.all_reduce(flat)
            flat /= world
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def _optimizer_step(self):
        """Unscales, clips, applies the per-update schedule and steps.

        If the gradient norm is not finite the update is skipped (with fp16
        the GradScaler does it and lowers its scale; otherwise we do), so
        the weights are never corrupted. After a DDP all-reduce the
        gradients, hence the decision, are identical on all replicas.

        Returns
        -------
        str
            ``"stepped"``, ``"no gradient"`` (every micro-batch since the
            last step was skipped), ``"non-finite gradient"`` (update
            skipped) or ``"scaler"`` (fp16: the GradScaler decides).
        """
        # Every optimizer group, not only self.modules.parameters() as in
        # SpeechBrain's Brain.check_gradients / the recipes' clipping: the
        # S4 parameters may sit in a group of their own (own learning rate)
        params = self._trained_parameters(with_grad=True)
        if not params:  # every micro-batch since the last step was skipped
            self.optimizer.zero_grad(set_to_none=True)
            return "no gradient"
        self.scaler.unscale_(self.optimizer)
        max_norm = getattr(self.hparams, "clip_grad_norm", None)
        if max_norm is None:
            max_norm = self.max_grad_norm
        if max_norm is None or max_norm <= 0:
            max_norm = float("inf")  # only measure the norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = bool(torch.isfinite(norm))
        status = "stepped"
        if finite or self.scaler.is_enabled():
            scheduler = getattr(self.hparams, "lr_scheduler", None)
            if isinstance(scheduler, WarmupDecayScheduler):
                scheduler(self.optimizer)  # this update's rates
            # With fp16 the scaler skips non-finite steps and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if finite:
            self.optimizer_step += 1
        elif self.scaler.is_enabled():
            status = "scaler"
        else:
            status = "non-finite gradient"
            self.nonfinite_count += 1
            self.skipped_batches += 1
            logger.warning(
                "Non-finite gradient norm: update skipped (%d skipped this "
                "epoch).",
                self.skipped_batches,
            )
        self.optimizer.zero_grad(set_to_none=True)
        return status

    def update_average(self, loss, avg_loss):
        """Running mean of the training loss over the batches that counted.

        Skipped batches (NaN loss) are left out of the mean and of its
        count; an epoch in which every batch was skipped averages to NaN
        (not 0). Validation and test use SpeechBrain's running mean.

        Arguments
        ---------
        loss : torch.Tensor
            The batch loss (a scalar, NaN when skipped).
        avg_loss : float
            The running mean so far.

        Returns
        -------
        float
            The updated mean.
        """
        if self._stage != sb.Stage.TRAIN:
            return super().update_average(loss, avg_loss)
        if not torch.isfinite(loss):
            return avg_loss if self.counted_batches else math.nan
        self.counted_batches += 1
        if self.counted_batches == 1:
            return float(loss)
        return avg_loss + (float(loss) - avg_loss) / self.counted_batches

    @sb.utils.checkpoints.mark_as_saver
    def _save(self, path):
        """Saves SpeechBrain's Brain state plus this epoch's counters."""
        super()._save(path)
        with open(path, encoding="utf-8") as f:
            state = yaml.safe_load(f) or {}
        state.update(
            counted_batches=self.counted_batches,
            skipped_batches=self.skipped_batches,
            train_samples=self.train_samples,
        )
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(state, f)

    @sb.utils.checkpoints.mark_as_loader
    def _recover(self, path, end_of_epoch):
        """Loads what :meth:`_save` saved (older checkpoints too)."""
        super()._recover(path, end_of_epoch)
        with open(path, encoding="utf-8") as f:
            state = yaml.safe_load(f) or {}
        # Without the count, the saved mean weighs as the batches so far
        self.counted_batches = state.get("counted_batches", self.step)
        self.skipped_batches = state.get("skipped_batches", 0)
        self.train_samples = state.get("train_samples", 0)

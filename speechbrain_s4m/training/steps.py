"""DDP-consistent skipping and stepping: a Brain mixin (SpeechBrain skips
a batch on the replica that saw it; the others then hang or step alone)."""

import logging
import math

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.distributed import is_distributed_initialized
from speechbrain.utils.logger import get_logger

from speechbrain_s4m.nnet.schedulers import WarmupDecayScheduler

logger = get_logger(__name__)


_NONFINITE = "non-finite loss"  # the skip reason of a non-finite loss


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive training batches are non-finite."""


def over_replicas(values, device, op="max"):
    """``values`` (floats) reduced over the DDP replicas (``"max"`` or
    ``"sum"``); ``values`` themselves without DDP. A collective."""
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

    Skipped (no backward, no update): every utterance below ``threshold``
    (``threshold_byloss``), a non-finite loss or one above
    ``loss_upper_lim``, a non-finite gradient norm. The train loss averages
    the batches that counted; more than ``nonfinite_patience`` (3)
    non-finite batches in a row raise :class:`NonFiniteLossError`. The
    epoch's counters are checkpointed with the Brain's state.
    """

    skipped_batches = 0  # training batches skipped in the current epoch
    nonfinite_count = 0  # SpeechBrain's: non-finite batches this epoch
    nonfinite_streak = 0  # consecutive non-finite training batches
    counted_batches = 0  # training batches in the epoch's mean loss
    train_samples = 0  # training mixtures seen in the current epoch
    _stage = None

    def training_losses(self, batch):
        """The per-utterance training loss of ``batch``, `[batch]`."""
        raise NotImplementedError

    def on_stage_start(self, stage, epoch=None):
        """Resets the epoch's counters (unless resuming inside it)."""
        super().on_stage_start(stage, epoch)
        self._stage = stage
        if stage == sb.Stage.TRAIN and self.step == 0:
            self.skipped_batches = self.counted_batches = 0
            self.train_samples = 0

    def fit_batch(self, batch):
        """Trains on ``batch`` or skips it on every replica; returns its
        loss (NaN if skipped). A skipped stepping micro-batch has no
        all-reduce: the gradients accumulated under ``no_sync`` are then
        averaged here, as if it had contributed zero."""
        should_step = self.step % self.grad_accumulation_factor == 0
        self.train_samples += len(batch.id)

        with self.no_sync(not should_step):
            loss, reason = self._select_loss(self.training_losses(batch))
            skip, nonfinite = self._any_replica(
                reason is not None, reason == _NONFINITE
            )
            if skip:
                self._log_skip(reason)
            else:
                self.scaler.scale(
                    loss / self.grad_accumulation_factor
                ).backward()

        if should_step:
            if skip:
                self._sync_accumulated_gradients()
            nonfinite |= self._optimizer_step()
        self.nonfinite_count += nonfinite
        self._check_nonfinite_patience(nonfinite, skip)
        return torch.tensor(float("nan")) if skip else loss.detach().cpu()

    def _select_loss(self, loss):
        """Thresholds the per-utterance loss: ``(scalar loss, reason to
        skip or None)``."""
        if not torch.isfinite(loss).all():
            return loss.mean(), _NONFINITE
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
        """Whether each flag is True on any DDP replica (same everywhere)."""
        return tuple(v > 0 for v in over_replicas(flags, self.device))

    def _log_skip(self, reason):
        self.skipped_batches += 1
        reason = reason or "skipped on another replica"
        logger.log(
            # Thresholded batches are routine late in training
            logging.INFO if "threshold" in reason else logging.WARNING,
            f"Skipping a training batch ({reason}); "
            f"{self.skipped_batches} skipped this epoch.",
        )

    def _check_nonfinite_patience(self, nonfinite, skipped):
        """Counts consecutive non-finite batches (a trained batch resets the
        count, a thresholded one does not); raises past the patience. The
        flags are shared, so the replicas stop together."""
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
        replicas; a gradient missing on some replicas counts as zero."""
        if not is_distributed_initialized():
            return
        params = self._trained_parameters()
        has_grad = over_replicas(
            [p.grad is not None for p in params], self.device
        )
        synced = [p for p, h in zip(params, has_grad) if h > 0]
        for p in synced:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # one all-reduce per dtype over the flattened gradients, not one
        # collective per parameter; dtypes in parameter order (the same on
        # every replica, which a set's order would not be)
        world = torch.distributed.get_world_size()
        for dtype in dict.fromkeys(p.grad.dtype for p in synced):
            grads = [p.grad for p in synced if p.grad.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= world
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    def _optimizer_step(self):
        """Unscales, clips, applies the per-update schedule and steps;
        True when skipped for a non-finite gradient norm (with fp16 the
        GradScaler skips itself). Same decision on every replica."""
        # Every optimizer group, not only self.modules.parameters() as
        # SpeechBrain clips: the S4 parameters may have a group of their own
        params = self._trained_parameters(with_grad=True)
        if not params:  # every micro-batch since the last step was skipped
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.scaler.unscale_(self.optimizer)
        max_norm = getattr(self.hparams, "clip_grad_norm", None)
        if max_norm is None:
            max_norm = self.max_grad_norm
        if max_norm is None or max_norm <= 0:
            max_norm = float("inf")  # only measure the norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = bool(torch.isfinite(norm))
        if finite or self.scaler.is_enabled():
            scheduler = getattr(self.hparams, "lr_scheduler", None)
            if isinstance(scheduler, WarmupDecayScheduler):
                scheduler(self.optimizer)  # this update's rates
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.optimizer_step += 1
            return False
        if self.scaler.is_enabled():
            return False
        self.skipped_batches += 1
        logger.warning(
            "Non-finite gradient norm: update skipped (%d skipped this epoch).",
            self.skipped_batches,
        )
        return True

    def update_average(self, loss, avg_loss):
        """Running mean of the training loss over the batches that counted
        (none: NaN); SpeechBrain's for validation and test."""
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
        """SpeechBrain's Brain state plus this epoch's counters."""
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

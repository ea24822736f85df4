"""The SpeechBrain ``Brain`` shared by all separation recipes.

One class, :class:`Separation`, trains and evaluates any
encoder / masking network / decoder separator (S4M, Sepformer, ...) built
from a recipe's hparams file. Its forward is a
:class:`speechbrain_s4m.lobes.separator.Separator` (the module inference
and the benchmark run too), its loss the recipe's ``loss``. The recipe
runner that builds it (:func:`speechbrain_s4m.recipe.run_recipe`), the
hparams loading (:mod:`speechbrain_s4m.config`) and the training curves
(:mod:`speechbrain_s4m.training_curve`) live in their own modules; their
names stay importable from here for existing code.

Differences from SpeechBrain's own separation recipes (on purpose):

* the forward pass goes through ``self.modules.*`` (the DDP-wrapped
  modules), so that multi-GPU replicas really synchronise;
* the data pipeline crops the training signals (``training_signal_len``)
  and provides the noise of noisy mixtures (``noise_sig``), so the Brain
  does neither;
* nothing calls ``reset_parameters()`` on the modules before training (the
  modules' own initialisation, e.g. S4's, is kept);
* the training loss masks the padding of batches (SI-SNR over the real
  length of each utterance, kept right through speed perturbation), and
  training can skip a batch on every replica at once (loss thresholding,
  ``loss_upper_lim``, non-finite losses or gradients) without
  desynchronising DDP, also with gradient accumulation, or touching the
  weights; the train loss averages the batches that counted, and too many
  consecutive non-finite batches stop training (``nonfinite_patience``);
* gradient clipping covers every parameter group (the SSM parameters may sit
  in their own group with their own learning rate), and learning-rate
  annealing scales every group by the same factor;
* the test set is read once: per-utterance SI-SNR(i) and SDR(i) (and PESQ,
  STOI with ``extra_metrics``) are computed while evaluating, written to
  ``<output_folder>/test_results.csv`` (with an ``avg`` row); an utterance
  that cannot be scored on some metric (silent source, too short) gets empty
  cells and a warning instead of stopping the test stage; the best
  checkpoint must exist (``--test_only`` on an empty output folder is an
  error, not a score of random weights);
* the logs name the logged quantity ``loss`` (the negative SI-SNR in dB),
  and each epoch line has both learning rates (main and S4 groups), the
  skipped batches, the training time and the training mixtures per
  second.

Authors
 * speechbrain-s4m contributors 2026
"""

import contextlib
import csv
import functools
import importlib
import logging
import math
import os
import signal
import threading
import time

import numpy as np
import speechbrain as sb
import torch
import yaml
from speechbrain.nnet.schedulers import ReduceLROnPlateau
from speechbrain.utils.distributed import (
    if_main_process,
    is_distributed_initialized,
)
from speechbrain.utils.logger import get_logger

# Re-exported (``x as x``): these lived here before the split, and the old
# import paths keep working
from speechbrain_s4m.config import check_overrides as check_overrides
from speechbrain_s4m.config import load_hparams as load_hparams
from speechbrain_s4m.lobes.separator import Separator
from speechbrain_s4m.lobes.separator import separate_batch as separate_batch
from speechbrain_s4m.nnet.schedulers import WarmupDecayScheduler
from speechbrain_s4m.training_curve import parse_train_log as parse_train_log
from speechbrain_s4m.training_curve import (
    plot_training_curve as plot_training_curve,
)

logger = get_logger(__name__)

__all__ = [
    "NoCheckpointError",
    "NonFiniteLossError",
    "RESULT_COLUMNS",
    "STOP_SIGNALS",
    "Separation",
    "TrainingInterrupted",
    "check_lr_scheduler",
    "learning_rates",
    "scale_learning_rates",
]

#: Names of :mod:`speechbrain_s4m.recipe` still importable from here. The
#: recipe runner imports this module, so they are looked up on first use
#: (module ``__getattr__``) rather than imported at load time.
_RECIPE_NAMES = (
    "PREPARE_KEYS",
    "dynamic_mixing_train_set",
    "main",
    "prepare_data",
    "run_recipe",
)


def __getattr__(name):
    """The recipe runner's names, for imports written before the split."""
    if name in _RECIPE_NAMES:
        recipe = importlib.import_module("speechbrain_s4m.recipe")
        return getattr(recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The first columns of ``test_results.csv``; ``--extra_metrics`` adds
#: ``<name>, <name>_i`` pairs after them, and ``notes`` comes last (why a
#: cell is empty).
RESULT_COLUMNS = ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]

#: The skip reason of a batch whose loss is not finite.
NONFINITE_LOSS = "non-finite loss"


class NoCheckpointError(FileNotFoundError):
    """Raised when evaluation finds no checkpoint to load."""


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive training batches are non-finite."""


#: Signals that stop training at the end of the update in progress, with
#: a checkpoint: Ctrl-C, and the SIGTERM of cluster schedulers (preemption).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped by a signal (:data:`STOP_SIGNALS`).

    Arguments
    ---------
    signum : int
        The signal (``signal.SIGINT``, ``signal.SIGTERM``).
    checkpoint : str, None
        The checkpoint folder the rerun resumes from (None: nothing was
        saved, e.g. a second Ctrl-C).
    where : str
        Where training stopped (``"epoch 2, batch 3/6"``).

    Example
    -------
    >>> e = TrainingInterrupted(signal.SIGTERM, "save/CKPT+x", "epoch 1")
    >>> e.exit_status, str(e)
    (143, 'SIGTERM at epoch 1: checkpoint saved in save/CKPT+x')
    """

    def __init__(self, signum, checkpoint=None, where=""):
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.where = where
        name = signal.Signals(self.signum).name
        saved = (
            f"checkpoint saved in {checkpoint}"
            if checkpoint
            else "no checkpoint saved (stopped at once)"
        )
        at = f" at {where}" if where else ""
        super().__init__(f"{name}{at}: {saved}")

    @property
    def exit_status(self):
        """``128 + signal``, the shell's convention (130, 143)."""
        return 128 + self.signum


@sb.utils.checkpoints.register_checkpoint_hooks
class Separation(sb.Brain):
    """Brain for time-domain masking separators (S4M, Sepformer, ...).

    Expects the hparams of a separation recipe: ``modules`` with
    ``encoder``, ``masknet`` and ``decoder``; ``num_spks``; ``loss`` (a
    callable ``loss(estimate, target, lengths) -> (loss [batch], perm)``
    such as :func:`speechbrain_s4m.metrics.pit_si_snr_loss`);
    ``clip_grad_norm``, ``loss_upper_lim``, ``threshold_byloss``,
    ``threshold``, ``use_speedperturb`` (+ ``speed_perturb``),
    ``lr_scheduler``, ``epoch_counter``, ``train_logger``,
    ``output_folder``, ``save_folder``, ``sample_rate``; optionally
    ``save_audio``, ``n_audio_to_save``, ``extra_metrics`` (test metrics
    beyond SI-SNR/SDR: ``"pesq,stoi"``; default none) and
    ``nonfinite_patience`` (SpeechBrain's run option: consecutive
    non-finite training batches tolerated; default 3). Batches carry ``id``,
    ``mix_sig``, ``s1_sig`` ... ``s<num_spks>_sig``, already cropped for
    training by the data pipeline, and ``noise_sig`` when the mixtures are
    noisy (the manifest has ``noise_wav``; used to re-mix after speed
    perturbation).

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> class Mask(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = torch.nn.Conv1d(8, 16, 1)
    ...
    ...     def forward(self, w):
    ...         return torch.relu(self.conv(w)).view(2, *w.shape)
    >>> modules = {
    ...     "encoder": Encoder(kernel_size=16, out_channels=8),
    ...     "masknet": Mask(),
    ...     "decoder": Decoder(8, 1, kernel_size=16, stride=8, bias=False),
    ... }
    >>> brain = Separation(modules, hparams={"num_spks": 2})
    >>> batch = PaddedBatch(
    ...     [
    ...         {"id": "a", "mix_sig": torch.randn(800)},
    ...         {"id": "b", "mix_sig": torch.randn(600)},
    ...     ]
    ... )
    >>> brain.separate(batch.mix_sig.data).shape
    torch.Size([2, 800, 2])
    """

    skipped_batches = 0  # training batches skipped in the current epoch
    nonfinite_count = 0  # of which non-finite losses or gradients
    nonfinite_streak = 0  # consecutive non-finite training batches
    counted_batches = 0  # training batches in the epoch's mean loss
    train_samples = 0  # training mixtures seen in the current epoch
    _audio_left = 0  # test utterances whose audio is still to be saved
    _stage = None  # the current stage (set by on_stage_start)
    _extra_metrics = ()  # the extra metrics of the current test run
    _epoch_start = None  # time.perf_counter() at the training stage start

    # ------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------
    @property
    def separator(self):
        """The :class:`Separator` over ``self.modules``.

        Built over the modules the Brain holds now: SpeechBrain replaces
        them when it compiles them or wraps them for DDP (in
        ``on_fit_start``), and the separator is then rebuilt over the
        wrapped ones, so that the replicas' gradients are synchronised.
        """
        sep = self.__dict__.get("_separator")
        if sep is None or any(
            getattr(sep, key) is not self.modules[key]
            for key in ("encoder", "masknet", "decoder")
        ):
            sep = Separator.from_modules(self.modules, self.hparams.num_spks)
            self._separator = sep
        return sep

    def separate(self, mix):
        """Separates mixtures `[batch, time]` -> `[batch, time, num_spks]`,
        through ``self.modules`` (the DDP-wrapped modules when distributed).

        Arguments
        ---------
        mix : torch.Tensor
            Mixtures, `[batch, time]`.

        Returns
        -------
        torch.Tensor
            Estimated sources, `[batch, time, num_spks]`.
        """
        return self.separator(mix)

    def compute_forward(self, mix, targets, stage, noise=None):
        """Forward computations from the mixture to the separated signals.

        Arguments
        ---------
        mix : tuple
            ``(wavs [batch, time], relative lengths [batch])``, as
            ``batch.mix_sig``.
        targets : list
            One ``(wavs, lengths)`` per source (``batch.s1_sig``, ...).
        stage : sb.Stage
            With ``Stage.TRAIN`` the training-time distortion is applied
            (speed perturbation and re-mixing, with ``use_speedperturb``).
        noise : tuple, None
            ``batch.noise_sig`` for noisy datasets: added back to the
            re-mixed sources after speed perturbation.

        Returns
        -------
        est_source : torch.Tensor
            `[batch, time, num_spks]`.
        targets : torch.Tensor
            `[batch, time, num_spks]`, the (possibly perturbed) sources.
        lengths : torch.Tensor
            `[batch]`, relative lengths of the utterances (in the perturbed
            signals after speed perturbation).
        """
        mix, lengths = mix
        mix, lengths = mix.to(self.device), lengths.to(self.device)
        targets = torch.stack(
            [t[0] for t in targets[: self.hparams.num_spks]], dim=-1
        ).to(self.device)  # [batch, time, spks]

        # The training signals come cropped (training_signal_len) from the
        # data pipeline
        if stage == sb.Stage.TRAIN and getattr(
            self.hparams, "use_speedperturb", False
        ):
            with torch.no_grad():
                mix, targets, lengths = self.add_speed_perturb(
                    targets, noise, lengths
                )

        est_source = self.separate(mix)
        return est_source, targets, lengths

    def compute_objectives(self, predictions, targets, lengths=None):
        """Negative SI-SNR under the best utterance-level permutation.

        Arguments
        ---------
        predictions : torch.Tensor
            `[batch, time, num_spks]`.
        targets : torch.Tensor
            `[batch, time, num_spks]`.
        lengths : torch.Tensor, None
            `[batch]` relative lengths; padding is excluded from the loss.

        Returns
        -------
        torch.Tensor
            Per-utterance loss `[batch]`.
        """
        out = self.hparams.loss(
            predictions.float(), targets.float(), lengths=lengths
        )
        return out[0] if isinstance(out, tuple) else out

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------
    def fit_batch(self, batch):
        """Trains on one batch; skips it on all replicas when needed.

        A batch is skipped (no backward, no optimizer update) when every
        utterance is below ``threshold`` (with ``threshold_byloss``), when
        the loss is not finite, or when it is above ``loss_upper_lim``. In
        DDP the decision is shared: if one replica skips, all do, so the
        gradient all-reduce never waits for a replica that left.

        With gradient accumulation, the micro-batches before the one that
        steps run under ``no_sync``: their gradients are all-reduced by the
        backward of the stepping micro-batch. When that one is skipped no
        backward runs, so the accumulated gradients are all-reduced here
        explicitly (:meth:`_sync_accumulated_gradients`) before the step:
        every replica then applies the same update, the one DDP would have
        applied had the skipped micro-batch contributed a zero gradient, and
        the work of the earlier micro-batches is kept (discarding it would
        also keep the replicas equal, but throws away good gradients).

        After more than ``nonfinite_patience`` (SpeechBrain's run option:
        ``--nonfinite_patience`` or the hparams key, default 3) consecutive
        batches with a non-finite loss or gradient, training stops with
        :class:`NonFiniteLossError`, on every replica at once.

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
        mix, targets, noise = self._unpack(batch)
        should_step = self.step % self.grad_accumulation_factor == 0
        self.train_samples += len(batch.id)

        with self.no_sync(not should_step):
            with self.training_ctx:
                est, targets, lengths = self.compute_forward(
                    mix, targets, sb.Stage.TRAIN, noise
                )
            loss = self.compute_objectives(est, targets, lengths)  # [batch]
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
        """Counts consecutive non-finite batches; raises past the patience.

        A batch that trained normally resets the count; a thresholded batch
        leaves it as it is. The flags are the same on every replica (shared
        by :meth:`_any_replica`, or computed from all-reduced gradients), so
        the replicas stop together.
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
        """Whether each flag is True on any DDP replica.

        Arguments
        ---------
        *flags : bool
            This replica's flags.

        Returns
        -------
        bool or tuple of bool
            One value per flag (a bool for a single flag), the same on every
            replica; the flags themselves when not distributed.
        """
        out = tuple(bool(f) for f in flags)
        if is_distributed_initialized():
            t = torch.tensor([float(f) for f in out], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            out = tuple(bool(v > 0) for v in t.tolist())
        return out[0] if len(out) == 1 else out

    def _sync_accumulated_gradients(self):
        """Averages the gradients accumulated under ``no_sync`` over the DDP
        replicas (what the backward of a stepping micro-batch does).

        Called when the micro-batch that steps was skipped on every replica.
        A gradient that exists on some replicas only counts as zero on the
        others. Nothing to do without DDP.
        """
        if not is_distributed_initialized():
            return
        world = torch.distributed.get_world_size()
        params = [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.requires_grad
        ]
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
        """Unscales, clips (all parameter groups) and steps the optimizer.

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
        params = [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
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
        count, so they do not pull it towards zero; an epoch in which every
        batch was skipped averages to NaN (not 0). Validation and test use
        SpeechBrain's running mean.

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
        """Saves SpeechBrain's Brain state plus this epoch's counters (an
        intra-epoch checkpoint resumes the epoch's mean loss correctly)."""
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

    # ------------------------------------------------------------------
    # Stopping on a signal (Ctrl-C, preemption)
    # ------------------------------------------------------------------
    _stop_signal = 0  # the stop signal this process received (0: none)
    _saving = False  # a stop checkpoint is being written

    def fit(self, *args, **kwargs):
        """SpeechBrain's ``fit``, stopping cleanly on SIGINT / SIGTERM.

        The first SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption) lets
        the update in progress finish (all its micro-batches, with gradient
        accumulation), saves an intra-epoch checkpoint there, the way the
        ``ckpt_interval_*`` checkpoints are saved, and raises
        :class:`TrainingInterrupted`: the rerun of the same command
        continues from that update (the data loader skips the batches
        already trained on). A signal during validation stops once the
        epoch's checkpoint is saved; one during the set-up stops before the
        first update. A second Ctrl-C stops at once, without saving (the
        rerun resumes from the last checkpoint).

        Under DDP the decision is shared at every update boundary (one
        all-reduce of a scalar), so every rank stops after the same update
        whichever rank got the signal; the Checkpointer writes on rank 0.
        The handlers are installed in the main thread only, for the
        duration of ``fit``; the previous ones are restored after it.

        Arguments
        ---------
        *args : tuple
            See ``speechbrain.core.Brain.fit``.
        **kwargs : dict
            See ``speechbrain.core.Brain.fit``.
        """
        self._stop_signal = 0
        with self._stop_on_signals():
            try:
                super().fit(*args, **kwargs)
            finally:
                self._end_guarded_workers()
            # A signal during the last validation: its checkpoint is saved
            stop = self._shared_stop_signal()
        if stop:
            raise TrainingInterrupted(
                stop, self._newest_checkpoint(), "the end of training"
            )

    def make_dataloader(
        self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs
    ):
        """SpeechBrain's data loader; in training and validation its worker
        processes ignore :data:`STOP_SIGNALS`.

        Ctrl-C and ``kill -TERM -<group>`` reach the workers too; a worker
        ended by SIGTERM makes PyTorch raise in the main process at any
        point, even while the stop checkpoint is being written. :meth:`fit`
        ends these workers itself when it returns or stops (they ignore the
        SIGTERM with which Python would end them at exit).

        Arguments
        ---------
        dataset : Dataset
            See ``speechbrain.core.Brain.make_dataloader``.
        stage : sb.Stage
            The stage.
        ckpt_prefix : str, None
            See ``speechbrain.core.Brain.make_dataloader``.
        **loader_kwargs : dict
            Data loader options (``num_workers``, ``worker_init_fn`` ...).

        Returns
        -------
        DataLoader
        """
        guarded = stage != sb.Stage.TEST and loader_kwargs.get("num_workers")
        if guarded:
            loader_kwargs["worker_init_fn"] = functools.partial(
                _worker_ignoring_stop_signals,
                loader_kwargs.get("worker_init_fn"),
            )
        loader = super().make_dataloader(
            dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs
        )
        if guarded:
            self.__dict__.setdefault("_guarded_loaders", []).append(loader)
        return loader

    def _end_guarded_workers(self):
        """Ends the workers of the loaders made by :meth:`make_dataloader`
        in training (an unfinished epoch leaves them running)."""
        for loader in self.__dict__.pop("_guarded_loaders", []):
            iterator = getattr(loader, "_speechbrain_iterator", None)
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()  # PyTorch's own clean end (idempotent)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """Installs :meth:`_on_stop_signal` for :data:`STOP_SIGNALS`."""
        if threading.current_thread() is not threading.main_thread():
            yield  # Python delivers signals to the main thread only
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_stop_signal)
        try:
            yield
        finally:
            for s, handler in previous.items():
                # None: a handler installed outside Python; default then
                signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def _on_stop_signal(self, signum, frame):
        """Records the stop request; a second Ctrl-C stops at once."""
        if self._stop_signal:
            # torchrun forwards a SIGTERM after the terminal's SIGINT: only
            # the same Ctrl-C again means "now", and never mid-save (a
            # half-written checkpoint would be the one the rerun loads)
            if signum == self._stop_signal == signal.SIGINT:
                if not self._saving:
                    raise TrainingInterrupted(signum, None, self._where())
            return
        self._stop_signal = int(signum)
        logger.warning(
            "%s received: training stops after the update in progress and "
            "saves a checkpoint%s.",
            signal.Signals(signum).name,
            " (Ctrl-C again: stop at once, without saving)"
            if signum == signal.SIGINT
            else "",
        )

    def _shared_stop_signal(self):
        """The stop signal of any DDP rank (the largest), else 0; a
        collective: every rank calls it at the same points."""
        stop = self._stop_signal
        if is_distributed_initialized():
            t = torch.tensor([float(stop)], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            stop = int(t.item())
        return stop

    def _where(self):
        """``epoch 2, batch 3/6``: where training is now."""
        counter = getattr(self.hparams, "epoch_counter", None)
        where = f"epoch {getattr(counter, 'current', '?')}"
        if self._stage == sb.Stage.TRAIN and self.step:
            total = getattr(self, "batches_per_epoch", None)
            where += f", batch {self.step}" + (f"/{total}" if total else "")
        return where

    def _newest_checkpoint(self):
        """The folder the rerun resumes from (None if none)."""
        if self.checkpointer is None:
            return None
        ckpt = self.checkpointer.find_checkpoint()
        return None if ckpt is None else str(ckpt.path)

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """SpeechBrain's interval decision, or a stop signal at an update
        boundary (after the batch whose optimizer step ends the update)."""
        self._stopping = 0
        if self.step % self.grad_accumulation_factor == 0:
            self._stopping = self._shared_stop_signal()
        if self._stopping:
            if self.checkpointer is None:
                raise TrainingInterrupted(self._stopping, None, self._where())
            return True  # same on every rank: SpeechBrain's vote skipped
        return super()._should_save_intra_epoch_ckpt(
            last_ckpt_time, steps_since_ckpt
        )

    def _save_intra_epoch_ckpt(self):
        """SpeechBrain's intra-epoch checkpoint; then, when a signal asked
        for it, :class:`TrainingInterrupted`."""
        self._saving = True
        try:
            super()._save_intra_epoch_ckpt()
        finally:
            self._saving = False
        if getattr(self, "_stopping", 0):
            raise TrainingInterrupted(
                self._stopping, self._newest_checkpoint(), self._where()
            )

    def add_speed_perturb(self, targets, noise=None, lengths=None):
        """Speed-perturbs each source independently and re-mixes them.

        As in SpeechBrain's recipes: each source gets its own random speed
        (``hparams.speed_perturb``, a
        :class:`speechbrain.augment.time_domain.SpeedPerturb`, one speed per
        call for the whole batch), the sources are cut to the shortest one
        and summed, and for noisy datasets the noise is added back. A slower
        source is longer: the sources are also cut to the batch's length, so
        that the perturbation never lengthens the (cropped) training
        signals.

        The relative lengths follow: a padded utterance of relative length
        ``l`` in a source resampled from ``T`` to ``T'`` samples ends at
        ``l * T'``; the mixture holds speech up to the longest of its
        sources (and its noise), which is its new length relative to the
        cut batch (at most 1).

        Arguments
        ---------
        targets : torch.Tensor
            `[batch, time, spks]`.
        noise : tuple, None
            ``(noise [batch, time], lengths)``.
        lengths : torch.Tensor, None
            `[batch]` relative lengths of the utterances (default: all 1).

        Returns
        -------
        mix : torch.Tensor
            `[batch, time']`.
        targets : torch.Tensor
            `[batch, time', spks]`.
        lengths : torch.Tensor
            `[batch]` relative lengths in the new, cut signals.
        """
        batch = targets.shape[0]
        if lengths is None:
            lengths = torch.ones(batch, device=targets.device)
        lengths = lengths.to(targets.device).double()
        new = [
            self.hparams.speed_perturb(targets[:, :, i])
            for i in range(targets.shape[-1])
        ]
        min_len = min([targets.shape[1]] + [t.shape[-1] for t in new])
        # Absolute end of each utterance's signal: [batch]
        end = torch.stack([lengths * t.shape[-1] for t in new]).amax(0)
        targets = torch.stack([t[:, :min_len] for t in new], dim=-1)
        mix = targets.sum(-1)
        if noise is not None:
            noise, noise_lengths = noise
            noise = noise.to(self.device)
            noise_end = noise_lengths.to(end.device).double() * noise.shape[-1]
            end = torch.maximum(end, noise_end)
            min_len = min(min_len, noise.shape[-1])
            mix = mix[:, :min_len] + noise[:, :min_len]
            targets = targets[:, :min_len]
        new_lengths = (end.ceil() / min_len).clamp(max=1.0)
        return mix, targets, new_lengths.float()

    # ------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------
    def evaluate_batch(self, batch, stage):
        """Computes the validation/test loss; scores test utterances.

        Arguments
        ---------
        batch : PaddedBatch
            The batch.
        stage : sb.Stage
            ``Stage.VALID`` or ``Stage.TEST``.

        Returns
        -------
        torch.Tensor
            The mean loss of the batch.
        """
        mix, targets, _ = self._unpack(batch)
        with torch.no_grad(), self.evaluation_ctx:
            est, targets, lengths = self.compute_forward(mix, targets, stage)
        est = est.float()
        loss = self.compute_objectives(est, targets, lengths)
        if stage == sb.Stage.TEST:
            self._score_test_batch(batch.id, mix[0], est, targets, lengths)
        return loss.mean().detach().cpu()

    @property
    def extra_metrics(self):
        """The optional test metrics (hparams key ``extra_metrics``, e.g.
        ``--extra_metrics pesq,stoi``; default none), checked: a name that
        is unknown, a package that is missing or PESQ at a rate other than
        8 or 16 kHz is an error.

        Returns
        -------
        tuple of str
            E.g. ``("pesq", "stoi")``.
        """
        from speechbrain_s4m.metrics import extra_metric_names

        spec = getattr(self.hparams, "extra_metrics", None)
        rate = getattr(self.hparams, "sample_rate", None)
        return extra_metric_names(spec or None, rate)

    @property
    def result_columns(self):
        """Columns of ``test_results.csv``: ``snt_id``, the scores (with
        the extra metrics) and ``notes``."""
        from speechbrain_s4m.metrics import score_columns

        return ["snt_id"] + score_columns(self.extra_metrics) + ["notes"]

    def _score_test_batch(self, ids, mix, est, targets, lengths):
        """Per-utterance scores; saves the first audio files.

        Never fails on a bad utterance (silent reference, too short for
        SDR, PESQ or STOI): the metrics that are defined are kept, the
        others left empty with the reason in ``notes``, and a warning names
        the utterance.
        """
        from speechbrain_s4m.metrics import score_test_batch

        T = est.shape[1]
        mix = mix.to(est.device).float()
        scored = score_test_batch(
            est,
            targets.float(),
            mix,
            lengths,
            ids,
            sample_rate=getattr(self.hparams, "sample_rate", 8000),
            extra_metrics=self._extra_metrics,
        )
        for i, utt in enumerate(scored):
            self.test_scores.append(utt)
            if not utt.complete:
                logger.warning(
                    "Test utterance %s: some metrics are undefined (%s); "
                    "its row of test_results.csv has empty cells there.",
                    utt.snt_id,
                    "; ".join(utt.problems) or "non-finite value",
                )
            if self._audio_left > 0:
                n = max(1, int(round(float(lengths[i]) * T)))
                self.save_audio(ids[i], mix[i, :n], targets[i, :n], est[i, :n])
                self._audio_left -= 1

    @property
    def test_rows(self):
        """The rows of ``test_results.csv`` scored so far (without ``avg``):
        ``snt_id``, the scores (None where undefined) and ``notes``."""
        rows = []
        for utt in self.test_scores:
            row = utt.row()
            row["notes"] = "; ".join(utt.problems)
            rows.append(row)
        return rows

    def save_audio(self, snt_id, mix, targets, predictions):
        """Saves a test mixture, its sources and the estimates (peak-normalised)
        in ``<save_folder>/audio_results`` as in SpeechBrain's recipes.

        Arguments
        ---------
        snt_id : str
            Utterance id, used in the file names.
        mix : torch.Tensor
            `[time]`.
        targets : torch.Tensor
            `[time, spks]`.
        predictions : torch.Tensor
            `[time, spks]`.
        """
        if not if_main_process():
            return
        import soundfile as sf

        path = os.path.join(self.hparams.save_folder, "audio_results")
        os.makedirs(path, exist_ok=True)
        sr = self.hparams.sample_rate

        def write(name, signal):
            signal = signal.detach().float().cpu().numpy()
            peak = np.abs(signal).max()
            if peak > 0:
                signal = signal / peak * 0.99
            sf.write(os.path.join(path, name), signal, sr, subtype="PCM_16")

        for ns in range(predictions.shape[-1]):
            write(f"item{snt_id}_source{ns + 1}hat.wav", predictions[:, ns])
            write(f"item{snt_id}_source{ns + 1}.wav", targets[:, ns])
        write(f"item{snt_id}_mix.wav", mix)

    def on_fit_start(self):
        """SpeechBrain's set-up; checks ``lr_scheduler`` and
        ``extra_metrics`` before training (a scheduler this Brain would not
        apply, or a missing package, fails now, not after the last epoch)
        and the checkpoint to resume from (a corrupt file:
        :class:`~speechbrain_s4m.checkpoints.CorruptCheckpointError`)."""
        check_lr_scheduler(getattr(self.hparams, "lr_scheduler", None))
        # The checkpoint SpeechBrain resumes from (the newest): a file that
        # does not read is named now, not deep inside torch.load
        self._check_checkpoint(self._newest_checkpoint())
        super().on_fit_start()
        _ = self.extra_metrics

    def on_stage_start(self, stage, epoch=None):
        """Resets the per-stage counters and the test results; stops
        before the epoch when a signal asked for it (see :meth:`fit`)."""
        self._stage = stage
        if stage == sb.Stage.TRAIN:
            stop = self._shared_stop_signal()
            if stop:  # the last checkpoint holds everything trained
                raise TrainingInterrupted(
                    stop,
                    self._newest_checkpoint(),
                    f"the start of epoch {epoch}",
                )
            if self.step == 0:  # not resuming inside the epoch
                self.skipped_batches = 0
                self.counted_batches = 0
                self.train_samples = 0
            self._epoch_start = time.perf_counter()
        if stage == sb.Stage.TEST:
            self.test_scores = []
            self._extra_metrics = self.extra_metrics
            self._audio_left = 0
            if getattr(self.hparams, "save_audio", False):
                self._audio_left = getattr(
                    self.hparams, "n_audio_to_save", math.inf
                )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, anneals the learning rate, checkpoints, writes results.

        The logged quantity is ``loss``: the training objective, i.e. the
        negative SI-SNR in dB (``valid loss: -12.3`` is an SI-SNR of 12.3
        dB). Each epoch line also has the learning rates (``lr`` of the
        main group, ``lr_ssm`` of the S4 parameters when it differs), the
        training batches skipped, the epoch's training time in seconds and
        the training mixtures per second. The checkpoints keep the meta key
        ``si-snr`` (the same negative SI-SNR, best = min) that the recipe,
        ``s4m-export`` and older checkpoints use.
        """
        stage_stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            elapsed = time.perf_counter() - (
                self._epoch_start or time.perf_counter()
            )
            samples = self.train_samples
            if is_distributed_initialized():
                t = torch.tensor([float(samples)], device=self.device)
                torch.distributed.all_reduce(t)
                samples = int(t.item())
            stage_stats["skipped"] = self.skipped_batches
            stage_stats["time"] = elapsed
            stage_stats["samples_per_s"] = (
                samples / elapsed if elapsed > 0 else math.nan
            )
            self.train_stats = stage_stats
            if self.skipped_batches and self.counted_batches:
                logger.warning(
                    "Epoch %s: %d training batches skipped; the train loss "
                    "is the mean over the %d that counted.",
                    epoch,
                    self.skipped_batches,
                    self.counted_batches,
                )
            elif self.skipped_batches:
                logger.warning(
                    "Epoch %s: every training batch (%d) was skipped; the "
                    "train loss is undefined (logged as nan) and the weights "
                    "did not change.",
                    epoch,
                    self.skipped_batches,
                )

        elif stage == sb.Stage.VALID:
            rates = learning_rates(self.optimizer)
            scheduler = getattr(self.hparams, "lr_scheduler", None)
            if isinstance(scheduler, ReduceLROnPlateau):
                current_lr, next_lr = scheduler(
                    [self.optimizer], epoch, stage_loss
                )
                scale_learning_rates(self.optimizer, next_lr / current_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **rates},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stage_stats,
            )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={"si-snr": stage_loss}, min_keys=["si-snr"]
                )

        elif stage == sb.Stage.TEST:
            summary = self.write_results()
            self.test_summary = summary
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stage_stats,
            )

    def write_results(self):
        """Writes ``<output_folder>/test_results.csv`` (one row per test
        utterance and an ``avg`` row) and logs the averages.

        A metric undefined for an utterance is an empty cell (the reason in
        ``notes``); each column of the ``avg`` row is the mean over the
        utterances where it is defined, and its ``notes`` say how many
        utterances were not fully scored.

        Returns
        -------
        dict
            The ``avg`` row: the mean of each score column (NaN where no
            utterance was scored), ``n`` (test utterances) and
            ``n_incomplete`` (utterances with an undefined metric).
        """
        from speechbrain_s4m.metrics import average_scores, score_columns

        columns = ["snt_id", *score_columns(self._extra_metrics), "notes"]
        scores = columns[1:-1]
        avg, n_scored = average_scores(self.test_scores, scores)
        n = len(self.test_scores)
        incomplete = [u.snt_id for u in self.test_scores if not u.complete]
        note = "mean over the utterances where each metric is defined"
        if incomplete:
            note += f"; {len(incomplete)} of {n} utterances not fully scored"
        avg["notes"] = note
        if if_main_process():
            path = os.path.join(self.hparams.output_folder, "test_results.csv")
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.test_rows)
                writer.writerow(avg)
            logger.info("Test results written to %s", path)

        def fmt(key, unit=" dB"):
            value = avg.get(key)
            return "n/a" if value is None else f"{value:.2f}{unit}"

        text = (
            f"SI-SNR {fmt('si-snr')}, SI-SNRi {fmt('si-snr_i')}, "
            f"SDR {fmt('sdr')}, SDRi {fmt('sdr_i')}"
        )
        for name in self._extra_metrics:
            text += f", {name.upper()} {fmt(name, '')}"
            text += f" ({name.upper()}i {fmt(name + '_i', '')})"
        logger.info("Test (%d utterances): %s", n, text)
        if incomplete:
            shown = ", ".join(incomplete[:10])
            more = (
                f" and {len(incomplete) - 10} more"
                if len(incomplete) > 10
                else ""
            )
            logger.warning(
                "%d of %d test utterances could not be scored on every "
                "metric (%s%s): their empty cells are left out of the "
                "averages (scored per metric: %s).",
                len(incomplete),
                n,
                shown,
                more,
                ", ".join(f"{k} {v}" for k, v in n_scored.items()),
            )
        summary = {
            k: (math.nan if v is None else v)
            for k, v in avg.items()
            if k in scores
        }
        summary.update(n=n, n_incomplete=len(incomplete))
        return summary

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the best checkpoint; fails clearly if there is none or if
        one of its files does not read."""
        if self.checkpointer is not None:
            ckpt = self.checkpointer.find_checkpoint(
                max_key=max_key, min_key=min_key
            )
            if ckpt is None:
                raise NoCheckpointError(
                    "No checkpoint to evaluate in "
                    f"'{self.checkpointer.checkpoints_dir}' with "
                    f"'{min_key or max_key}' in its meta: train first "
                    "(without --test_only), or point --output_folder at a "
                    "trained experiment."
                )
            self._check_checkpoint(ckpt.path)
        super().on_evaluate_start(max_key=max_key, min_key=min_key)

    def _check_checkpoint(self, path):
        """Names the first unreadable file of the checkpoint ``path`` (see
        :func:`~speechbrain_s4m.checkpoints.check_checkpoint_files`)."""
        from speechbrain_s4m.checkpoints import check_checkpoint_files

        if path is not None:
            check_checkpoint_files(path)

    def _unpack(self, batch):
        """Returns ``(mix_sig, [s1_sig, ...], noise_sig or None)``."""
        targets = [
            getattr(batch, f"s{i + 1}_sig")
            for i in range(self.hparams.num_spks)
        ]
        # The datasets provide noise_sig exactly when the mixtures are noisy
        # (manifest column noise_wav, or a dynamic-mixing noise folder);
        # PaddedBatch has no membership test, hence hasattr
        noise = batch.noise_sig if hasattr(batch, "noise_sig") else None
        return batch.mix_sig, targets, noise


def _worker_ignoring_stop_signals(init_fn, worker_id):
    """A data loader worker's start: ignore :data:`STOP_SIGNALS` (the main
    process decides when to stop), then the loader's own ``init_fn``."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if init_fn is not None:
        init_fn(worker_id)


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

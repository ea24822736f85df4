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
  length of each utterance), and training can skip a batch on every replica
  at once (loss thresholding, ``loss_upper_lim``, non-finite losses or
  gradients) without desynchronising DDP or touching the weights;
* gradient clipping covers every parameter group (the SSM parameters may sit
  in their own group with their own learning rate), and learning-rate
  annealing scales every group by the same factor;
* the test set is read once: per-utterance SI-SNR(i) and SDR(i) are computed
  while evaluating, written to ``<output_folder>/test_results.csv`` (with an
  ``avg`` row), and the best checkpoint must exist (``--test_only`` on an
  empty output folder is an error, not a score of random weights).

Authors
 * speechbrain-s4m contributors 2026
"""

import csv
import importlib
import logging
import math
import os

import numpy as np
import speechbrain as sb
import torch
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
from speechbrain_s4m.training_curve import parse_train_log as parse_train_log
from speechbrain_s4m.training_curve import (
    plot_training_curve as plot_training_curve,
)

logger = get_logger(__name__)

__all__ = [
    "NoCheckpointError",
    "RESULT_COLUMNS",
    "Separation",
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


RESULT_COLUMNS = ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]


class NoCheckpointError(FileNotFoundError):
    """Raised when evaluation finds no checkpoint to load."""


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
    ``save_audio`` and ``n_audio_to_save``. Batches carry ``id``,
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
    _audio_left = 0  # test utterances whose audio is still to be saved

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
            `[batch]`, relative lengths of the utterances.
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
                mix, targets = self.add_speed_perturb(targets, noise)

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

        Arguments
        ---------
        batch : PaddedBatch
            The batch.

        Returns
        -------
        torch.Tensor
            The training loss of the batch (NaN if the batch was skipped,
            which keeps it out of the running average).
        """
        mix, targets, noise = self._unpack(batch)
        should_step = self.step % self.grad_accumulation_factor == 0

        with self.no_sync(not should_step):
            with self.training_ctx:
                est, targets, lengths = self.compute_forward(
                    mix, targets, sb.Stage.TRAIN, noise
                )
            loss = self.compute_objectives(est, targets, lengths)  # [batch]
            loss, reason = self._select_loss(loss)
            skip = self._any_replica(reason is not None)
            if skip:
                if reason == "non-finite loss":
                    self.nonfinite_count += 1
                self.skipped_batches += 1
                # Thresholded batches are routine late in training
                routine = reason is not None and "threshold" in reason
                logger.log(
                    logging.INFO if routine else logging.WARNING,
                    "Skipping a training batch (%s); %d skipped this epoch.",
                    reason or "skipped on another replica",
                    self.skipped_batches,
                )
            else:
                self.scaler.scale(
                    loss / self.grad_accumulation_factor
                ).backward()

        if should_step:
            self._optimizer_step()

        if skip:
            return torch.tensor(float("nan"))
        return loss.detach().cpu()

    def _select_loss(self, loss):
        """Applies loss thresholding and the sanity limits.

        Returns the scalar loss to optimise and the reason to skip the batch
        (None when the batch is used).
        """
        if not torch.isfinite(loss).all():
            return loss.mean(), "non-finite loss"
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

    def _any_replica(self, flag):
        """True if ``flag`` is True on any DDP replica (``flag`` otherwise)."""
        if not is_distributed_initialized():
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _optimizer_step(self):
        """Unscales, clips (all parameter groups) and steps the optimizer.

        If the gradient norm is not finite the update is skipped (with fp16
        the GradScaler does it and lowers its scale; otherwise we do), so
        the weights are never corrupted. After a DDP all-reduce the
        gradients, hence the decision, are identical on all replicas.
        """
        params = [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not params:  # every micro-batch since the last step was skipped
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.scaler.unscale_(self.optimizer)
        max_norm = getattr(self.hparams, "clip_grad_norm", None)
        if max_norm is None:
            max_norm = self.max_grad_norm
        if max_norm is None or max_norm <= 0:
            max_norm = float("inf")  # only measure the norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = bool(torch.isfinite(norm))
        if finite or self.scaler.is_enabled():
            # With fp16 the scaler skips non-finite steps and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if finite:
            self.optimizer_step += 1
        elif not self.scaler.is_enabled():
            self.nonfinite_count += 1
            self.skipped_batches += 1
            logger.warning(
                "Non-finite gradient norm: update skipped (%d so far).",
                self.skipped_batches,
            )
        self.optimizer.zero_grad(set_to_none=True)

    def add_speed_perturb(self, targets, noise=None):
        """Speed-perturbs each source independently and re-mixes them.

        As in SpeechBrain's recipes: each source gets its own random speed
        (``hparams.speed_perturb``, a
        :class:`speechbrain.augment.time_domain.SpeedPerturb`), the sources
        are cut to the shortest one and summed, and for noisy datasets the
        noise is added back. A slower source is longer: the sources are also
        cut to the batch's length, so that the perturbation never lengthens
        the (cropped) training signals.

        Arguments
        ---------
        targets : torch.Tensor
            `[batch, time, spks]`.
        noise : tuple, None
            ``(noise [batch, time], lengths)``.

        Returns
        -------
        mix : torch.Tensor
            `[batch, time']`.
        targets : torch.Tensor
            `[batch, time', spks]`.
        """
        new = [
            self.hparams.speed_perturb(targets[:, :, i])
            for i in range(targets.shape[-1])
        ]
        min_len = min([targets.shape[1]] + [t.shape[-1] for t in new])
        targets = torch.stack([t[:, :min_len] for t in new], dim=-1)
        mix = targets.sum(-1)
        if noise is not None:
            noise = noise[0].to(self.device)
            min_len = min(min_len, noise.shape[-1])
            mix = mix[:, :min_len] + noise[:, :min_len]
            targets = targets[:, :min_len]
        return mix, targets

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

    def _score_test_batch(self, ids, mix, est, targets, lengths):
        """Per-utterance SDR(i), SI-SNR(i); saves the first audio files."""
        from speechbrain_s4m.metrics import separation_scores

        T = est.shape[1]
        mix = mix.to(est.device).float()
        scores = separation_scores(est, targets.float(), mix, lengths, ids)
        for i, snt_id in enumerate(ids):
            row = {"snt_id": snt_id}
            for key in RESULT_COLUMNS[1:]:
                row[key] = float(scores[key][i])
            self.test_rows.append(row)
            if self._audio_left > 0:
                n = max(1, int(round(float(lengths[i]) * T)))
                self.save_audio(snt_id, mix[i, :n], targets[i, :n], est[i, :n])
                self._audio_left -= 1

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

    def on_stage_start(self, stage, epoch=None):
        """Resets the per-stage counters and the test results."""
        if stage == sb.Stage.TRAIN:
            self.skipped_batches = 0
        if stage == sb.Stage.TEST:
            self.test_rows = []
            self._audio_left = 0
            if getattr(self.hparams, "save_audio", False):
                self._audio_left = getattr(
                    self.hparams, "n_audio_to_save", math.inf
                )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, anneals the learning rate, checkpoints, writes results."""
        stage_stats = {"si-snr": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            if self.skipped_batches:
                logger.warning(
                    "Epoch %s: %d training batches skipped.",
                    epoch,
                    self.skipped_batches,
                )

        elif stage == sb.Stage.VALID:
            current_lr = self.optimizer.param_groups[0]["lr"]
            scheduler = getattr(self.hparams, "lr_scheduler", None)
            if isinstance(scheduler, ReduceLROnPlateau):
                current_lr, next_lr = scheduler(
                    [self.optimizer], epoch, stage_loss
                )
                scale_learning_rates(self.optimizer, next_lr / current_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": current_lr},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stage_stats,
            )
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

        Returns
        -------
        dict
            The ``avg`` row: mean ``sdr``, ``sdr_i``, ``si-snr``, ``si-snr_i``.
        """
        avg = {"snt_id": "avg"}
        for key in RESULT_COLUMNS[1:]:
            values = [row[key] for row in self.test_rows]
            avg[key] = float(np.mean(values)) if values else float("nan")
        if if_main_process():
            path = os.path.join(self.hparams.output_folder, "test_results.csv")
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
                writer.writeheader()
                writer.writerows(self.test_rows)
                writer.writerow(avg)
            logger.info("Test results written to %s", path)
        logger.info(
            "Test (%d utterances): SI-SNR %.2f dB, SI-SNRi %.2f dB, "
            "SDR %.2f dB, SDRi %.2f dB",
            len(self.test_rows),
            avg["si-snr"],
            avg["si-snr_i"],
            avg["sdr"],
            avg["sdr_i"],
        )
        return avg

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the best checkpoint; fails clearly if there is none."""
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
        super().on_evaluate_start(max_key=max_key, min_key=min_key)

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

"""The SpeechBrain ``Brain`` shared by all separation recipes.

One class, :class:`Separation`, trains and evaluates any
encoder / masking network / decoder separator (S4M, Sepformer, ...) built
from a recipe's hparams file, and :func:`run_recipe` is everything a
recipe's ``train.py`` does (parse arguments, prepare the data, build the
datasets, train, evaluate, plot), so that the recipes stay a few lines long.

Differences from SpeechBrain's own separation recipes (on purpose):

* the forward pass goes through ``self.modules.*`` (the DDP-wrapped
  modules), so that multi-GPU replicas really synchronise;
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
import logging
import math
import os
import re
import sys

import numpy as np
import ruamel.yaml
import speechbrain as sb
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.schedulers import ReduceLROnPlateau
from speechbrain.utils.distributed import (
    if_main_process,
    is_distributed_initialized,
    run_on_main,
)
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

RESULT_COLUMNS = ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]


class NoCheckpointError(FileNotFoundError):
    """Raised when evaluation finds no checkpoint to load."""


def separate_batch(mix, encoder, masknet, decoder, num_spks):
    """Separates a batch of mixtures with an encoder/masknet/decoder model.

    SpeechBrain's forward: ``mix_w = encoder(mix)``, masks from the masking
    network, each source's masked representation decoded by the (shared)
    decoder, and the output padded or cropped to the mixture's length. The
    sources are decoded in one call (folded into the batch), which gives
    the same result as one decoder call per source.

    Arguments
    ---------
    mix : torch.Tensor
        Mixtures, `[batch, time]`.
    encoder : torch.nn.Module
        `[batch, time]` -> `[batch, channels, frames]`.
    masknet : torch.nn.Module
        `[batch, channels, frames]` -> `[num_spks, batch, channels, frames]`.
    decoder : torch.nn.Module
        `[batch, channels, frames]` -> `[batch, time']`.
    num_spks : int
        Number of sources the masking network estimates.

    Returns
    -------
    torch.Tensor
        Estimated sources, `[batch, time, num_spks]`.

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> enc = Encoder(kernel_size=16, out_channels=8)
    >>> dec = Decoder(8, 1, kernel_size=16, stride=8, bias=False)
    >>> masknet = lambda w: torch.stack([torch.sigmoid(w)] * 2)
    >>> separate_batch(torch.randn(3, 1000), enc, masknet, dec, 2).shape
    torch.Size([3, 1000, 2])
    """
    mix_w = encoder(mix)  # [batch, channels, frames]
    est_mask = masknet(mix_w)  # [spks, batch, channels, frames]
    if est_mask.shape[0] != num_spks:
        raise ValueError(
            f"The masking network returned {est_mask.shape[0]} masks but "
            f"num_spks is {num_spks}."
        )
    sep_h = mix_w.unsqueeze(0) * est_mask  # [spks, batch, channels, frames]
    spks, batch = sep_h.shape[:2]
    est = decoder(sep_h.reshape(spks * batch, *sep_h.shape[2:]))
    est = est.reshape(spks, batch, -1).permute(1, 2, 0)  # [batch, time', spks]

    # The decoder output may be shorter or longer than the mixture
    T_origin, T_est = mix.shape[-1], est.shape[1]
    if T_origin > T_est:
        est = F.pad(est, (0, 0, 0, T_origin - T_est))
    else:
        est = est[:, :T_origin, :]
    return est


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
    ``mix_sig``, ``s1_sig`` ... ``s<num_spks>_sig`` and optionally
    ``noise_sig`` (used to re-mix after speed perturbation).

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
        return separate_batch(
            mix,
            self.modules.encoder,
            self.modules.masknet,
            self.modules.decoder,
            self.hparams.num_spks,
        )

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
            With ``Stage.TRAIN`` the training-time distortions are applied
            (speed perturbation and re-mixing, signal-length limit).
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

        if stage == sb.Stage.TRAIN:
            with torch.no_grad():
                if getattr(self.hparams, "use_speedperturb", False):
                    mix, targets = self.add_speed_perturb(targets, noise)
                if getattr(self.hparams, "limit_training_signal_len", False):
                    mix, targets, lengths = self.cut_signals(
                        mix, targets, lengths
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
        noise is added back.

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
        min_len = min(t.shape[-1] for t in new)
        targets = torch.stack([t[:, :min_len] for t in new], dim=-1)
        mix = targets.sum(-1)
        if noise is not None:
            noise = noise[0].to(self.device)
            min_len = min(min_len, noise.shape[-1])
            mix = mix[:, :min_len] + noise[:, :min_len]
            targets = targets[:, :min_len]
        return mix, targets

    def cut_signals(self, mix, targets, lengths):
        """Selects a random segment of ``training_signal_len`` samples.

        Arguments
        ---------
        mix : torch.Tensor
            `[batch, time]`.
        targets : torch.Tensor
            `[batch, time, spks]`.
        lengths : torch.Tensor
            `[batch]` relative lengths.

        Returns
        -------
        mix, targets, lengths
            The cut signals and their new relative lengths.
        """
        seg = int(self.hparams.training_signal_len)
        T = mix.shape[1]
        if T <= seg:
            return mix, targets, lengths
        # Start inside the shortest utterance so that no item is all padding
        shortest = int(torch.min(lengths).item() * T)
        start = int(torch.randint(0, 1 + max(0, shortest - seg), (1,)))
        mix = mix[:, start : start + seg]
        targets = targets[:, start : start + seg]
        valid = (lengths * T - start).clamp(min=1, max=mix.shape[1])
        return mix, targets, valid / mix.shape[1]

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
        return batch.mix_sig, targets, getattr(batch, "noise_sig", None)


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


# ----------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------
#: hparams passed to each dataset's preparation function (when present).
PREPARE_KEYS = {
    "wsj0mix": ("num_spks", "sample_rate", "mode"),
    "librimix": ("num_spks", "sample_rate", "mode", "mixture", "train_set"),
    "wham": ("num_spks", "sample_rate", "mode", "mixture"),
}


def prepare_data(hparams, dataset):
    """Checks ``data_folder`` and writes the manifests (main process only).

    Arguments
    ---------
    hparams : dict
        The recipe's hyperparameters (``data_folder``, ``save_folder``,
        ``skip_prep`` and the dataset's options).
    dataset : str
        ``wsj0mix``, ``librimix`` or ``wham``.
    """
    from speechbrain_s4m.data import prepare_dataset

    if hparams.get("skip_prep", False):
        return
    kwargs = {k: hparams[k] for k in PREPARE_KEYS[dataset] if k in hparams}
    run_on_main(
        prepare_dataset,
        args=[dataset, hparams["data_folder"], hparams["save_folder"]],
        kwargs=kwargs,
    )


def run_recipe(argv=None, dataset=None, before_prepare=None, brain_class=None):
    """Runs a separation recipe: what every recipe's ``train.py`` does.

    1. parse ``argv`` (``hparams.yaml --key value ...`` plus SpeechBrain's
       run options: ``--device``, ``--precision``, ``--test_only``,
       ``--distributed_backend``, ``--debug`` ...) and load the hparams
       (override keys are checked, also inside included model fragments);
    2. initialise DDP when launched with ``torchrun``;
    3. create the output folder (``hyperparams.yaml``, ``log.txt``);
    4. check the dataset folder and write the manifests (main process);
    5. build the datasets (static or dynamic mixing);
    6. train (unless ``--test_only``), resuming from the last checkpoint;
    7. evaluate the best checkpoint (``min_key="si-snr"``) on the test set,
       writing ``test_results.csv``, and plot ``training_curve.png``;
    8. under DDP, end the process group (all ranks together).

    Arguments
    ---------
    argv : list of str, None
        Command-line arguments (default ``sys.argv[1:]``).
    dataset : str, None
        ``wsj0mix``, ``librimix`` or ``wham``; default: the hparams key
        ``dataset``.
    before_prepare : callable, None
        Called as ``before_prepare(hparams)`` on the main process before
        data preparation (the SynthMix recipe writes its data there).
    brain_class : type, None
        A subclass of :class:`Separation` to use instead.

    Returns
    -------
    Separation
        The brain, with ``test_summary`` (the ``avg`` row of the results)
        and ``datasets`` (``{"train": ..., "valid": ..., "test": ...}``).
    """
    from speechbrain_s4m.data.dataio import datasets_from_hparams

    argv = sys.argv[1:] if argv is None else list(argv)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams = load_hparams(hparams_file, overrides)
    dataset = dataset or hparams.get("dataset")
    if dataset not in PREPARE_KEYS:
        raise ValueError(
            f"unknown dataset {dataset!r}; choose one of "
            + ", ".join(PREPARE_KEYS)
        )
    if hparams.get("dataset", dataset) != dataset:
        raise ValueError(
            f"{hparams_file} is for dataset {hparams['dataset']!r}, but this "
            f"recipe is for {dataset!r}: use the hparams of this recipe."
        )
    # Speed perturbation re-mixes the sources: noisy mixtures need the noise
    if hparams.get("use_speedperturb") and _noisy(hparams):
        hparams["use_wham_noise"] = True

    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    _resolve_precision(hparams, run_opts)

    if hparams.get("dynamic_mixing", False):
        _check_dynamic_mixing_folders(hparams)

    if before_prepare is not None:
        run_on_main(before_prepare, args=[hparams])
    prepare_data(hparams, dataset)
    train_data, valid_data, test_data = datasets_from_hparams(hparams)
    if hparams.get("dynamic_mixing", False):
        train_data = dynamic_mixing_train_set(hparams, dataset, len(train_data))

    brain = (brain_class or Separation)(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.datasets = {
        "train": train_data,
        "valid": valid_data,
        "test": test_data,
    }
    loader_opts = dict(hparams["dataloader_opts"])
    train_opts = dict(loader_opts)
    if hparams.get("sorting", "random") == "random" and not isinstance(
        train_data, torch.utils.data.IterableDataset
    ):
        train_opts["shuffle"] = True
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_opts,
        valid_loader_kwargs=loader_opts,
    )
    test_opts = dict(hparams.get("test_dataloader_opts", loader_opts))
    brain.evaluate(test_data, min_key="si-snr", test_loader_kwargs=test_opts)

    if if_main_process():
        png = plot_training_curve(
            hparams["train_log"],
            os.path.join(hparams["output_folder"], "training_curve.png"),
            title=hparams.get("experiment_name"),
        )
        if png:
            logger.info("Training curve: %s", png)
    if is_distributed_initialized():
        # Leave together; exiting with a live gloo group can abort a rank
        sb.utils.distributed.ddp_barrier()
        torch.distributed.destroy_process_group()
    return brain


def _noisy(hparams):
    """Whether the mixtures hold noise (WHAM!/LibriMix ``both``/``single``)."""
    return hparams.get("mixture") in ("both", "single")


def _check_dynamic_mixing_folders(hparams):
    """Fails before any work if a dynamic-mixing folder is missing."""
    from speechbrain_s4m.data import DatasetLayoutError

    needed = {"base_folder_dm": "the single-speaker source folder"}
    if _noisy(hparams):
        needed["noise_folder_dm"] = "the noise folder (noisy mixtures)"
    for key, what in needed.items():
        folder = hparams.get(key)
        if not folder or not os.path.isdir(folder):
            raise DatasetLayoutError(
                f"--dynamic_mixing needs --{key} pointing at {what}; got "
                f"{folder!r}, which is not a folder."
            )


def dynamic_mixing_train_set(hparams, dataset, num_mixtures):
    """The training set of dynamic mixing: new mixtures every epoch from the
    single-speaker sources in ``base_folder_dm`` (wsj0 ``si_tr_s`` for
    WSJ0-mix and WHAM!, LibriSpeech for LibriMix), plus noise from
    ``noise_folder_dm`` for noisy mixtures.

    Arguments
    ---------
    hparams : dict
        The recipe's hyperparameters.
    dataset : str
        ``wsj0mix``, ``librimix`` or ``wham``.
    num_mixtures : int
        Mixtures per epoch (the size of the static training set).

    Returns
    -------
    DynamicItemDataset
        Items ``{"id", "mix_sig", "s1_sig", ...[, "noise_sig"]}``.
    """
    from speechbrain_s4m.data.dataio import dynamic_mixing_dataset

    crop = None
    if hparams.get("limit_training_signal_len", False):
        crop = int(hparams["training_signal_len"])
    return dynamic_mixing_dataset(
        hparams["base_folder_dm"],
        num_spks=hparams["num_spks"],
        sample_rate=hparams["sample_rate"],
        training_signal_len=crop,
        source_format="librispeech" if dataset == "librimix" else "wsj0",
        noise_folder=hparams.get("noise_folder_dm")
        if _noisy(hparams)
        else None,
        num_mixtures=num_mixtures,
    )


def main(dataset=None, argv=None, before_prepare=None):
    """Command-line entry of the recipes: :func:`run_recipe`, with a one-line
    error (exit status 2) for a wrong dataset folder or a missing
    checkpoint instead of a traceback.

    Arguments
    ---------
    dataset : str, None
        See :func:`run_recipe`.
    argv : list of str, None
        See :func:`run_recipe`.
    before_prepare : callable, None
        See :func:`run_recipe`.

    Returns
    -------
    Separation
        The brain.
    """
    from speechbrain_s4m.data import DatasetLayoutError

    try:
        return run_recipe(argv, dataset, before_prepare)
    except (DatasetLayoutError, NoCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _resolve_precision(hparams, run_opts):
    """fp16 on a CPU becomes bf16 (as in SpeechBrain's recipes)."""
    device = run_opts.get("device") or sb.utils.distributed.infer_device()
    on_cli = "precision" in run_opts.overridden_args
    precision = run_opts.precision if on_cli else hparams.get("precision")
    if str(device).startswith("cpu") and precision == "fp16":
        logger.warning("fp16 is not supported on CPU: using bf16 instead.")
        hparams["precision"] = "bf16"
        if on_cli:
            run_opts.precision = "bf16"


# ----------------------------------------------------------------------
# Hyperparameters
# ----------------------------------------------------------------------
def load_hparams(hparams_file, overrides=None):
    """Loads a recipe's hparams file with overrides, checking every
    override key (nested ones too) against the file.

    Model fragments are included with ``!include:`` (e.g. ``model:
    !include:.../s4m_tiny.yaml``); an override such as ``--model
    "{num_iterations: 1}"`` is passed into the included file and its keys
    are checked against that file. HyperPyYAML alone would accept a
    misspelt nested key silently.

    Arguments
    ---------
    hparams_file : str
        Path of the yaml file.
    overrides : str, dict, None
        Overrides (a yaml string as returned by ``sb.parse_arguments``).

    Returns
    -------
    dict
        The loaded hyperparameters.
    """
    parsed = overrides
    if isinstance(overrides, str):
        parsed = ruamel.yaml.YAML().load(overrides)
    check_overrides(hparams_file, parsed or {})
    with open(hparams_file, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides, overrides_must_match=False)


def check_overrides(yaml_file, overrides):
    """Raises ``KeyError`` naming any override key absent from ``yaml_file``
    (following ``!include:`` tags into the included files).

    Arguments
    ---------
    yaml_file : str
        The yaml file the overrides apply to.
    overrides : dict
        The overrides.
    """
    with open(yaml_file, encoding="utf-8") as f:
        tree = ruamel.yaml.YAML().load(f)
    _check_keys(tree, overrides, "", yaml_file)


def _check_keys(node, overrides, prefix, yaml_file):
    for key, value in overrides.items():
        if not isinstance(node, dict) or key not in node:
            known = ", ".join(str(k) for k in node) if node else ""
            raise KeyError(
                f"Override '{prefix}{key}' does not match any key of "
                f"{yaml_file}" + (f" (keys: {known})" if known else "")
            )
        sub = node[key]
        if not isinstance(value, dict):
            continue
        tag = getattr(getattr(sub, "tag", None), "value", None) or ""
        if tag.startswith("!include:"):
            included = os.path.normpath(
                os.path.join(
                    os.path.dirname(os.path.realpath(yaml_file)),
                    tag[len("!include:") :],
                )
            )
            with open(included, encoding="utf-8") as f:
                inc_tree = ruamel.yaml.YAML().load(f)
            _check_keys(inc_tree, value, f"{prefix}{key}.", included)
        elif isinstance(sub, dict):
            _check_keys(sub, value, f"{prefix}{key}.", yaml_file)


# ----------------------------------------------------------------------
# Training curve
# ----------------------------------------------------------------------
_NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf)"


def parse_train_log(train_log):
    """Reads the per-epoch losses from a SpeechBrain ``train_log.txt``.

    Arguments
    ---------
    train_log : str
        Path of the log written by ``FileTrainLogger``.

    Returns
    -------
    dict
        ``{"epoch": [...], "lr": [...], "train": [...], "valid": [...]}``
        (losses are negative SI-SNR in dB), the last line of each epoch
        winning (a resumed epoch is logged again).

    Example
    -------
    >>> import tempfile
    >>> log = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> with open(log, "w") as f:
    ...     for epoch, loss in [(1, 2.5), (2, -2.0)]:
    ...         _ = f.write(
    ...             f"epoch: {epoch}, lr: 1.00e-03 - train si-snr: 3.10"
    ...             f" - valid si-snr: {loss}\\n"
    ...         )
    >>> parse_train_log(log)["valid"]
    [2.5, -2.0]
    """
    rows = {}
    pattern = re.compile(
        rf"epoch: (\d+), lr: {_NUMBER} - train si-snr: {_NUMBER}"
        rf" - valid si-snr: {_NUMBER}"
    )
    with open(train_log, encoding="utf-8") as f:
        for line in f:
            m = pattern.search(line)
            if m:
                rows[int(m.group(1))] = [float(g) for g in m.groups()[1:]]
    epochs = sorted(rows)
    return {
        "epoch": epochs,
        "lr": [rows[e][0] for e in epochs],
        "train": [rows[e][1] for e in epochs],
        "valid": [rows[e][2] for e in epochs],
    }


def plot_training_curve(train_log, png_path, title=None):
    """Plots train/valid loss (negative SI-SNR, dB) per epoch to a PNG.

    Arguments
    ---------
    train_log : str
        The recipe's ``train_log.txt``.
    png_path : str
        Where to write the figure.
    title : str, None
        Figure title.

    Returns
    -------
    str, None
        ``png_path``, or None when the log holds no epoch yet.
    """
    curve = parse_train_log(train_log)
    if not curve["epoch"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["epoch"], curve["train"], "o-", label="train")
    ax.plot(curve["epoch"], curve["valid"], "s-", label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss = negative SI-SNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path

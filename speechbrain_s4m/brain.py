"""The SpeechBrain ``Brain`` shared by all separation recipes.

:class:`Separation` trains and evaluates any encoder / masking network /
decoder separator (S4M, Sepformer, ...) built from a recipe's hparams file,
in the shape of SpeechBrain's ``recipes/WSJ0Mix/separation/train.py``:
``compute_forward``, ``compute_objectives``, speed perturbation and the
``on_stage_*`` hooks. Its forward is a
:class:`~speechbrain_s4m.lobes.separator.Separator` (the module inference
and the benchmark run too), its loss the recipe's ``loss``. Three mixins
override SpeechBrain's training hooks, each in its own module
(:mod:`speechbrain_s4m.training`): DDP-consistent skipping and stepping,
stopping on SIGINT / SIGTERM with a checkpoint, and the epoch timer with
speed and expected time. The test scores and ``test_results.csv`` are a
:class:`~speechbrain_s4m.results.TestReport`.

What it does differently from SpeechBrain's recipes (DDP that really
synchronises, masked SI-SNR, consistent skipping, clipping and annealing of
every parameter group, never-failing test scoring, a required checkpoint)
is listed in ``docs/training.md``; each place says so in a comment.

Authors
 * speechbrain-s4m contributors 2026
"""

import math
import os

import numpy as np
import speechbrain as sb
import torch
from speechbrain.nnet.schedulers import ReduceLROnPlateau
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_s4m.checkpoints import check_checkpoint_files
from speechbrain_s4m.lobes.separator import Separator
from speechbrain_s4m.metrics import extra_metric_names, score_test_batch
from speechbrain_s4m.nnet.schedulers import (
    check_lr_scheduler,
    learning_rates,
    scale_learning_rates,
)
from speechbrain_s4m.results import RESULTS_FILE, TestReport
from speechbrain_s4m.training.progress import ProgressReport
from speechbrain_s4m.training.signals import StopOnSignals
from speechbrain_s4m.training.steps import ConsistentSteps, over_replicas

logger = get_logger(__name__)

__all__ = ["NoCheckpointError", "Separation"]


class NoCheckpointError(FileNotFoundError):
    """Raised when evaluation finds no checkpoint to load."""


class Separation(ProgressReport, StopOnSignals, ConsistentSteps, sb.Brain):
    """Brain for time-domain masking separators (S4M, Sepformer, ...).

    Expects the hparams of a separation recipe: ``modules`` with
    ``encoder``, ``masknet`` and ``decoder``; ``num_spks``; ``loss`` (a
    callable ``loss(estimate, target, lengths) -> (loss [batch], perm)``
    such as :func:`speechbrain_s4m.losses.pit_si_snr_loss`);
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

    _audio_left = 0  # test utterances whose audio is still to be saved

    # ------------------------------------------------------------------
    # Forward and objectives
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

    def training_losses(self, batch):
        """The per-utterance training loss `[batch]` of ``batch`` (what
        :meth:`ConsistentSteps.fit_batch` optimises or skips)."""
        mix, targets, noise = self._unpack(batch)
        with self.training_ctx:
            est, targets, lengths = self.compute_forward(
                mix, targets, sb.Stage.TRAIN, noise
            )
        return self.compute_objectives(est, targets, lengths)

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
        spec = getattr(self.hparams, "extra_metrics", None)
        rate = getattr(self.hparams, "sample_rate", None)
        return extra_metric_names(spec or None, rate)

    def _score_test_batch(self, ids, mix, est, targets, lengths):
        """Adds the batch's per-utterance scores to the test report (never
        failing on a bad utterance); saves the first audio files."""
        T = est.shape[1]
        mix = mix.to(est.device).float()
        self.test_report.add(
            score_test_batch(
                est,
                targets.float(),
                mix,
                lengths,
                ids,
                sample_rate=getattr(self.hparams, "sample_rate", 8000),
                extra_metrics=self.test_report.extra_metrics,
            )
        )
        for i in range(len(ids)):
            if self._audio_left > 0:
                n = max(1, int(round(float(lengths[i]) * T)))
                self.save_audio(ids[i], mix[i, :n], targets[i, :n], est[i, :n])
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

    # ------------------------------------------------------------------
    # Stage hooks
    # ------------------------------------------------------------------
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
        """The mixins' starts (stop signal, counters, epoch clock); a new
        test report."""
        super().on_stage_start(stage, epoch)
        if stage == sb.Stage.TEST:
            self.test_report = TestReport(self.extra_metrics)
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
            self.train_stats = {**stage_stats, **self._train_epoch_stats()}
            self._warn_skipped(epoch)

        elif stage == sb.Stage.VALID:
            rates = learning_rates(self.optimizer)
            scheduler = getattr(self.hparams, "lr_scheduler", None)
            if isinstance(scheduler, ReduceLROnPlateau):
                current_lr, next_lr = scheduler(
                    [self.optimizer], epoch, stage_loss
                )
                # SpeechBrain's recipes write next_lr into every group,
                # flattening the S4 group's own rate: scale them instead
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
            path = os.path.join(self.hparams.output_folder, RESULTS_FILE)
            if if_main_process():
                self.test_summary = self.test_report.write(path)
            else:
                self.test_summary = self.test_report.summary()
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stage_stats,
            )
        super().on_stage_end(stage, stage_loss, epoch)

    def _train_epoch_stats(self):
        """Skipped batches, training time and mixtures per second (summed
        over the DDP replicas) of the epoch that ends."""
        elapsed = self.epoch_seconds()
        samples = over_replicas([self.train_samples], self.device, "sum")[0]
        return {
            "skipped": self.skipped_batches,
            "time": elapsed,
            "samples_per_s": samples / elapsed if elapsed > 0 else math.nan,
        }

    def _warn_skipped(self, epoch):
        """Says what the train loss of an epoch with skipped batches is."""
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
                "Epoch %s: every training batch (%d) was skipped; the train "
                "loss is undefined (logged as nan) and the weights did not "
                "change.",
                epoch,
                self.skipped_batches,
            )

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

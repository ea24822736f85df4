"""The SpeechBrain ``Brain`` of all separation recipes (as SpeechBrain's
``recipes/WSJ0Mix/separation/train.py``, with the mixins of
:mod:`speechbrain_s4m.training`; differences in ``docs/training.md``).
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


class NoCheckpointError(FileNotFoundError):
    """Raised when evaluation finds no checkpoint to load."""


class Separation(ProgressReport, StopOnSignals, ConsistentSteps, sb.Brain):
    """Brain for time-domain masking separators (S4M, Sepformer, ...).

    Reads the hparams: ``modules`` (``encoder``,
    ``masknet``, ``decoder``), ``num_spks``, ``loss`` (``loss(estimate,
    target, lengths) -> (loss [batch], perm)``, e.g.
    :func:`speechbrain_s4m.losses.pit_si_snr_loss`), ``clip_grad_norm``,
    ``loss_upper_lim``, ``threshold_byloss``, ``threshold``,
    ``use_speedperturb`` + ``speed_perturb``, ``lr_scheduler``,
    ``epoch_counter``, ``train_logger``, ``output_folder``, ``save_folder``,
    ``sample_rate``; optionally ``save_audio``, ``n_audio_to_save``,
    ``extra_metrics`` (``"pesq,stoi"``) and ``nonfinite_patience``. Batches
    carry ``id``, ``mix_sig``, ``s1_sig`` ... (cropped for training by the
    data pipeline) and ``noise_sig`` for noisy mixtures.
    """

    _audio_left = 0  # test utterances whose audio is still to be saved

    @property
    def separator(self):
        """The :class:`Separator` over ``self.modules`` (rebuilt when
        ``on_fit_start`` compiles or DDP-wraps them)."""
        sep = self.__dict__.get("_separator")
        if sep is None or any(
            getattr(sep, key) is not self.modules[key]
            for key in ("encoder", "masknet", "decoder")
        ):
            sep = Separator.from_modules(self.modules, self.hparams.num_spks)
            self._separator = sep
        return sep

    def separate(self, mix):
        """Separates mixtures `[batch, time]` -> `[batch, time, num_spks]`."""
        return self.separator(mix)

    def compute_forward(self, mix, targets, stage, noise=None):
        """``(estimates, targets [batch, time, spks], lengths)`` of
        ``batch.mix_sig`` and ``[batch.s1_sig, ...]``; in ``TRAIN`` with
        ``use_speedperturb``, speed-perturbed (``noise``: ``noise_sig``)."""
        mix, lengths = mix
        mix, lengths = mix.to(self.device), lengths.to(self.device)
        targets = torch.stack(
            [t[0] for t in targets[: self.hparams.num_spks]], dim=-1
        ).to(self.device)  # [batch, time, spks]
        if stage == sb.Stage.TRAIN and getattr(
            self.hparams, "use_speedperturb", False
        ):
            with torch.no_grad():
                mix, targets, lengths = self.add_speed_perturb(
                    targets, noise, lengths
                )
        return self.separate(mix), targets, lengths

    def compute_objectives(self, predictions, targets, lengths=None):
        """The per-utterance loss `[batch]` (negative PIT SI-SNR)."""
        out = self.hparams.loss(
            predictions.float(), targets.float(), lengths=lengths
        )
        return out[0] if isinstance(out, tuple) else out

    def training_losses(self, batch):
        """The per-utterance training loss `[batch]`."""
        mix, targets, noise = self._unpack(batch)
        with self.training_ctx:
            est, targets, lengths = self.compute_forward(
                mix, targets, sb.Stage.TRAIN, noise
            )
        return self.compute_objectives(est, targets, lengths)

    def add_speed_perturb(self, targets, noise=None, lengths=None):
        """Speed-perturbs each source `[batch, time, spks]` on its own (as
        SpeechBrain's recipes), cuts them to the shortest (never longer than
        the batch) and re-mixes them with the ``noise`` ``(wavs, lengths)``;
        the new ``lengths`` end at each mixture's longest source or noise.
        Returns ``(mix, targets, lengths)``."""
        if lengths is None:
            lengths = torch.ones(targets.shape[0], device=targets.device)
        lengths = lengths.to(targets.device).double()
        new = [
            self.hparams.speed_perturb(targets[:, :, i])
            for i in range(targets.shape[-1])
        ]
        min_len = min([targets.shape[1]] + [t.shape[-1] for t in new])
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

    def evaluate_batch(self, batch, stage):
        """The batch's mean validation/test loss; scores test utterances."""
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
        """The hparams' ``extra_metrics``, checked by
        :func:`extra_metric_names`."""
        spec = getattr(self.hparams, "extra_metrics", None)
        rate = getattr(self.hparams, "sample_rate", None)
        return extra_metric_names(spec or None, rate)

    def _score_test_batch(self, ids, mix, est, targets, lengths):
        """Scores the batch into the test report; saves the first audios."""
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
        """Saves a mixture `[time]`, sources and estimates `[time, spks]`
        (peak-normalised) in ``<save_folder>/audio_results``."""
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
        """SpeechBrain's set-up; ``lr_scheduler``, the checkpoint to resume
        from and ``extra_metrics`` fail now, not after the last epoch."""
        check_lr_scheduler(getattr(self.hparams, "lr_scheduler", None))
        newest = self._newest_checkpoint()
        if newest is not None:
            check_checkpoint_files(newest)
        super().on_fit_start()
        _ = self.extra_metrics

    def on_stage_start(self, stage, epoch=None):
        """The mixins' starts; a new test report."""
        super().on_stage_start(stage, epoch)
        if stage == sb.Stage.TEST:
            self.test_report = TestReport(self.extra_metrics)
            self._audio_left = 0
            if getattr(self.hparams, "save_audio", False):
                self._audio_left = getattr(
                    self.hparams, "n_audio_to_save", math.inf
                )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs (``loss``: negative SI-SNR, dB; rates, skipped batches,
        time, mixtures/s), anneals, checkpoints (meta ``si-snr``, best =
        min), writes the test results."""
        stage_stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            elapsed = self.epoch_seconds()
            (n,) = over_replicas([self.train_samples], self.device, "sum")
            self.train_stats = {
                **stage_stats,
                "skipped": self.skipped_batches,
                "time": elapsed,
                "samples_per_s": n / elapsed if elapsed > 0 else math.nan,
            }
            skipped, counted = self.skipped_batches, self.counted_batches
            if skipped:
                logger.warning(
                    f"Epoch {epoch}: {skipped} training batches skipped; the "
                    f"train loss is the mean over the {counted} that counted."
                    if counted
                    else f"Epoch {epoch}: every training batch ({skipped}) "
                    "was skipped; the train loss is undefined (logged as "
                    "nan) and the weights did not change."
                )

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
            if if_main_process():
                self.test_summary = self.test_report.write(
                    os.path.join(self.hparams.output_folder, RESULTS_FILE)
                )
            else:
                self.test_summary = self.test_report.summary()
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stage_stats,
            )
        super().on_stage_end(stage, stage_loss, epoch)

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the best checkpoint; fails clearly if none or unreadable."""
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
            check_checkpoint_files(ckpt.path)
        super().on_evaluate_start(max_key=max_key, min_key=min_key)

    def _unpack(self, batch):
        """``(mix_sig, [s1_sig, ...], noise_sig or None)``."""
        targets = [
            getattr(batch, f"s{i + 1}_sig")
            for i in range(self.hparams.num_spks)
        ]
        noise = batch.noise_sig if hasattr(batch, "noise_sig") else None
        return batch.mix_sig, targets, noise

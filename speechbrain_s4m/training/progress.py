"""The epoch clock, training speed and ETA in the log (SpeechBrain only has
a tqdm bar, off in logs): a Brain mixin."""

import collections
import time

import speechbrain as sb
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)


def _duration(seconds):
    """``"42 s"``, ``"12 min"`` or ``"3.5 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def recent_rate(samples, window_s):
    """Batches per second over the last ``window_s`` seconds of ``samples``
    (``(time, batches done)`` pairs), leaving out the first (warm-up) batch
    once later ones exist; NaN for < 2 samples."""
    samples = list(samples)
    if len(samples) < 2:
        return float("nan")
    if len(samples) > 2:
        samples = samples[1:]
    t_end, n_end = samples[-1]
    start = 0
    for i, (t, _) in enumerate(samples):
        if t_end - t <= window_s:
            break
        start = i  # the last sample before the window anchors it
    t0, n0 = samples[start]
    if t_end <= t0:
        return float("nan")
    return (n_end - n0) / (t_end - t0)


def run_eta(epoch_times, epochs_left, recent=3):
    """Seconds left: ``epochs_left`` x the mean of the ``recent`` latest
    ``epoch_times`` (the first left out once others exist)."""
    times = list(epoch_times)
    times = (times[1:] if len(times) > 1 else times)[-recent:]
    if not times or epochs_left <= 0:
        return 0.0
    return epochs_left * sum(times) / len(times)


class ProgressReport:
    """Brain mixin: logs the training speed and the expected time.

    Every ``progress_interval_s`` seconds of an epoch, and after each epoch
    (after its validation)::

        epoch 1/10: 120/250 batches, 3.1 batches/s, epoch ETA 42 s
        epoch 1/10 done: 250 batches in 80 s (3.1 batches/s), epoch with
        validation 95 s; ETA 14 min (9 epochs left)

    The epoch ETA needs ``batches_per_epoch`` (set by the recipe runner).
    """

    progress_interval_s = 60.0  # seconds between two progress lines
    eta_window_s = 300.0  # seconds of recent training setting the speed
    batches_per_epoch = None  # training batches per epoch (per process)
    validates = True  # each epoch ends with a validation stage

    def on_stage_start(self, stage, epoch=None):
        """Starts the epoch clock (training stage)."""
        super().on_stage_start(stage, epoch)
        if stage == sb.Stage.TRAIN:
            now = time.time()
            self._epoch_clock = self._last_line = now
            self._first_step = self.step  # > 0 when resumed mid-epoch
            self._train_seconds = None
            self._samples = collections.deque([(now, self.step)])

    def epoch_seconds(self):
        """Seconds since this epoch's training stage started (0 before)."""
        now = time.time()
        return now - getattr(self, "_epoch_clock", now)

    def fit_batch(self, batch):
        """The Brain's training batch, then a progress line when due."""
        loss = super().fit_batch(batch)
        now = time.time()
        samples = self.__dict__.setdefault("_samples", collections.deque())
        samples.append((now, self.step))
        # Keep the window, its anchor and the epoch's first batch
        while len(samples) > 3 and now - samples[2][0] > self.eta_window_s:
            del samples[1]
        if now - getattr(self, "_last_line", now) >= self.progress_interval_s:
            self._last_line = now
            logger.info(self._progress_line(now))
        return loss

    def _epochs(self):
        counter = getattr(self.hparams, "epoch_counter", None)
        return getattr(counter, "current", 0), getattr(counter, "limit", None)

    def _progress_line(self, now):
        epoch, limit = self._epochs()
        rate = recent_rate(getattr(self, "_samples", ()), self.eta_window_s)
        total = self.batches_per_epoch
        line = f"epoch {epoch}/{limit}: {self.step}"
        line += f"/{total} batches" if total else " batches"
        line += f", {rate:.2f} batches/s"
        if total and rate > 0:
            line += f", epoch ETA {_duration((total - self.step) / rate)}"
        return line

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """The Brain's end of stage, then the epoch line."""
        if stage == sb.Stage.TRAIN:
            self._train_seconds = self.epoch_seconds()
            self._train_batches = self.step - getattr(self, "_first_step", 0)
        super().on_stage_end(stage, stage_loss, epoch)
        if stage == sb.Stage.VALID or (
            stage == sb.Stage.TRAIN and not self.validates
        ):
            self._epoch_line(epoch)

    def _epoch_line(self, epoch):
        if getattr(self, "_train_seconds", None) is None:
            return
        _, limit = self._epochs()
        spent = self.epoch_seconds()
        self._epoch_times = getattr(self, "_epoch_times", []) + [spent]
        left = max(0, (limit or epoch) - epoch)
        n, seconds = self._train_batches, self._train_seconds
        rate = n / seconds if seconds > 0 else float("nan")
        eta = _duration(run_eta(self._epoch_times, left))
        logger.info(
            f"epoch {epoch}/{limit} done: {n} batches in {_duration(seconds)} "
            f"({rate:.2f} batches/s), epoch with validation "
            f"{_duration(spent)}; ETA {eta} ({left} epoch"
            + ("" if left == 1 else "s")
            + " left)"
        )
        self._train_seconds = None

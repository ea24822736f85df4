"""The epoch timer, training speed and expected time: a Brain mixin.

SpeechBrain's ``Brain.fit`` shows a tqdm bar (off in logs and under
``--noprogressbar``) and logs no speed. :class:`ProgressReport` is the one
clock of an epoch: it logs the training speed and the expected time in the
log, and gives the Brain the epoch's training time
(:meth:`ProgressReport.epoch_seconds`) for the train log.

Authors
 * speechbrain-s4m contributors 2026
"""

import collections
import time

import speechbrain as sb
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

__all__ = ["ProgressReport", "recent_rate", "run_eta"]


def _duration(seconds):
    """``"42 s"``, ``"12 min"`` or ``"3.5 h"``.

    Example
    -------
    >>> _duration(42.2), _duration(725), _duration(12600)
    ('42 s', '12 min', '3.5 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def recent_rate(samples, window_s):
    """Batches per second over the last ``window_s`` seconds of ``samples``.

    The speed of a run changes: the first batches compile and warm up, and
    other work on the machine comes and goes. The expected time follows
    the current speed, so the rate is measured over a recent window, never
    over the first batch of the epoch when later ones exist.

    Arguments
    ---------
    samples : sequence of (float, int)
        ``(time, batches done)`` in time order: the epoch's start, then one
        per batch.
    window_s : float
        The window, in seconds back from the last sample.

    Returns
    -------
    float
        NaN when fewer than two samples.

    Example
    -------
    >>> start = [(0.0, 0), (30.0, 1)]  # the first batch compiles: 30 s
    >>> steady = [(30.0 + 2 * i, 1 + i) for i in range(1, 201)]
    >>> round(recent_rate(start + steady, window_s=60), 3)
    0.5
    >>> recent_rate([(0.0, 0)], 60)
    nan
    """
    samples = list(samples)
    if len(samples) < 2:
        return float("nan")
    if len(samples) > 2:
        samples = samples[1:]  # the first batch: compilation, warm-up
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
    """Seconds left in the run: the recent epochs' mean time (the first
    epoch left out once later ones exist: it compiles and warms up) times
    the epochs left.

    Arguments
    ---------
    epoch_times : list of float
        Seconds per finished epoch (with validation), in order.
    epochs_left : int
        Epochs still to train.
    recent : int
        How many of the latest epochs to average.

    Returns
    -------
    float

    Example
    -------
    >>> run_eta([300.0, 100.0, 110.0, 90.0, 100.0], 10)
    1000.0
    >>> run_eta([300.0], 2)
    600.0
    """
    times = list(epoch_times)
    if len(times) > 1:
        times = times[1:]
    times = times[-recent:]
    if not times or epochs_left <= 0:
        return 0.0
    return epochs_left * sum(times) / len(times)


class ProgressReport:
    """Brain mix-in: logs the training speed and the expected time.

    During an epoch, every ``progress_interval_s`` seconds::

        epoch 1/10: 120/250 batches, 3.1 batches/s, epoch ETA 42 s

    and at the end of each epoch (after validation)::

        epoch 1/10 done: 250 batches in 80 s (3.1 batches/s), epoch with
        validation 95 s; ETA 14 min (9 epochs left)

    (one line). ``batches_per_epoch`` (set by the recipe runner) gives the
    epoch ETA, at the speed of the last ``eta_window_s`` seconds
    (:func:`recent_rate`); the run ETA is the mean time of the latest
    epochs times the epochs left (:func:`run_eta`). The batches/s of a
    progress line are the recent speed too; those of the epoch line, the
    epoch's mean. The Brain (:class:`speechbrain_s4m.brain.Separation`)
    inherits it.
    """

    #: Seconds between two progress lines within an epoch.
    progress_interval_s = 60.0
    #: Seconds of recent training that set the speed of the epoch ETA.
    eta_window_s = 300.0
    #: Training batches per epoch (per process), when known.
    batches_per_epoch = None
    #: Whether each epoch ends with a validation stage.
    validates = True

    def on_stage_start(self, stage, epoch=None):
        """Starts the epoch clock (training stage)."""
        super().on_stage_start(stage, epoch)
        now = time.time()
        if stage == sb.Stage.TRAIN:
            self._epoch_clock = now
            self._last_line = now
            self._first_step = self.step  # > 0 when resumed mid-epoch
            self._train_seconds = None
            self._samples = collections.deque([(now, self.step)])

    def epoch_seconds(self):
        """Seconds since this epoch's training stage started (the epoch
        clock; 0 before the first epoch)."""
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
        current = getattr(counter, "current", 0)
        return current, getattr(counter, "limit", None)

    def _rate(self, now):
        done = self.step - getattr(self, "_first_step", 0)
        elapsed = now - getattr(self, "_epoch_clock", now)
        return done, (done / elapsed if elapsed > 0 else float("nan"))

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
        """The Brain's end of stage, then the epoch's speed and the ETA."""
        now = time.time()
        if stage == sb.Stage.TRAIN:
            self._train_batches, self._train_rate = self._rate(now)
            self._train_seconds = now - getattr(self, "_epoch_clock", now)
        super().on_stage_end(stage, stage_loss, epoch)
        if stage == sb.Stage.VALID or (
            stage == sb.Stage.TRAIN and not self.validates
        ):
            self._epoch_line(time.time(), epoch)

    def _epoch_line(self, now, epoch):
        if getattr(self, "_train_seconds", None) is None:
            return
        _, limit = self._epochs()
        spent = now - self._epoch_clock
        self._epoch_times = getattr(self, "_epoch_times", []) + [spent]
        left = max(0, (limit or epoch) - epoch)
        logger.info(
            "epoch %s/%s done: %d batches in %s (%.2f batches/s), epoch with "
            "validation %s; ETA %s (%d epoch%s left)",
            epoch,
            limit,
            self._train_batches,
            _duration(self._train_seconds),
            self._train_rate,
            _duration(spent),
            _duration(run_eta(self._epoch_times, left)),
            left,
            "" if left == 1 else "s",
        )
        self._train_seconds = None

"""Stopping training on SIGINT / SIGTERM with a checkpoint: a Brain mixin
(SpeechBrain's ``fit`` dies there, each DDP rank at a different batch)."""

import contextlib
import functools
import signal
import threading

import speechbrain as sb
from speechbrain.utils.logger import get_logger

from speechbrain_s4m.training.steps import over_replicas

logger = get_logger(__name__)


#: Ctrl-C, and the SIGTERM of cluster schedulers (preemption).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped by ``signum`` at ``where`` (``"epoch 2, batch
    3/6"``); the rerun resumes from ``checkpoint`` (None: none saved)."""

    def __init__(self, signum, checkpoint=None, where=""):
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.where = where
        saved = (
            f"checkpoint saved in {checkpoint}"
            if checkpoint
            else "no checkpoint saved (stopped at once)"
        )
        at = f" at {where}" if where else ""
        name = signal.Signals(self.signum).name
        super().__init__(f"{name}{at}: {saved}")

    @property
    def exit_status(self):
        """``128 + signal``, the shell's convention (130, 143)."""
        return 128 + self.signum


class StopOnSignals:
    """Brain mixin: SIGINT / SIGTERM stop training cleanly (see :meth:`fit`)."""

    _stop_signal = 0  # the stop signal this process received (0: none)
    _saving = False  # a stop checkpoint is being written

    def fit(self, *args, **kwargs):
        """SpeechBrain's ``fit``, stopping cleanly on SIGINT / SIGTERM.

        The first signal finishes the update in progress (on every DDP
        rank: they share the decision), saves an intra-epoch checkpoint and
        raises :class:`TrainingInterrupted`; during validation, once the
        epoch's checkpoint is saved. A second Ctrl-C stops at once.
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
            raise self._interrupted(stop, "the end of training")

    def make_dataloader(
        self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs
    ):
        """SpeechBrain's data loader; its training and validation workers
        ignore :data:`STOP_SIGNALS` (a worker ended by SIGTERM makes PyTorch
        raise, even mid-save); :meth:`fit` ends them."""
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
        """Ends the workers an unfinished epoch leaves running."""
        for loader in self.__dict__.pop("_guarded_loaders", []):
            iterator = getattr(loader, "_speechbrain_iterator", None)
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()  # PyTorch's own clean end (idempotent)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """Installs :meth:`_on_stop_signal`, restores the previous handlers."""
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
        again = " (Ctrl-C again: stop at once, without saving)"
        logger.warning(
            f"{signal.Signals(signum).name} received: training stops after "
            "the update in progress and saves a checkpoint"
            + (again if signum == signal.SIGINT else "")
            + "."
        )

    def _shared_stop_signal(self):
        """The largest stop signal of the DDP ranks, else 0 (collective)."""
        return int(over_replicas([self._stop_signal], self.device)[0])

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

    def _interrupted(self, signum, where=None):
        """The stop at ``where`` (default: now)."""
        where = where or self._where()
        return TrainingInterrupted(signum, self._newest_checkpoint(), where)

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """SpeechBrain's interval decision, or a stop signal at an update
        boundary."""
        self._stopping = 0
        if self.step % self.grad_accumulation_factor == 0:
            self._stopping = self._shared_stop_signal()
        if self._stopping:
            if self.checkpointer is None:
                raise self._interrupted(self._stopping)
            return True  # same on every rank: SpeechBrain's vote skipped
        return super()._should_save_intra_epoch_ckpt(
            last_ckpt_time, steps_since_ckpt
        )

    def _save_intra_epoch_ckpt(self):
        """SpeechBrain's intra-epoch checkpoint; then the stop, if asked."""
        self._saving = True
        try:
            super()._save_intra_epoch_ckpt()
        finally:
            self._saving = False
        if getattr(self, "_stopping", 0):
            raise self._interrupted(self._stopping)

    def on_stage_start(self, stage, epoch=None):
        """Stops before a training epoch when a signal asked for it."""
        if stage == sb.Stage.TRAIN:
            stop = self._shared_stop_signal()
            if stop:
                raise self._interrupted(stop, f"the start of epoch {epoch}")
        super().on_stage_start(stage, epoch)


def _worker_ignoring_stop_signals(init_fn, worker_id):
    """Ignores :data:`STOP_SIGNALS`, then the loader's own ``init_fn``."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if init_fn is not None:
        init_fn(worker_id)

"""Brain mixins that override SpeechBrain's training hooks, each on its own.

* :mod:`~speechbrain_s4m.training.steps`: DDP-consistent skipping and
  stepping (a batch is skipped on every replica at once; clipping of every
  parameter group; non-finite patience);
* :mod:`~speechbrain_s4m.training.signals`: SIGINT / SIGTERM stop training
  with a checkpoint;
* :mod:`~speechbrain_s4m.training.progress`: the epoch timer, speed and
  expected time.

The Brain (:class:`speechbrain_s4m.brain.Separation`) combines them.

Authors
 * speechbrain-s4m contributors 2026
"""

"""Brain mixins overriding SpeechBrain's training hooks, combined by
:class:`speechbrain_s4m.brain.Separation`: DDP-consistent skipping and
stepping (:mod:`.steps`), SIGINT / SIGTERM stops with a checkpoint
(:mod:`.signals`), the epoch clock, speed and ETA (:mod:`.progress`).
"""

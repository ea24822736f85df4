"""Former home of the dataset audio reader, kept as an import path.

Audio reading and checking live in :mod:`speechbrain_s4m.audio` (one module
and one error family for the whole package); this module re-exports the
names that were defined here so that existing imports keep working.

Authors
 * speechbrain-s4m contributors 2026
"""

from speechbrain_s4m.audio import AudioFormatError, audio_frames, read_audio

__all__ = ["AudioFormatError", "audio_frames", "read_audio"]

"""Synthetic data: procedural voices and tiny datasets in the real layouts.

No speech corpus can be downloaded here, so tests and the SynthMix recipe use
generated data:

- :mod:`speechbrain_s4m.data.synthetic.voices`: speech-like voices of
  distinguishable speakers (``SpeakerProfile``, ``random_speaker``,
  ``synth_voice``) and ambient-like noise (``synth_noise``).
- :mod:`speechbrain_s4m.data.synthetic.writers`: writers of small datasets in
  the official layouts (``write_wsj0mix``, ``write_librimix``,
  ``write_wham``) and of single-speaker and noise folders for dynamic mixing
  (``write_wsj0_sources``, ``write_librispeech_sources``,
  ``write_noise_sources``).

Authors
 * speechbrain-s4m contributors 2026
"""

from speechbrain_s4m.data.synthetic.voices import (
    SpeakerProfile,
    random_speaker,
    synth_noise,
    synth_voice,
)
from speechbrain_s4m.data.synthetic.writers import (
    write_librimix,
    write_librispeech_sources,
    write_noise_sources,
    write_wham,
    write_wsj0_sources,
    write_wsj0mix,
)

__all__ = [
    "SpeakerProfile",
    "random_speaker",
    "synth_voice",
    "synth_noise",
    "write_wsj0mix",
    "write_librimix",
    "write_wham",
    "write_wsj0_sources",
    "write_librispeech_sources",
    "write_noise_sources",
]

"""Synthetic data for the tests and the SynthMix recipe (no corpus can be
downloaded here): speech-like voices of distinguishable speakers and noise
(``voices``), and writers of small datasets in the official layouts and of
source and noise folders for dynamic mixing (``writers``)."""

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

"""Data layer: dataset layouts (``layouts``), CSV manifests (``prepare``),
SpeechBrain datasets (``dataio``), dynamic mixing (``dynamic_mixing``) and
synthetic voices and datasets in the official layouts (``synthetic``)."""

from speechbrain_s4m.data.layouts import DatasetLayoutError
from speechbrain_s4m.data.prepare import (
    prepare_dataset,
    prepare_librimix,
    prepare_wham,
    prepare_wsj0mix,
)

__all__ = [
    "DatasetLayoutError",
    "prepare_dataset",
    "prepare_librimix",
    "prepare_wham",
    "prepare_wsj0mix",
]

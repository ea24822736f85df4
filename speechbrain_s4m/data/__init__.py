"""Data layer: manifest preparation, data pipelines, synthetic data.

- :mod:`speechbrain_s4m.data.prepare`: ``prepare_wsj0mix``,
  ``prepare_librimix``, ``prepare_wham``, ``prepare_dataset`` and
  :class:`DatasetLayoutError`.
- :mod:`speechbrain_s4m.data.dataio`: SpeechBrain datasets from the manifests
  (``make_datasets``) and dynamic mixing (``dynamic_mixing_dataset``).
- :mod:`speechbrain_s4m.data.synthetic`: procedural voices and writers of
  small datasets in the official layouts.
"""

from speechbrain_s4m.data.prepare import (
    DatasetLayoutError,
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

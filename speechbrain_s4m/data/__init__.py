"""Data layer: manifest preparation, data pipelines, synthetic data.

- :mod:`speechbrain_s4m.data.layouts`: the folder layouts of the official
  datasets (split, mixture and source folder names, rate and mode folders,
  peak level), defined once for preparation and the synthetic writers, and
  :class:`DatasetLayoutError` with the checks that raise it.
- :mod:`speechbrain_s4m.data.prepare`: ``prepare_wsj0mix``,
  ``prepare_librimix``, ``prepare_wham`` and ``prepare_dataset``: CSV
  manifests of a checked dataset folder.
- :mod:`speechbrain_s4m.data.dataio`: SpeechBrain datasets from the manifests
  (``make_datasets``).
- :mod:`speechbrain_s4m.data.dynamic_mixing`: new training mixtures at every
  access (``dynamic_mixing_dataset``).
- :mod:`speechbrain_s4m.data.synthetic`: procedural voices (``voices``) and
  writers of small datasets in the official layouts (``writers``).
"""

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

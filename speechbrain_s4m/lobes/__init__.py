"""Model lobes: the S4M mask network and its encoder (:mod:`.s4m`), and the
encoder -> masknet -> decoder forward as one module (:mod:`.separator`).

The registry of the shipped model fragments (``load_model_config``,
``model_config_path``, ``list_model_configs``, ``MODEL_CONFIG_DIR``) lives
in :mod:`speechbrain_s4m.config` and is re-exported here for existing
imports.
"""

from speechbrain_s4m.config import (
    MODEL_CONFIG_DIR,
    list_model_configs,
    load_model_config,
    model_config_path,
)
from speechbrain_s4m.lobes.s4m import (
    S4MBlock,
    S4MDecoder,
    S4MEncoder,
    S4MMaskNet,
)
from speechbrain_s4m.lobes.separator import Separator, separate_batch

__all__ = [
    "MODEL_CONFIG_DIR",
    "S4MBlock",
    "S4MDecoder",
    "S4MEncoder",
    "S4MMaskNet",
    "Separator",
    "list_model_configs",
    "load_model_config",
    "model_config_path",
    "separate_batch",
]

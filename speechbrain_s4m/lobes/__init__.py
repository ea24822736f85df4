"""Model lobes: the S4M mask network and its encoder (:mod:`.s4m`), and the
encoder -> masknet -> decoder forward as one module (:mod:`.separator`).

The registry of the shipped model fragments (``load_model_config``,
``model_config_path``, ``list_model_configs``, ``MODEL_CONFIG_DIR``) is in
:mod:`speechbrain_s4m.config`.
"""

from speechbrain_s4m.lobes.s4m import (
    S4MBlock,
    S4MDecoder,
    S4MEncoder,
    S4MMaskNet,
)
from speechbrain_s4m.lobes.separator import Separator

__all__ = [
    "S4MBlock",
    "S4MDecoder",
    "S4MEncoder",
    "S4MMaskNet",
    "Separator",
]

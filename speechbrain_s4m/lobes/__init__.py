"""Model lobes: the S4M block and mask network (:mod:`.s4m`), its encoder
and decoder (:mod:`.encoder_decoder`), and the encoder -> masknet ->
decoder forward as one module (:mod:`.separator`).

The registry of the shipped model fragments is in
:mod:`speechbrain_s4m.config`.
"""

from speechbrain_s4m.lobes.encoder_decoder import S4MDecoder, S4MEncoder
from speechbrain_s4m.lobes.s4m import S4MBlock, S4MMaskNet
from speechbrain_s4m.lobes.separator import Separator

__all__ = [
    "S4MBlock",
    "S4MDecoder",
    "S4MEncoder",
    "S4MMaskNet",
    "Separator",
]

"""Ready-to-use separation with pretrained models.

Entry points: ``S4MSeparation`` (:mod:`.interface`) and ``S4MStreamer``
(:mod:`.streamer`, live separation with a causal model). The other modules:
:mod:`.loading` (model sources, strict loading), :mod:`.chunking` (chunked
overlap-add of long signals and files) and :mod:`.outputs` (safe output
files). Every other name is imported from the module that defines it.
"""

from speechbrain_s4m.inference.interface import S4MSeparation
from speechbrain_s4m.inference.streamer import S4MStreamer

__all__ = ["S4MSeparation", "S4MStreamer"]

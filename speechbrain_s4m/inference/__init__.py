"""Ready-to-use separation with pretrained models.

``from speechbrain_s4m.inference import S4MSeparation`` is the entry point.
The package has one module per role:

* :mod:`~speechbrain_s4m.inference.loading`: model sources (local folder or
  hub id), hub fetching, strict loading, folder errors;
* :mod:`~speechbrain_s4m.inference.streaming`: block-wise resampling,
  speaker-order alignment and overlap-add over chunks;
* :mod:`~speechbrain_s4m.inference.interface`: ``S4MSeparation``;
* :mod:`~speechbrain_s4m.inference.outputs`: output files (temporaries,
  atomic publication against other writers, disk-full errors);
* :mod:`~speechbrain_s4m.inference.streamer`: ``S4MStreamer``, live
  hop-by-hop separation with a causal model.

Audio reading and checks are in :mod:`speechbrain_s4m.audio`. This package
exports the two entry points; every other name is imported from the module
that defines it.

Authors
 * speechbrain-s4m contributors 2026
"""

from speechbrain_s4m.inference.interface import S4MSeparation
from speechbrain_s4m.inference.streamer import S4MStreamer

__all__ = ["S4MSeparation", "S4MStreamer"]

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

Audio reading and checks are in :mod:`speechbrain_s4m.audio`. The names
that ``speechbrain_s4m.inference`` held when it was one module are
re-exported here.

Authors
 * speechbrain-s4m contributors 2026
"""

from speechbrain_s4m.audio import (
    READ_BLOCK_SECONDS,
    AudioError,
    AudioInputError,
    audio_info,
    check_audio_file,
    check_audio_header,
    check_audio_tensor,
    iter_audio_blocks,
)
from speechbrain_s4m.inference.interface import (
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    OutputScaleWarning,
    S4MSeparation,
)
from speechbrain_s4m.inference.loading import (
    MODULE_KEYS,
    SOURCE_MARKER,
    ModelFolderError,
    ModelNotFoundError,
    load_model_folder,
    load_state_dict_strict,
    looks_like_hub_file,
    looks_like_local_path,
    resolve_model_folder,
)
from speechbrain_s4m.inference.outputs import (
    OutputFolderError,
    OutputWriteError,
    check_output_folder,
    remove_stale_temporaries,
)
from speechbrain_s4m.inference.streamer import S4MStreamer
from speechbrain_s4m.inference.streaming import (
    SCALE_MODES,
    OverlapAddSeparator,
    StreamingResampler,
    align_to_reference,
    mixture_gains,
    scale_to_mixture,
    separate_stream,
)

__all__ = [
    "DEFAULT_CHUNK_SECONDS",
    "DEFAULT_OVERLAP_SECONDS",
    "MODULE_KEYS",
    "READ_BLOCK_SECONDS",
    "SOURCE_MARKER",
    "AudioError",
    "AudioInputError",
    "ModelFolderError",
    "ModelNotFoundError",
    "OutputFolderError",
    "OutputScaleWarning",
    "OutputWriteError",
    "OverlapAddSeparator",
    "SCALE_MODES",
    "S4MSeparation",
    "S4MStreamer",
    "StreamingResampler",
    "align_to_reference",
    "audio_info",
    "check_audio_file",
    "check_audio_header",
    "check_audio_tensor",
    "check_output_folder",
    "iter_audio_blocks",
    "load_model_folder",
    "load_state_dict_strict",
    "looks_like_hub_file",
    "looks_like_local_path",
    "mixture_gains",
    "remove_stale_temporaries",
    "resolve_model_folder",
    "scale_to_mixture",
    "separate_stream",
]

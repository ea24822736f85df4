"""The pretrained separation interface: ``S4MSeparation``.

One role: what a user calls to separate audio with a pretrained model.
``S4MSeparation`` follows SpeechBrain's ``SepformerSeparation`` interface
(``from_hparams``, ``separate_batch``, ``separate_file``); the work is done
elsewhere: loading in :mod:`speechbrain_s4m.inference.loading`, the forward
in :class:`speechbrain_s4m.lobes.separator.Separator` (the same module the
training Brain runs), chunking in :mod:`speechbrain_s4m.inference.streaming`
and audio checks in :mod:`speechbrain_s4m.audio`.

Deliberate differences from SpeechBrain's ``SepformerSeparation``:

* strict loading: a mistyped local path is a ``FileNotFoundError``, a
  checkpoint with missing or unexpected keys is an error (not a warning), and
  a ``savedir`` filled from another source is never reused silently;
* audio files at any rate and channel count (downmixed, then resampled to
  the model's rate), results at the model's or at the input's rate, not
  peak-normalised unless asked;
* ``separate_long``: overlap-add over chunks with the speaker order of each
  chunk aligned to the previous one on their overlap, and a streaming file
  path (``separate_file_to_folder``) whose memory does not grow with the file;
* outputs at a meaningful scale and sign: by default the sources are
  scaled so that they sum to the mixture (signed least squares), and never
  clipped;
* clear errors (``AudioInputError``, ``ModelFolderError``) naming the file;
  outputs written to a temporary name first (never a partial file), never
  over an existing file without ``overwrite=True``;
* on a CPU, glibc is told to keep freed memory for reuse
  (:func:`speechbrain_s4m.allocator.keep_freed_memory`; off with
  ``keep_freed_memory=False``): long inputs no longer pay a page fault per
  page of every large temporary.

Authors
 * speechbrain-s4m contributors 2026
"""

import os
import pathlib
import warnings

import numpy as np
import torch
import torchaudio
from speechbrain.inference.interfaces import Pretrained

from speechbrain_s4m import allocator, audio
from speechbrain_s4m.inference import outputs
from speechbrain_s4m.inference.loading import (
    MODULE_KEYS,
    load_model_folder,
    local_audio_file,
    resolve_model_folder,
)
from speechbrain_s4m.inference.outputs import (
    check_output_folder,
    remove_stale_temporaries,
)
from speechbrain_s4m.inference.streaming import (
    OverlapAddSeparator,
    cat_outputs,
    separate_stream,
)
from speechbrain_s4m.lobes.separator import Separator

DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_OVERLAP_SECONDS = 2.0


class S4MSeparation(Pretrained):
    """A ready-to-use speech separation model (S4M or any masknet).

    Drop-in for SpeechBrain's ``SepformerSeparation`` with strict loading,
    any-rate / any-channel files, long-audio separation and clear errors.

    Arguments
    ---------
    *args, **kwargs
        As ``speechbrain.inference.interfaces.Pretrained``; usually built by
        ``S4MSeparation.from_hparams(source=folder_or_hub_id)``.
    keep_freed_memory : bool
        On a CPU device, apply
        :func:`speechbrain_s4m.allocator.keep_freed_memory` (process-wide,
        glibc only): the freed blocks of one forward serve the next instead
        of being unmapped and faulted in again (at 16 s of audio this was a
        third of the process time). The process then keeps its peak memory
        until it exits. Default True; False leaves the C library alone.

    Example
    -------
    >>> from speechbrain.lobes.models import dual_path as dp
    >>> enc = dp.Encoder(kernel_size=8, out_channels=8)
    >>> blk = dp.SBTransformerBlock(1, 8, 2, d_ffn=16)
    >>> mask = dp.Dual_Path_Model(8, 8, blk, blk, num_layers=1, K=10)
    >>> dec = dp.Decoder(8, 1, kernel_size=8, stride=4, bias=False)
    >>> model = S4MSeparation(
    ...     modules={"encoder": enc, "masknet": mask, "decoder": dec},
    ...     hparams={"sample_rate": 8000, "num_spks": 2},
    ...     run_opts={"device": "cpu"},
    ... )
    >>> model.separate_batch(torch.randn(1, 800)).shape
    torch.Size([1, 800, 2])
    """

    MODULES_NEEDED = list(MODULE_KEYS)
    HPARAMS_NEEDED = ["sample_rate", "num_spks"]
    #: Shortest input accepted (seconds); shorter audio is an AudioInputError.
    min_seconds = 0.1

    def __init__(self, *args, keep_freed_memory=True, **kwargs):
        super().__init__(*args, **kwargs)
        #: Whether this model applied the allocator setting (CPU, glibc).
        self.freed_memory_kept = False
        if keep_freed_memory and torch.device(self.device).type == "cpu":
            self.freed_memory_kept = allocator.keep_freed_memory()

    @classmethod
    def from_hparams(
        cls,
        source,
        hparams_file="hyperparams.yaml",
        savedir=None,
        overrides=None,
        run_opts=None,
        overwrite=False,
        fetch_config=None,
        overrides_must_match=True,
        download_only=False,
        local_strategy=None,
        **kwargs,
    ):
        """Loads a pretrained folder (local, offline) or a hub repository.

        Arguments
        ---------
        source : str or pathlib.Path
            A local folder (as written by ``s4m-export``) or a hub id
            ``owner/name``. Something that looks like a path and does not
            exist raises ``ModelNotFoundError`` (a ``FileNotFoundError``):
            it is never sent to the hub.
        hparams_file : str
            Hyperparameter file name in the folder.
        savedir : str or pathlib.Path, optional
            Hub sources only: where to put the fetched files (a local folder
            is read in place). A savedir filled from another source is
            refused unless ``overwrite=True``.
        overrides : dict, optional
            Overrides for the hyperparameter file.
        run_opts : dict, optional
            e.g. ``{"device": "cuda:0"}``.
        overwrite : bool
            Re-fetch hub files into ``savedir`` even when present.
        fetch_config : speechbrain.utils.fetching.FetchConfig, optional
            Hub fetching options (revision, token, ...).
        overrides_must_match : bool
            As SpeechBrain: an override of a key absent from the file is an
            error.
        download_only : bool
            Fetch the hub files only; returns None.
        local_strategy : None
            Accepted for compatibility with SpeechBrain and ignored: local
            folders are read in place, hub files are copied into savedir.
        **kwargs
            Passed to the class (e.g. ``freeze_params``,
            ``keep_freed_memory``).

        Returns
        -------
        S4MSeparation
        """
        folder = resolve_model_folder(
            source, hparams_file, savedir, overrides, overwrite, fetch_config
        )
        if download_only:
            return None
        hparams = load_model_folder(
            folder, hparams_file, overrides, overrides_must_match
        )
        hparams["savedir"] = str(folder)
        hparams["source"] = str(source)
        return cls(
            modules=hparams["modules"],
            hparams=hparams,
            run_opts=run_opts,
            **kwargs,
        )

    @property
    def sample_rate(self):
        """The model's sample rate (Hz)."""
        return int(self.hparams.sample_rate)

    @property
    def num_spks(self):
        """Number of separated sources."""
        return int(self.hparams.num_spks)

    def separate_batch(self, mix):
        """Separates a batch of mixtures at the model's sample rate.

        Same computation as the training Brain's forward.

        Arguments
        ---------
        mix : torch.Tensor
            ``[batch, time]`` (or ``[time]``).

        Returns
        -------
        torch.Tensor
            ``[batch, time, num_spks]``.
        """
        if mix.dim() == 1:
            mix = mix.unsqueeze(0)
        # Built per call over the current ``mods`` (cheap, shares the
        # modules): a module swapped in ``mods`` is always the one that runs.
        separator = Separator.from_modules(self.mods, self.num_spks)
        with torch.no_grad():
            return separator(mix.to(self.device))

    def forward(self, mix):
        """Runs ``separate_batch``."""
        return self.separate_batch(mix)

    def chunk_sizes(self, chunk_seconds=None, overlap_seconds=None):
        """Chunk and overlap lengths in samples at the model's rate.

        Also the check of the two lengths (the command line calls it before
        reading any file, so that bad values fail once, not per file).

        Arguments
        ---------
        chunk_seconds : float, optional
            Chunk length (default ``DEFAULT_CHUNK_SECONDS``).
        overlap_seconds : float, optional
            Overlap between chunks (default ``DEFAULT_OVERLAP_SECONDS``).

        Returns
        -------
        chunk : int
            Samples per chunk.
        overlap : int
            Samples of overlap, ``0 < overlap < chunk``.

        Example
        -------
        >>> model = S4MSeparation(
        ...     modules={}, hparams={"sample_rate": 8000, "num_spks": 2}
        ... )
        >>> model.chunk_sizes(), model.chunk_sizes(1.0, 0.25)
        ((240000, 16000), (8000, 2000))
        >>> model.chunk_sizes(1.0, 1.0)
        Traceback (most recent call last):
          ...
        ValueError: need 0 < overlap_seconds < chunk_seconds, ...
        """
        chunk_seconds = (
            DEFAULT_CHUNK_SECONDS if chunk_seconds is None else chunk_seconds
        )
        overlap_seconds = (
            DEFAULT_OVERLAP_SECONDS
            if overlap_seconds is None
            else overlap_seconds
        )
        chunk = int(round(chunk_seconds * self.sample_rate))
        overlap = int(round(overlap_seconds * self.sample_rate))
        if overlap <= 0 or overlap >= chunk:
            raise ValueError(
                "need 0 < overlap_seconds < chunk_seconds, got "
                f"overlap_seconds={overlap_seconds}, "
                f"chunk_seconds={chunk_seconds}"
            )
        return chunk, overlap

    def separate_long(
        self,
        mix,
        chunk_seconds=None,
        overlap_seconds=None,
        sample_rate=None,
        scale="mixture",
    ):
        """Separates long mixtures chunk by chunk (overlap-add).

        Input that fits in one chunk is separated in one pass (with
        ``scale="none"``, identical to ``separate_batch``).

        Arguments
        ---------
        mix : torch.Tensor
            ``[batch, time]`` or ``[time]``.
        chunk_seconds : float
            Chunk length (default ``DEFAULT_CHUNK_SECONDS``).
        overlap_seconds : float
            Overlap between chunks (default ``DEFAULT_OVERLAP_SECONDS``);
            it is used to align the speaker order and is cross-faded.
        sample_rate : int, optional
            Rate of ``mix`` if not the model's (it is resampled first).
        scale : str
            ``"mixture"`` (default): signed least-squares gains per
            chunk so that the sources sum to the mixture; ``"none"``: the
            model's own (arbitrary) scale. See ``OverlapAddSeparator``.

        Returns
        -------
        torch.Tensor
            ``[batch, time, num_spks]`` at the model's sample rate.
        """
        if mix.dim() == 1:
            mix = mix.unsqueeze(0)
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        audio.check_audio_tensor(mix, rate, self.min_seconds)
        mix = mix.float().cpu()
        if rate != self.sample_rate:
            mix = torchaudio.functional.resample(mix, rate, self.sample_rate)
        chunk, overlap = self.chunk_sizes(chunk_seconds, overlap_seconds)
        sep = OverlapAddSeparator(
            self.separate_batch, chunk, overlap, scale=scale
        )
        parts = [sep.push(b) for b in mix.split(chunk, dim=-1)]
        parts.append(sep.flush())
        return cat_outputs(parts)

    # -- files ------------------------------------------------------------
    def _stream_file(
        self, path, chunk_seconds, overlap_seconds, out_rate, scale="mixture"
    ):
        """Yields output blocks ``[spks, n]`` at ``out_rate`` for a file.

        Reads the file in blocks, downmixes, resamples to the model's rate,
        separates chunk by chunk and resamples back: memory is bounded by
        the chunk length, whatever the file's length.
        """
        info, _ = audio.check_audio_file(path, self.min_seconds)
        rate_in = info.samplerate
        chunk, overlap = self.chunk_sizes(chunk_seconds, overlap_seconds)
        block_frames = max(1, int(audio.READ_BLOCK_SECONDS * rate_in))
        yield from separate_stream(
            audio.iter_audio_blocks(path, block_frames),
            self.separate_batch,
            rate_in,
            self.sample_rate,
            out_rate,
            chunk,
            overlap,
            scale=scale,
        )

    def _output_rate(self, output_sample_rate, path):
        if output_sample_rate is None or output_sample_rate == "model":
            return self.sample_rate
        if output_sample_rate == "input":
            return audio.audio_info(path).samplerate
        rate = int(output_sample_rate)
        if rate <= 0:
            raise ValueError(f"invalid output_sample_rate {output_sample_rate}")
        return rate

    def separate_file(
        self,
        path,
        savedir=None,
        output_sample_rate=None,
        normalize=False,
        chunk_seconds=None,
        overlap_seconds=None,
        scale="mixture",
    ):
        """Separates an audio file (any rate, any number of channels).

        The channels are averaged, the result resampled to the model's rate
        and separated; files longer than ``chunk_seconds`` are separated
        chunk by chunk (``separate_long``). Nothing is written.

        Arguments
        ---------
        path : str
            Local file (or URL / ``owner/repo/file.wav`` hub path, fetched
            afresh into a new temporary folder every time).
        savedir : str, optional
            Parent folder for such fetched files (default: system temp).
        output_sample_rate : None, "model", "input" or int
            Rate of the result: the model's (default, like SpeechBrain), the
            input file's, or a given rate.
        normalize : bool
            Scale each source so that its peak is 1 (SpeechBrain's
            ``separate_file`` always does this; here it is opt-in so that
            the sources keep their relative levels).
        chunk_seconds, overlap_seconds : float, optional
            Long-audio chunking (see ``separate_long``).
        scale : str
            ``"mixture"`` (default): each source gets the gain (of either
            sign: an inverted source is turned back) that makes the sources
            sum to the mixture in the least-squares sense (per chunk; see
            ``OverlapAddSeparator``), so the sources are at the mixture's
            level. ``"none"``: the model's own scale and sign, which SI-SNR
            training leaves arbitrary.

        Returns
        -------
        torch.Tensor
            ``[1, time, num_spks]``.
        """
        with local_audio_file(path, savedir) as local:
            out_rate = self._output_rate(output_sample_rate, local)
            blocks = list(
                self._stream_file(
                    local, chunk_seconds, overlap_seconds, out_rate, scale
                )
            )
        est = torch.cat(blocks, dim=-1).t().unsqueeze(0)  # [1, time, spks]
        if normalize:
            est = est / est.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
        return est

    def output_paths(self, output_folder, name):
        """The files ``separate_file_to_folder`` writes for ``name``.

        Arguments
        ---------
        output_folder : str or pathlib.Path
            The output folder.
        name : str
            Output base name.

        Returns
        -------
        list of pathlib.Path
            ``<output_folder>/<name>_s1.wav``, ... one per source.

        Example
        -------
        >>> model = S4MSeparation(
        ...     modules={}, hparams={"sample_rate": 8000, "num_spks": 2}
        ... )
        >>> [p.name for p in model.output_paths("out", "mix")]
        ['mix_s1.wav', 'mix_s2.wav']
        """
        folder = pathlib.Path(output_folder)
        return [folder / f"{name}_s{i + 1}.wav" for i in range(self.num_spks)]

    def separate_file_to_folder(
        self,
        path,
        output_folder,
        output_sample_rate="input",
        normalize=False,
        chunk_seconds=None,
        overlap_seconds=None,
        subtype="FLOAT",
        name=None,
        overwrite=False,
        scale="mixture",
    ):
        """Separates a file into ``<name>_s1.wav``, ``<name>_s2.wav``, ...

        Streaming: the input is read and the outputs written block by block,
        so memory stays flat however long the file is. Outputs go to hidden
        temporary files (``.<name>_s1.<pid>.*.part.wav``) in
        ``output_folder`` and are published only once complete
        (:class:`~speechbrain_s4m.inference.outputs.PendingOutputs`): an
        error never leaves a partial output file, and without ``overwrite``
        the final names are claimed atomically (``os.link``), so a run
        writing the same names at the same time is never overwritten (the
        later one raises ``FileExistsError`` naming the file). A full disk
        raises ``OutputWriteError`` naming the file. Temporary files of the
        same outputs left by a killed run are removed. The folder is
        created only when the input passed its checks.

        Scale and clipping: with ``scale="mixture"`` (default) the sources
        sum to the mixture in the least-squares sense (see
        ``separate_file``). Values are never clipped: FLOAT keeps them as
        they are; for an integer subtype (``PCM_*``) whose range the sources
        exceed (|x| > 1), all sources of the file are scaled by one factor
        (relative levels kept) and an :class:`OutputScaleWarning` names the
        file and the factor.

        Arguments
        ---------
        path : str
            The mixture file.
        output_folder : str
            Where to write (created if needed).
        output_sample_rate : "input", "model" or int
            Rate of the written files (default: the input's rate).
        normalize : bool
            Peak-normalise each output to 1 (second pass over the temporary
            file, still in blocks).
        chunk_seconds, overlap_seconds : float, optional
            Long-audio chunking (see ``separate_long``).
        subtype : str
            soundfile subtype, e.g. ``"FLOAT"`` or ``"PCM_16"``.
        name : str, optional
            Output base name (default: the input's name without extension).
        overwrite : bool
            Replace existing outputs. Without it, existing outputs raise
            ``FileExistsError`` naming them, before any work. The input
            itself is never overwritten.
        scale : str
            ``"mixture"`` or ``"none"`` (see ``separate_file``).

        Returns
        -------
        list of pathlib.Path
            The written files, one per source.
        """
        path = str(path)
        output_folder = pathlib.Path(output_folder)
        name = name or pathlib.Path(path).stem
        finals = self.output_paths(output_folder, name)
        check_output_folder(output_folder)
        clashes = [f for f in finals if outputs.same_file(f, path)]
        if clashes:
            raise ValueError(
                f"{path}: writing {clashes[0]} would overwrite the input "
                "itself; choose another output folder or name"
            )
        existing = [f for f in finals if os.path.lexists(f)]
        if existing and not overwrite:
            raise FileExistsError(
                outputs.exists_message(
                    existing,
                    "overwrite=True, or --overwrite on the command line,",
                )
            )
        if output_folder.is_dir():
            remove_stale_temporaries(finals)
        out_rate = self._output_rate(output_sample_rate, path)
        # Temporaries beside the finals (created, with the folder, once the
        # input passed its checks: at the first block), published only when
        # complete; removed on any error.
        with outputs.PendingOutputs(finals, out_rate, overwrite) as pending:
            peaks = np.zeros(self.num_spks)
            for block in self._stream_file(
                path, chunk_seconds, overlap_seconds, out_rate, scale
            ):
                data = block.numpy()  # [spks, n]
                peaks = np.maximum(peaks, np.abs(data).max(axis=1))
                pending.write(data)
            gains = self._output_gains(path, peaks, normalize, subtype)
            if subtype != "FLOAT" or normalize:
                pending.rescale(gains, subtype)
            pending.publish()
        return finals

    @staticmethod
    def _output_gains(path, peaks, normalize, subtype):
        """Per-source factors applied when writing the final files."""
        if normalize:
            return 1.0 / np.maximum(peaks, 1e-8)
        gains = np.ones_like(peaks)
        peak = float(peaks.max())
        if subtype.startswith("PCM") and peak > 1.0:
            factor = 1.0 / peak
            warnings.warn(
                f"{path}: the separated sources peak at {peak:.3g}, beyond "
                f"{subtype} full scale; all sources scaled by {factor:.3g} "
                "(not clipped; FLOAT output keeps the values)",
                OutputScaleWarning,
                stacklevel=3,
            )
            gains *= factor
        return gains


class OutputScaleWarning(UserWarning):
    """Outputs were scaled down to fit an integer sample format."""

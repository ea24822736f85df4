"""The pretrained separation interface: ``S4MSeparation``.

SpeechBrain's ``SepformerSeparation`` interface with strict loading, files
at any rate and channel count, chunked separation of long audio in bounded
memory and safe output files (differences: docs/inference.md).
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
from speechbrain_s4m.inference.chunking import (
    OverlapAddSeparator,
    separate_file_blocks,
)
from speechbrain_s4m.inference.loading import (
    MODULE_KEYS,
    load_model_folder,
    local_audio_file,
    resolve_model_folder,
)
from speechbrain_s4m.lobes.separator import Separator

DEFAULT_CHUNK_SECONDS = 30.0
DEFAULT_OVERLAP_SECONDS = 2.0


class OutputScaleWarning(UserWarning):
    """Outputs were scaled down to fit an integer sample format."""


class S4MSeparation(Pretrained):
    """A ready-to-use speech separation model (S4M or any masknet).

    Arguments
    ---------
    *args, **kwargs
        As SpeechBrain's ``Pretrained``; usually built by
        ``S4MSeparation.from_hparams(source=folder_or_hub_id)``.
    keep_freed_memory : bool
        On a CPU, apply :func:`speechbrain_s4m.allocator.keep_freed_memory`
        (process-wide; the process keeps its peak memory).

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
        """Loads a pretrained folder (local, read in place) or a hub repository.

        Arguments
        ---------
        source : str or pathlib.Path
            A local folder (from ``s4m-export``) or a hub id ``owner/name``;
            a missing path raises ``ModelNotFoundError`` (never sent to the
            hub).
        hparams_file, overrides, run_opts, overrides_must_match
            As SpeechBrain's (``run_opts={"device": "cuda:0"}``).
        savedir : str or pathlib.Path, optional
            Hub sources only: where to put the fetched files.
        overwrite : bool
            Re-fetch hub files into ``savedir`` (of another source too).
        fetch_config : speechbrain.utils.fetching.FetchConfig, optional
            Hub fetching options (revision, token, ...).
        download_only : bool
            Fetch the hub files only; returns None.
        local_strategy : None
            Accepted for compatibility with SpeechBrain, ignored.
        **kwargs
            Passed to the class (e.g. ``keep_freed_memory``).
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
        """Separates ``[batch, time]`` (or ``[time]``) mixtures at the
        model's rate into ``[batch, time, num_spks]``, with the training
        Brain's forward."""
        if mix.dim() == 1:
            mix = mix.unsqueeze(0)
        # Built per call (cheap): a module swapped in ``mods`` is used.
        separator = Separator.from_modules(self.mods, self.num_spks)
        with torch.no_grad():
            return separator(mix.to(self.device))

    def forward(self, mix):
        """Runs ``separate_batch``."""
        return self.separate_batch(mix)

    def chunk_sizes(self, chunk_seconds=None, overlap_seconds=None):
        """Checked chunk and overlap lengths in samples at the model's rate
        (defaults :data:`DEFAULT_CHUNK_SECONDS`, ``DEFAULT_OVERLAP_SECONDS``).

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
        if chunk_seconds is None:
            chunk_seconds = DEFAULT_CHUNK_SECONDS
        if overlap_seconds is None:
            overlap_seconds = DEFAULT_OVERLAP_SECONDS
        chunk = int(round(chunk_seconds * self.sample_rate))
        overlap = int(round(overlap_seconds * self.sample_rate))
        if overlap <= 0 or overlap >= chunk:
            raise ValueError(
                "need 0 < overlap_seconds < chunk_seconds, got "
                f"overlap_seconds={overlap_seconds}, "
                f"chunk_seconds={chunk_seconds}"
            )
        return chunk, overlap

    def _chunker(self, chunk_seconds, overlap_seconds, scale):
        chunk, overlap = self.chunk_sizes(chunk_seconds, overlap_seconds)
        return OverlapAddSeparator(
            self.separate_batch, chunk, overlap, scale=scale
        )

    def separate_long(
        self,
        mix,
        chunk_seconds=None,
        overlap_seconds=None,
        sample_rate=None,
        scale="mixture",
    ):
        """Separates ``[batch, time]`` (or ``[time]``) mixtures chunk by
        chunk (overlap-add) into ``[batch, time, num_spks]`` at the model's
        rate; ``sample_rate``: that of ``mix`` if not the model's; the other
        arguments as in :meth:`separate_file`."""
        if mix.dim() == 1:
            mix = mix.unsqueeze(0)
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        audio.check_audio_tensor(mix, rate, self.min_seconds)
        mix = mix.float().cpu()
        if rate != self.sample_rate:
            mix = torchaudio.functional.resample(mix, rate, self.sample_rate)
        sep = self._chunker(chunk_seconds, overlap_seconds, scale)
        parts = [sep.push(b) for b in mix.split(sep.chunk, dim=-1)]
        parts.append(sep.flush())
        return torch.cat([p for p in parts if p is not None], dim=1)

    def _stream_file(
        self, path, chunk_seconds, overlap_seconds, out_rate, scale="mixture"
    ):
        """Yields ``[spks, n]`` blocks at ``out_rate`` for a file."""
        yield from separate_file_blocks(
            path,
            lambda: self._chunker(chunk_seconds, overlap_seconds, scale),
            self.sample_rate,
            out_rate,
            self.min_seconds,
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
        """Separates an audio file (any rate, any number of channels,
        downmixed), chunk by chunk. Nothing is written.

        Arguments
        ---------
        path : str
            Local file, or URL / ``owner/repo/file.wav`` hub path (fetched
            afresh every time, into a temporary folder under ``savedir``).
        savedir : str, optional
            Parent folder for such fetched files (default: system temp).
        output_sample_rate : None, "model", "input" or int
            Rate of the result: the model's (default), the input's, or given.
        normalize : bool
            Scale each source to peak 1 (always done by SpeechBrain).
        chunk_seconds, overlap_seconds : float, optional
            Chunk length and overlap (default: :meth:`chunk_sizes`).
        scale : str
            ``"mixture"``: signed gains (an inverted source is turned back)
            so that the sources sum to the mixture per chunk; ``"none"``:
            the model's own scale and sign, which SI-SNR leaves arbitrary.

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
        """The files ``separate_file_to_folder`` writes for ``name``:
        ``<output_folder>/<name>_s1.wav``, ... one per source."""
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

        Memory stays flat however long the file is. The outputs are
        published only once complete (:class:`.outputs.PendingOutputs`),
        and never clipped: for a ``PCM_*`` subtype that they exceed, all
        sources are scaled by one factor, with an :class:`OutputScaleWarning`.

        Arguments
        ---------
        path, normalize, chunk_seconds, overlap_seconds, scale
            As ``separate_file`` (``path`` local).
        output_folder : str
            Where to write (created if needed).
        output_sample_rate : "input", "model" or int
            Rate of the written files (default: the input's rate).
        subtype : str
            soundfile subtype, e.g. ``"FLOAT"`` or ``"PCM_16"``.
        name : str, optional
            Output base name (default: the input's name without extension).
        overwrite : bool
            Replace existing outputs (else ``FileExistsError`` before any
            work); the input never is.

        Returns
        -------
        list of pathlib.Path
            The written files, one per source.
        """
        path = str(path)
        output_folder = pathlib.Path(output_folder)
        finals = self.output_paths(
            output_folder, name or pathlib.Path(path).stem
        )
        outputs.check_output_folder(output_folder)
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
        outputs.remove_stale_temporaries(finals)
        out_rate = self._output_rate(output_sample_rate, path)
        with outputs.PendingOutputs(finals, out_rate, overwrite) as pending:
            peaks = np.zeros(self.num_spks)
            for block in self._stream_file(
                path, chunk_seconds, overlap_seconds, out_rate, scale
            ):
                data = block.numpy()  # [spks, n]
                peaks = np.maximum(peaks, np.abs(data).max(axis=1))
                pending.write(data)
            if normalize:
                pending.rescale(1.0 / np.maximum(peaks, 1e-8), subtype)
            elif subtype != "FLOAT":
                peak = float(peaks.max())
                factor = 1.0
                if subtype.startswith("PCM") and peak > 1.0:
                    factor = 1.0 / peak
                    warnings.warn(
                        f"{path}: the separated sources peak at {peak:.3g}, "
                        f"beyond {subtype} full scale; all sources scaled by "
                        f"{factor:.3g} (not clipped; FLOAT output keeps the "
                        "values)",
                        OutputScaleWarning,
                        stacklevel=2,
                    )
                pending.rescale(np.full(self.num_spks, factor), subtype)
            pending.publish()
        return finals

"""Folder layouts of the official datasets (shared by :mod:`.prepare` and
the synthetic writers) and the checks of a folder (:class:`ExpectedLayout`).

Every dataset lies under ``<data_folder>/wav8k|wav16k/min|max/<split>/``,
one folder per signal, the same file names in every folder of a split.
"""

import os
from pathlib import Path
from types import MappingProxyType

from speechbrain_s4m.audio import DATASET_EXTENSIONS

#: Peak level of the written mixtures and sources (fraction of full scale).
PEAK = 0.9
#: Mixing modes: ``min`` cuts to the shortest source, ``max`` zero-pads.
MODES = ("min", "max")
#: WSJ0-2mix/3mix: manifest split -> split folder.
WSJ0MIX_SPLITS = MappingProxyType({"train": "tr", "valid": "cv", "test": "tt"})
#: WSJ0-2mix/3mix: folder of the mixtures.
WSJ0MIX_MIX = "mix"
#: WHAM!: manifest split -> split folder (those of wsj0-2mix).
WHAM_SPLITS = WSJ0MIX_SPLITS
#: LibriMix split folders, in the order the generation scripts list them.
LIBRIMIX_SPLITS = ("train-360", "train-100", "dev", "test")
#: LibriMix training sets (one is chosen as the ``train`` manifest).
LIBRIMIX_TRAIN_SETS = ("train-360", "train-100")
#: LibriMix / WHAM! mixture kinds: folder ``mix_<kind>``.
MIXTURES = ("both", "clean", "single")
#: LibriMix / WHAM!: folder of the noise signals.
NOISE_FOLDER = "noise"
#: LibriMix metadata: first column, the mixture's name (file stem).
METADATA_ID = "mixture_ID"
#: LibriMix metadata: last column, the mixture's length in samples.
METADATA_LENGTH = "length"


def check_choice(name, value, choices):
    """Raises ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def rate_folder(sample_rate):
    """The folder of a sample rate (``wav8k`` / ``wav16k``)."""
    if sample_rate not in (8000, 16000):
        raise ValueError(
            f"sample_rate must be 8000 or 16000 (the wav8k/wav16k folders of "
            f"the official datasets), got {sample_rate}"
        )
    return f"wav{sample_rate // 1000}k"


def source_folders(num_spks):
    """The folders of the separated sources: ``s1``, ``s2``, ..."""
    return [f"s{i + 1}" for i in range(num_spks)]


def librimix_splits(train_set="train-360"):
    """The LibriMix split folder of each manifest split."""
    check_choice("train_set", train_set, LIBRIMIX_TRAIN_SETS)
    return {"train": train_set, "valid": "dev", "test": "test"}


def mixture_parts(mixture, num_spks):
    """``(mix folder, source folders, noise folder or None)`` of a LibriMix
    / WHAM! ``mixture``: ``both`` (sources + noise), ``clean`` (sources) or
    ``single`` (``s1`` + noise)."""
    check_choice("mixture", mixture, MIXTURES)
    sources = source_folders(1 if mixture == "single" else num_spks)
    noise = None if mixture == "clean" else NOISE_FOLDER
    return f"mix_{mixture}", sources, noise


def metadata_file(split, mix_folder):
    """A LibriMix metadata path, relative to ``wavXk/<mode>``."""
    return f"metadata/mixture_{split}_{mix_folder}.csv"


def metadata_columns(mix_folder, sources, noise):
    """The LibriMix metadata path columns ``{folder: column}`` of the
    :func:`mixture_parts`, in file order, between :data:`METADATA_ID` and
    :data:`METADATA_LENGTH`."""
    columns = {mix_folder: "mixture_path"}
    for i, sub in enumerate(sources):
        columns[sub] = f"source_{i + 1}_path"
    if noise:
        columns[noise] = "noise_path"
    return columns


class DatasetLayoutError(FileNotFoundError):
    """The data folder lacks the expected layout (the message says what)."""


def _listing(folder):
    """The entries of ``folder``, shortly, for error messages."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return "(unreadable)"
    if not entries:
        return "(empty)"
    more = f", ... ({len(entries)} entries)" if len(entries) > 10 else ""
    return ", ".join(entries[:10]) + more


def _audio_names(folder):
    """Sorted audio file names directly in ``folder``."""
    with os.scandir(folder) as it:
        return sorted(
            e.name
            for e in it
            if e.is_file() and e.name.lower().endswith(DATASET_EXTENSIONS)
        )


class ExpectedLayout:
    """Expected layout of one dataset: checks a folder, lists its files.

    Arguments
    ---------
    name : str
        Dataset name used in messages.
    data_folder : str or Path
        The folder given by the user (``--data_folder``).
    sample_rate, mode
        The ``wavXk`` and ``min``/``max`` folders.
    split_dirs : dict
        Manifest split -> folder name (e.g. ``{"train": "tr", ...}``).
    parts : tuple
        As :func:`mixture_parts` returns.
    hint : str
        What ``--data_folder`` should point at.
    """

    #: How many file names an error message lists at most.
    max_listed = 5

    def __init__(
        self, name, data_folder, sample_rate, mode, split_dirs, parts, hint
    ):
        self.name = name
        self.data_folder = Path(data_folder).expanduser().absolute()
        self.rate_dir = rate_folder(sample_rate)
        self.sample_rate = sample_rate
        self.mode = mode
        self.split_dirs = dict(split_dirs)
        self.mix_dir, self.source_dirs, self.noise_dir = parts
        self.hint = hint

    @property
    def base(self):
        """``<data_folder>/wavXk/<mode>``."""
        return self.data_folder / self.rate_dir / self.mode

    @property
    def subdirs(self):
        """All per-split folders the manifest needs, mixture first."""
        subs = [self.mix_dir] + self.source_dirs
        return subs + ([self.noise_dir] if self.noise_dir else [])

    def error(self, problem):
        """A DatasetLayoutError with the problem and the expected layout."""
        splits = ",".join(self.split_dirs.values())
        return DatasetLayoutError(
            f"{self.name}: {problem}\n  data_folder: {self.data_folder}\n"
            f"  expected {self.name} layout: <data_folder>/{self.rate_dir}/"
            f"{self.mode}/{{{splits}}}/{{{','.join(self.subdirs)}}}/"
            "<mixture_name>.wav (same file names in every folder); " + self.hint
        )

    def check(self, splits=None):
        """Checks that the ``data_folder``, ``wavXk`` and ``mode`` folders
        and those of the manifest ``splits`` (default: all) exist."""
        root = self.data_folder
        if not root.is_dir():
            raise self.error(f"data_folder '{root}' does not exist")
        for sub in (self.rate_dir, self.mode):
            parent, root = root, root / sub
            if root.is_dir():
                continue
            problem = (
                f"missing folder '{root}' (found in '{parent}': "
                f"{_listing(parent)})"
            )
            known = set(self.split_dirs.values()) | set(MODES)
            if parent == self.data_folder and set(os.listdir(parent)) & known:
                problem += (
                    "; data_folder seems to point inside the dataset: "
                    f"pass the folder that contains '{self.rate_dir}'"
                )
            raise self.error(problem)
        missing = []
        for split in self.split_dirs if splits is None else splits:
            split_dir = self.base / self.split_dirs[split]
            if not split_dir.is_dir():
                missing.append(f"'{split_dir}' ({split} split)")
                continue
            missing += [
                f"'{split_dir / sub}' (found in '{split_dir}': "
                f"{_listing(split_dir)})"
                for sub in self.subdirs
                if not (split_dir / sub).is_dir()
            ]
        if missing:
            raise self.error("missing folder(s): " + "; ".join(missing))

    def folder_rows(self, split):
        """Manifest rows of a split from its folders, whose file sets must
        match: ``{"ID", "duration": None, "paths": {folder: path}}``."""
        split_dir = self.base / self.split_dirs[split]
        mix_dir = split_dir / self.mix_dir
        names = {sub: _audio_names(split_dir / sub) for sub in self.subdirs}
        ref = set(names[self.mix_dir])
        if not ref:
            raise self.error(f"no .wav/.flac files in '{mix_dir}'")
        problems = []
        for sub in self.subdirs[1:]:
            other = set(names[sub])
            if not other:
                problems.append(f"no .wav/.flac files in '{split_dir / sub}'")
                continue
            lacking, extra = sorted(ref - other), sorted(other - ref)
            if lacking:
                problems.append(
                    f"{len(lacking)} file(s) of '{mix_dir}' missing in "
                    f"'{split_dir / sub}' (e.g. "
                    f"{', '.join(lacking[: self.max_listed])})"
                )
            if extra:
                problems.append(
                    f"{len(extra)} file(s) in '{split_dir / sub}' without a "
                    f"mixture in '{mix_dir}' (e.g. "
                    f"{', '.join(extra[: self.max_listed])})"
                )
        if problems:
            raise self.error("mismatched file sets: " + "; ".join(problems))
        return [
            {
                "ID": Path(name).stem,
                "duration": None,
                "paths": {s: split_dir / s / name for s in self.subdirs},
            }
            for name in names[self.mix_dir]
        ]

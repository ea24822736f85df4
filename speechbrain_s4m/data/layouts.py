"""Folder layouts of the official datasets, defined once, and their checks.

Preparation (:mod:`speechbrain_s4m.data.prepare`) reads these layouts; the
synthetic writers (:mod:`speechbrain_s4m.data.synthetic`) produce them. Both
take every folder and file name from this module.

All three datasets share the top of the tree,
``<data_folder>/wav8k|wav16k/min|max/<split>/<folder>/<mixture>.wav``, where
``wav8k``/``wav16k`` is the sample rate (:func:`rate_folder`) and ``min``
("cut to the shortest source") or ``max`` ("zero-pad to the longest") the
mixing mode (:data:`MODES`). File names are the same in every folder of a
split. Below that:

- **WSJ0-2mix / WSJ0-3mix** (``--data_folder .../wsj0-mix/2speakers``):
  splits ``tr``, ``cv``, ``tt`` (:data:`WSJ0MIX_SPLITS`); folders ``mix``
  (:data:`WSJ0MIX_MIX`) and ``s1``, ``s2`` (, ``s3``) (:func:`source_folders`);
  ``mix = s1 + s2``.
- **Libri2Mix / Libri3Mix** (``--data_folder .../Libri2Mix``): splits
  ``train-360``, ``train-100``, ``dev``, ``test`` (:data:`LIBRIMIX_SPLITS`,
  :func:`librimix_splits`); folders ``mix_clean`` (sources), ``mix_both``
  (sources + noise), ``mix_single`` (``s1`` + noise), the sources and
  ``noise`` (:func:`mixture_parts`); metadata CSVs
  ``metadata/mixture_<split>_<mix folder>.csv`` beside the splits
  (:func:`metadata_file`, :func:`metadata_columns`).
- **WHAM!** (``--data_folder`` the WHAM! output folder, e.g. ``wham_mix``):
  the splits of WSJ0-2mix (:data:`WHAM_SPLITS`), the folders of Libri2Mix
  (``mix_clean``, ``mix_both``, ``mix_single``, ``s1``, ``s2``, ``noise``).

Every dataset is written as 16-bit PCM with mixtures at most
:data:`PEAK` of full scale, as the generation scripts scale them.

:class:`ExpectedLayout` checks a folder against one of these layouts and
raises :class:`DatasetLayoutError` naming what is missing and what was
expected.

Authors
 * speechbrain-s4m contributors 2026
"""

import os
from pathlib import Path
from types import MappingProxyType

import soundfile as sf

from speechbrain_s4m.audio import DATASET_EXTENSIONS as _AUDIO_EXT

__all__ = [
    "PEAK",
    "SAMPLE_RATES",
    "MODES",
    "WSJ0MIX_SPLITS",
    "WSJ0MIX_MIX",
    "WHAM_SPLITS",
    "LIBRIMIX_SPLITS",
    "LIBRIMIX_TRAIN_SETS",
    "MIXTURES",
    "NOISE_FOLDER",
    "METADATA_FOLDER",
    "METADATA_ID",
    "METADATA_LENGTH",
    "rate_folder",
    "source_folders",
    "librimix_splits",
    "mixture_parts",
    "metadata_file",
    "metadata_columns",
    "DatasetAudioError",
    "DatasetLayoutError",
    "ExpectedLayout",
]

#: Peak level of the written mixtures and sources (fraction of full scale).
PEAK = 0.9
#: Sample rates of the official datasets (folders ``wav8k``, ``wav16k``).
SAMPLE_RATES = (8000, 16000)
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
#: LibriMix: folder of the metadata CSVs (beside the split folders).
METADATA_FOLDER = "metadata"
#: LibriMix metadata: first column, the mixture's name (file stem).
METADATA_ID = "mixture_ID"
#: LibriMix metadata: last column, the mixture's length in samples.
METADATA_LENGTH = "length"


def rate_folder(sample_rate):
    """Returns the folder of a sample rate (``wav8k`` / ``wav16k``).

    Arguments
    ---------
    sample_rate : int
        8000 or 16000.

    Returns
    -------
    folder : str

    Example
    -------
    >>> rate_folder(8000), rate_folder(16000)
    ('wav8k', 'wav16k')
    >>> rate_folder(22050)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: sample_rate must be 8000 or 16000 (...), got 22050
    """
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(
            f"sample_rate must be 8000 or 16000 (the wav8k/wav16k folders of "
            f"the official datasets), got {sample_rate}"
        )
    return f"wav{sample_rate // 1000}k"


def source_folders(num_spks):
    """Returns the folders of the separated sources (``s1``, ``s2``, ...).

    Arguments
    ---------
    num_spks : int
        Number of sources.

    Returns
    -------
    folders : list of str

    Example
    -------
    >>> source_folders(3)
    ['s1', 's2', 's3']
    """
    return [f"s{i + 1}" for i in range(num_spks)]


def librimix_splits(train_set="train-360"):
    """Returns the LibriMix split folder of each manifest split.

    Arguments
    ---------
    train_set : str
        ``train-360`` or ``train-100``.

    Returns
    -------
    splits : dict
        Manifest split (``train``, ``valid``, ``test``) -> split folder.

    Example
    -------
    >>> librimix_splits("train-100")
    {'train': 'train-100', 'valid': 'dev', 'test': 'test'}
    """
    if train_set not in LIBRIMIX_TRAIN_SETS:
        raise ValueError(
            f"train_set must be one of {LIBRIMIX_TRAIN_SETS}, got {train_set!r}"
        )
    return {"train": train_set, "valid": "dev", "test": "test"}


def mixture_parts(mixture, num_spks):
    """Returns the folders of a LibriMix / WHAM! mixture and of its parts.

    ``mix_clean`` is the sum of the sources, ``mix_both`` the sum of the
    sources and the noise, ``mix_single`` the sum of ``s1`` and the noise.

    Arguments
    ---------
    mixture : str
        ``both``, ``clean`` or ``single``.
    num_spks : int
        Number of speakers of the dataset (2 or 3).

    Returns
    -------
    mix_folder : str
        ``mix_<mixture>``.
    sources : list of str
        Source folders summed into the mixture.
    noise : str or None
        The noise folder if the mixture contains noise.

    Example
    -------
    >>> mixture_parts("both", 2)
    ('mix_both', ['s1', 's2'], 'noise')
    >>> mixture_parts("single", 2)
    ('mix_single', ['s1'], 'noise')
    >>> mixture_parts("clean", 3)
    ('mix_clean', ['s1', 's2', 's3'], None)
    """
    if mixture not in MIXTURES:
        raise ValueError(f"mixture must be one of {MIXTURES}, got {mixture!r}")
    sources = source_folders(1 if mixture == "single" else num_spks)
    noise = None if mixture == "clean" else NOISE_FOLDER
    return f"mix_{mixture}", sources, noise


def metadata_file(split, mix_folder):
    """Returns a LibriMix metadata path, relative to ``wavXk/<mode>``.

    Arguments
    ---------
    split : str
        Split folder (``train-360``, ``dev``, ...).
    mix_folder : str
        Mixture folder (``mix_both``, ...).

    Returns
    -------
    path : str

    Example
    -------
    >>> metadata_file("dev", "mix_both")
    'metadata/mixture_dev_mix_both.csv'
    """
    return f"{METADATA_FOLDER}/mixture_{split}_{mix_folder}.csv"


def metadata_columns(mix_folder, sources, noise):
    """Returns the LibriMix metadata columns (the paths by folder).

    Besides the path columns, a metadata file has :data:`METADATA_ID`
    (first) and :data:`METADATA_LENGTH` (last, in samples).

    Arguments
    ---------
    mix_folder : str
        Mixture folder.
    sources : list of str
        Source folders.
    noise : str or None
        Noise folder.

    Returns
    -------
    columns : dict
        Folder -> column holding the paths of its files, in column order.

    Example
    -------
    >>> cols = metadata_columns(*mixture_parts("single", 2))
    >>> list(cols.items())[1:]
    [('s1', 'source_1_path'), ('noise', 'noise_path')]
    """
    columns = {mix_folder: "mixture_path"}
    for i, sub in enumerate(sources):
        columns[sub] = f"source_{i + 1}_path"
    if noise:
        columns[noise] = "noise_path"
    return columns


# ---------------------------------------------------------------------------
# checking a folder against a layout
# ---------------------------------------------------------------------------


class DatasetLayoutError(FileNotFoundError):
    """The data folder does not have the expected dataset layout.

    The message names what is missing (folders, files, metadata columns) and
    the layout that was expected.
    """


class DatasetAudioError(DatasetLayoutError):
    """Audio files of a dataset that cannot be used (unreadable, truncated,
    wrong rate or channel count, sources longer or shorter than their
    mixture), all found in one pass over the headers.

    Arguments
    ---------
    name : str
        The dataset (``WSJ0-2mix``, ...).
    data_folder : str or Path
        The folder checked.
    problems : list of str
        One line per bad file, each naming the file.

    Example
    -------
    >>> err = DatasetAudioError("WSJ0-2mix", "/d", ["/d/a.wav: truncated"])
    >>> str(err).splitlines()[0].split(" (")[0]
    "WSJ0-2mix: 1 bad audio file(s) under '/d'"
    >>> str(err).splitlines()[1]
    '  /d/a.wav: truncated'
    >>> err.problems
    ['/d/a.wav: truncated']
    """

    def __init__(self, name, data_folder, problems):
        self.problems = list(problems)
        super().__init__(
            f"{name}: {len(self.problems)} bad audio file(s) under "
            f"'{data_folder}' (headers checked: readable, rate, mono, data "
            "size, sources as long as the mixture):\n  "
            + "\n  ".join(self.problems)
        )

    def __str__(self):
        return str(self.args[0])


def _listing(folder):
    """Short description of the entries of ``folder`` for error messages."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return "(unreadable)"
    if not entries:
        return "(empty)"
    shown = ", ".join(entries[:10])
    more = f", ... ({len(entries)} entries)" if len(entries) > 10 else ""
    return shown + more


def _audio_names(folder):
    """Sorted audio file names (with extension) directly in ``folder``."""
    with os.scandir(folder) as it:
        return sorted(
            e.name
            for e in it
            if e.is_file() and e.name.lower().endswith(_AUDIO_EXT)
        )


class ExpectedLayout:
    """Expected on-disk layout of one dataset (used for checks & messages).

    Arguments
    ---------
    name : str
        Dataset name used in messages.
    data_folder : str or Path
        The folder given by the user (``--data_folder``).
    sample_rate : int
        8000 or 16000.
    mode : str
        ``min`` or ``max``.
    split_dirs : dict
        Manifest split -> folder name (e.g. ``{"train": "tr", ...}``).
    mix_dir : str
        Folder of the mixtures (``mix``, ``mix_both``, ...).
    source_dirs : list of str
        Folders of the target sources (``s1``, ``s2``, ...).
    noise_dir : str or None
        Folder of the noise, when the manifest gets a ``noise_wav`` column.
    hint : str
        What ``--data_folder`` should point at.

    Example
    -------
    >>> layout = ExpectedLayout(
    ...     "WSJ0-2mix",
    ...     "/nowhere",
    ...     8000,
    ...     "min",
    ...     WSJ0MIX_SPLITS,
    ...     WSJ0MIX_MIX,
    ...     source_folders(2),
    ...     None,
    ...     "pass --data_folder .../wsj0-mix/2speakers",
    ... )
    >>> layout.base.as_posix(), layout.subdirs
    ('/nowhere/wav8k/min', ['mix', 's1', 's2'])
    >>> try:
    ...     layout.check_dirs()
    ... except DatasetLayoutError as err:
    ...     print(str(err).splitlines()[0])
    WSJ0-2mix: data_folder '/nowhere' does not exist
    """

    #: How many file names an error message lists at most.
    max_listed = 5

    def __init__(
        self,
        name,
        data_folder,
        sample_rate,
        mode,
        split_dirs,
        mix_dir,
        source_dirs,
        noise_dir,
        hint,
    ):
        self.name = name
        self.data_folder = Path(data_folder).expanduser().absolute()
        self.rate_dir = rate_folder(sample_rate)
        self.sample_rate = sample_rate
        self.mode = mode
        self.split_dirs = dict(split_dirs)
        self.mix_dir = mix_dir
        self.source_dirs = list(source_dirs)
        self.noise_dir = noise_dir
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

    def expected(self):
        """Human-readable expected layout."""
        splits = ",".join(self.split_dirs.values())
        subs = ",".join(self.subdirs)
        return (
            f"expected {self.name} layout: <data_folder>/{self.rate_dir}/"
            f"{self.mode}/{{{splits}}}/{{{subs}}}/<mixture_name>.wav "
            f"(same file names in every folder); {self.hint}"
        )

    def error(self, problem):
        """A DatasetLayoutError with the problem and the expected layout."""
        return DatasetLayoutError(
            f"{self.name}: {problem}\n  data_folder: {self.data_folder}\n"
            f"  {self.expected()}"
        )

    def check_base(self):
        """Checks ``data_folder``, ``wavXk`` and ``mode`` folders."""
        root = self.data_folder
        if not root.is_dir():
            raise self.error(f"data_folder '{root}' does not exist")
        for sub in (self.rate_dir, self.mode):
            parent = root
            root = root / sub
            if not root.is_dir():
                problem = (
                    f"missing folder '{root}' (found in '{parent}': "
                    f"{_listing(parent)})"
                )
                inside = set(os.listdir(parent))
                known = set(self.split_dirs.values()) | set(MODES)
                if parent == self.data_folder and inside & known:
                    problem += (
                        "; data_folder seems to point inside the dataset: "
                        f"pass the folder that contains '{self.rate_dir}'"
                    )
                raise self.error(problem)

    def check_dirs(self, splits=None):
        """Checks that every split and sub-folder exists (no file listing)."""
        self.check_base()
        missing = []
        for split in splits or self.split_dirs:
            split_dir = self.base / self.split_dirs[split]
            if not split_dir.is_dir():
                missing.append(f"'{split_dir}' ({split} split)")
                continue
            for sub in self.subdirs:
                if not (split_dir / sub).is_dir():
                    missing.append(
                        f"'{split_dir / sub}' (found in '{split_dir}': "
                        f"{_listing(split_dir)})"
                    )
        if missing:
            raise self.error("missing folder(s): " + "; ".join(missing))

    def scan(self, split):
        """Lists and cross-checks the files of one split.

        Returns
        -------
        names : list of str
            Sorted mixture file names present in every sub-folder.
        """
        split_dir = self.base / self.split_dirs[split]
        names = {sub: _audio_names(split_dir / sub) for sub in self.subdirs}
        ref = names[self.mix_dir]
        if not ref:
            raise self.error(
                f"no .wav/.flac files in '{split_dir / self.mix_dir}'"
            )
        problems = []
        ref_set = set(ref)
        for sub in self.subdirs[1:]:
            other = set(names[sub])
            if not other:
                problems.append(f"no .wav/.flac files in '{split_dir / sub}'")
                continue
            lacking = sorted(ref_set - other)
            extra = sorted(other - ref_set)
            if lacking:
                problems.append(
                    f"{len(lacking)} file(s) of '{split_dir / self.mix_dir}' "
                    f"missing in '{split_dir / sub}' (e.g. "
                    f"{', '.join(lacking[: self.max_listed])})"
                )
            if extra:
                problems.append(
                    f"{len(extra)} file(s) in '{split_dir / sub}' without a "
                    f"mixture in '{split_dir / self.mix_dir}' (e.g. "
                    f"{', '.join(extra[: self.max_listed])})"
                )
        if problems:
            raise self.error("mismatched file sets: " + "; ".join(problems))
        return ref

    def audio_info(self, path):
        """Header of an audio file, checked: readable, rate, mono.

        Arguments
        ---------
        path : str or Path
            The file.

        Returns
        -------
        info : soundfile.SoundFile info
        """
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as err:
            raise self.error(f"cannot read audio file '{path}': {err}") from err
        if info.samplerate != self.sample_rate:
            raise self.error(
                f"'{path}' has a sample rate of {info.samplerate} Hz, but "
                f"sample_rate={self.sample_rate} (folder '{self.rate_dir}') "
                "was requested"
            )
        if info.channels != 1:
            raise self.error(
                f"'{path}' has {info.channels} channels; mono files expected"
            )
        return info

"""Folder layouts of the official datasets, shared by preparation
(:mod:`speechbrain_s4m.data.prepare`) and the synthetic writers.

Every dataset lies under ``<data_folder>/wav8k|wav16k/min|max/<split>/``,
one folder per signal, the same file names in every folder of a split:
WSJ0-2mix/3mix (splits ``tr, cv, tt``; folders ``mix, s1, s2[, s3]``),
Libri2Mix/3Mix (splits ``train-360, train-100, dev, test``; folders
``mix_clean, mix_both, mix_single, s1, s2[, s3], noise``; metadata CSVs in
``metadata/``) and WHAM! (the splits of WSJ0-2mix, the folders of LibriMix).
Files are 16-bit PCM, mixtures at most :data:`PEAK` of full scale.
"""

from types import MappingProxyType

__all__ = [
    "PEAK",
    "MODES",
    "WSJ0MIX_SPLITS",
    "WSJ0MIX_MIX",
    "WHAM_SPLITS",
    "LIBRIMIX_SPLITS",
    "LIBRIMIX_TRAIN_SETS",
    "MIXTURES",
    "NOISE_FOLDER",
    "METADATA_ID",
    "METADATA_LENGTH",
    "check_choice",
    "rate_folder",
    "source_folders",
    "librimix_splits",
    "mixture_parts",
    "metadata_file",
    "metadata_columns",
]

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
    """Raises ValueError unless ``value`` is one of ``choices``.

    Example
    -------
    >>> check_choice("mode", "mid", MODES)
    Traceback (most recent call last):
    ...
    ValueError: mode must be one of ('min', 'max'), got 'mid'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def rate_folder(sample_rate):
    """Returns the folder of a sample rate (``wav8k`` / ``wav16k``).

    Example
    -------
    >>> rate_folder(8000), rate_folder(16000)
    ('wav8k', 'wav16k')
    """
    if sample_rate not in (8000, 16000):
        raise ValueError(
            f"sample_rate must be 8000 or 16000 (the wav8k/wav16k folders of "
            f"the official datasets), got {sample_rate}"
        )
    return f"wav{sample_rate // 1000}k"


def source_folders(num_spks):
    """Returns the folders of the separated sources (``s1``, ``s2``, ...).

    Example
    -------
    >>> source_folders(3)
    ['s1', 's2', 's3']
    """
    return [f"s{i + 1}" for i in range(num_spks)]


def librimix_splits(train_set="train-360"):
    """Returns the LibriMix split folder of each manifest split.

    Example
    -------
    >>> librimix_splits("train-100")
    {'train': 'train-100', 'valid': 'dev', 'test': 'test'}
    """
    check_choice("train_set", train_set, LIBRIMIX_TRAIN_SETS)
    return {"train": train_set, "valid": "dev", "test": "test"}


def mixture_parts(mixture, num_spks):
    """Returns the folder of a LibriMix / WHAM! mixture and of its parts.

    Arguments
    ---------
    mixture : str
        ``both`` (sources + noise), ``clean`` (sources) or ``single``
        (``s1`` + noise).
    num_spks : int
        Number of speakers of the dataset.

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
    >>> mixture_parts("both", 2), mixture_parts("single", 2)
    (('mix_both', ['s1', 's2'], 'noise'), ('mix_single', ['s1'], 'noise'))
    >>> mixture_parts("clean", 3)
    ('mix_clean', ['s1', 's2', 's3'], None)
    """
    check_choice("mixture", mixture, MIXTURES)
    sources = source_folders(1 if mixture == "single" else num_spks)
    noise = None if mixture == "clean" else NOISE_FOLDER
    return f"mix_{mixture}", sources, noise


def metadata_file(split, mix_folder):
    """Returns a LibriMix metadata path, relative to ``wavXk/<mode>``.

    Example
    -------
    >>> metadata_file("dev", "mix_both")
    'metadata/mixture_dev_mix_both.csv'
    """
    return f"metadata/mixture_{split}_{mix_folder}.csv"


def metadata_columns(mix_folder, sources, noise):
    """Returns the LibriMix metadata path columns: ``{folder: column}``.

    The columns come in file order, after :data:`METADATA_ID` and before
    :data:`METADATA_LENGTH`; the arguments are those :func:`mixture_parts`
    returns.

    Example
    -------
    >>> metadata_columns(*mixture_parts("single", 2))
    {'mix_single': 'mixture_path', 's1': 'source_1_path', 'noise': 'noise_path'}
    """
    columns = {mix_folder: "mixture_path"}
    for i, sub in enumerate(sources):
        columns[sub] = f"source_{i + 1}_path"
    if noise:
        columns[noise] = "noise_path"
    return columns

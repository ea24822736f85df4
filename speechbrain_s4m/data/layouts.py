"""Folder layouts of the official datasets, defined once.

Preparation (:mod:`speechbrain_s4m.data.prepare`) checks and reads these
layouts; the synthetic writers (:mod:`speechbrain_s4m.data.synthetic`)
produce them. Both take every folder and file name from this module.

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

Authors
 * speechbrain-s4m contributors 2026
"""

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
]

#: Peak level of the written mixtures and sources (fraction of full scale).
PEAK = 0.9
#: Sample rates of the official datasets (folders ``wav8k``, ``wav16k``).
SAMPLE_RATES = (8000, 16000)
#: Mixing modes: ``min`` cuts to the shortest source, ``max`` zero-pads.
MODES = ("min", "max")

#: WSJ0-2mix/3mix: manifest split -> split folder.
WSJ0MIX_SPLITS = {"train": "tr", "valid": "cv", "test": "tt"}
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

"""SpeechBrain datasets from the manifests of :mod:`.prepare`.

Items: ``id, mix_sig, s1_sig, s2_sig[, s3_sig][, noise_sig]`` (float32
``[time]``). The pipeline is the one place that crops training signals and
gives ``noise_sig`` whenever a manifest has ``noise_wav``: the Brain neither
crops nor guesses.
"""

import csv

import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_s4m.audio import AudioFormatError, audio_frames, read_audio
from speechbrain_s4m.data.layouts import check_choice

SORTINGS = ("ascending", "descending", "random")


def signal_keys(num_spks=2, noise=False):
    """Output keys of the signals: ``mix_sig``, ``s1_sig``, ... and, with
    ``noise``, ``noise_sig``."""
    keys = ["mix_sig"] + [f"s{i + 1}_sig" for i in range(num_spks)]
    return keys + (["noise_sig"] if noise else [])


def training_crop_len(hparams):
    """Training crop length (samples) from the recipe hparams:
    ``training_signal_len`` if ``limit_training_signal_len``, else None
    (whole utterances). The one reader of these two keys."""
    if not hparams.get("limit_training_signal_len", False):
        return None
    return int(hparams.get("training_signal_len", 32000))


def _make_loader(sample_rate, crop_len):
    """Dynamic-item function reading (and cropping) all signals."""

    def load(*paths):
        start, stop = 0, None
        if crop_len is not None:
            frames, _ = audio_frames(paths[0])
            if frames > crop_len:
                start = int(torch.randint(0, frames - crop_len + 1, ()))
                stop = start + crop_len
        sigs = [read_audio(p, sample_rate, start, stop) for p in paths]
        n = sigs[0].shape[0]
        for path, sig in zip(paths[1:], sigs[1:]):
            if sig.shape[0] != n:
                raise AudioFormatError(
                    f"'{path}' has {sig.shape[0]} samples in the read range "
                    f"but the mixture '{paths[0]}' has {n}: sources and "
                    "mixture must have the same length"
                )
        yield from sigs

    return load


def _make_dataset(
    csv_path, num_spks, sample_rate, noise, crop_len, sorting, max_duration
):
    """One ``DynamicItemDataset`` from a manifest (see make_datasets)."""
    check_choice("sorting", sorting, SORTINGS)
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f), [])
    if noise is None:
        noise = "noise_wav" in header
    columns = ["mix_wav"] + [f"s{i + 1}_wav" for i in range(num_spks)]
    columns += ["noise_wav"] if noise else []
    lacking = [c for c in ["ID", "duration"] + columns if c not in header]
    if lacking:
        raise ValueError(
            f"manifest '{csv_path}' lacks column(s) {lacking} (has {header}); "
            "check num_spks / noise against the prepared dataset"
        )
    dataset = DynamicItemDataset.from_csv(csv_path)
    provides = signal_keys(num_spks, noise)
    dataset.add_dynamic_item(
        _make_loader(sample_rate, crop_len), takes=columns, provides=provides
    )
    dataset.set_output_keys(["id"] + provides)
    limits = {"duration": max_duration} if max_duration else {}
    if sorting != "random":
        dataset = dataset.filtered_sorted(
            sort_key="duration",
            reverse=sorting == "descending",
            key_max_value=limits,
        )
    elif limits:
        dataset = dataset.filtered_sorted(key_max_value=limits)
    return dataset


def make_datasets(
    train_csv,
    valid_csv,
    test_csv,
    num_spks=2,
    sample_rate=8000,
    noise=False,
    sorting="random",
    limit_training_signal_len=False,
    training_signal_len=32000,
    max_duration=None,
):
    """Train / valid / test datasets from the prepared manifests.

    Only the training set is cropped, sorted and filtered by
    ``max_duration``; valid and test items are whole, in manifest order.

    Arguments
    ---------
    train_csv, valid_csv, test_csv : str
        The manifests (``test_csv`` None: no test set).
    num_spks : int
        Number of target sources (``s1_wav`` ... ``s<num_spks>_wav``).
    sample_rate : int
        Expected sample rate; other rates raise :class:`AudioFormatError`.
    noise : bool or None
        Provide ``noise_sig`` (None: where a manifest has ``noise_wav``).
    sorting : str
        ``ascending`` / ``descending`` by duration (not to be shuffled then)
        or ``random`` (manifest order).
    limit_training_signal_len : bool
        Random training crops (same offset in the mixture and sources).
    training_signal_len : int
        Crop length (samples).
    max_duration : float or None
        Drop training items longer than this (seconds).

    Returns
    -------
    train, valid, test : DynamicItemDataset
        ``test`` is None when ``test_csv`` is None.

    Example
    -------
    >>> from speechbrain_s4m.data import prepare_wsj0mix
    >>> from speechbrain_s4m.data.synthetic import write_wsj0mix
    >>> tmp = getfixture("tmp_path")
    >>> root = write_wsj0mix(tmp / "wsj", sizes=2, duration=(0.2, 0.3))
    >>> csvs = prepare_wsj0mix(root, tmp / "save")
    >>> train, valid, test = make_datasets(
    ...     csvs["train"], csvs["valid"], csvs["test"], sorting="ascending"
    ... )
    >>> len(train), list(test[0])
    (2, ['id', 'mix_sig', 's1_sig', 's2_sig'])
    """
    crop = training_signal_len if limit_training_signal_len else None
    whole = (num_spks, sample_rate, noise, None, "random", None)
    train = _make_dataset(train_csv, *whole[:3], crop, sorting, max_duration)
    valid = _make_dataset(valid_csv, *whole)
    test = _make_dataset(test_csv, *whole) if test_csv else None
    return train, valid, test


def datasets_from_hparams(hparams):
    """:func:`make_datasets` from the recipe hparams (``train_data``,
    ``valid_data``, ``test_data``, ``num_spks``, ``sample_rate``, optional
    ``sorting``, ``max_duration`` and the crop keys of
    :func:`training_crop_len`); items have ``noise_sig`` whenever the
    manifests have ``noise_wav``.

    Example
    -------
    >>> datasets_from_hparams({"valid_data": "v.csv"})
    Traceback (most recent call last):
    ...
    KeyError: "hparams lack 'train_data' (a manifest path)"
    """
    for key in ("train_data", "valid_data"):
        if key not in hparams:
            raise KeyError(f"hparams lack {key!r} (a manifest path)")
    crop = training_crop_len(hparams)
    return make_datasets(
        hparams["train_data"],
        hparams["valid_data"],
        hparams.get("test_data"),
        num_spks=hparams.get("num_spks", 2),
        sample_rate=hparams.get("sample_rate", 8000),
        noise=None,
        sorting=hparams.get("sorting", "random"),
        limit_training_signal_len=crop is not None,
        training_signal_len=crop,
        max_duration=hparams.get("max_duration"),
    )

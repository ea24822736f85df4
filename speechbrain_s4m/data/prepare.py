"""Manifest preparation for WSJ0-2mix/3mix, Libri2Mix/Libri3Mix and WHAM!.

Each ``prepare_*`` function first checks that ``data_folder`` has the layout
written by the dataset's official generation scripts and raises
:class:`DatasetLayoutError` naming exactly what is missing otherwise (the
dataset type is never guessed from the path). It then writes SpeechBrain CSV
manifests ``save_folder/{train,valid,test}.csv`` with columns
``ID, duration, mix_wav, s1_wav, s2_wav[, s3_wav][, noise_wav]``, where
``duration`` is the real duration in seconds (from the file headers, or from
the ``length`` column of the LibriMix metadata).

Preparation is skipped when the three manifests exist and the options saved
beside them (``save_folder/prepare_options.json``) equal the requested ones.

The layouts (folder and file names, shared with the synthetic writers) and
the checks of a folder against them (:class:`ExpectedLayout`) live in
:mod:`speechbrain_s4m.data.layouts`.

Authors
 * speechbrain-s4m contributors 2026
"""

import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from speechbrain_s4m.audio import AudioError, check_audio_header
from speechbrain_s4m.data.layouts import (
    LIBRIMIX_TRAIN_SETS,
    METADATA_ID,
    METADATA_LENGTH,
    MIXTURES,
    MODES,
    WHAM_SPLITS,
    WSJ0MIX_MIX,
    WSJ0MIX_SPLITS,
    DatasetAudioError,
    DatasetLayoutError,
    ExpectedLayout,
    librimix_splits,
    metadata_columns,
    metadata_file,
    mixture_parts,
    source_folders,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetAudioError",
    "DatasetLayoutError",
    "check_dataset_audio",
    "prepare_wsj0mix",
    "prepare_librimix",
    "prepare_wham",
    "prepare_dataset",
    "SPLITS",
    "OPTIONS_FILE",
]

#: Manifest names, in the order they are written.
SPLITS = ("train", "valid", "test")
#: Options file written beside the manifests (used to skip re-preparation).
OPTIONS_FILE = "prepare_options.json"
#: Bumped when the manifest format changes (forces re-preparation).
MANIFEST_VERSION = 1


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _rows_from_folders(layout, split):
    """Manifest rows of one split from the folder contents."""
    split_dir = layout.base / layout.split_dirs[split]
    rows = []
    for name in layout.scan(split):
        paths = {sub: split_dir / sub / name for sub in layout.subdirs}
        rows.append({"ID": Path(name).stem, "duration": None, "paths": paths})
    return rows


#: Below this many files, the headers are read without a thread pool.
_POOL_MIN_FILES = 256


def _frames(path, sample_rate):
    """``(frames, None)`` of a good file, ``(None, reason)`` of a bad one."""
    try:
        info = check_audio_header(path, sample_rate=sample_rate, channels=1)
    except AudioError as err:
        return None, str(err)
    return info.frames, None


def check_dataset_audio(layout, rows, workers=None):
    """Checks the header of every file of the manifest rows, in one pass,
    and fills the missing durations.

    Each file must open, be at ``layout.sample_rate`` and mono, and (WAV)
    hold the data its header declares
    (:func:`speechbrain_s4m.audio.check_audio_header`: headers only, no
    decoding); each source must have as many samples as its mixture. All
    bad files are reported at once.

    Arguments
    ---------
    layout : ExpectedLayout
        The dataset's layout (name, sample rate, mixture folder).
    rows : list of dict
        Manifest rows (``{"ID", "duration", "paths": {folder: path}}``);
        a ``duration`` of None is set from the mixture's header.
    workers : int, None
        Threads reading the headers (default: ``min(32, 4 * cpus)``;
        file opening waits on the disk, so threads help on a cold cache
        and on network storage).

    Raises
    ------
    DatasetAudioError
        Naming every bad file and why.

    Example
    -------
    >>> from speechbrain_s4m.data.synthetic import write_wsj0mix
    >>> from speechbrain_s4m.data.layouts import WSJ0MIX_MIX, WSJ0MIX_SPLITS
    >>> root = write_wsj0mix(getfixture("tmp_path"), sizes=1)
    >>> layout = ExpectedLayout(
    ...     "WSJ0-2mix", root, 8000, "min", WSJ0MIX_SPLITS, WSJ0MIX_MIX,
    ...     source_folders(2), None, "",
    ... )
    >>> rows = _rows_from_folders(layout, "test")
    >>> check_dataset_audio(layout, rows)
    >>> rows[0]["duration"] > 0
    True
    >>> mix = rows[0]["paths"]["mix"]
    >>> _ = mix.write_bytes(mix.read_bytes()[:-100])  # cut short
    >>> try:
    ...     check_dataset_audio(layout, rows)
    ... except DatasetAudioError as err:
    ...     print(len(err.problems), "corrupt" in err.problems[0])
    1 True
    """
    paths = sorted({str(p) for row in rows for p in row["paths"].values()})
    rate = layout.sample_rate
    if workers is None:
        workers = min(32, 4 * (os.cpu_count() or 1))
    if workers <= 1 or len(paths) < _POOL_MIN_FILES:
        results = [_frames(p, rate) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(partial(_frames, sample_rate=rate), paths))
    found = dict(zip(paths, results))
    problems = [reason for _, reason in results if reason is not None]
    for row in rows:
        mix = str(row["paths"][layout.mix_dir])
        mix_frames = found[mix][0]
        if mix_frames is None:
            continue
        if row["duration"] is None:
            row["duration"] = mix_frames / rate
        for path in row["paths"].values():
            frames = found[str(path)][0]
            if frames is not None and frames != mix_frames:
                problems.append(
                    f"{path} has {frames} samples but its mixture {mix} "
                    f"has {mix_frames} (sources and mixture must have the "
                    "same length)"
                )
    if problems:
        raise DatasetAudioError(layout.name, layout.data_folder, problems)


def _columns(layout):
    """Manifest columns for a layout."""
    cols = ["ID", "duration", "mix_wav"]
    cols += [f"s{i + 1}_wav" for i in range(len(layout.source_dirs))]
    return cols + (["noise_wav"] if layout.noise_dir else [])


def _write_csv(path, layout, rows):
    """Writes one manifest atomically (tmp file then rename)."""
    cols = _columns(layout)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for row in rows:
            paths = row["paths"]
            line = [row["ID"], f"{row['duration']:.6f}"]
            line += [str(paths[sub]) for sub in layout.subdirs]
            writer.writerow(line)
    os.replace(tmp, path)


def _options_match(save_folder, options):
    """True if the manifests exist and were prepared with ``options``."""
    save_folder = Path(save_folder)
    opt_file = save_folder / OPTIONS_FILE
    if not opt_file.is_file():
        return False
    if not all((save_folder / f"{s}.csv").is_file() for s in SPLITS):
        return False
    try:
        saved = json.loads(opt_file.read_text())
    except (OSError, ValueError):
        return False
    return saved == options


def _run(layout, save_folder, options, rows_fn):
    """Common driver: skip check, layout check, manifests, options file."""
    options = dict(options, version=MANIFEST_VERSION)
    options["data_folder"] = str(layout.data_folder)
    save_folder = Path(save_folder)
    if _options_match(save_folder, options):
        layout.check_base()
        logger.info(
            "Manifests in %s match the requested options; skipping "
            "preparation.",
            save_folder,
        )
        return _manifest_paths(save_folder)
    rows = {split: rows_fn(split) for split in SPLITS}
    check_dataset_audio(layout, [r for split in SPLITS for r in rows[split]])
    save_folder.mkdir(parents=True, exist_ok=True)
    (save_folder / OPTIONS_FILE).unlink(missing_ok=True)
    for split in SPLITS:
        _write_csv(save_folder / f"{split}.csv", layout, rows[split])
        logger.info(
            "%s: %d %s mixtures (%.2f h) -> %s",
            layout.name,
            len(rows[split]),
            split,
            sum(r["duration"] for r in rows[split]) / 3600,
            save_folder / f"{split}.csv",
        )
    (save_folder / OPTIONS_FILE).write_text(
        json.dumps(options, indent=2, sort_keys=True)
    )
    return _manifest_paths(save_folder)


def _manifest_paths(save_folder):
    return {s: str(Path(save_folder) / f"{s}.csv") for s in SPLITS}


def _warn_extra_sources(layout, num_spks):
    """Warns when a further ``s<n+1>`` folder suggests more speakers."""
    split_dir = layout.base / next(iter(layout.split_dirs.values()))
    if (split_dir / source_folders(num_spks + 1)[-1]).is_dir():
        logger.warning(
            "%s has a folder 's%d' but num_spks=%d: is this a %d-speaker "
            "dataset?",
            split_dir,
            num_spks + 1,
            num_spks,
            num_spks + 1,
        )


def prepare_wsj0mix(
    data_folder, save_folder, num_spks=2, sample_rate=8000, mode="min"
):
    """Prepares WSJ0-2mix / WSJ0-3mix manifests.

    Arguments
    ---------
    data_folder : str
        The ``wsj0-mix/2speakers`` (or ``3speakers``) folder, containing
        ``wav8k|wav16k/min|max/tr|cv|tt/mix,s1,s2(,s3)``.
    save_folder : str
        Where ``train.csv``, ``valid.csv`` and ``test.csv`` are written.
    num_spks : int
        2 or 3.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``).
    mode : str
        ``min`` or ``max``.

    Returns
    -------
    manifests : dict
        ``{"train": path, "valid": path, "test": path}``.

    Raises
    ------
    DatasetLayoutError
        If a folder or file is missing or the file sets do not match.

    Example
    -------
    >>> from speechbrain_s4m.data.synthetic import write_wsj0mix
    >>> tmp = getfixture("tmp_path")
    >>> root = write_wsj0mix(tmp / "2speakers", sizes=1, duration=(0.2, 0.2))
    >>> paths = prepare_wsj0mix(root, tmp / "save")
    >>> open(paths["test"]).readline().strip()
    'ID,duration,mix_wav,s1_wav,s2_wav'
    """
    _check_choice("num_spks", num_spks, (2, 3))
    _check_choice("mode", mode, MODES)
    layout = ExpectedLayout(
        f"WSJ0-{num_spks}mix",
        data_folder,
        sample_rate,
        mode,
        WSJ0MIX_SPLITS,
        WSJ0MIX_MIX,
        source_folders(num_spks),
        None,
        f"pass --data_folder .../wsj0-mix/{num_spks}speakers",
    )
    layout.check_dirs()
    _warn_extra_sources(layout, num_spks)
    options = {
        "dataset": "wsj0mix",
        "num_spks": num_spks,
        "sample_rate": sample_rate,
        "mode": mode,
    }
    return _run(
        layout, save_folder, options, partial(_rows_from_folders, layout)
    )


def _wham_like_dirs(mixture, num_spks):
    """(mix folder, source folders, noise folder) for LibriMix / WHAM!."""
    _check_choice("mixture", mixture, MIXTURES)
    if mixture == "single" and num_spks != 1:
        raise ValueError(
            "mixture='single' (mix_single = s1 + noise) is the "
            f"single-speaker enhancement task: use num_spks=1, got "
            f"{num_spks}"
        )
    return mixture_parts(mixture, num_spks)


def _read_metadata(layout, split, meta_path):
    """Manifest rows of one LibriMix split from its metadata CSV."""
    with open(meta_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        entries = list(reader)
    columns = metadata_columns(
        layout.mix_dir, layout.source_dirs, layout.noise_dir
    )
    need = [METADATA_ID] + list(columns.values())
    lacking = [c for c in need if c not in fields]
    if lacking:
        raise layout.error(
            f"metadata file '{meta_path}' lacks column(s) {lacking} (has "
            f"{fields})"
        )
    if not entries:
        raise layout.error(f"metadata file '{meta_path}' has no rows")
    split_dir = layout.base / layout.split_dirs[split]
    rows, missing = [], []
    for entry in entries:
        paths = {}
        for sub, col in columns.items():
            path = _resolve(entry[col], split_dir, sub, layout.data_folder)
            if path is None:
                missing.append(entry[col])
            paths[sub] = path
        length = entry.get(METADATA_LENGTH)
        duration = int(float(length)) / layout.sample_rate if length else None
        rows.append(
            {"ID": entry[METADATA_ID], "duration": duration, "paths": paths}
        )
    if missing:
        raise layout.error(
            f"{len(missing)} file(s) named in '{meta_path}' exist neither at "
            f"that path nor under '{split_dir}/<folder>/' (e.g. "
            f"{', '.join(missing[: layout.max_listed])})"
        )
    return rows


def _resolve(path, split_dir, sub, data_folder):
    """Resolves a metadata path (maybe from another machine) locally.

    Tries the path itself, then ``<split_dir>/<sub>/<file name>`` (the file
    in this data_folder's layout), then the path relative to data_folder.
    """
    if os.path.isabs(path) and os.path.isfile(path):
        return Path(path)
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    local = split_dir / sub / name
    if local.is_file():
        return local
    rel = Path(data_folder) / path.lstrip("/\\")
    if not os.path.isabs(path) and rel.is_file():
        return rel
    return None


def prepare_librimix(
    data_folder,
    save_folder,
    num_spks=2,
    sample_rate=8000,
    mode="min",
    mixture="both",
    train_set="train-360",
    use_metadata=True,
):
    """Prepares Libri2Mix / Libri3Mix manifests.

    Arguments
    ---------
    data_folder : str
        The ``Libri2Mix`` (or ``Libri3Mix``) folder, containing
        ``wav8k|wav16k/min|max/{train-360,train-100,dev,test}/{mix_clean,
        mix_both,mix_single,s1,s2(,s3),noise}`` and optionally
        ``wav8k/min/metadata/mixture_<split>_mix_<mixture>.csv``.
    save_folder : str
        Where ``train.csv``, ``valid.csv`` and ``test.csv`` are written.
    num_spks : int
        2 or 3 (1 with ``mixture="single"``).
    sample_rate : int
        8000 or 16000.
    mode : str
        ``min`` or ``max``.
    mixture : str
        ``both`` (s1+s2+noise, the paper's noisy LibriMix), ``clean``
        (s1+s2) or ``single`` (s1+noise, needs ``num_spks=1``). Noisy
        mixtures get a ``noise_wav`` column.
    train_set : str
        ``train-360`` or ``train-100``.
    use_metadata : bool
        Use the metadata CSVs when present (durations from their
        ``length`` column, foreign absolute paths resolved under
        data_folder); otherwise, or when absent, scan the folders.

    Returns
    -------
    manifests : dict
        ``{"train": path, "valid": path, "test": path}``.

    Raises
    ------
    DatasetLayoutError
        If a folder, file or metadata column is missing.

    Example
    -------
    >>> from speechbrain_s4m.data.synthetic import write_librimix
    >>> tmp = getfixture("tmp_path")
    >>> root = write_librimix(tmp / "Libri2Mix", sizes=1, duration=(0.2, 0.2))
    >>> paths = prepare_librimix(root, tmp / "save")
    >>> open(paths["train"]).readline().strip()
    'ID,duration,mix_wav,s1_wav,s2_wav,noise_wav'
    """
    _check_choice("num_spks", num_spks, (1, 2, 3))
    _check_choice("mode", mode, MODES)
    _check_choice("train_set", train_set, LIBRIMIX_TRAIN_SETS)
    mix_dir, sources, noise = _wham_like_dirs(mixture, num_spks)
    layout = ExpectedLayout(
        f"Libri{num_spks}Mix" if mixture != "single" else "LibriMix",
        data_folder,
        sample_rate,
        mode,
        librimix_splits(train_set),
        mix_dir,
        sources,
        noise,
        "pass --data_folder .../Libri2Mix (or Libri3Mix)",
    )
    layout.check_base()
    meta = {
        s: layout.base / metadata_file(d, mix_dir)
        for s, d in layout.split_dirs.items()
    }
    from_meta = {s: use_metadata and meta[s].is_file() for s in SPLITS}
    folder_splits = [s for s in SPLITS if not from_meta[s]]
    if folder_splits:
        layout.check_dirs(folder_splits)
        if use_metadata:
            logger.info(
                "No LibriMix metadata for %s (%s); scanning folders.",
                folder_splits,
                [str(meta[s]) for s in folder_splits],
            )
    if mixture != "single":
        _warn_extra_sources(layout, num_spks)

    def rows_fn(split):
        if from_meta[split]:
            return _read_metadata(layout, split, meta[split])
        return _rows_from_folders(layout, split)

    options = {
        "dataset": "librimix",
        "num_spks": num_spks,
        "sample_rate": sample_rate,
        "mode": mode,
        "mixture": mixture,
        "train_set": train_set,
        "use_metadata": bool(use_metadata),
    }
    return _run(layout, save_folder, options, rows_fn)


def prepare_wham(
    data_folder,
    save_folder,
    sample_rate=8000,
    mode="min",
    mixture="both",
    num_spks=2,
):
    """Prepares WHAM! manifests (targets: the clean ``s1``, ``s2``).

    Arguments
    ---------
    data_folder : str
        The WHAM! output folder (``wham_mix``, any name), containing
        ``wav8k|wav16k/min|max/tr|cv|tt/{mix_clean,mix_both,mix_single,s1,
        s2,noise}``.
    save_folder : str
        Where ``train.csv``, ``valid.csv`` and ``test.csv`` are written.
    sample_rate : int
        8000 or 16000.
    mode : str
        ``min`` or ``max``.
    mixture : str
        ``both`` (noisy separation, the WHAM! task), ``clean`` or
        ``single`` (s1 + noise, with ``num_spks=1``).
    num_spks : int
        2 (1 with ``mixture="single"``).

    Returns
    -------
    manifests : dict
        ``{"train": path, "valid": path, "test": path}``.

    Raises
    ------
    DatasetLayoutError
        If a folder or file is missing or the file sets do not match.

    Example
    -------
    >>> from speechbrain_s4m.data.synthetic import write_wham
    >>> tmp = getfixture("tmp_path")
    >>> root = write_wham(tmp / "wham", sizes=1, duration=(0.2, 0.2))
    >>> paths = prepare_wham(root, tmp / "save")
    >>> open(paths["valid"]).readline().strip()
    'ID,duration,mix_wav,s1_wav,s2_wav,noise_wav'
    """
    _check_choice("mode", mode, MODES)
    _check_choice("num_spks", num_spks, (1, 2))
    mix_dir, sources, noise = _wham_like_dirs(mixture, num_spks)
    layout = ExpectedLayout(
        "WHAM!",
        data_folder,
        sample_rate,
        mode,
        WHAM_SPLITS,
        mix_dir,
        sources,
        noise,
        "pass --data_folder <the WHAM! output folder, e.g. wham_mix>",
    )
    layout.check_dirs()
    options = {
        "dataset": "wham",
        "num_spks": num_spks,
        "sample_rate": sample_rate,
        "mode": mode,
        "mixture": mixture,
    }
    return _run(
        layout, save_folder, options, partial(_rows_from_folders, layout)
    )


_PREPARERS = {
    "wsj0mix": prepare_wsj0mix,
    "librimix": prepare_librimix,
    "wham": prepare_wham,
}


def prepare_dataset(dataset, data_folder, save_folder, **kwargs):
    """Dispatches to ``prepare_<dataset>``.

    Arguments
    ---------
    dataset : str
        ``wsj0mix``, ``librimix`` or ``wham`` (explicit: never guessed from
        the path).
    data_folder : str
        Dataset root (see the ``prepare_*`` functions).
    save_folder : str
        Where the manifests are written.
    **kwargs : dict
        Options of the chosen ``prepare_*`` function (``num_spks``,
        ``sample_rate``, ``mode``, ``mixture``, ...).

    Returns
    -------
    manifests : dict
        ``{"train": path, "valid": path, "test": path}``.

    Example
    -------
    >>> prepare_dataset("timit", "/data", "/save")
    Traceback (most recent call last):
    ...
    ValueError: unknown dataset 'timit'; choose one of wsj0mix, librimix, wham
    """
    if dataset not in _PREPARERS:
        raise ValueError(
            f"unknown dataset {dataset!r}; choose one of "
            f"{', '.join(_PREPARERS)}"
        )
    return _PREPARERS[dataset](data_folder, save_folder, **kwargs)

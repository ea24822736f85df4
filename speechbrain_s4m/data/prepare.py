"""Manifest preparation for WSJ0-2mix/3mix, Libri2Mix/3Mix and WHAM!.

Each ``prepare_*`` checks ``data_folder`` against the dataset's layout
(:mod:`.layouts`; never guessed from the path), then every file header, and
writes ``save_folder/{train,valid,test}.csv`` (columns ``ID, duration,
mix_wav, s1_wav, s2_wav[, s3_wav][, noise_wav]``); skipped when the
manifests exist and ``prepare_options.json`` records the same options.
"""

import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speechbrain_s4m.audio import AudioError, check_audio_header
from speechbrain_s4m.data import layouts
from speechbrain_s4m.data.layouts import ExpectedLayout, check_choice

logger = logging.getLogger(__name__)


#: Manifest names, in the order they are written.
SPLITS = ("train", "valid", "test")
#: Options file written beside the manifests (used to skip re-preparation).
OPTIONS_FILE = "prepare_options.json"
#: Bumped when the manifest format changes (forces re-preparation).
MANIFEST_VERSION = 1
#: Below this many files, the headers are read without a thread pool.
_POOL_MIN_FILES = 256


class DatasetAudioError(layouts.DatasetLayoutError):
    """Unusable audio files of dataset ``name`` under ``data_folder``, all
    found in one pass: ``problems`` has one line per bad file, naming it."""

    def __init__(self, name, data_folder, problems):
        self.problems = list(problems)
        super().__init__(
            f"{name}: {len(self.problems)} bad audio file(s) under "
            f"'{data_folder}' (headers checked: readable, rate, mono, data "
            "size, sources as long as the mixture):\n  "
            + "\n  ".join(self.problems)
        )


def _frames(path, sample_rate):
    """``(frames, None)`` of a good file, ``(None, reason)`` of a bad one."""
    try:
        info = check_audio_header(path, sample_rate=sample_rate, channels=1)
    except AudioError as err:
        return None, str(err)
    return info.frames, None


def check_dataset_audio(layout, rows, workers=None):
    """Checks every file header of the manifest ``rows`` (``{"ID",
    "duration", "paths": {folder: path}}``) in one pass, each source as long
    as its mixture; raises one :class:`DatasetAudioError` naming every bad
    file; sets the durations left None from the mixtures. ``workers``:
    header-reading threads (default ``min(32, 4 * cpus)``: opening files
    waits on the disk)."""
    paths = sorted({str(p) for row in rows for p in row["paths"].values()})
    rate = layout.sample_rate
    if workers is None:
        workers = min(32, 4 * (os.cpu_count() or 1))
    if workers <= 1 or len(paths) < _POOL_MIN_FILES:
        results = [_frames(p, rate) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda p: _frames(p, rate), paths))
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


def _write_csv(path, layout, rows):
    """Writes one manifest atomically (tmp file then rename)."""
    cols = ["ID", "duration", "mix_wav"]
    cols += [f"s{i + 1}_wav" for i in range(len(layout.source_dirs))]
    cols += ["noise_wav"] if layout.noise_dir else []
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for row in rows:
            writer.writerow(
                [row["ID"], f"{row['duration']:.6f}"]
                + [str(row["paths"][sub]) for sub in layout.subdirs]
            )
    os.replace(tmp, path)


def _options_match(save_folder, options):
    """True if the manifests exist and were prepared with ``options``."""
    opt_file = save_folder / OPTIONS_FILE
    files = [opt_file] + [save_folder / f"{s}.csv" for s in SPLITS]
    if not all(f.is_file() for f in files):
        return False
    try:
        return json.loads(opt_file.read_text()) == options
    except (OSError, ValueError):
        return False


def _run(layout, save_folder, rows_fn, **options):
    """Skips or checks the audio and writes the manifests and options."""
    options.update(
        num_spks=len(layout.source_dirs),
        sample_rate=layout.sample_rate,
        mode=layout.mode,
        version=MANIFEST_VERSION,
        data_folder=str(layout.data_folder),
    )
    save_folder = Path(save_folder)
    manifests = {s: str(save_folder / f"{s}.csv") for s in SPLITS}
    if _options_match(save_folder, options):
        layout.check(())
        logger.info(
            "Manifests in %s match the requested options; skipping "
            "preparation.",
            save_folder,
        )
        return manifests
    rows = {split: rows_fn(split) for split in SPLITS}
    check_dataset_audio(layout, [r for split in SPLITS for r in rows[split]])
    save_folder.mkdir(parents=True, exist_ok=True)
    (save_folder / OPTIONS_FILE).unlink(missing_ok=True)
    for split in SPLITS:
        _write_csv(manifests[split], layout, rows[split])
        logger.info(
            "%s: %d %s mixtures (%.2f h) -> %s",
            layout.name,
            len(rows[split]),
            split,
            sum(r["duration"] for r in rows[split]) / 3600,
            manifests[split],
        )
    (save_folder / OPTIONS_FILE).write_text(
        json.dumps(options, indent=2, sort_keys=True)
    )
    return manifests


def _warn_extra_sources(layout, num_spks):
    """Warns when a further ``s<n+1>`` folder suggests more speakers."""
    split_dir = layout.base / next(iter(layout.split_dirs.values()))
    if (split_dir / layouts.source_folders(num_spks + 1)[-1]).is_dir():
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
        The ``wsj0-mix/2speakers`` (or ``3speakers``) folder.
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

    Example
    -------
    >>> from speechbrain_s4m.data.synthetic import write_wsj0mix
    >>> tmp = getfixture("tmp_path")
    >>> root = write_wsj0mix(tmp / "2speakers", sizes=1, duration=(0.2, 0.2))
    >>> paths = prepare_wsj0mix(root, tmp / "save")
    >>> open(paths["test"]).readline().strip()
    'ID,duration,mix_wav,s1_wav,s2_wav'
    """
    check_choice("num_spks", num_spks, (2, 3))
    check_choice("mode", mode, layouts.MODES)
    layout = ExpectedLayout(
        f"WSJ0-{num_spks}mix",
        data_folder,
        sample_rate,
        mode,
        layouts.WSJ0MIX_SPLITS,
        (layouts.WSJ0MIX_MIX, layouts.source_folders(num_spks), None),
        f"pass --data_folder .../wsj0-mix/{num_spks}speakers",
    )
    layout.check()
    _warn_extra_sources(layout, num_spks)
    return _run(layout, save_folder, layout.folder_rows, dataset="wsj0mix")


def _noisy_parts(mixture, num_spks):
    """``mixture_parts``, refusing ``single`` unless ``num_spks`` is 1."""
    if mixture == "single" and num_spks != 1:
        raise ValueError(
            "mixture='single' (mix_single = s1 + noise) is the "
            f"single-speaker enhancement task: use num_spks=1, got "
            f"{num_spks}"
        )
    return layouts.mixture_parts(mixture, num_spks)


def _read_metadata(layout, split, meta_path):
    """Manifest rows of one LibriMix split from its metadata CSV."""
    with open(meta_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        entries = list(reader)
    columns = layouts.metadata_columns(
        layout.mix_dir, layout.source_dirs, layout.noise_dir
    )
    need = [layouts.METADATA_ID, *columns.values()]
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
            paths[sub] = _resolve(entry[col], split_dir / sub, layout)
            if paths[sub] is None:
                missing.append(entry[col])
        length = entry.get(layouts.METADATA_LENGTH)
        duration = int(float(length)) / layout.sample_rate if length else None
        name = entry[layouts.METADATA_ID]
        rows.append({"ID": name, "duration": duration, "paths": paths})
    if missing:
        raise layout.error(
            f"{len(missing)} file(s) named in '{meta_path}' exist neither at "
            f"that path nor under '{split_dir}/<folder>/' (e.g. "
            f"{', '.join(missing[: layout.max_listed])})"
        )
    return rows


def _resolve(path, folder, layout):
    """A metadata path (maybe from another machine) found locally: the path
    itself, else the file of that name in ``folder``, else the path relative
    to data_folder; None if none exists."""
    if os.path.isabs(path) and os.path.isfile(path):
        return Path(path)
    local = folder / path.replace("\\", "/").rsplit("/", 1)[-1]
    if local.is_file():
        return local
    rel = layout.data_folder / path.lstrip("/\\")
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
    """Prepares Libri2Mix / Libri3Mix manifests (arguments and result as
    :func:`prepare_wsj0mix`, and the following).

    Arguments
    ---------
    num_spks : int
        2 or 3 (1 with ``mixture="single"``).
    mixture : str
        ``both`` (s1+s2+noise, the paper's noisy LibriMix), ``clean``
        (s1+s2) or ``single`` (s1+noise, needs ``num_spks=1``). Noisy
        mixtures get a ``noise_wav`` column.
    train_set : str
        ``train-360`` or ``train-100``.
    use_metadata : bool
        Use the metadata CSVs when present (durations from their ``length``
        column, foreign absolute paths resolved under data_folder);
        otherwise, or when absent, scan the folders.
    """
    check_choice("num_spks", num_spks, (1, 2, 3))
    check_choice("mode", mode, layouts.MODES)
    splits = layouts.librimix_splits(train_set)
    layout = ExpectedLayout(
        f"Libri{num_spks}Mix" if mixture != "single" else "LibriMix",
        data_folder,
        sample_rate,
        mode,
        splits,
        _noisy_parts(mixture, num_spks),
        "pass --data_folder .../Libri2Mix (or Libri3Mix)",
    )
    meta = {
        s: layout.base / layouts.metadata_file(d, layout.mix_dir)
        for s, d in splits.items()
    }
    from_meta = {s: use_metadata and meta[s].is_file() for s in SPLITS}
    folder_splits = [s for s in SPLITS if not from_meta[s]]
    layout.check(folder_splits)
    if folder_splits and use_metadata:
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
        return layout.folder_rows(split)

    return _run(
        layout,
        save_folder,
        rows_fn,
        dataset="librimix",
        mixture=mixture,
        train_set=train_set,
        use_metadata=bool(use_metadata),
    )


def prepare_wham(
    data_folder,
    save_folder,
    sample_rate=8000,
    mode="min",
    mixture="both",
    num_spks=2,
):
    """Prepares WHAM! manifests, targets the clean ``s1``, ``s2`` (arguments
    and result as :func:`prepare_librimix`; ``data_folder`` is the WHAM!
    output folder, e.g. ``wham_mix``; ``num_spks`` is 2, or 1 with
    ``mixture="single"``)."""
    check_choice("mode", mode, layouts.MODES)
    check_choice("num_spks", num_spks, (1, 2))
    layout = ExpectedLayout(
        "WHAM!",
        data_folder,
        sample_rate,
        mode,
        layouts.WHAM_SPLITS,
        _noisy_parts(mixture, num_spks),
        "pass --data_folder <the WHAM! output folder, e.g. wham_mix>",
    )
    layout.check()
    return _run(
        layout, save_folder, layout.folder_rows, dataset="wham", mixture=mixture
    )


_PREPARERS = {
    "wsj0mix": prepare_wsj0mix,
    "librimix": prepare_librimix,
    "wham": prepare_wham,
}


def prepare_dataset(dataset, data_folder, save_folder, **kwargs):
    """Calls ``prepare_<dataset>`` (``wsj0mix``, ``librimix`` or ``wham``:
    explicit, never guessed from the path) with the other arguments."""
    if dataset not in _PREPARERS:
        raise ValueError(
            f"unknown dataset {dataset!r}; choose one of "
            f"{', '.join(_PREPARERS)}"
        )
    return _PREPARERS[dataset](data_folder, save_folder, **kwargs)

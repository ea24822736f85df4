"""Tests of speechbrain_s4m.data: preparation, datasets, dynamic mixing,
synthetic data. Everything runs on tiny generated folders in the real
layouts (3 mixtures per split, about 0.5 s at 8 kHz)."""

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_s4m.audio import AudioFormatError
from speechbrain_s4m.data import (
    DatasetLayoutError,
    prepare_dataset,
    prepare_librimix,
    prepare_wham,
    prepare_wsj0mix,
)
from speechbrain_s4m.data.dataio import make_datasets
from speechbrain_s4m.data.dynamic_mixing import dynamic_mixing_dataset
from speechbrain_s4m.data.layouts import (
    MIXTURES,
    WHAM_SPLITS,
    WSJ0MIX_MIX,
    WSJ0MIX_SPLITS,
    librimix_splits,
    mixture_parts,
    rate_folder,
    source_folders,
)
from speechbrain_s4m.data.synthetic import (
    random_speaker,
    synth_voice,
    write_librimix,
    write_librispeech_sources,
    write_noise_sources,
    write_wham,
    write_wsj0_sources,
    write_wsj0mix,
)

DUR = (0.4, 0.6)
LSB = 1 / 32768


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def read_int(path):
    return sf.read(str(path), dtype="int16")[0].astype(np.int64)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny datasets of every layout, written once for the module."""
    root = tmp_path_factory.mktemp("data")
    return {
        "wsj": write_wsj0mix(root / "2speakers", sizes=3, duration=DUR),
        "wsj3": write_wsj0mix(
            root / "3speakers", num_spks=3, sizes=2, duration=DUR, seed=1
        ),
        "libri": write_librimix(
            root / "Libri2Mix",
            sizes=3,
            duration=DUR,
            metadata_prefix="/somewhere/else/Libri2Mix",
        ),
        "wham": write_wham(root / "wham_mix", sizes=3, duration=DUR),
        "root": root,
    }


def copy_of(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------


def test_synthetic_wsj0mix_layout_and_exact_sums(data_root):
    base = data_root["wsj"] / "wav8k" / "min"
    for split in ("tr", "cv", "tt"):
        names = sorted(os.listdir(base / split / "mix"))
        assert len(names) == 3
        for sub in ("s1", "s2"):
            assert sorted(os.listdir(base / split / sub)) == names
        for name in names:
            utt1, g1, utt2, g2 = Path(name).stem.split("_")
            assert float(g1) == -float(g2) and len(utt1) == len(utt2)
            info = sf.info(str(base / split / "mix" / name))
            assert info.subtype == "PCM_16" and info.samplerate == 8000
            mix = read_int(base / split / "mix" / name)
            s1 = read_int(base / split / "s1" / name)
            s2 = read_int(base / split / "s2" / name)
            assert np.array_equal(mix, s1 + s2)
            assert np.abs(s1).max() > 1000 and np.abs(s2).max() > 1000
    # tt speakers are unseen in tr
    spk = {
        split: {n[:3] for n in os.listdir(base / split / "s1")}
        | {n.split("_")[2][:3] for n in os.listdir(base / split / "s1")}
        for split in ("tr", "tt")
    }
    assert not spk["tr"] & spk["tt"]


def test_synthetic_librimix_sums_and_metadata(data_root):
    base = data_root["libri"] / "wav8k" / "min"
    name = sorted(os.listdir(base / "dev" / "mix_both"))[0]
    s1, s2, noise = (
        read_int(base / "dev" / d / name) for d in ("s1", "s2", "noise")
    )
    assert np.array_equal(read_int(base / "dev" / "mix_clean" / name), s1 + s2)
    assert np.array_equal(
        read_int(base / "dev" / "mix_both" / name), s1 + s2 + noise
    )
    assert np.array_equal(
        read_int(base / "dev" / "mix_single" / name), s1 + noise
    )
    fields, rows = read_rows(base / "metadata" / "mixture_dev_mix_both.csv")
    assert fields == [
        "mixture_ID",
        "mixture_path",
        "source_1_path",
        "source_2_path",
        "noise_path",
        "length",
    ]
    assert rows[0]["mixture_path"].startswith("/somewhere/else/Libri2Mix/")
    fields, _ = read_rows(base / "metadata" / "mixture_dev_mix_single.csv")
    assert "source_2_path" not in fields
    fields, _ = read_rows(base / "metadata" / "mixture_test_mix_clean.csv")
    assert "noise_path" not in fields


def estimate_f0(wav, sample_rate):
    """Median autocorrelation pitch over loud 40 ms frames."""
    frame = int(0.04 * sample_rate)
    lags = np.arange(int(sample_rate / 400), int(sample_rate / 60))
    rms = np.sqrt(np.mean(wav**2))
    f0s = []
    for start in range(0, len(wav) - frame - lags[-1], frame):
        x = wav[start : start + frame + lags[-1]]
        if np.sqrt(np.mean(x[:frame] ** 2)) < rms:
            continue
        ac = [np.dot(x[:frame], x[lag : lag + frame]) for lag in lags]
        f0s.append(sample_rate / lags[int(np.argmax(ac))])
    return np.median(f0s)


def test_synthetic_voices_follow_speaker_pitch():
    rng = np.random.default_rng(0)
    low = random_speaker(rng, f0_range=(95, 100))
    high = random_speaker(rng, f0_range=(210, 220))
    wav_low = synth_voice(low, 2.0, 8000, rng)
    wav_high = synth_voice(high, 2.0, 8000, rng)
    assert wav_low.shape == (16000,) and np.isfinite(wav_low).all()
    f_low, f_high = estimate_f0(wav_low, 8000), estimate_f0(wav_high, 8000)
    assert 70 < f_low < 135, f_low
    assert 160 < f_high < 290, f_high
    # syllables and pauses: the envelope is far from flat
    env = np.sqrt(np.convolve(wav_low**2, np.ones(400) / 400, "valid"))
    assert env.max() > 4 * np.percentile(env, 10)
    # deterministic for a seed
    again = synth_voice(low, 2.0, 8000, np.random.default_rng(5))
    assert np.array_equal(
        again, synth_voice(low, 2.0, 8000, np.random.default_rng(5))
    )


# ---------------------------------------------------------------------------
# preparation
# ---------------------------------------------------------------------------


def check_manifest(path, n_rows, columns):
    fields, rows = read_rows(path)
    assert fields == columns
    assert len(rows) == n_rows
    for row in rows:
        info = sf.info(row["mix_wav"])
        assert float(row["duration"]) == pytest.approx(
            info.frames / info.samplerate, abs=1e-6
        )
        for col in columns[2:]:
            assert Path(row[col]).is_file()
            assert Path(row[col]).name == Path(row["mix_wav"]).name
    return rows


def test_prepare_wsj0mix(data_root, tmp_path):
    paths = prepare_wsj0mix(data_root["wsj"], tmp_path / "save")
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"]
    durations = []
    for split, sub in (("train", "tr"), ("valid", "cv"), ("test", "tt")):
        assert paths[split] == str(tmp_path / "save" / f"{split}.csv")
        rows = check_manifest(paths[split], 3, cols)
        assert all(f"/wav8k/min/{sub}/mix/" in r["mix_wav"] for r in rows)
        durations += [float(r["duration"]) for r in rows]
    assert len(set(durations)) > 1  # real durations, not a constant
    assert all(DUR[0] - 0.01 <= d <= DUR[1] + 0.01 for d in durations)


def test_prepare_wsj0_3mix_and_dispatcher(data_root, tmp_path):
    paths = prepare_dataset(
        "wsj0mix", data_root["wsj3"], tmp_path / "save", num_spks=3
    )
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "s3_wav"]
    check_manifest(paths["test"], 2, cols)
    with pytest.raises(DatasetLayoutError, match=r"tr/s3"):
        prepare_wsj0mix(data_root["wsj"], tmp_path / "s2", num_spks=3)
    with pytest.raises(ValueError, match="unknown dataset 'wsj0-2mix'"):
        prepare_dataset("wsj0-2mix", data_root["wsj"], tmp_path / "s3")


def test_prepare_16k_max_flags(tmp_path):
    root = write_wsj0mix(
        tmp_path / "2speakers",
        sample_rate=16000,
        mode="max",
        sizes=2,
        duration=(0.3, 0.6),
    )
    paths = prepare_wsj0mix(
        root, tmp_path / "save", sample_rate=16000, mode="max"
    )
    rows = check_manifest(
        paths["train"], 2, ["ID", "duration", "mix_wav", "s1_wav", "s2_wav"]
    )
    assert "/wav16k/max/tr/" in rows[0]["mix_wav"]
    # "max" pads: the mixture is as long as its longest source
    s1 = read_int(rows[0]["s1_wav"])
    s2 = read_int(rows[0]["s2_wav"])
    assert (s1[-10:] == 0).all() or (s2[-10:] == 0).all()
    # the default flags ask for wav8k/min, which this folder lacks
    with pytest.raises(DatasetLayoutError, match=r"wav8k") as err:
        prepare_wsj0mix(root, tmp_path / "save8k")
    assert "wav16k" in str(err.value)  # lists what was found
    with pytest.raises(DatasetLayoutError, match=r"wav16k/min"):
        prepare_wsj0mix(root, tmp_path / "save8k", sample_rate=16000)
    with pytest.raises(ValueError, match="8000 or 16000"):
        prepare_wsj0mix(root, tmp_path / "x", sample_rate=22050)


def test_layout_errors_name_what_is_missing(data_root, tmp_path):
    save = tmp_path / "save"
    assert issubclass(DatasetLayoutError, FileNotFoundError)
    missing = tmp_path / "nope"
    with pytest.raises(DatasetLayoutError, match="does not exist") as err:
        prepare_wsj0mix(missing, save)
    assert str(missing) in str(err.value)
    assert "wav8k/min/{tr,cv,tt}/{mix,s1,s2}" in str(err.value)

    # data_folder pointing inside the dataset
    inner = data_root["wsj"] / "wav8k" / "min"
    with pytest.raises(DatasetLayoutError, match="points? inside") as err:
        prepare_wsj0mix(inner, save)
    assert "'wav8k'" in str(err.value)

    # the Libri2Mix folder given to the wsj0-mix preparation
    with pytest.raises(DatasetLayoutError, match=r"min/tr' \(train split\)"):
        prepare_wsj0mix(data_root["libri"], save)

    root = copy_of(data_root["wsj"], tmp_path / "wsj")
    base = root / "wav8k" / "min"
    shutil.rmtree(base / "cv" / "s2")
    shutil.rmtree(base / "tt")
    with pytest.raises(DatasetLayoutError) as err:
        prepare_wsj0mix(root, save)
    msg = str(err.value)
    assert f"{base / 'cv' / 's2'}" in msg and f"{base / 'tt'}" in msg
    assert "found in" in msg and "mix, s1" in msg
    assert not save.exists()  # nothing written before the check


def test_mismatched_and_empty_folders(data_root, tmp_path):
    root = copy_of(data_root["wsj"], tmp_path / "wsj")
    base = root / "wav8k" / "min"
    name = sorted(os.listdir(base / "tr" / "s1"))[0]
    os.rename(base / "tr" / "s1" / name, base / "tr" / "s1" / ("x" + name))
    with pytest.raises(DatasetLayoutError, match="mismatched") as err:
        prepare_wsj0mix(root, tmp_path / "save")
    msg = str(err.value)
    assert f"missing in '{base / 'tr' / 's1'}'" in msg and name in msg
    assert "x" + name in msg  # the extra file is named too

    root = copy_of(data_root["wsj"], tmp_path / "wsj2")
    for f in (root / "wav8k" / "min" / "cv" / "mix").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match=r"no \.wav/\.flac files in"):
        prepare_wsj0mix(root, tmp_path / "save")


def test_wrong_sample_rate_in_folder(tmp_path):
    root = write_wsj0mix(
        tmp_path / "w", sample_rate=16000, sizes=1, duration=(0.2, 0.2)
    )
    os.rename(root / "wav16k", root / "wav8k")  # 16 kHz files in wav8k
    with pytest.raises(DatasetLayoutError, match="sample rate of 16000 Hz"):
        prepare_wsj0mix(root, tmp_path / "save")


def test_bad_audio_files_are_all_reported_at_once(data_root, tmp_path):
    """Preparation reads every header: all bad files of all splits come in
    one error that names each, before any manifest is written."""
    from speechbrain_s4m.data import prepare

    root = copy_of(data_root["wsj"], tmp_path / "wsj")
    base = root / "wav8k" / "min"
    tr, tt = (
        sorted((base / "tr" / "mix").iterdir()),
        sorted((base / "tt" / "mix").iterdir()),
    )
    bad = {}
    # a training mixture whose data chunk is cut short
    data = tr[0].read_bytes()
    tr[0].write_bytes(data[: len(data) - 300])
    bad[tr[0]] = "corrupt"
    # a test source that is not audio at all
    src = base / "tt" / "s1" / tt[0].name
    src.write_bytes(b"not a wav file at all" * 10)
    bad[src] = str(src)
    # a validation source in stereo, one at 16 kHz, one shorter than its mix
    cv = sorted((base / "cv" / "s2").iterdir())
    sig, rate = sf.read(cv[0])
    sf.write(cv[0], np.stack([sig, sig], 1), rate)
    bad[cv[0]] = "2 channel"
    sf.write(cv[1], sig, 16000)
    bad[cv[1]] = "16000 Hz"
    short = base / "tr" / "s2" / tr[1].name
    sig, rate = sf.read(short)
    sf.write(short, sig[:-10], rate)
    bad[short] = f"has {len(sig) - 10} samples but its mixture"

    save = tmp_path / "save"
    with pytest.raises(prepare.DatasetAudioError) as err:
        prepare_wsj0mix(root, save)
    assert isinstance(err.value, DatasetLayoutError)
    assert len(err.value.problems) == len(bad), err.value.problems
    for path, reason in bad.items():
        lines = [p for p in err.value.problems if str(path) in p]
        assert len(lines) == 1 and reason in lines[0], (path, lines)
    assert not (save / "train.csv").exists()
    # the same with the thread pool (as on a large corpus)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(prepare, "_POOL_MIN_FILES", 1)
    try:
        with pytest.raises(prepare.DatasetAudioError) as pooled:
            prepare_wsj0mix(root, save)
    finally:
        monkey.undo()
    assert sorted(pooled.value.problems) == sorted(err.value.problems)


def test_skip_and_reprepare_on_changed_options(data_root, tmp_path):
    save = tmp_path / "save"
    prepare_librimix(data_root["libri"], save, mixture="both")
    stamp = (save / "train.csv").stat().st_mtime_ns
    os.utime(save / "train.csv", ns=(stamp - 10**9, stamp - 10**9))
    stamp = (save / "train.csv").stat().st_mtime_ns
    prepare_librimix(data_root["libri"], save, mixture="both")
    assert (save / "train.csv").stat().st_mtime_ns == stamp  # skipped
    opts = json.loads((save / "prepare_options.json").read_text())
    assert opts["mixture"] == "both" and opts["dataset"] == "librimix"
    prepare_librimix(data_root["libri"], save, mixture="clean")
    fields, rows = read_rows(save / "train.csv")
    assert "noise_wav" not in fields and "/mix_clean/" in rows[0]["mix_wav"]
    # a missing manifest also forces re-preparation
    (save / "valid.csv").unlink()
    prepare_librimix(data_root["libri"], save, mixture="clean")
    assert (save / "valid.csv").is_file()


def test_prepare_librimix_metadata_with_foreign_paths(data_root, tmp_path):
    root = data_root["libri"]
    paths = prepare_librimix(root, tmp_path / "meta")
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"]
    rows = check_manifest(paths["train"], 3, cols)
    for row in rows:  # resolved under the local data_folder
        assert row["mix_wav"].startswith(
            str(root / "wav8k/min/train-360/mix_both")
        )
        assert row["noise_wav"].startswith(
            str(root / "wav8k/min/train-360/noise")
        )
    # the same manifest from the folders, without metadata
    scan = prepare_librimix(root, tmp_path / "scan", use_metadata=False)
    for split in ("train", "valid", "test"):
        meta_rows = sorted(read_rows(paths[split])[1], key=lambda r: r["ID"])
        scan_rows = sorted(read_rows(scan[split])[1], key=lambda r: r["ID"])
        assert meta_rows == scan_rows


def test_librimix_duration_from_length_column(data_root, tmp_path):
    root = copy_of(data_root["libri"], tmp_path / "Libri2Mix")
    meta = root / "wav8k/min/metadata/mixture_test_mix_both.csv"
    fields, rows = read_rows(meta)
    for row in rows[1:]:  # the first row is checked against the file
        row["length"] = "12345"
    with open(meta, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    paths = prepare_librimix(root, tmp_path / "save")
    durations = [float(r["duration"]) for r in read_rows(paths["test"])[1]]
    assert durations[1:] == [12345 / 8000] * (len(rows) - 1)


def test_librimix_metadata_errors(data_root, tmp_path):
    root = copy_of(data_root["libri"], tmp_path / "Libri2Mix")
    base = root / "wav8k" / "min"
    meta = base / "metadata" / "mixture_dev_mix_both.csv"
    fields, rows = read_rows(meta)
    gone = Path(rows[0]["source_2_path"]).name
    (base / "dev" / "s2" / gone).unlink()
    with pytest.raises(DatasetLayoutError, match="exist neither") as err:
        prepare_librimix(root, tmp_path / "save")
    assert gone in str(err.value) and str(meta) in str(err.value)

    with open(meta, "w", newline="") as f:
        keep = [c for c in fields if c != "noise_path"]
        writer = csv.DictWriter(f, fieldnames=keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(
        DatasetLayoutError, match=r"lacks column\(s\) \['noise_path'\]"
    ):
        prepare_librimix(root, tmp_path / "save")


def test_librimix_options(data_root, tmp_path):
    root = data_root["libri"]
    with pytest.raises(ValueError, match="num_spks=1"):
        prepare_librimix(root, tmp_path / "s", mixture="single")
    paths = prepare_librimix(
        root, tmp_path / "single", num_spks=1, mixture="single"
    )
    fields, rows = read_rows(paths["valid"])
    assert fields == ["ID", "duration", "mix_wav", "s1_wav", "noise_wav"]
    assert "/dev/mix_single/" in rows[0]["mix_wav"]
    # train-100 is not in this folder (no metadata, no folder)
    with pytest.raises(
        DatasetLayoutError, match=r"min/train-100' \(train split\)"
    ):
        prepare_librimix(root, tmp_path / "t100", train_set="train-100")
    with pytest.raises(ValueError, match="train_set"):
        prepare_librimix(root, tmp_path / "t", train_set="train-clean-100")


def test_prepare_wham(data_root, tmp_path):
    paths = prepare_wham(data_root["wham"], tmp_path / "save")
    cols = ["ID", "duration", "mix_wav", "s1_wav", "s2_wav", "noise_wav"]
    rows = check_manifest(paths["test"], 3, cols)
    assert "/tt/mix_both/" in rows[0]["mix_wav"]
    assert "/tt/s1/" in rows[0]["s1_wav"]
    paths = prepare_dataset(
        "wham", data_root["wham"], tmp_path / "clean", mixture="clean"
    )
    rows = check_manifest(paths["valid"], 3, cols[:-1])
    assert "/cv/mix_clean/" in rows[0]["mix_wav"]
    root = copy_of(data_root["wham"], tmp_path / "wham")
    shutil.rmtree(root / "wav8k/min/tr/noise")
    with pytest.raises(DatasetLayoutError, match=r"min/tr/noise'"):
        prepare_wham(root, tmp_path / "x")
    prepare_wham(root, tmp_path / "y", mixture="clean")  # no noise needed


@pytest.mark.parametrize("sample_rate, mode", [(8000, "min"), (16000, "max")])
def test_every_written_layout_is_prepared(tmp_path, sample_rate, mode):
    """Writers and preparation agree on every layout: each dataset, speaker
    count, mixture kind, rate and mode is accepted, the manifest points into
    the folders that the layouts module names, and each mixture is the exact
    sum of the parts it names."""
    opts = {"sample_rate": sample_rate, "mode": mode}
    write = dict(sizes=1, duration=(0.2, 0.3), **opts)
    cases = []  # (prepare, root, options, splits, (mix, sources, noise))

    def noisy(prepare, root, splits, num_spks):
        for mixture in MIXTURES:
            k = 1 if mixture == "single" else num_spks
            kw = {"num_spks": k, "mixture": mixture}
            cases.append((prepare, root, kw, splits, mixture_parts(mixture, k)))

    for n in (2, 3):
        root = write_wsj0mix(tmp_path / f"wsj{n}", num_spks=n, **write)
        parts = (WSJ0MIX_MIX, source_folders(n), None)
        cases.append(
            (prepare_wsj0mix, root, {"num_spks": n}, WSJ0MIX_SPLITS, parts)
        )
        root = write_librimix(tmp_path / f"libri{n}", num_spks=n, **write)
        noisy(prepare_librimix, root, librimix_splits(), n)
    noisy(prepare_wham, write_wham(tmp_path / "wham", **write), WHAM_SPLITS, 2)
    assert len(cases) == 11
    for i, (prepare, root, kw, splits, parts) in enumerate(cases):
        mix, sources, noise = parts
        paths = prepare(root, tmp_path / f"save{i}", **kw, **opts)
        folders = [mix] + sources + ([noise] if noise else [])
        columns = ["mix_wav"] + [f"s{j + 1}_wav" for j in range(len(sources))]
        columns += ["noise_wav"] if noise else []
        for split, split_dir in splits.items():
            fields, rows = read_rows(paths[split])
            assert fields == ["ID", "duration"] + columns
            assert len(rows) == 1
            files = [Path(rows[0][c]) for c in columns]
            base = Path(root) / rate_folder(sample_rate) / mode / split_dir
            assert [f.parent for f in files] == [base / d for d in folders]
            wavs = [read_int(f) for f in files]
            assert np.array_equal(wavs[0], sum(wavs[1:]))
            assert float(rows[0]["duration"]) == pytest.approx(
                len(wavs[0]) / sample_rate, abs=1e-6
            )


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libri_csvs(data_root, tmp_path_factory):
    return prepare_librimix(data_root["libri"], tmp_path_factory.mktemp("lm"))


def test_make_datasets_keys_and_whole_items(libri_csvs):
    train, valid, test = make_datasets(
        libri_csvs["train"], libri_csvs["valid"], libri_csvs["test"], noise=True
    )
    assert (len(train), len(valid), len(test)) == (3, 3, 3)
    item = valid[0]
    assert list(item) == ["id", "mix_sig", "s1_sig", "s2_sig", "noise_sig"]
    row = read_rows(libri_csvs["valid"])[1][0]
    assert item["id"] == row["ID"]
    n = round(float(row["duration"]) * 8000)
    for key in ("mix_sig", "s1_sig", "s2_sig", "noise_sig"):
        assert item[key].shape == (n,) and item[key].dtype == torch.float32
    diff = item["mix_sig"] - item["s1_sig"] - item["s2_sig"] - item["noise_sig"]
    assert diff.abs().max() <= LSB
    # without noise
    train, _, test = make_datasets(
        libri_csvs["train"], libri_csvs["valid"], None
    )
    assert test is None and list(train[0]) == [
        "id",
        "mix_sig",
        "s1_sig",
        "s2_sig",
    ]


def test_training_crops_are_consistent_and_random(data_root, tmp_path):
    root = write_wsj0mix(tmp_path / "w", sizes=2, duration=(1.0, 1.0))
    csvs = prepare_wsj0mix(root, tmp_path / "save")
    train, valid, _ = make_datasets(
        csvs["train"],
        csvs["valid"],
        csvs["test"],
        limit_training_signal_len=True,
        training_signal_len=1000,
    )
    whole = sf.read(read_rows(csvs["train"])[1][0]["mix_wav"], dtype="float32")[
        0
    ]
    starts = set()
    torch.manual_seed(0)
    for _ in range(6):
        item = train[0]
        for key in ("mix_sig", "s1_sig", "s2_sig"):
            assert item[key].shape == (1000,)
        diff = item["mix_sig"] - item["s1_sig"] - item["s2_sig"]
        assert diff.abs().max() <= LSB
        # locate the crop in the whole mixture
        mix = item["mix_sig"].numpy()
        match = [
            s
            for s in range(len(whole) - 999)
            if np.array_equal(whole[s : s + 1000], mix)
        ]
        assert match
        starts.add(match[0])
    assert len(starts) > 1
    assert valid[0]["mix_sig"].shape[0] > 1000  # valid is not cropped


def test_sorting_and_max_duration(tmp_path):
    root = write_wsj0mix(tmp_path / "w", sizes=4, duration=(0.2, 0.8), seed=3)
    csvs = prepare_wsj0mix(root, tmp_path / "save")
    args = (csvs["train"], csvs["valid"], csvs["test"])
    durations = sorted(
        float(r["duration"]) for r in read_rows(csvs["train"])[1]
    )

    def train_durations(**kw):
        train = make_datasets(*args, **kw)[0]
        return [train[i]["mix_sig"].shape[0] / 8000 for i in range(len(train))]

    asc = train_durations(sorting="ascending")
    assert asc == pytest.approx(durations, abs=1e-6)
    assert train_durations(sorting="descending") == pytest.approx(
        durations[::-1], abs=1e-6
    )
    cut = (durations[1] + durations[2]) / 2
    assert train_durations(sorting="random", max_duration=cut) == pytest.approx(
        [
            d
            for d in map(
                float, (r["duration"] for r in read_rows(csvs["train"])[1])
            )
            if d <= cut
        ],
        abs=1e-6,
    )
    with pytest.raises(ValueError, match="sorting"):
        make_datasets(*args, sorting="shortest")


def test_dataset_errors(data_root, tmp_path):
    csvs = prepare_wsj0mix(data_root["wsj"], tmp_path / "save")
    args = (csvs["train"], csvs["valid"], csvs["test"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['noise_wav'\]"):
        make_datasets(*args, noise=True)
    with pytest.raises(ValueError, match=r"\['s3_wav'\]"):
        make_datasets(*args, num_spks=3)
    train = make_datasets(*args, sample_rate=16000)[0]
    with pytest.raises(AudioFormatError, match="sample rate of 8000 Hz") as err:
        train[0]
    assert read_rows(csvs["train"])[1][0]["mix_wav"] in str(err.value)


# ---------------------------------------------------------------------------
# dynamic mixing
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dm_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    return {
        "wsj": write_wsj0_sources(root / "si_tr_s", 3, 2, duration=(0.4, 0.6)),
        "libri": write_librispeech_sources(
            root / "train-clean-100", 3, 2, duration=(0.4, 0.6)
        ),
        "noise": write_noise_sources(root / "noise", 2, 8000, (0.3, 0.5)),
        "root": root,
    }


def test_dynamic_mixing_items(dm_sources):
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.dataloader import make_dataloader

    dm = dynamic_mixing_dataset(
        dm_sources["wsj"], training_signal_len=2000, num_mixtures=4
    )
    assert len(dm) == 4
    item = dm[0]
    assert list(item) == ["id", "mix_sig", "s1_sig", "s2_sig"]
    assert item["mix_sig"].shape[0] <= 2000
    assert item["s1_sig"].shape == item["mix_sig"].shape
    diff = item["mix_sig"] - item["s1_sig"] - item["s2_sig"]
    assert diff.abs().max() < 1e-6
    assert not torch.allclose(item["s1_sig"], item["s2_sig"])
    assert max(float(item[k].abs().max()) for k in ("mix_sig", "s1_sig")) <= 0.9

    torch.manual_seed(0)
    loader = make_dataloader(dm, batch_size=2)

    def epoch():
        return [b.mix_sig.data.clone() for b in loader]

    first, second = epoch(), epoch()
    assert isinstance(next(iter(loader)), PaddedBatch)
    assert not all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second)
    )


def test_dynamic_mixing_librispeech_noise_and_resampling(dm_sources):
    dm = dynamic_mixing_dataset(
        dm_sources["libri"],  # 16 kHz flac, resampled to 8 kHz
        source_format="librispeech",
        noise_folder=dm_sources["noise"],
        training_signal_len=2400,
    )
    assert len(dm) == 3  # 6 utterances // 2 speakers
    item = dm[1]
    assert list(item) == ["id", "mix_sig", "s1_sig", "s2_sig", "noise_sig"]
    n = item["mix_sig"].shape[0]
    assert 1500 < n <= 2400  # 0.4-0.6 s at 8 kHz, cropped to 2400
    assert item["noise_sig"].shape == (n,) and item["noise_sig"].abs().max() > 0
    total = item["s1_sig"] + item["s2_sig"] + item["noise_sig"]
    assert (item["mix_sig"] - total).abs().max() < 1e-6


def test_dynamic_mixing_errors(dm_sources, tmp_path):
    with pytest.raises(ValueError, match="at least num_spks=4") as err:
        dynamic_mixing_dataset(dm_sources["wsj"], num_spks=4)
    assert "has 3" in str(err.value)
    one = write_wsj0_sources(tmp_path / "one", 1, 2, duration=(0.2, 0.2))
    with pytest.raises(ValueError, match="has 1"):
        dynamic_mixing_dataset(one)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        dynamic_mixing_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no .wav/.flac"):
        dynamic_mixing_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="source_format"):
        dynamic_mixing_dataset(dm_sources["wsj"], source_format="timit")


def _write_uneven_sources(root, rate=8000):
    """wsj0-style sources (speaker = first 3 characters) whose level
    changes along the utterance: 0.3 s steady ones, and 1 s ones that are
    quiet (-40 dB) for 0.3 s and loud after, so a cut to the shortest
    source changes a level set before the cut by far more than 5 dB."""
    g = np.random.default_rng(0)
    for spk in ("01a", "02b", "03c", "04d"):
        for utt in range(2):
            folder = Path(root) / spk
            folder.mkdir(parents=True, exist_ok=True)
            if (ord(spk[1]) + utt) % 2:
                wav = 0.1 * g.standard_normal(int(0.3 * rate))
            else:
                wav = 0.3 * g.standard_normal(rate)
                wav[: int(0.3 * rate)] *= 0.01
            sf.write(folder / f"{spk}c020{utt}.wav", wav, rate)
    return root


def _level_db(x):
    return 10 * math.log10(float(x.double().pow(2).mean()))


@pytest.mark.parametrize("length", [None, 16000], ids=["whole", "crop-long"])
@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "noisy"])
def test_dynamic_mixing_promises(length, noisy, dm_sources, tmp_path):
    """What the docs promise of every drawn mixture: distinct speakers;
    source levels in ``level_db`` (relative gain within +-5 dB) measured
    on the mixed samples, also when whole utterances of different lengths
    are cut to the shortest; noise SNR (loudest source) in ``snr_db``;
    mix = sum; peak <= 0.9."""
    from speechbrain_s4m.data.dynamic_mixing import DynamicMixer

    root = _write_uneven_sources(tmp_path / "si_tr_s")
    level_db, snr_db = (-27.5, -22.5), (-6.0, 3.0)
    mixer = DynamicMixer(
        root,
        num_spks=2,
        training_signal_len=length,
        noise_folder=dm_sources["noise"] if noisy else None,
        level_db=level_db,
        snr_db=snr_db,
    )
    read = []
    original = mixer._read_crop

    def recording(path, *args, **kwargs):
        read.append(Path(path).stem[:3])
        return original(path, *args, **kwargs)

    mixer._read_crop = recording
    rng = np.random.default_rng(5)
    cut = 0
    for _ in range(60):
        read.clear()
        sigs = mixer.draw(rng)
        speakers = read[:2]
        assert len(set(speakers)) == 2, speakers  # distinct speakers
        s1, s2 = sigs["s1_sig"], sigs["s2_sig"]
        cut += s1.shape[0] < 8000
        levels = [_level_db(s1), _level_db(s2)]
        # relative gain within the width of level_db (+-5 dB)
        assert abs(levels[0] - levels[1]) <= level_db[1] - level_db[0] + 1e-3
        peak = max(float(v.abs().max()) for v in sigs.values())
        assert peak <= 0.9 + 1e-6
        # absolute levels in range, unless the whole mix was scaled down
        scaled = abs(peak - 0.9) < 1e-4
        for level in levels:
            assert level <= level_db[1] + 1e-3
            assert scaled or level >= level_db[0] - 1e-3
        total = s1 + s2
        if noisy:
            snr = max(levels) - _level_db(sigs["noise_sig"])
            assert snr_db[0] - 1e-3 <= snr <= snr_db[1] + 1e-3
            total = total + sigs["noise_sig"]
        assert (sigs["mix_sig"] - total).abs().max() < 1e-6
    assert cut > 10  # the mixtures cut to a shorter source were tested

"""End-to-end tests of the ``s4m-separate`` and ``s4m-export`` commands."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from test_inference import make_recipe_folder, speechlike

from speechbrain_s4m.cli import export_main, main, separate_main
from speechbrain_s4m.export import export_pretrained


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return make_recipe_folder(tmp_path_factory.mktemp("recipe"))


@pytest.fixture(scope="module")
def model_dir(recipe, tmp_path_factory):
    return export_pretrained(recipe, tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", speechlike(1.0, seed=1)[0].numpy(), 8000)
    sf.write(folder / "b.flac", speechlike(1.0, 16000, 2, 2).t().numpy(), 16000)
    (folder / "notes.txt").write_text("not audio")
    return folder


def _stderr_lines(capsys):
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if "error" in x]
    assert "Traceback" not in err
    return lines


def test_separate_folder_and_files(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = separate_main(
        [str(inputs), "--model", str(model_dir), "--output-folder", str(out)]
        + ["--device", "cpu"]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a_s1.wav",
        "a_s2.wav",
        "b_s1.wav",
        "b_s2.wav",
    ]
    assert sf.info(out / "b_s2.wav").samplerate == 16000  # input rate
    assert sf.info(out / "b_s2.wav").frames == 16000
    assert "separated 2/2" in capsys.readouterr().err
    out2 = tmp_path / "out2"
    rc = separate_main(
        [str(inputs / "b.flac"), "--model", str(model_dir)]
        + ["--output-folder", str(out2), "--output-rate", "model"]
        + ["--normalize", "--subtype", "PCM_16", "--quiet"]
        + ["--chunk-seconds", "0.5", "--overlap-seconds", "0.1"]
    )
    assert rc == 0
    info = sf.info(out2 / "b_s1.wav")
    assert (info.samplerate, info.subtype, info.frames) == (
        8000,
        "PCM_16",
        8000,
    )
    assert np.abs(sf.read(out2 / "b_s1.wav")[0]).max() > 0.99


def test_bad_files_are_reported_and_skipped(
    model_dir, inputs, tmp_path, capsys
):
    (inputs / "c.wav").write_bytes(b"RIFF....WAVEjunk" * 10)
    sf.write(inputs / "d.wav", np.zeros(8000, "float32"), 8000)
    nan = speechlike(1.0)[0].numpy()
    nan[10] = np.nan
    sf.write(inputs / "e.wav", nan, 8000, subtype="FLOAT")
    out = tmp_path / "out"
    rc = separate_main(
        [str(inputs), "--model", str(model_dir), "--output-folder", str(out)]
    )
    assert rc == 1
    lines = _stderr_lines(capsys)
    assert len(lines) == 3, lines
    assert any("c.wav" in x and "corrupt" in x for x in lines)
    assert any("d.wav" in x and "silent" in x for x in lines)
    assert any("e.wav" in x and "NaN" in x for x in lines)
    # only complete outputs, no temporary or partial files
    assert sorted(p.name for p in out.iterdir()) == [
        "a_s1.wav",
        "a_s2.wav",
        "b_s1.wav",
        "b_s2.wav",
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["{in}/nope.wav"], "nope.wav: no such file or folder"),
        (["{in}/a.wav", "--model", "{tmp}/nomodel"], "model folder not found"),
        (
            ["{in}/a.wav", "--chunk-seconds", "1", "--overlap-seconds", "2"],
            "overlap",
        ),
        (["{in}/a.wav", "--output-rate", "fast"], "expected 'input'"),
        (["{tmp}/empty"], "holds no audio"),
        (["{in}/a.wav", "{tmp}/dup/a.wav"], "would write the same outputs"),
    ],
)
def test_usage_errors(model_dir, inputs, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "dup").mkdir()
    shutil.copy(inputs / "a.wav", tmp_path / "dup" / "a.wav")
    args = [a.format(**{"in": inputs, "tmp": tmp_path}) for a in args]
    if "--model" not in args:
        args += ["--model", str(model_dir)]
    out = tmp_path / "out"
    rc = separate_main(args + ["--output-folder", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_export_command(recipe, tmp_path, capsys):
    target = tmp_path / "exp"
    assert export_main([str(recipe), str(target)]) == 0
    assert (target / "masknet.ckpt").is_file()
    assert export_main([str(recipe), str(target)]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "already exists" in err
    assert export_main([str(recipe), str(target), "--overwrite"]) == 0
    assert export_main([str(tmp_path / "nope"), str(tmp_path / "x")]) == 1
    assert main(["export", str(recipe), str(tmp_path / "y")]) == 0
    assert main(["bogus"]) == 2


def test_module_entry_point_subprocess(model_dir, inputs, tmp_path):
    """``python -m speechbrain_s4m.cli``: exit codes and one-line errors."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    base = [sys.executable, "-m", "speechbrain_s4m.cli", "separate"]
    ok = subprocess.run(
        base
        + [str(inputs / "a.wav"), "--model", str(model_dir)]
        + ["--output-folder", str(tmp_path / "o"), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "a_s2.wav").is_file()
    (tmp_path / "bad.wav").write_bytes(b"junk")
    bad = subprocess.run(
        base
        + [str(tmp_path / "bad.wav"), "--model", str(model_dir)]
        + ["--output-folder", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    errors = [x for x in bad.stderr.splitlines() if "error" in x]
    assert len(errors) == 1 and "bad.wav" in errors[0]


# --------------------------------------------------------------------------
# Issue 9 items 1-7: inputs and results are never lost, nothing is silent
# --------------------------------------------------------------------------
def _run(model_dir, *args):
    return separate_main(list(args) + ["--model", str(model_dir), "--quiet"])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_inputs_are_never_overwritten(model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", speechlike(1.0, seed=1)[0].numpy(), 8000)
    sf.write(folder / "a_s1.wav", speechlike(1.0, seed=2)[0].numpy(), 8000)
    before = _snapshot(folder)
    for extra in ([], ["--overwrite"]):
        rc = _run(
            model_dir, str(folder), "--output-folder", str(folder), *extra
        )
        assert rc == 2
        lines = _stderr_lines(capsys)
        assert len(lines) == 1 and "a_s1.wav" in lines[0], lines
        assert "input" in lines[0]
        assert _snapshot(folder) == before


def test_existing_outputs_need_overwrite(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        _run(model_dir, str(inputs / "a.wav"), "--output-folder", str(out)) == 0
    )
    before = _snapshot(out)
    capsys.readouterr()
    sf.write(inputs / "a.wav", speechlike(1.0, seed=7)[0].numpy(), 8000)
    rc = _run(model_dir, str(inputs / "a.wav"), "--output-folder", str(out))
    assert rc == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and "--overwrite" in lines[0]
    assert "a_s1.wav" in lines[0] and "a_s2.wav" in lines[0]
    assert _snapshot(out) == before
    rc = _run(
        model_dir,
        str(inputs / "a.wav"),
        "--output-folder",
        str(out),
        "--overwrite",
    )
    assert rc == 0 and _snapshot(out) != before


@pytest.mark.parametrize("kind", ["file", "parent_file"])
def test_output_folder_checked_before_the_model_loads(
    model_dir, inputs, tmp_path, capsys, monkeypatch, kind
):
    from speechbrain_s4m.inference import S4MSeparation

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(S4MSeparation, "from_hparams", no_loading)
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if kind == "file" else tmp_path / "f" / "sub"
    rc = _run(model_dir, str(inputs), "--output-folder", str(out))
    assert rc == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and str(out) in lines[0], lines


def test_no_folder_left_when_the_only_input_fails(model_dir, tmp_path, capsys):
    sf.write(tmp_path / "silent.wav", np.zeros(8000, "float32"), 8000)
    out = tmp_path / "out"
    assert (
        _run(
            model_dir, str(tmp_path / "silent.wav"), "--output-folder", str(out)
        )
        == 1
    )
    assert not out.exists()
    assert "silent" in _stderr_lines(capsys)[0]


def test_truncated_wav_is_reported_corrupt(model_dir, tmp_path, capsys):
    sf.write(tmp_path / "full.wav", speechlike(2.0)[0].numpy(), 8000, "PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert (
        _run(model_dir, str(tmp_path / "cut.wav"), "--output-folder", str(out))
        == 1
    )
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and "cut.wav" in lines[0] and "corrupt" in lines[0]
    assert not out.exists()


def test_output_scale_and_integer_formats(model_dir, tmp_path, capsys):
    """A model whose raw outputs exceed full scale (as SI-SNR training
    allows): by default the sources are scaled to the mixture, and PCM
    output is never clipped (scaled down with a warning)."""
    import torch

    loud = tmp_path / "loud"
    shutil.copytree(model_dir, loud)
    state = torch.load(loud / "decoder.ckpt")
    torch.save({k: v * 300 for k, v in state.items()}, loud / "decoder.ckpt")
    mix = speechlike(1.0, seed=4)[0].numpy()
    sf.write(tmp_path / "m.wav", 0.9 * mix / np.abs(mix).max(), 8000)
    raw = tmp_path / "raw"
    args = [str(tmp_path / "m.wav"), "--subtype", "PCM_16"]
    assert (
        _run(loud, *args, "--scale", "none", "--output-folder", str(raw)) == 0
    )
    err = capsys.readouterr().err
    warns = [x for x in err.splitlines() if "warning" in x]
    assert len(warns) == 1 and "m.wav" in warns[0] and "scaled by" in warns[0]
    peaks = [np.abs(sf.read(raw / f"m_s{i}.wav")[0]).max() for i in (1, 2)]
    assert max(peaks) == pytest.approx(1.0, abs=1e-3)  # scaled, not clipped
    for i in (1, 2):
        data = sf.read(raw / f"m_s{i}.wav")[0]
        assert np.mean(np.abs(data) > 0.999) < 0.001
    out = tmp_path / "out"
    assert _run(loud, *args, "--output-folder", str(out)) == 0
    assert "warning" not in capsys.readouterr().err
    for i in (1, 2):
        assert np.abs(sf.read(out / f"m_s{i}.wav")[0]).max() <= 1.0


def test_help_documents_scale_and_overwrite(capsys):
    assert separate_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "--scale" in text
    assert "sum to the mixture" in text and "Never clipped" in text


def test_hidden_temporaries_are_not_inputs(model_dir, tmp_path, capsys):
    """A killed run's hidden .part.wav files in an input folder are neither
    separated nor reported; the next run writing the same outputs removes
    them."""
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", speechlike(1.0, seed=1)[0].numpy(), 8000)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a_s1.999999999.abcd.part.wav"
    stale.write_bytes(b"RIFF partial")
    (folder / ".b_s1.999999999.ef.part.wav").write_bytes(b"RIFF partial")
    rc = _run(model_dir, str(folder), "--output-folder", str(out))
    assert rc == 0, _stderr_lines(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["a_s1.wav", "a_s2.wav"]


# --------------------------------------------------------------------------
# Issue 21 item 1: a trained model's written sources sum to the mixture
# --------------------------------------------------------------------------
#: Minimum SNR (dB) of each mixture against ``mixture - (s1 + s2)`` for the
#: briefly trained model below (measured 6.9 to 14.7 dB on the 7 mixtures
#: with signed gains; -5.3 to +4.3 dB with the former nonnegative gains).
MIN_MIXTURE_SNR_DB = 5.0


@pytest.fixture(scope="module")
def trained_model_dirs(tiny_datasets, tmp_path_factory):
    """The tiny WSJ0-2mix recipe trained for 20 epochs (about 20 s; test
    SI-SNRi about 1 dB), exported; and a copy whose decoder is negated:
    an equally good model for SI-SNR, whose outputs are inverted."""
    import torch
    from conftest import run_recipe_inprocess

    root = tmp_path_factory.mktemp("trained")
    run_recipe_inprocess(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        root / "run",
        "--N_epochs",
        "20",
        "--lr",
        "0.005",
    )
    model = export_pretrained(root / "run", root / "model")
    inverted = root / "inverted"
    shutil.copytree(model, inverted)
    state = torch.load(inverted / "decoder.ckpt")
    torch.save({k: -v for k, v in state.items()}, inverted / "decoder.ckpt")
    return model, inverted


@pytest.mark.parametrize("which", ["trained", "inverted"])
def test_trained_model_sources_sum_to_the_mixture(
    trained_model_dirs, tiny_datasets, tmp_path, which
):
    from test_output_safety import mixture_snr

    model = trained_model_dirs[which == "inverted"]
    mixes = sorted(tiny_datasets["wsj0mix"].glob("**/mix/*.wav"))
    assert len(mixes) == 7
    out = tmp_path / "out"
    args = [str(p) for p in mixes] + ["--output-folder", str(out)]
    assert _run(model, *args, "--device", "cpu") == 0
    for path in mixes:
        mix = sf.read(path, dtype="float64")[0]
        written = np.stack(
            [sf.read(out / f"{path.stem}_s{i}.wav")[0] for i in (1, 2)]
        )
        assert mixture_snr(mix, written) > MIN_MIXTURE_SNR_DB, path


# --------------------------------------------------------------------------
# Issue 21 item 3: two runs racing to write the same outputs
# --------------------------------------------------------------------------
#: Runs ``s4m-separate`` with its outputs complete but not yet published
#: until every racer (argv[2] of them) is at the same point.
RACER = """
import pathlib, sys, time
from speechbrain_s4m.cli import separate_main
from speechbrain_s4m.inference import S4MSeparation

gate, count, me = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
separate = S4MSeparation._stream_file


def separate_then_wait(self, *args, **kwargs):
    yield from separate(self, *args, **kwargs)
    (gate / me).touch()  # all written: wait for the other racer
    deadline = time.monotonic() + 300
    while len(list(gate.iterdir())) < count:
        assert time.monotonic() < deadline, "the other racer never came"
        time.sleep(0.0005)


S4MSeparation._stream_file = separate_then_wait
sys.exit(separate_main(sys.argv[4:]))
"""


def test_racing_runs_never_replace_each_other(model_dir, tmp_path):
    """``s4m-separate dA/x.wav`` and ``s4m-separate dB/x.wav`` into the
    same folder, both past the existing-output check and publishing at
    the same moment: exactly one wins, the other exits 1 with one line
    naming the file, and the outputs are the winner's, both of them."""
    from speechbrain_s4m.inference import S4MSeparation

    (tmp_path / "gate").mkdir()
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    inputs = {}
    for name, seed in (("dA", 1), ("dB", 2)):
        (tmp_path / name).mkdir()
        inputs[name] = tmp_path / name / "x.wav"
        sf.write(inputs[name], speechlike(1.0, seed=seed)[0].numpy(), 8000)
    out = tmp_path / "same"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    racers = {
        name: subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "gate"), "2", name]
            + [str(path), "--model", str(model_dir), "--quiet"]
            + ["--output-folder", str(out), "--device", "cpu"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, path in inputs.items()
    }
    results = {
        n: (p.wait(timeout=600), p.stderr.read()) for n, p in racers.items()
    }
    codes = sorted(rc for rc, _ in results.values())
    assert codes == [0, 1], results
    winner = next(n for n, (rc, _) in results.items() if rc == 0)
    loser_err = next(err for rc, err in results.values() if rc == 1)
    lines = [x for x in loser_err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in loser_err, loser_err
    assert str(out / "x_s1.wav") in lines[0] and "--overwrite" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["x_s1.wav", "x_s2.wav"]
    model = S4MSeparation.from_hparams(model_dir, run_opts={"device": "cpu"})
    ref = model.separate_file(str(inputs[winner]))[0].t().numpy()
    for i in range(2):
        got = sf.read(out / f"x_s{i + 1}.wav", dtype="float32")[0]
        np.testing.assert_allclose(got, ref[i], atol=1e-5)


# --------------------------------------------------------------------------
# Issue 21 item 6: a full disk
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["ENOSPC", "libsndfile", "libsndfile_ok"])
def test_full_disk_is_one_line_and_leaves_nothing(
    model_dir, inputs, tmp_path, capsys, monkeypatch, fault
):
    """The writer fails as on a full disk (an ``OSError`` ENOSPC from a
    write, or libsndfile's "System error" from a real write to
    /dev/full, with the disk reporting under 1 MiB free): one line naming
    the output file and what to do, exit 1, no partial or temporary file,
    and the next file is not attempted. A libsndfile "System error" with
    free space left is reported per file and the run goes on."""
    import errno
    import shutil as sh

    from speechbrain_s4m.inference import outputs

    if fault == "libsndfile":
        usage = sh.disk_usage(tmp_path)._replace(free=4096)
        monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage)
    if fault == "ENOSPC":

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(sf.SoundFile, "write", write)
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        opened = sf.SoundFile

        def full_disk(file, mode="r", *args, **kwargs):
            if mode == "w":  # write to a device that is always full
                file = "/dev/full"
            return opened(file, mode, *args, **kwargs)

        monkeypatch.setattr(sf, "SoundFile", full_disk)
    out = tmp_path / "out"
    rc = _run(model_dir, str(inputs), "--output-folder", str(out))
    assert rc == 1
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err and "Errno" not in err
    assert not out.exists() or list(out.iterdir()) == []
    if fault == "libsndfile_ok":
        assert len(lines) == 2, err
        for line, name in zip(lines, ("a_s1.wav", "b_s1.wav")):
            assert str(out / name) in line and "disk is not full" in line
        return
    assert len(lines) == 1, err
    line = lines[0]
    assert str(out / "a_s1.wav") in line and "another folder" in line
    assert "no space left" in line
    assert "stopped: 1 more file(s) not separated" in line


# --------------------------------------------------------------------------
# Issue 21 item 7: resampled inputs keep their length
# --------------------------------------------------------------------------
def test_resampled_outputs_have_the_input_length(model_dir, tmp_path):
    """A 44.1 kHz stereo file of 67,727 frames through an 8 kHz model:
    12,287 samples at 8 kHz, which resample to 67,733 frames; the outputs
    have the input's 67,727 frames (CLI and ``separate_file``), or its
    length at another requested rate."""
    import math

    from speechbrain_s4m.inference import S4MSeparation

    frames = 67727
    mix = speechlike(1.6, 44100, seed=3, channels=2)[:, :frames]
    sf.write(tmp_path / "m.wav", mix.t().numpy(), 44100)
    for rate, expected in (
        ("input", (44100, frames)),
        ("16000", (16000, math.ceil(frames * 16000 / 44100))),
        ("model", (8000, math.ceil(frames * 8000 / 44100))),
    ):
        out = tmp_path / rate
        args = [str(tmp_path / "m.wav"), "--output-folder", str(out)]
        assert _run(model_dir, *args, "--output-rate", rate) == 0
        for i in (1, 2):
            info = sf.info(out / f"m_s{i}.wav")
            assert (info.samplerate, info.frames) == expected, rate
    model = S4MSeparation.from_hparams(model_dir, run_opts={"device": "cpu"})
    est = model.separate_file(
        str(tmp_path / "m.wav"), output_sample_rate="input"
    )
    assert est.shape == (1, frames, 2)
    # chunked (three chunks): the same length
    est = model.separate_file(
        str(tmp_path / "m.wav"),
        output_sample_rate="input",
        chunk_seconds=0.6,
        overlap_seconds=0.1,
    )
    assert est.shape == (1, frames, 2)

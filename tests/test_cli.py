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

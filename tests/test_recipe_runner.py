"""The recipe runner at its edges (``speechbrain_s4m.recipe``).

A trained run's record (``hyperparams.yaml``) survives ``--test_only`` and
resumed runs, and another model in its folder is refused with one line; a
misspelt override is a one-line error with the closest key; either
checkpoint-interval flag works alone; mixed precision on a CPU without
native bf16 falls back to fp32; the progress line (speed, ETA) appears;
SpeechBrain's torchvision warning is not printed.
"""

import math
import subprocess
import sys
import time
import types

import pytest
import speechbrain as sb
import torch
from conftest import (
    REPO,
    hparams_path,
    recipe_args,
    run_recipe_inprocess,
)

from speechbrain_s4m.brain import Separation
from speechbrain_s4m.recipe import (
    DeviceUnavailableError,
    check_device,
    cpu_has_native_bf16,
    cpu_precision,
    main,
)
from speechbrain_s4m.training.progress import ProgressReport


def error_lines(capsys):
    """The ``error:`` lines printed on stderr."""
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("error:")]


def run_main(args, capsys):
    """``main(argv=args)``: its exit status and its ``error:`` lines."""
    with pytest.raises(SystemExit) as exc:
        main(argv=args)
    return exc.value.code, error_lines(capsys)


# ----------------------------------------------------------------------
# 9.8: the record of a trained run
# ----------------------------------------------------------------------
def test_test_only_keeps_the_record_and_refuses_another_model(
    tiny_datasets, tmp_path, capsys
):
    data = tiny_datasets["wsj0mix"]
    out = tmp_path / "out"
    run_recipe_inprocess("WSJ0Mix", "s4m_tiny", data, out)
    record = (out / "hyperparams.yaml").read_bytes()
    results = (out / "test_results.csv").read_bytes()

    # the same model, other run options: evaluated, the record kept
    brain = run_recipe_inprocess(
        "WSJ0Mix", "s4m_tiny", data, out, "--test_only", "--N_epochs", "7"
    )
    assert brain.hparams.epoch_counter.current == 1
    assert (out / "hyperparams.yaml").read_bytes() == record

    # other shapes (wider masknet): one line, exit 2, nothing rewritten
    other = (
        "{num_iterations: 2, hidden_channels: 32, out_channels: 8, depth: 2,"
        " d_state: 4}"
    )
    args = recipe_args(
        "WSJ0Mix", "s4m_tiny", data, out, "--test_only", "--model", other
    )
    (out / "test_results.csv").write_bytes(results)
    code, errors = run_main(args, capsys)
    assert code == 2
    assert len(errors) == 1, errors
    assert "does not match the checkpoint" in errors[0]
    assert "masknet" in errors[0] and "hyperparams.yaml" in errors[0]
    assert (out / "hyperparams.yaml").read_bytes() == record
    assert (out / "test_results.csv").read_bytes() == results

    # same shapes, another function (the shared block applied 3 times)
    same_shapes = other.replace("32", "16").replace("ions: 2", "ions: 3")
    args = recipe_args("WSJ0Mix", "s4m_tiny", data, out, "--model", same_shapes)
    code, errors = run_main(args, capsys)
    assert code == 2
    assert len(errors) == 1 and "num_iterations: 2" in errors[0], errors
    assert (out / "hyperparams.yaml").read_bytes() == record


def test_test_only_without_checkpoint_fails_before_preparation(
    tiny_datasets, tmp_path, capsys
):
    out = tmp_path / "out"
    args = recipe_args(
        "WSJ0Mix", "s4m_tiny", tiny_datasets["wsj0mix"], out, "--test_only"
    )
    code, errors = run_main(args, capsys)
    assert code == 2
    assert len(errors) == 1 and "No checkpoint to evaluate" in errors[0]
    assert not (out / "save" / "train.csv").exists()  # no preparation


# ----------------------------------------------------------------------
# 9.10: a misspelt override
# ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, suggestion",
    [
        (["--N_epoch", "1"], "N_epochs"),
        (["--model", "{num_iteration: 2}"], "num_iterations"),
        (
            [
                "--lr_scheduler",
                "!new:speechbrain_s4m.nnet.schedulers.WarmupDecayScheduler "
                "{warmup_updates: 1}",
            ],
            None,  # a new class: HyperPyYAML would keep the file's one
        ),
    ],
    ids=["top-level", "in-the-model", "new-class"],
)
def test_misspelt_override_is_one_line(
    override, suggestion, tiny_datasets, tmp_path, capsys
):
    args = recipe_args(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        tmp_path / "out",
        *override,
    )
    with pytest.raises(SystemExit) as exc:
        main(argv=args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), errors
    if suggestion is None:
        assert "cannot be set from the command line" in errors[0]
        assert "edit " in errors[0]
    else:
        assert f"did you mean '{suggestion}'?" in errors[0]
    assert not (tmp_path / "out" / "hyperparams.yaml").exists()


def test_misspelt_override_through_the_command_line(tmp_path):
    script = REPO / "recipes" / "WSJ0Mix" / "separation" / "train.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(hparams_path("WSJ0Mix", "s4m_tiny"))]
        + ["--data_folder", str(tmp_path), "--N_epoch", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean 'N_epochs'?" in lines[0], lines


# ----------------------------------------------------------------------
# 9.11: either checkpoint interval alone
# ----------------------------------------------------------------------
class CountingIntraEpoch(Separation):
    """Counts the intra-epoch checkpoints."""

    intra_saves = 0

    def _save_intra_epoch_ckpt(self):
        CountingIntraEpoch.intra_saves += 1
        super()._save_intra_epoch_ckpt()


class _FastClock:
    """``time`` as SpeechBrain's Brain sees it: a minute passes per call."""

    def __init__(self):
        self.calls = 0

    def time(self):
        self.calls += 1
        return time.time() + 61.0 * self.calls

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.mark.parametrize(
    "flag, value",
    [("--ckpt_interval_steps", "1"), ("--ckpt_interval_minutes", "1")],
)
def test_one_checkpoint_interval_flag_alone(
    flag, value, tiny_datasets, tmp_path, monkeypatch
):
    """The yaml has ckpt_interval_minutes: 60; no other flag is passed.
    (For minutes, the Brain's clock runs a minute per reading.)"""
    import speechbrain.core

    if flag == "--ckpt_interval_minutes":
        monkeypatch.setattr(speechbrain.core, "time", _FastClock())
    CountingIntraEpoch.intra_saves = 0
    brain = run_recipe_inprocess(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        tmp_path / "out",
        flag,
        value,
        drop=["--ckpt_interval_minutes"],
        brain_class=CountingIntraEpoch,
    )
    if flag == "--ckpt_interval_steps":
        assert (brain.ckpt_interval_steps, brain.ckpt_interval_minutes) == (
            1,
            0,
        )
    else:
        assert brain.ckpt_interval_minutes == 1
        assert brain.ckpt_interval_steps == 0
    # 3 training batches: a checkpoint after each
    assert CountingIntraEpoch.intra_saves == 3


def test_checkpoint_interval_of_the_yaml_gives_way(tmp_path):
    """``--ckpt_interval_minutes`` alone over a yaml's steps, too."""
    from speechbrain.utils.run_opts import RunOptions

    from speechbrain_s4m.recipe import _one_checkpoint_interval

    run_opts = RunOptions.from_dictionary({"ckpt_interval_minutes": 5})
    hparams = {"ckpt_interval_steps": 100}
    _one_checkpoint_interval(hparams, run_opts)
    assert hparams["ckpt_interval_steps"] == 0
    # both on the command line: left to SpeechBrain (an error)
    both = {"ckpt_interval_minutes": 5, "ckpt_interval_steps": 3}
    hparams = {"ckpt_interval_steps": 100}
    _one_checkpoint_interval(hparams, RunOptions.from_dictionary(both))
    assert hparams["ckpt_interval_steps"] == 100


# ----------------------------------------------------------------------
# 11.4: precision on CPUs
# ----------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("requested", ["fp32", "fp16", "bf16"])
def test_cpu_precision_decision(requested, native):
    chosen, reason = cpu_precision(requested, native_bf16=native)
    if requested == "fp32":
        assert (chosen, reason) == ("fp32", None)
    elif native:
        assert chosen == "bf16"
        assert (reason is None) == (requested == "bf16")
    else:
        assert chosen == "fp32"
        assert "without native bf16" in reason and "\n" not in reason


def test_cpu_bf16_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n")
    assert cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_on_cpu_in_a_run(
    native, tiny_datasets, tmp_path, monkeypatch
):
    """--precision fp16 on a CPU: bf16 where native, fp32 (and one warning
    saying why) where not; the whole recipe runs either way."""
    import speechbrain_s4m.recipe as recipe

    monkeypatch.setattr(recipe, "cpu_has_native_bf16", lambda: native)
    brain = run_recipe_inprocess(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        tmp_path / "out",
        "--precision",
        "fp16",
    )
    assert brain.precision == ("bf16" if native else "fp32")
    log = (tmp_path / "out" / "log.txt").read_text().splitlines()
    warnings = [line for line in log if "--precision: fp16 requested" in line]
    assert len(warnings) == 1, warnings
    assert "WARNING" in warnings[0]
    assert ("using bf16" if native else "using fp32") in warnings[0]
    assert (tmp_path / "out" / "test_results.csv").is_file()


def test_stray_word_glued_onto_a_value_is_refused(tiny_datasets, tmp_path):
    """``--output_folder X --noprogressbar True``: SpeechBrain would write
    into "X True"; the runner refuses with one line, before any work."""
    out = tmp_path / "X"
    args = [
        str(hparams_path("WSJ0Mix", "s4m_tiny")),
        "--data_folder",
        str(tiny_datasets["wsj0mix"]),
        "--output_folder",
        str(out),
        "--noprogressbar",
        "True",
    ]
    code = "from speechbrain_s4m.recipe import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: --noprogressbar takes no value: write it alone, without "
        "'True' (SpeechBrain would glue 'True' onto --output_folder, whose "
        f"value would be '{out} True')"
    ], proc.stderr
    assert not out.exists() and not (tmp_path / "X True").exists()


def test_two_words_for_one_override_are_refused(capsys):
    code, lines = run_main(
        [
            str(hparams_path("WSJ0Mix", "s4m_tiny")),
            "--output_folder",
            "my",
            "run",
        ],
        capsys,
    )
    assert code == 2
    assert lines == [
        "error: 'run' is the value of no option: SpeechBrain would glue it "
        "onto --output_folder, whose value would be 'my run'; quote a value "
        "that has spaces, or remove the word"
    ]


def test_flow_mapping_without_spaces_says_so(tmp_path, capsys):
    """``--synth_sizes {tr:200,cv:20,tt:20}`` is YAML for three keys with
    no value; the message says to put a space after each colon."""
    code, lines = run_main(
        [
            str(hparams_path("SynthMix", "s4m_tiny")),
            "--output_folder",
            str(tmp_path / "out"),
            "--synth_sizes",
            "{tr:200,cv:20,tt:20}",
        ],
        capsys,
    )
    assert code == 2
    assert len(lines) == 1
    assert lines[0].endswith(
        "a YAML mapping needs a space after each colon: write "
        "{tr: 200, cv: 20, tt: 20}"
    ), lines


def test_comparison_folder_is_ignored_by_git():
    proc = subprocess.run(
        ["git", "check-ignore", "-q", "comparison/comparison.md"],
        cwd=REPO,
    )
    assert proc.returncode == 0


# ----------------------------------------------------------------------
# 9.14: progress and expected time
# ----------------------------------------------------------------------
class EveryBatch(Separation):
    """A progress line after every batch."""

    progress_interval_s = 0.0


def test_progress_and_eta_are_logged(tiny_datasets, tmp_path):
    out = tmp_path / "out"
    run_recipe_inprocess(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        out,
        "--N_epochs",
        "2",
        brain_class=EveryBatch,
    )
    log = (out / "log.txt").read_text()
    # within the epoch: batches done of 3, speed, epoch ETA
    assert "epoch 1/2: 2/3 batches, " in log
    assert "batches/s, epoch ETA " in log
    # at each epoch end: speed, ETA of the run, epochs left
    assert "epoch 1/2 done: 3 batches in " in log
    assert "(1 epoch left)" in log
    assert "epoch 2/2 done: 3 batches in " in log
    assert "ETA 0 s (0 epochs left)" in log


def test_default_progress_interval_keeps_logs_short(tiny_datasets, tmp_path):
    out = tmp_path / "out"
    run_recipe_inprocess("WSJ0Mix", "s4m_tiny", tiny_datasets["wsj0mix"], out)
    log = (out / "log.txt").read_text()
    assert "epoch 1/1 done: 3 batches in " in log
    assert "epoch 1/1: " not in log  # no line per batch (60 s interval)


class _FakeBrain:
    """The little of a Brain that :class:`ProgressReport` reads."""

    step = 0

    def __init__(self):
        counter = types.SimpleNamespace(current=1, limit=3)
        self.hparams = types.SimpleNamespace(epoch_counter=counter)

    def on_stage_start(self, stage, epoch=None):
        pass

    def fit_batch(self, batch):
        self.step += 1  # as SpeechBrain's loop, before the batch
        return 0.0


class _FakeProgress(ProgressReport, _FakeBrain):
    progress_interval_s = 1e9  # lines built by the test
    batches_per_epoch = 1000


def test_epoch_eta_follows_the_recent_speed(monkeypatch):
    """A first batch of 30 s (compilation), then 2 s per batch: the speed
    and the epoch ETA are those of the last minutes, not the average since
    the epoch started (201 batches in 430 s)."""
    import speechbrain_s4m.training.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    brain = _FakeProgress()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    for i in range(201):
        clock[0] += 30.0 if i == 0 else 2.0
        brain.fit_batch(None)
    line = brain._progress_line(clock[0])
    assert line == (
        "epoch 1/3: 201/1000 batches, 0.50 batches/s, epoch ETA 27 min"
    ), line
    # the window, not the whole epoch, is kept
    assert len(brain._samples) < 160


def test_recent_rate_and_run_eta():
    from speechbrain_s4m.training.progress import (
        _duration,
        recent_rate,
        run_eta,
    )

    # slowed down for the last minute (another job started): the new speed
    samples = [(0.0, 0)] + [(float(t), t) for t in range(1, 601)]
    samples += [(600.0 + 4 * i, 600 + i) for i in range(1, 31)]
    assert recent_rate(samples, window_s=60) == pytest.approx(0.25)
    assert recent_rate(samples, window_s=1e9) == pytest.approx(629 / 719)
    assert math.isnan(recent_rate([(5.0, 1)], 60))
    # the first (compiling) epoch is left out; the latest three count
    assert run_eta([600.0, 100.0, 200.0, 300.0, 400.0], 2) == 600.0
    assert run_eta([600.0, 100.0], 3) == 300.0
    assert run_eta([100.0], 0) == 0.0
    assert (_duration(42.2), _duration(725), _duration(12600)) == (
        "42 s",
        "12 min",
        "3.5 h",
    )


# ----------------------------------------------------------------------
# 9.12: no torchvision warning
# ----------------------------------------------------------------------
def test_no_torchvision_warning(tmp_path):
    """Without torchvision (hidden), loading a recipe's hparams prints no
    "cannot save figures" warning; other warnings of the module still
    pass."""
    code = (
        "import sys, logging\n"
        "sys.modules['torchvision'] = None\n"
        "from speechbrain_s4m.config import load_hparams\n"
        f"hp = load_hparams({str(hparams_path('WSJ0Mix', 's4m_tiny'))!r},"
        f" 'data_folder: {tmp_path}\\noutput_folder: {tmp_path}/o')\n"
        "print(type(hp['train_logger']).__name__)\n"
        "logging.getLogger('speechbrain.utils.train_logger')"
        ".warning('still here')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "FileTrainLogger"
    assert "torchvision" not in proc.stderr
    assert "still here" in proc.stderr


# ----------------------------------------------------------------------
# 9.9: bad audio found by preparation, before training
# ----------------------------------------------------------------------
def test_truncated_test_wav_stops_the_recipe_before_training(
    tiny_datasets, tmp_path, capsys
):
    import shutil

    data = tmp_path / "2speakers"
    shutil.copytree(tiny_datasets["wsj0mix"], data)
    cut = sorted((data / "wav8k" / "min" / "tt" / "mix").iterdir())[1]
    raw = cut.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(argv=recipe_args("WSJ0Mix", "s4m_tiny", data, out))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: WSJ0-2mix: 1 bad audio file(s)"), err
    assert f"{cut}: corrupt audio file" in err
    assert not (out / "train_log.txt").exists()
    assert not list((out / "save").glob("CKPT+*"))


def test_check_device_names_a_missing_cuda_device():
    check_device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceUnavailableError, match="^--device cuda"):
        check_device(f"cuda:{n}")

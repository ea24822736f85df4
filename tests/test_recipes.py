"""End-to-end tests of the recipes and of the Separation brain.

Every recipe (WSJ0Mix, LibriMix, WHAM, SynthMix) runs with every hparams file
on a tiny dataset written in the real layout: data preparation -> one short
epoch -> evaluation of the best checkpoint. Also: resuming after the process
is killed mid-epoch, ``--test_only``, clear errors for a wrong
``--data_folder``, dynamic mixing, mixed precision, and the brain's batch
skipping (non-finite losses and gradients, loss thresholding).
"""

import csv
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import speechbrain as sb
import torch
from conftest import (
    REPO,
    TINY_MODEL,
    hparams_path,
    recipe_args,
    run_recipe_inprocess,
    synthmix_command,
    train_script,
)

MODELS = ["s4m_tiny", "s4m", "sepformer"]


def read_results(output_folder):
    """Rows of ``test_results.csv``."""
    with open(output_folder / "test_results.csv", newline="") as f:
        return list(csv.DictReader(f))


def epoch_lines(output_folder):
    """Epoch numbers logged in ``train_log.txt`` (one per finished epoch)."""
    lines = (output_folder / "train_log.txt").read_text().splitlines()
    return [
        int(line.split(",")[0].split(":")[1])
        for line in lines
        if line.startswith("epoch:")
    ]


def checkpoints(output_folder):
    """The ``CKPT+*`` folders of a run."""
    return sorted((output_folder / "save").glob("CKPT+*"))


def check_finished_run(out, n_test=2, num_spks=2):
    """A run that trained one epoch and evaluated the test set."""
    assert (out / "hyperparams.yaml").is_file()
    assert epoch_lines(out) == [1]
    ckpts = checkpoints(out)
    assert len(ckpts) == 1
    meta = (ckpts[0] / "CKPT.yaml").read_text()
    assert "si-snr:" in meta
    for name in ("encoder", "masknet", "decoder", "optimizer", "counter"):
        assert (ckpts[0] / f"{name}.ckpt").is_file(), name
    rows = read_results(out)
    # the scores first (a "notes" column or optional metrics may follow)
    assert list(rows[0])[:5] == ["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"]
    assert len(rows) == n_test + 1 and rows[-1]["snt_id"] == "avg"
    for key in ("sdr", "sdr_i", "si-snr", "si-snr_i"):
        values = [float(r[key]) for r in rows[:-1]]
        assert all(math.isfinite(v) for v in values)
        assert float(rows[-1][key]) == pytest.approx(sum(values) / n_test)
    assert (out / "training_curve.png").stat().st_size > 1000
    audio = sorted(p.name for p in (out / "save" / "audio_results").iterdir())
    assert len(audio) == 1 + 2 * num_spks  # 1 utterance: mix, sources, est.


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "recipe", ["WSJ0Mix", "LibriMix", "WHAM"], ids=str.lower
)
def test_recipe_end_to_end(recipe, model, tiny_datasets, tmp_path):
    dataset = {"WSJ0Mix": "wsj0mix", "LibriMix": "librimix", "WHAM": "wham"}
    out = tmp_path / "out"
    brain = run_recipe_inprocess(
        recipe, model, tiny_datasets[dataset[recipe]], out
    )
    check_finished_run(out)
    # The S4M recipes train the S4 parameters in their own group
    n_groups = len(brain.optimizer.param_groups)
    assert n_groups == (1 if model == "sepformer" else 2)
    # Every recipe speed-perturbs (and re-adds the noise of the noisy
    # datasets), the S4M ones as SpeechBrain's SepFormer
    assert brain.hparams.use_speedperturb
    # The noise comes with every noisy dataset (its manifest has noise_wav)
    for split in ("train", "valid", "test"):
        item = brain.datasets[split][0]
        assert ("noise_sig" in item) == (recipe != "WSJ0Mix"), split


def test_three_speakers_16k_max(tmp_path):
    """--num_spks 3 --sample_rate 16000 --mode max (wsj0-3mix, wav16k)."""
    from speechbrain_s4m.data.synthetic import write_wsj0mix

    data = write_wsj0mix(
        tmp_path / "3speakers",
        num_spks=3,
        sample_rate=16000,
        mode="max",
        sizes={"tr": 2, "cv": 2, "tt": 2},
        duration=(0.4, 0.5),
        seed=1,
    )
    out = tmp_path / "out"
    brain = run_recipe_inprocess(
        "WSJ0Mix",
        "s4m_tiny",
        data,
        out,
        "--num_spks",
        "3",
        "--sample_rate",
        "16000",
        "--mode",
        "max",
    )
    check_finished_run(out, num_spks=3)
    assert brain.hparams.model["kernel_size"] == 64  # 4 ms at 16 kHz


@pytest.mark.parametrize("mixture", ["clean", "single"])
def test_librimix_mixtures(mixture, tiny_datasets, tmp_path):
    out = tmp_path / "out"
    spks = "1" if mixture == "single" else "2"
    brain = run_recipe_inprocess(
        "LibriMix",
        "s4m_tiny",
        tiny_datasets["librimix"],
        out,
        "--mixture",
        mixture,
        "--num_spks",
        spks,
        "--use_speedperturb",
        "True",
    )
    check_finished_run(out, num_spks=int(spks))
    noise = "noise_sig" in brain.datasets["train"][0]
    assert noise == (mixture == "single")  # to re-mix after speed change
    manifest = (out / "save" / "train.csv").read_text()
    header = manifest.splitlines()[0]
    assert f"mix_{mixture}" in manifest
    assert ("s2_wav" in header) == (mixture == "clean")


def test_tiny_recipe_output_fixture(tiny_recipe_output):
    check_finished_run(tiny_recipe_output)


@pytest.mark.parametrize("model", ["s4m_tiny", "sepformer"])
def test_synthmix_recipe(model, tmp_path):
    """The main job's recipe writes its data, trains, tests and plots."""
    args, write_synthmix = synthmix_command(model, tmp_path)
    from speechbrain_s4m.recipe import run_recipe

    run_recipe(args, before_prepare=write_synthmix)
    check_finished_run(tmp_path / "out")
    assert (tmp_path / "data" / "wav8k" / "min" / "tt" / "mix").is_dir()
    marker = tmp_path / "data" / "synthmix.json"
    stamp = marker.stat().st_mtime_ns
    # A second run reuses the data (same options) and trains no more epochs
    run_recipe(args, before_prepare=write_synthmix)
    assert marker.stat().st_mtime_ns == stamp
    assert epoch_lines(tmp_path / "out") == [1]


def test_test_only_reevaluates_without_training(tiny_datasets, tmp_path):
    out = tmp_path / "out"
    data = tiny_datasets["wsj0mix"]
    run_recipe_inprocess("WSJ0Mix", "s4m_tiny", data, out)
    first = read_results(out)
    (out / "test_results.csv").unlink()
    brain = run_recipe_inprocess(
        "WSJ0Mix", "s4m_tiny", data, out, "--test_only", "--N_epochs", "3"
    )
    assert epoch_lines(out) == [1]  # no training happened
    assert brain.hparams.epoch_counter.current == 1  # best checkpoint loaded
    again = read_results(out)
    assert [r["snt_id"] for r in again] == [r["snt_id"] for r in first]
    for a, b in zip(again, first):
        assert float(a["si-snr_i"]) == pytest.approx(float(b["si-snr_i"]))


def test_test_only_without_checkpoint_fails_clearly(
    tiny_datasets, tmp_path, capsys
):
    from speechbrain_s4m.recipe import main

    args = recipe_args(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        tmp_path / "out",
        "--test_only",
    )
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "No checkpoint to evaluate" in err
    assert not (tmp_path / "out" / "test_results.csv").exists()


@pytest.mark.parametrize("recipe", ["WSJ0Mix", "LibriMix", "WHAM"])
def test_wrong_data_folder_fails_before_training(
    recipe, tiny_datasets, tmp_path, capsys
):
    from speechbrain_s4m.recipe import main

    # A real folder, but of another dataset (WSJ0-2mix has no mix_both;
    # LibriMix has no tr/cv/tt)
    wrong = tiny_datasets["librimix" if recipe != "LibriMix" else "wsj0mix"]
    args = recipe_args(recipe, "s4m_tiny", wrong, tmp_path / "out")
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    errors = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("error:")
    ]
    assert len(errors) == 1 and "missing" in errors[0].lower(), errors
    assert not (tmp_path / "out" / "train_log.txt").exists()
    assert not checkpoints(tmp_path / "out")


def test_missing_data_folder_exits_nonzero(tmp_path):
    """Through the real command line: exit status 2, one-line message."""
    missing = tmp_path / "nowhere" / "2speakers"
    proc = subprocess.run(
        [sys.executable, str(train_script("WSJ0Mix"))]
        + recipe_args("WSJ0Mix", "s4m_tiny", missing, tmp_path / "out"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not checkpoints(tmp_path / "out")


def test_override_typo_is_an_error(tiny_datasets, tmp_path):
    with pytest.raises(KeyError, match="num_iteration"):
        run_recipe_inprocess(
            "WSJ0Mix",
            "s4m_tiny",
            tiny_datasets["wsj0mix"],
            tmp_path / "out",
            "--model",
            "{num_iteration: 2}",
        )


def test_dynamic_mixing(tiny_datasets, tmp_path):
    from speechbrain_s4m.data.synthetic import (
        write_librispeech_sources,
        write_noise_sources,
    )

    sources = write_librispeech_sources(
        tmp_path / "LibriSpeech", 3, 2, duration=(0.5, 0.7)
    )
    noise = write_noise_sources(tmp_path / "noise", 2, duration=(0.8, 0.8))
    out = tmp_path / "out"
    brain = run_recipe_inprocess(
        "LibriMix",
        "s4m_tiny",
        tiny_datasets["librimix"],
        out,
        "--dynamic_mixing",
        "True",
        "--base_folder_dm",
        sources,
        "--noise_folder_dm",
        noise,
        "--training_signal_len",
        "3000",
    )
    check_finished_run(out)
    train = brain.datasets["train"]
    assert len(train) == 3  # as many mixtures per epoch as the static set
    first, again = train[0], train[0]
    assert first["mix_sig"].shape == (3000,)
    assert "noise_sig" in first  # noisy mixtures (mixture: both)
    assert not torch.equal(first["mix_sig"], again["mix_sig"])  # new mix


def test_dynamic_mixing_without_sources_fails(tiny_datasets, tmp_path):
    from speechbrain_s4m.data import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="base_folder_dm"):
        run_recipe_inprocess(
            "WSJ0Mix",
            "s4m_tiny",
            tiny_datasets["wsj0mix"],
            tmp_path / "out",
            "--dynamic_mixing",
            "True",
        )


def test_bf16_and_sorting(tiny_datasets, tmp_path):
    from speechbrain_s4m.recipe import cpu_has_native_bf16

    out = tmp_path / "out"
    brain = run_recipe_inprocess(
        "WHAM",
        "s4m_tiny",
        tiny_datasets["wham"],
        out,
        "--precision",
        "bf16",
        "--sorting",
        "ascending",
        "--batch_size",
        "2",
        "--use_speedperturb",
        "True",
    )
    # bf16 where the CPU has native bf16, else fp32 (see test_recipe_runner)
    native = cpu_has_native_bf16()
    assert brain.precision == ("bf16" if native else "fp32")
    check_finished_run(out)


def test_resume_after_kill_mid_epoch(tiny_datasets, tmp_path):
    """SIGKILL during epoch 2, after an intra-epoch checkpoint: the rerun
    continues epoch 2 from that checkpoint (epoch 1 is not redone, nor the
    steps of epoch 2 before the checkpoint)."""
    from speechbrain_s4m.data.synthetic import write_wsj0mix

    n_train = 6
    data = write_wsj0mix(
        tmp_path / "2speakers",
        sizes={"tr": n_train, "cv": 2, "tt": 2},
        duration=(0.5, 0.5),
    )
    out = tmp_path / "out"
    count_file = tmp_path / "calls.txt"
    args = recipe_args(
        "WSJ0Mix",
        "s4m_tiny",
        data,
        out,
        "--N_epochs",
        "2",
        "--ckpt_interval_steps",
        "2",
        "--loss",
        "!name:conftest.counting_loss",
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
        S4M_TEST_COUNT_FILE=str(count_file),
        # killed at the 3rd training batch of epoch 2 (checkpoint after 2nd)
        S4M_TEST_KILL_AT=str(n_train + 3),
    )
    cmd = [sys.executable, str(train_script("WSJ0Mix"))] + args
    first = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert first.returncode == -9, first.stderr[-2000:]
    assert len(count_file.read_text().split()) == n_train + 3
    assert epoch_lines(out) == [1]
    intra = [
        c
        for c in checkpoints(out)
        if "brain_intra_epoch_ckpt" in (c / "CKPT.yaml").read_text()
    ]
    assert intra, "no intra-epoch checkpoint before the kill"

    count_file.unlink()
    env["S4M_TEST_KILL_AT"] = "0"
    second = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    # Only the last n_train - 2 batches of epoch 2 were trained again
    assert len(count_file.read_text().split()) == n_train - 2
    assert "Going into epoch 1" not in second.stderr + second.stdout
    assert epoch_lines(out) == [1, 2]
    assert len(read_results(out)) == 3


def _count(path):
    """Training batches recorded by ``conftest.counting_loss``."""
    return len(path.read_text().split()) if path.exists() else 0


@pytest.mark.parametrize(
    "sig, workers",
    [(signal.SIGINT, 0), (signal.SIGTERM, 0), (signal.SIGTERM, 2)],
    ids=["SIGINT", "SIGTERM", "SIGTERM-group-with-workers"],
)
def test_signal_saves_the_current_update_and_the_rerun_resumes(
    sig, workers, tmp_path
):
    """A real SIGINT / SIGTERM during training: the update in progress
    finishes, an intra-epoch checkpoint is saved at it, the run exits with
    128 + signal and one line (how to resume), no traceback; the rerun of
    the same command trains only the batches after that update. With data
    loader workers the signal goes to the whole process group (as a
    terminal's Ctrl-C or a scheduler does): the workers must not end the
    run before the checkpoint, nor keep it from exiting."""
    from speechbrain_s4m.data.synthetic import write_wsj0mix

    n_train = 6
    data = write_wsj0mix(
        tmp_path / "2speakers",
        sizes={"tr": n_train, "cv": 2, "tt": 2},
        duration=(0.5, 0.5),
    )
    out = tmp_path / "out"
    count_file = tmp_path / "calls.txt"
    args = recipe_args(
        "WSJ0Mix",
        "s4m_tiny",
        data,
        out,
        "--loss",
        "!name:conftest.counting_loss",
        "--num_workers",
        workers,
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
        S4M_TEST_COUNT_FILE=str(count_file),
        S4M_TEST_SLEEP_S="0.3",  # the signal lands inside a batch
    )
    cmd = [sys.executable, str(train_script("WSJ0Mix"))] + args
    logs = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(logs[0], "w") as fout, open(logs[1], "w") as ferr:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=fout,
            stderr=ferr,
            cwd=tmp_path,
            start_new_session=True,  # its own process group
        )
        deadline = time.monotonic() + 300
        # Training has started: the second batch is in progress
        while _count(count_file) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        if workers:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        status = proc.wait(timeout=300)
    stdout, stderr = (p.read_text() for p in logs)
    done = _count(count_file)
    assert status == 128 + sig, stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert 2 <= done < n_train
    resume = [line for line in stderr.splitlines() if "rerun" in line]
    assert resume == [stderr.strip().splitlines()[-1]], stderr[-2000:]
    assert resume[0].startswith(
        f"stopped by {sig.name} at epoch 1, batch {done}/{n_train}: "
        f"checkpoint saved in {out / 'save' / 'CKPT+'}"
    ), resume
    assert resume[0].endswith(
        "; rerun the same command to resume from it: python "
        + shlex.join(cmd[1:])
    ), resume
    intra = [
        c
        for c in checkpoints(out)
        if "brain_intra_epoch_ckpt" in (c / "CKPT.yaml").read_text()
    ]
    assert len(intra) == 1 and str(intra[0]) in resume[0]
    brain_state = (intra[0] / "brain.ckpt").read_text()
    assert f"step: {done}\n" in brain_state
    assert not (out / "test_results.csv").exists()

    count_file.unlink()
    env["S4M_TEST_SLEEP_S"] = "0"
    second = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert second.returncode == 0, second.stderr[-2000:]
    # Only the batches after the saved update were trained
    assert _count(count_file) == n_train - done
    assert epoch_lines(out) == [1]
    assert len(read_results(out)) == 3


# ----------------------------------------------------------------------
# The brain's batch skipping, on a tiny model
# ----------------------------------------------------------------------
class _Mask(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 16, 1)

    def forward(self, w):
        return torch.relu(self.conv(w)).view(2, *w.shape)


def _tiny_brain(loss, **hparams):
    from speechbrain.lobes.models.dual_path import Decoder, Encoder

    from speechbrain_s4m.brain import Separation

    torch.manual_seed(0)
    modules = {
        "encoder": Encoder(kernel_size=16, out_channels=8),
        "masknet": _Mask(),
        "decoder": Decoder(8, 1, kernel_size=16, stride=8, bias=False),
    }
    defaults = {
        "num_spks": 2,
        "loss": loss,
        "clip_grad_norm": 5,
        "loss_upper_lim": 999999,
        "threshold_byloss": True,
        "threshold": -30,
    }
    defaults.update(hparams)
    brain = Separation(
        modules,
        opt_class=lambda p: torch.optim.Adam(p, lr=1e-2),
        hparams=defaults,
        run_opts={"device": "cpu"},
    )
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    return brain


def _batch():
    from speechbrain.dataio.batch import PaddedBatch

    g = torch.Generator().manual_seed(1)
    items = []
    for i, n in enumerate((800, 600)):
        s1, s2 = torch.randn(n, generator=g), torch.randn(n, generator=g)
        items.append(
            {"id": str(i), "mix_sig": s1 + s2, "s1_sig": s1, "s2_sig": s2}
        )
    return PaddedBatch(items)


def _params(brain):
    return [p.detach().clone() for p in brain.modules.parameters()]


def _changed(before, brain):
    return [
        not torch.equal(a, b)
        for a, b in zip(before, brain.modules.parameters())
    ]


def test_fit_batch_trains():
    from speechbrain_s4m.losses import pit_si_snr_loss

    brain = _tiny_brain(pit_si_snr_loss)
    before = _params(brain)
    loss = brain.fit_batch(_batch())
    assert torch.isfinite(loss)
    assert all(_changed(before, brain))
    assert brain.skipped_batches == 0


@pytest.mark.parametrize(
    "make_loss",
    [
        # non-finite loss
        lambda: (
            lambda e, t, lengths=None: (
                e.sum(dim=(1, 2)) * float("nan"),
                None,
            )
        ),
        # finite loss, NaN gradient (d sqrt(x)/dx at 0 is inf, times 0)
        lambda: (
            lambda e, t, lengths=None: (
                torch.sqrt((e * 0).pow(2).sum(dim=(1, 2))),
                None,
            )
        ),
        # every utterance already better than the threshold (30 dB)
        lambda: (
            lambda e, t, lengths=None: (
                e.sum(dim=(1, 2)) * 0 - 40.0,
                None,
            )
        ),
        # above loss_upper_lim
        lambda: (
            lambda e, t, lengths=None: (
                e.sum(dim=(1, 2)) * 0 + 1e7,
                None,
            )
        ),
    ],
    ids=["nan-loss", "nan-grad", "threshold", "upper-limit"],
)
def test_fit_batch_skips_without_touching_weights(make_loss):
    brain = _tiny_brain(make_loss())
    before = _params(brain)
    state = brain.optimizer.state_dict()["state"]
    brain.fit_batch(_batch())
    assert not any(_changed(before, brain))
    assert brain.skipped_batches == 1
    assert brain.optimizer.state_dict()["state"] == state  # no Adam step
    assert all(p.grad is None for p in brain.modules.parameters())


def test_threshold_keeps_only_hard_utterances():
    """Only the utterance above the threshold contributes to the loss."""
    calls = []

    def loss(e, t, lengths=None):
        out = e.sum(dim=(1, 2)) * 0 + torch.tensor([-40.0, -10.0])
        calls.append(out)
        return out, None

    brain = _tiny_brain(loss)
    value = brain.fit_batch(_batch())
    assert value.item() == pytest.approx(-10.0)
    assert brain.skipped_batches == 0


def test_padding_is_masked_in_the_loss():
    """The brain passes the lengths: a padded utterance's loss is computed
    on its real samples only."""
    from speechbrain_s4m.losses import pit_si_snr_loss

    brain = _tiny_brain(pit_si_snr_loss)
    batch = _batch()
    with torch.no_grad():
        est, tgt, lengths = brain.compute_forward(
            batch.mix_sig, [batch.s1_sig, batch.s2_sig], sb.Stage.VALID
        )
        masked = brain.compute_objectives(est, tgt, lengths)
        alone = brain.compute_objectives(est[1:, :600], tgt[1:, :600])
        unmasked = brain.compute_objectives(est, tgt)
    assert lengths.tolist() == pytest.approx([1.0, 0.75])
    assert masked[1].item() == pytest.approx(alone[0].item(), abs=1e-4)
    assert abs(unmasked[1].item() - alone[0].item()) > 1e-3


def test_model_overrides_reach_the_fragment():
    from speechbrain_s4m.config import load_hparams

    hp = load_hparams(
        hparams_path("WSJ0Mix", "s4m_tiny"),
        {"data_folder": "/x", "model": {"num_iterations": 3}},
    )
    assert hp["MaskNet"].num_iterations == 3
    assert hp["modules"]["masknet"] is hp["MaskNet"]
    hp = load_hparams(
        hparams_path("LibriMix", "sepformer"),
        f"data_folder: /x\nmodel: {TINY_MODEL['sepformer']}",
    )
    n = sum(p.numel() for p in hp["MaskNet"].parameters())
    # by hand, d = 16, d_ffn = 32: a transformer layer has attention
    # 3 * (16 * 16 + 16) + 16 * 16 + 16 = 1088, feed-forward
    # 16 * 32 + 32 + 32 * 16 + 16 = 1072, two LayerNorms 64: 2224, + the
    # encoder's final LayerNorm 32 = 2256; a dual block: intra + inter +
    # two GroupNorms = 2 * 2256 + 64 = 4576; 2 blocks = 9152; around them:
    # GroupNorm 32, conv1d 256, conv2d 16 * 32 + 32 = 544, end_conv1x1
    # 256, PReLU 1, output and gate convs 2 * 272: 1633
    assert n == 2 * (2 * (1088 + 1072 + 64 + 32) + 64) + 1633 == 10785


def test_gradient_accumulation():
    """With --grad_accumulation_factor 2 the weights move every 2nd batch."""
    from speechbrain_s4m.losses import pit_si_snr_loss

    brain = _tiny_brain(pit_si_snr_loss)
    brain.grad_accumulation_factor = 2
    before = _params(brain)
    brain.step = 1  # as counted by Brain._fit_train
    brain.fit_batch(_batch())
    assert not any(_changed(before, brain))
    assert any(p.grad is not None for p in brain.modules.parameters())
    brain.step = 2
    brain.fit_batch(_batch())
    assert all(_changed(before, brain))
    assert all(p.grad is None for p in brain.modules.parameters())


# ----------------------------------------------------------------------
# One source for each fact: the dataset (the hparams file), the noise (the
# manifest), the training crop (the data pipeline)
# ----------------------------------------------------------------------
def test_the_hparams_file_names_the_dataset(tiny_datasets, tmp_path):
    from speechbrain_s4m.recipe import run_recipe

    out = tmp_path / "out"
    args = recipe_args("WSJ0Mix", "s4m_tiny", tiny_datasets["wsj0mix"], out)
    # a file that names no dataset
    with pytest.raises(ValueError, match="must name its dataset"):
        run_recipe(args + ["--dataset", "null"])
    # loading the hparams makes the save folder; nothing else was written
    assert [p.name for p in out.rglob("*")] == ["save"]


def test_noise_and_crop_come_from_the_data_pipeline(tiny_datasets, tmp_path):
    """noise_sig whenever the manifest has noise_wav (every split); only the
    training items are cropped, to training_signal_len."""
    from speechbrain_s4m.data import prepare_librimix, prepare_wsj0mix
    from speechbrain_s4m.data.dataio import datasets_from_hparams

    def hparams(csvs, **extra):
        return {
            "train_data": csvs["train"],
            "valid_data": csvs["valid"],
            "test_data": csvs["test"],
            **extra,
        }

    libri = prepare_librimix(tiny_datasets["librimix"], tmp_path / "libri")
    sets = datasets_from_hparams(
        hparams(libri, limit_training_signal_len=True, training_signal_len=999)
    )
    for data in sets:
        item = data[0]
        assert list(item)[-1] == "noise_sig"
        n = item["mix_sig"].shape[0]
        assert all(v.shape == (n,) for k, v in item.items() if k != "id")
    assert sets[0][0]["mix_sig"].shape == (999,)  # 0.5 s items, cropped
    assert sets[1][0]["mix_sig"].shape == (4000,)  # valid: whole
    # clean mixtures have no noise; no limit, no crop
    wsj = prepare_wsj0mix(tiny_datasets["wsj0mix"], tmp_path / "wsj")
    train = datasets_from_hparams(
        hparams(wsj, limit_training_signal_len=False, training_signal_len=9)
    )[0]
    assert list(train[0]) == ["id", "mix_sig", "s1_sig", "s2_sig"]
    assert train[0]["mix_sig"].shape == (4000,)


def _noisy_batch(n=(800, 600)):
    """Items with sources, noise and mix = s1 + s2 + noise."""
    from speechbrain.dataio.batch import PaddedBatch

    g = torch.Generator().manual_seed(2)
    items = []
    for i, length in enumerate(n):
        s1, s2, noise = torch.randn(3, length, generator=g)
        items.append(
            {
                "id": str(i),
                "mix_sig": s1 + s2 + noise,
                "s1_sig": s1,
                "s2_sig": s2,
                "noise_sig": noise,
            }
        )
    return PaddedBatch(items)


def test_brain_does_not_crop():
    """The crop keys are the data pipeline's: the Brain keeps the batch."""
    from speechbrain_s4m.losses import pit_si_snr_loss

    brain = _tiny_brain(
        pit_si_snr_loss, limit_training_signal_len=True, training_signal_len=64
    )
    batch = _batch()
    with torch.no_grad():
        est, targets, lengths = brain.compute_forward(
            batch.mix_sig, [batch.s1_sig, batch.s2_sig], sb.Stage.TRAIN
        )
    assert est.shape == targets.shape == (2, 800, 2)
    assert lengths.tolist() == pytest.approx([1.0, 0.75])


@pytest.mark.parametrize("speed", [90, 110])
def test_speed_perturbation_remixes_with_the_noise(speed):
    """Slower (longer) or faster sources: the batch never gets longer than
    the data pipeline made it, and mix = sum of sources + noise."""
    from speechbrain.augment.time_domain import SpeedPerturb

    from speechbrain_s4m.losses import pit_si_snr_loss

    brain = _tiny_brain(
        pit_si_snr_loss,
        use_speedperturb=True,
        speed_perturb=SpeedPerturb(8000, speeds=[speed]),
    )
    batch = _noisy_batch()
    mix, targets, noise = brain._unpack(batch)
    assert noise is batch.noise_sig
    with torch.no_grad():
        est, new_targets, _ = brain.compute_forward(
            mix, targets, sb.Stage.TRAIN, noise
        )
    expected = round(800 * 100 / speed) if speed > 100 else 800
    assert abs(new_targets.shape[1] - expected) <= 1
    assert est.shape == new_targets.shape
    # the re-mix the brain separated: rebuild it from the perturbed sources
    n = new_targets.shape[1]
    remix = new_targets.sum(-1) + batch.noise_sig.data[:, :n]
    with torch.no_grad():
        torch.testing.assert_close(brain.separate(remix), est)
    # and no noise_sig for clean batches
    assert brain._unpack(_batch())[2] is None


# ----------------------------------------------------------------------
# The flags the docs list, each in a real run
# ----------------------------------------------------------------------
def test_librimix_train_100(tmp_path):
    """--train_set train-100: the manifests are made of train-100."""
    from speechbrain_s4m.data.synthetic import write_librimix

    data = write_librimix(
        tmp_path / "Libri2Mix",
        sizes={"train-100": 3, "dev": 2, "test": 2},
        duration=(0.5, 0.5),
    )
    assert not (data / "wav8k" / "min" / "train-360").exists()
    out = tmp_path / "out"
    run_recipe_inprocess(
        "LibriMix", "s4m_tiny", data, out, "--train_set", "train-100"
    )
    check_finished_run(out)
    with open(out / "save" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert all("train-100" in r["mix_wav"] for r in rows)


def test_grad_accumulation_factor_in_a_run(tiny_datasets, tmp_path):
    """--grad_accumulation_factor 2 on 3 batches: one optimizer step."""
    out = tmp_path / "out"
    brain = run_recipe_inprocess(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        out,
        "--grad_accumulation_factor",
        "2",
    )
    assert brain.grad_accumulation_factor == 2
    check_finished_run(out)
    # the optimizer state of the (only) checkpoint, loaded for the test
    steps = {
        int(s["step"]) for s in brain.optimizer.state_dict()["state"].values()
    }
    assert steps == {1}


def _rising_brain():
    """A Separation whose validation loss rises by 100 every epoch (so the
    plateau scheduler halves), recording the learning rates after each
    validation."""
    from speechbrain_s4m.brain import Separation

    class Rising(Separation):
        lrs = []

        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.VALID:
                stage_loss = stage_loss + 100.0 * epoch
            super().on_stage_end(stage, stage_loss, epoch)
            if stage == sb.Stage.VALID:
                Rising.lrs.append(
                    sorted(g["lr"] for g in self.optimizer.param_groups)
                )

    return Rising


def test_lr_halving_in_a_run(tiny_datasets, tmp_path):
    """ReduceLROnPlateau through on_stage_end: with patience 0, every
    epoch after a worse validation halves both learning rates (the SSM
    group's too, keeping the ratio)."""
    brain_class = _rising_brain()
    run_recipe_inprocess(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        tmp_path / "out",
        "--N_epochs",
        "3",
        "--ssm_lr",
        "0.0004",
        "--lr_scheduler",
        "{patience: 0}",
        brain_class=brain_class,
    )
    assert brain_class.lrs == [
        pytest.approx([4e-4, 1e-3]),  # epoch 1: the first loss is the best
        pytest.approx([2e-4, 5e-4]),  # epoch 2: worse, halved
        pytest.approx([1e-4, 2.5e-4]),  # epoch 3: worse again
    ]
    log = (tmp_path / "out" / "train_log.txt").read_text()
    assert "epoch: 3" in log


def test_per_update_schedule_in_a_run(tiny_datasets, tmp_path):
    """WarmupDecayScheduler in a recipe: the runner sets its length (epochs
    x updates per epoch), and every update runs at its scheduled rate in
    both groups (the SSM group keeps its ratio), down to 0 at the end."""
    from speechbrain_s4m.brain import Separation
    from speechbrain_s4m.recipe import run_recipe

    class Recording(Separation):
        rates = []

        def _optimizer_step(self):
            status = super()._optimizer_step()
            Recording.rates.append(
                [g["lr"] for g in self.optimizer.param_groups]
            )
            return status

    # the hparams file with its scheduler replaced (a new class cannot be
    # set from the command line), in tmp_path: the include made absolute
    text = hparams_path("WSJ0Mix", "s4m_tiny").read_text()
    text = text.replace("!include:../../../../", f"!include:{REPO}/")
    old = text[text.index("lr_scheduler:") : text.index("# Dataloader")]
    new = (
        "lr_scheduler: !new:speechbrain_s4m.nnet.schedulers."
        "WarmupDecayScheduler\n    warmup_updates: 1\n\n"
    )
    yaml_file = tmp_path / "s4m_tiny_decay.yaml"
    yaml_file.write_text(text.replace(old, new))
    args = recipe_args(
        "WSJ0Mix",
        "s4m_tiny",
        tiny_datasets["wsj0mix"],
        tmp_path / "out",
        "--N_epochs",
        "2",
        "--ssm_lr",
        "0.0004",
    )
    brain = run_recipe([str(yaml_file)] + args[1:], brain_class=Recording)
    sched = brain.hparams.lr_scheduler
    per_epoch = brain.batches_per_epoch
    assert sched.total_updates == 2 * per_epoch
    assert len(Recording.rates) == sched.update == 2 * per_epoch
    for k, (ssm, main) in enumerate(Recording.rates):
        f = 1.0 if k == 0 else 1.0 - (k - 1) / (sched.total_updates - 1)
        assert [ssm, main] == pytest.approx([4e-4 * f, 1e-3 * f])


def test_s4m_as_shipped(tmp_path):
    """s4m.yaml with its own model (no tiny override): the whole recipe on
    a 0.25 s dataset (one mixture per split): training step, validation,
    test. Its exact parameter count is the one the docs state."""
    from speechbrain_s4m.data.synthetic import write_wsj0mix

    data = write_wsj0mix(
        tmp_path / "2speakers",
        sizes={"tr": 1, "cv": 1, "tt": 1},
        duration=(0.25, 0.25),
    )
    out = tmp_path / "out"
    brain = run_recipe_inprocess(
        "WSJ0Mix", "s4m", data, out, "--num_workers", "0", drop=["--model"]
    )
    masknet = brain.modules.masknet
    assert masknet.num_iterations == 16
    n = sum(p.numel() for p in brain.modules.parameters())
    assert n == 3_607_399  # docs/model.md, README
    check_finished_run(out, n_test=1)
    rows = read_results(out)
    assert math.isfinite(float(rows[0]["si-snr"]))


@pytest.mark.slow
def test_s4m_tiny_as_in_the_paper_overfits_one_second():
    """The paper's S4M-tiny (s4m_tiny.yaml as shipped: R = 16 applications
    of the shared block, D = 512, NPLR S4) trained by the recipe's Brain
    (fit_batch: loss thresholding, clipping, the SSM-aware optimizer) on
    one 1-second mixture of two synthetic sources: SI-SNR from about
    -19 dB to above 10 dB (the mixture itself scores 0 dB) within 25
    steps, at lr 1e-2. Measured on the loaded 2-core machine: > 10 dB at
    step 15, about 5 s a step with one thread (~1.5 min in all)."""
    from speechbrain.dataio.batch import PaddedBatch

    from speechbrain_s4m.brain import Separation
    from speechbrain_s4m.config import load_hparams

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hp = load_hparams(
            hparams_path("WSJ0Mix", "s4m_tiny"),
            {"data_folder": "/unused", "lr": 0.01, "ssm_lr": 0.01},
        )
        assert hp["MaskNet"].num_iterations == 16
        t = torch.arange(8000) / 8000  # 1 s at 8 kHz
        s1 = torch.sin(2 * torch.pi * 220 * t) * (1 + 0.5 * torch.sin(6 * t))
        s1 = s1 + 0.5 * torch.sin(2 * torch.pi * 440 * t)
        s2 = torch.sign(torch.sin(2 * torch.pi * 97 * t)) * 0.3
        s2 = s2 * torch.exp(-((t - 0.5) ** 2) / 0.08)
        batch = PaddedBatch(
            [{"id": "a", "mix_sig": s1 + s2, "s1_sig": s1, "s2_sig": s2}]
        )
        brain = Separation(
            hp["modules"],
            opt_class=hp["optimizer"],
            hparams=hp,
            run_opts={"device": "cpu", "noprogressbar": True},
        )
        brain.init_optimizers()
        brain.on_stage_start(sb.Stage.TRAIN, 1)
        scores = []
        for step in range(1, 26):
            brain.step = step
            scores.append(-float(brain.fit_batch(batch)))
            if scores[-1] > 10:
                break
    finally:
        torch.set_num_threads(threads)
    assert scores[0] < -10, scores  # an untrained model is far from it
    assert scores[-1] > 10, scores
    assert brain.skipped_batches == 0

"""The training Brain (:class:`speechbrain_s4m.brain.Separation`) on a
toy separator: what it logs, how it skips and averages, how it scores the
test set, and the recipe's ``--test_only`` path on a silent utterance.

The toy separator (a 1x1 convolution masker between SpeechBrain's
encoder/decoder) trains in a fraction of a second on random signals.
"""

import csv
import functools
import itertools
import logging
import math
import shutil

import numpy as np
import pytest
import speechbrain as sb
import torch
from conftest import recipe_args
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.dual_path import Decoder, Encoder
from speechbrain.utils.epoch_loop import EpochCounter
from speechbrain.utils.train_logger import FileTrainLogger

from speechbrain_s4m.brain import Separation
from speechbrain_s4m.losses import pit_si_snr_loss
from speechbrain_s4m.training.steps import NonFiniteLossError
from speechbrain_s4m.training_curve import parse_train_log

SR = 8000


class Mask(torch.nn.Module):
    """Two masks from a 1x1 convolution: ``[B, N, L] -> [2, B, N, L]``.

    Its bias is marked as an SSM parameter, so that an SSM-aware optimizer
    puts it in a group of its own.
    """

    def __init__(self, channels=8):
        super().__init__()
        self.conv = torch.nn.Conv1d(channels, 2 * channels, 1)
        self.conv.bias._ssm_param = True

    def forward(self, w):
        return torch.sigmoid(self.conv(w)).view(2, *w.shape)


def toy_modules():
    torch.manual_seed(0)
    return {
        "encoder": Encoder(kernel_size=16, out_channels=8),
        "masknet": Mask(),
        "decoder": Decoder(8, 1, kernel_size=16, stride=8, bias=False),
    }


def items(n, length=1600, seed=0, prefix="u"):
    """``n`` random two-source mixtures of ``length`` samples."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s1, s2 = torch.randn(2, length, generator=g)
        out.append(
            {
                "id": f"{prefix}{i}",
                "mix_sig": s1 + s2,
                "s1_sig": s1,
                "s2_sig": s2,
            }
        )
    return out


def loader(data, batch_size=1):
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, collate_fn=PaddedBatch
    )


def make_brain(tmp_path, brain_class=Separation, opt_class=None, **hp):
    hparams = {
        "num_spks": 2,
        "sample_rate": SR,
        "loss": pit_si_snr_loss,
        "clip_grad_norm": 5,
        "threshold_byloss": False,
        "threshold": -30,
        "loss_upper_lim": 999999,
        "epoch_counter": EpochCounter(hp.pop("epochs", 1)),
        "train_logger": FileTrainLogger(tmp_path / "train_log.txt"),
        "output_folder": str(tmp_path),
        "save_folder": str(tmp_path / "save"),
    }
    hparams.update(hp)
    run_opts = {"device": "cpu", "noprogressbar": True}
    run_opts.update(hparams.pop("run_opts", {}))
    return brain_class(
        toy_modules(),
        opt_class=opt_class or (lambda p: torch.optim.Adam(p, lr=1e-3)),
        hparams=hparams,
        run_opts=run_opts,
    )


def fit(brain, train, valid=None, batch_size=1):
    brain.fit(
        brain.hparams.epoch_counter,
        loader(train, batch_size),
        loader(valid or items(1, seed=99, prefix="v")),
    )


def log_lines(tmp_path):
    return (tmp_path / "train_log.txt").read_text().splitlines()


# ----------------------------------------------------------------------
# Logged learning rates (issue 10.3)
# ----------------------------------------------------------------------
def test_logs_main_and_ssm_learning_rates(tmp_path):
    from speechbrain_s4m.nnet import ssm_aware_optimizer

    opt = functools.partial(ssm_aware_optimizer, lr=1e-3, ssm_lr=4e-4)
    brain = make_brain(tmp_path, opt_class=opt)
    # the SSM group comes first: param_groups[0] is not the main one
    fit(brain, items(2))
    assert [g["lr"] for g in brain.optimizer.param_groups] == [4e-4, 1e-3]
    (line,) = log_lines(tmp_path)
    assert line.startswith("epoch: 1, lr: 1.00e-03, lr_ssm: 4.00e-04 - ")
    curve = parse_train_log(tmp_path / "train_log.txt")
    assert curve["lr"] == [1e-3] and curve["lr_ssm"] == [4e-4]


def test_single_learning_rate_logged_once(tmp_path):
    brain = make_brain(tmp_path)
    fit(brain, items(2))
    (line,) = log_lines(tmp_path)
    assert line.startswith("epoch: 1, lr: 1.00e-03 - ") and "lr_ssm" not in line


# ----------------------------------------------------------------------
# Speed perturbation keeps the lengths right (issue 10.4)
# ----------------------------------------------------------------------
class FixedSpeeds:
    """Speed perturbation with a given speed (%) per call, in turn."""

    def __init__(self, speeds):
        from speechbrain.augment.time_domain import SpeedPerturb

        self.perturbs = itertools.cycle(
            [SpeedPerturb(SR, speeds=[s]) for s in speeds]
        )

    def __call__(self, x):
        return next(self.perturbs)(x)


@pytest.mark.parametrize("speeds", [(105, 95), (95, 105), (105, 110)])
def test_speed_perturbation_updates_lengths(tmp_path, speeds):
    from speechbrain.augment.time_domain import SpeedPerturb

    brain = make_brain(
        tmp_path, use_speedperturb=True, speed_perturb=FixedSpeeds(speeds)
    )
    data = items(3, length=4000)
    for item, n in zip(data, (4000, 2000, 1000)):  # padded utterances
        for key in ("mix_sig", "s1_sig", "s2_sig"):
            item[key] = item[key][:n]
    batch = PaddedBatch(data)
    mix, targets, _ = brain._unpack(batch)
    est, new_targets, lengths = brain.compute_forward(
        mix, targets, sb.Stage.TRAIN
    )
    T = new_targets.shape[1]
    # the length ratio of each speed (the resampler rounds the rates)
    stretch = [
        SpeedPerturb(SR, speeds=[s])(torch.zeros(1, 4000)).shape[-1] / 4000
        for s in speeds
    ]
    assert est.shape == new_targets.shape
    assert T == min(4000, *(round(4000 * r) for r in stretch))
    for b, n in enumerate((4000, 2000, 1000)):
        end = int(math.ceil(float(lengths[b]) * T))
        energy = new_targets[b].pow(2).sum(-1)  # [time]
        # the mask covers every sample that holds speech (beyond it only
        # the resampling filter rings, over a few samples) ...
        assert energy[end + 16 :].sum() <= 1e-7 * energy.sum(), (b, end)
        # ... and no more than a few samples of resampling padding
        longest = n * max(stretch)
        assert end <= min(T, longest + 2)
        assert end >= min(T, longest - 2)


# ----------------------------------------------------------------------
# Skipped batches: averaging, counting, failsafe (issue 10.5)
# ----------------------------------------------------------------------
class BadBatches(Separation):
    """NaN loss on the batches whose id contains ``bad``; records the loss
    that each batch returned."""

    def fit_batch(self, batch):
        self._bad = any("bad" in i for i in batch.id)
        loss = super().fit_batch(batch)
        self.returned = getattr(self, "returned", []) + [float(loss)]
        return loss

    def compute_objectives(self, predictions, targets, lengths=None):
        loss = super().compute_objectives(predictions, targets, lengths)
        return loss * math.nan if getattr(self, "_bad", False) else loss


def test_train_loss_averages_the_batches_that_counted(tmp_path, caplog):
    data = items(4)
    data[1]["id"] = "bad1"
    brain = make_brain(tmp_path, brain_class=BadBatches)
    with caplog.at_level(logging.WARNING):
        fit(brain, data)
    returned = brain.returned
    assert math.isnan(returned[1]) and all(
        math.isfinite(v) for i, v in enumerate(returned) if i != 1
    )
    counted = [v for v in returned if math.isfinite(v)]
    curve = parse_train_log(tmp_path / "train_log.txt")
    # the log rounds to 3 significant digits
    assert curve["train"][0] == pytest.approx(np.mean(counted), rel=5e-3)
    assert curve["skipped"] == [1]
    assert "train skipped: 1" in log_lines(tmp_path)[0]
    assert "1 training batches skipped" in caplog.text


def test_epoch_with_every_batch_skipped_logs_nan(tmp_path, caplog):
    # thresholding skips everything: no utterance has a loss above +1000
    brain = make_brain(tmp_path, threshold_byloss=True, threshold=1000)
    before = {k: v.clone() for k, v in brain.modules.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        fit(brain, items(3))
    curve = parse_train_log(tmp_path / "train_log.txt")
    assert math.isnan(curve["train"][0]) and curve["skipped"] == [3]
    assert "train loss: nan" in log_lines(tmp_path)[0]
    assert "every training batch (3) was skipped" in caplog.text
    after = brain.modules.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_consecutive_nonfinite_batches_stop_training(tmp_path):
    data = items(6)
    for item in data:
        item["id"] = "bad" + item["id"]
    brain = make_brain(
        tmp_path, brain_class=BadBatches, run_opts={"nonfinite_patience": 2}
    )
    with pytest.raises(NonFiniteLossError, match="3 consecutive.*patience = 2"):
        fit(brain, data)
    assert len(brain.returned) == 2  # the third raised


def test_nonfinite_patience_counts_consecutive_batches_only(tmp_path):
    data = items(8)
    for item in data[::2]:  # every other batch is non-finite
        item["id"] = "bad" + item["id"]
    brain = make_brain(
        tmp_path, brain_class=BadBatches, run_opts={"nonfinite_patience": 1}
    )
    fit(brain, data)
    assert sum(math.isnan(v) for v in brain.returned) == 4
    assert parse_train_log(tmp_path / "train_log.txt")["skipped"] == [4]


def test_nonfinite_patience_from_hparams(tmp_path):
    data = items(3)
    for item in data:
        item["id"] = "bad" + item["id"]
    brain = make_brain(tmp_path, brain_class=BadBatches, nonfinite_patience=0)
    with pytest.raises(NonFiniteLossError, match="1 consecutive"):
        fit(brain, data)


# ----------------------------------------------------------------------
# Wall-clock time and the logged quantity's name (13.4, 9.12)
# ----------------------------------------------------------------------
def test_epoch_lines_record_time_and_throughput(tmp_path):
    brain = make_brain(tmp_path, epochs=2)
    fit(brain, items(4), batch_size=2)
    curve = parse_train_log(tmp_path / "train_log.txt")
    assert curve["epoch"] == [1, 2]
    assert all(t > 0 for t in curve["time"])
    for t, rate in zip(curve["time"], curve["samples_per_s"]):
        # 4 training mixtures per epoch (values rounded in the log)
        assert rate * t == pytest.approx(4, rel=0.05)
    assert "train time: " in log_lines(tmp_path)[0]

    from speechbrain_s4m.results import read_train_log

    read = read_train_log(tmp_path / "train_log.txt")
    assert read["time"] == curve["time"]
    assert read["valid_si_snr"] == [-v for v in curve["valid"]]


def test_logged_quantity_is_the_loss_in_every_stage(tmp_path):
    brain = make_brain(tmp_path)
    fit(brain, items(2))
    test = items(2, seed=5, prefix="t")
    brain.evaluate(loader(test, batch_size=2))
    lines = log_lines(tmp_path)
    assert " - train loss: " in lines[0] and " - valid loss: " in lines[0]
    assert "test loss: " in lines[1]
    assert "si-snr" not in "\n".join(lines)
    # the test loss is minus the SI-SNR of the results (dB)
    test_loss = float(lines[1].split("test loss: ")[1])
    assert test_loss == pytest.approx(-brain.test_summary["si-snr"], rel=5e-3)


# ----------------------------------------------------------------------
# Test-set scoring: bad utterances and extra metrics (10.7, 13.2)
# ----------------------------------------------------------------------
def read_results(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_silent_and_short_test_utterances_are_reported(tmp_path, caplog):
    brain = make_brain(tmp_path)
    test = items(4, length=1600, seed=3, prefix="t")
    test[1]["s2_sig"] = torch.zeros(1600)  # silent source
    test[1]["mix_sig"] = test[1]["s1_sig"].clone()
    for key in ("mix_sig", "s1_sig", "s2_sig"):  # shorter than SDR's filter
        test[2][key] = test[2][key][:300]
    with caplog.at_level(logging.WARNING):
        brain.evaluate(loader(test, batch_size=4))
    rows = read_results(tmp_path / "test_results.csv")
    assert [r["snt_id"] for r in rows] == ["t0", "t1", "t2", "t3", "avg"]
    assert list(rows[0]) == [
        "snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i", "notes"
    ]  # fmt: skip
    # nothing is defined for the silent source, SI-SNR only for the short one
    assert all(rows[1][k] == "" for k in ("sdr", "si-snr", "si-snr_i"))
    assert "silent" in rows[1]["notes"]
    assert rows[2]["sdr"] == "" and rows[2]["si-snr"] != ""
    assert "BSS-eval" in rows[2]["notes"]
    assert rows[0]["notes"] == rows[3]["notes"] == ""
    # the avg row averages the defined values only
    for key, scored in (("sdr", (0, 3)), ("si-snr", (0, 2, 3))):
        mean = np.mean([float(rows[i][key]) for i in scored])
        assert float(rows[4][key]) == pytest.approx(mean, abs=1e-9)
    assert "2 of 4 utterances not fully scored" in rows[4]["notes"]
    assert "Test utterance t1" in caplog.text
    assert "Test utterance t2" in caplog.text
    assert "2 of 4 test utterances could not be scored" in caplog.text
    assert brain.test_summary["n_incomplete"] == 2


def test_extra_metrics_pesq_stoi_after_pit(tmp_path):
    from pesq import pesq
    from pystoi import stoi

    from speechbrain_s4m.data.synthetic import random_speaker, synth_voice

    rng = np.random.default_rng(0)
    test = []
    for i in range(2):
        s1, s2 = (
            torch.tensor(synth_voice(random_speaker(rng), 1.0, SR, rng)).float()
            for _ in range(2)
        )
        test.append(
            {"id": f"t{i}", "mix_sig": s1 + s2, "s1_sig": s1, "s2_sig": s2}
        )
    brain = make_brain(tmp_path, extra_metrics="pesq, stoi")
    brain.evaluate(loader(test, batch_size=2))
    rows = read_results(tmp_path / "test_results.csv")
    assert list(rows[0])[1:] == [
        "sdr", "sdr_i", "si-snr", "si-snr_i",
        "pesq", "pesq_i", "stoi", "stoi_i", "notes",
    ]  # fmt: skip

    # The estimates, recomputed; each matched to its target by brute-force
    # PIT on SI-SNR, then scored with the packages' own functions
    batch = PaddedBatch(test)
    with torch.no_grad():
        est = brain.separate(batch.mix_sig.data).double().numpy()

    def si_snr(e, t):
        t = t - t.mean()
        e = e - e.mean()
        s = (e @ t) / (t @ t) * t
        return 10 * np.log10((s @ s) / ((e - s) @ (e - s)))

    for b, item in enumerate(test):
        tgt = np.stack([item["s1_sig"].numpy(), item["s2_sig"].numpy()], 1)
        tgt = tgt.astype(np.float64)
        mix = item["mix_sig"].numpy().astype(np.float64)
        perm = max(
            itertools.permutations(range(2)),
            key=lambda p: sum(
                si_snr(est[b, :, p[j]], tgt[:, j]) for j in (0, 1)
            ),
        )
        for name, fn in (
            ("pesq", lambda r, d: pesq(SR, r, d, "nb")),
            ("stoi", lambda r, d: stoi(r, d, SR)),
        ):
            value = np.mean([fn(tgt[:, j], est[b, :, perm[j]]) for j in (0, 1)])
            base = np.mean([fn(tgt[:, j], mix) for j in (0, 1)])
            assert float(rows[b][name]) == pytest.approx(value, abs=1e-4)
            assert float(rows[b][f"{name}_i"]) == pytest.approx(
                value - base, abs=1e-4
            )
    for key in ("pesq", "pesq_i", "stoi", "stoi_i"):
        mean = np.mean([float(r[key]) for r in rows[:2]])
        assert float(rows[2][key]) == pytest.approx(mean, abs=1e-9)


def test_unknown_extra_metric_fails_before_training(tmp_path):
    brain = make_brain(tmp_path, extra_metrics="pesq,sisdr")
    with pytest.raises(ValueError, match="Unknown extra metric 'sisdr'"):
        fit(brain, items(2))
    assert not (tmp_path / "train_log.txt").exists()


def test_recipe_test_only_with_a_silent_utterance_and_extra_metrics(tmp_path):
    """A trained recipe run, then ``--test_only --extra_metrics pesq,stoi``
    on a test set holding a silent source: every row is written."""
    import soundfile as sf

    from speechbrain_s4m.data.synthetic import write_wsj0mix
    from speechbrain_s4m.recipe import run_recipe

    data = write_wsj0mix(
        tmp_path / "2speakers",
        sizes={"tr": 2, "cv": 1, "tt": 3},
        duration=(1.0, 1.0),
    )
    out = tmp_path / "out"
    run_recipe(recipe_args("WSJ0Mix", "s4m_tiny", data, out))

    # One test utterance's second source becomes silent (mixture = source 1)
    tt = next(p for p in data.rglob("tt") if (p / "s2").is_dir())
    name = sorted(p.name for p in (tt / "s2").glob("*.wav"))[1]
    s1, sr = sf.read(tt / "s1" / name)
    sf.write(tt / "s2" / name, np.zeros_like(s1), sr)
    shutil.copy(tt / "s1" / name, tt / "mix" / name)
    snt_id = name[: -len(".wav")]

    brain = run_recipe(
        recipe_args(
            "WSJ0Mix",
            "s4m_tiny",
            data,
            out,
            "--test_only",
            "--extra_metrics",
            "pesq,stoi",
        )
    )
    rows = read_results(out / "test_results.csv")
    assert len(rows) == 4 and rows[-1]["snt_id"] == "avg"
    assert {"pesq", "pesq_i", "stoi", "stoi_i", "notes"} <= set(rows[0])
    bad = [r for r in rows if r["snt_id"] == snt_id]
    assert len(bad) == 1 and bad[0]["si-snr"] == "" and bad[0]["pesq"] == ""
    good = [r for r in rows[:-1] if r["snt_id"] != snt_id]
    assert all(r["si-snr"] != "" and r["stoi"] != "" for r in good)
    mean = np.mean([float(r["si-snr"]) for r in good])
    assert float(rows[-1]["si-snr"]) == pytest.approx(mean, abs=1e-9)
    assert "1 of 3 utterances not fully scored" in rows[-1]["notes"]
    assert brain.test_summary["n_incomplete"] == 1
    log = (out / "train_log.txt").read_text()
    assert "test loss: " in log and "train time: " in log


def test_intra_epoch_checkpoint_keeps_the_epoch_counters(tmp_path):
    """Resuming inside an epoch continues its mean loss and counts."""
    from speechbrain.utils.checkpoints import Checkpointer

    def brain_with_checkpointer():
        brain = make_brain(tmp_path)
        brain.checkpointer = Checkpointer(tmp_path / "save")
        brain.checkpointer.add_recoverable("brain", brain)
        return brain

    brain = brain_with_checkpointer()
    brain.step, brain.avg_train_loss = 5, -3.5
    brain.counted_batches, brain.skipped_batches = 4, 1
    brain.train_samples = 10
    brain.checkpointer.save_checkpoint(end_of_epoch=False)

    resumed = brain_with_checkpointer()
    resumed.checkpointer.recover_if_possible()
    assert (resumed.step, resumed.avg_train_loss) == (5, -3.5)
    assert (resumed.counted_batches, resumed.skipped_batches) == (4, 1)
    assert resumed.train_samples == 10
    # the epoch goes on: its counters are not reset, the mean continues
    resumed.on_stage_start(sb.Stage.TRAIN, 1)
    assert resumed.skipped_batches == 1
    resumed.step += 1
    mean = resumed.update_average(torch.tensor(-1.0), resumed.avg_train_loss)
    assert mean == pytest.approx((4 * -3.5 - 1.0) / 5)

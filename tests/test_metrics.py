"""Tests of speechbrain_s4m.metrics against slow, obvious references."""

import itertools
import math

import numpy as np
import pytest
import torch

from speechbrain_s4m.losses import pairwise_si_snr, pit_si_snr_loss, si_snr
from speechbrain_s4m.metrics import separation_scores


def ref_si_snr(est, tgt):
    """SI-SNR of two 1-D float64 numpy signals, written out plainly."""
    est = est - est.mean()
    tgt = tgt - tgt.mean()
    s_target = np.dot(est, tgt) / np.dot(tgt, tgt) * tgt
    e_noise = est - s_target
    return 10 * math.log10(np.sum(s_target**2) / np.sum(e_noise**2))


def ref_pit(est, tgt):
    """Best mean SI-SNR over permutations: loops over everything."""
    spks = est.shape[1]
    best, best_perm = -np.inf, None
    for perm in itertools.permutations(range(spks)):
        score = np.mean(
            [ref_si_snr(est[:, perm[j]], tgt[:, j]) for j in range(spks)]
        )
        if score > best:
            best, best_perm = score, perm
    return best, best_perm


def make_batch(batch, time, spks, lengths, seed=0, noise=0.5):
    """Targets, noisy estimates and garbage in the padding."""
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randn(batch, time, spks, generator=g, dtype=torch.float64)
    est = tgt + noise * torch.randn(
        batch, time, spks, generator=g, dtype=torch.float64
    )
    est = est + 0.3  # non-zero mean: zero-mean must use the valid part
    for b, rel in enumerate(lengths):
        n = round(rel * time)
        tgt[b, n:] = 5 * torch.randn(time - n, spks, generator=g).double()
        est[b, n:] = -7 * torch.randn(time - n, spks, generator=g).double()
    return est, tgt


@pytest.mark.parametrize("spks", [2, 3])
def test_si_snr_matches_reference_with_padding(spks):
    lengths = [1.0, 0.6, 0.35]
    est, tgt = make_batch(3, 500, spks, lengths)
    out = si_snr(est, tgt, torch.tensor(lengths))
    assert out.shape == (3, spks)
    for b, rel in enumerate(lengths):
        n = round(rel * 500)
        for s in range(spks):
            want = ref_si_snr(est[b, :n, s].numpy(), tgt[b, :n, s].numpy())
            assert out[b, s].item() == pytest.approx(want, abs=1e-6)


def test_padded_batch_equals_batch_of_one_float32():
    lengths = [1.0, 0.5, 0.8]
    est, tgt = make_batch(3, 800, 2, lengths, seed=1)
    est, tgt = est.float(), tgt.float()
    batched = si_snr(est, tgt, torch.tensor(lengths))
    loss_b, perm_b = pit_si_snr_loss(est, tgt, torch.tensor(lengths))
    for b, rel in enumerate(lengths):
        n = round(rel * 800)
        single = si_snr(est[b : b + 1, :n], tgt[b : b + 1, :n])
        assert torch.allclose(batched[b], single[0], atol=1e-4)
        loss_1, perm_1 = pit_si_snr_loss(est[b : b + 1, :n], tgt[b : b + 1, :n])
        assert loss_b[b].item() == pytest.approx(loss_1.item(), abs=1e-4)
        assert torch.equal(perm_b[b], perm_1[0])
    # without the mask the padded utterances would be scored differently
    unmasked = si_snr(est, tgt)
    assert not torch.allclose(unmasked[1], batched[1], atol=0.1)


@pytest.mark.parametrize("spks", [2, 3])
def test_pit_loss_matches_bruteforce_and_is_permutation_invariant(spks):
    est, tgt = make_batch(4, 400, spks, [1.0, 0.7, 1.0, 0.9], seed=2)
    lengths = torch.tensor([1.0, 0.7, 1.0, 0.9])
    loss, perm = pit_si_snr_loss(est, tgt, lengths)
    assert loss.shape == (4,) and perm.shape == (4, spks)
    for b in range(4):
        n = round(lengths[b].item() * 400)
        best, best_perm = ref_pit(est[b, :n].numpy(), tgt[b, :n].numpy())
        assert -loss[b].item() == pytest.approx(best, abs=1e-6)
        assert tuple(perm[b].tolist()) == best_perm
    for shuffle in itertools.permutations(range(spks)):
        shuffled = est[:, :, list(shuffle)]
        loss_s, perm_s = pit_si_snr_loss(shuffled, tgt, lengths)
        assert torch.allclose(loss_s, loss, atol=1e-9)
        # the reordered estimate is the same whatever the input order
        idx = perm_s[:, None, :].expand_as(shuffled)
        reordered = shuffled.gather(2, idx)
        assert torch.equal(
            reordered, est.gather(2, perm[:, None].expand_as(est))
        )


def test_pit_recovers_swapped_sources():
    g = torch.Generator().manual_seed(3)
    tgt = torch.randn(2, 600, 3, generator=g)
    est = tgt[:, :, [1, 2, 0]] * 3.0  # scaled: SI-SNR is scale invariant
    loss, perm = pit_si_snr_loss(est, tgt)
    assert perm.tolist() == [[2, 0, 1], [2, 0, 1]]
    assert (loss < -60).all()
    assert pairwise_si_snr(est, tgt).shape == (2, 3, 3)


def test_gradients_finite_and_zero_in_padding():
    est, tgt = make_batch(3, 300, 2, [1.0, 0.5, 0.7], seed=4)
    est = est.float().requires_grad_(True)
    lengths = torch.tensor([1.0, 0.5, 0.7])
    loss, _ = pit_si_snr_loss(est, tgt.float(), lengths)
    loss.mean().backward()
    assert torch.isfinite(est.grad).all()
    assert est.grad[1, 150:].abs().max() == 0
    assert est.grad[2, 210:].abs().max() == 0
    assert est.grad[1, :150].abs().max() > 0
    # perfect estimate: still finite gradients
    perfect = tgt.float().clone().requires_grad_(True)
    pit_si_snr_loss(perfect, tgt.float(), lengths)[0].sum().backward()
    assert torch.isfinite(perfect.grad).all()


def test_si_snr_2d_input_and_shape_errors():
    x = torch.randn(2, 100)
    assert si_snr(x, x).shape == (2,)
    with pytest.raises(ValueError, match="same shape"):
        si_snr(torch.randn(2, 100, 2), torch.randn(2, 90, 2))


def test_separation_scores_against_mir_eval():
    mir_eval = pytest.importorskip("mir_eval")
    g = torch.Generator().manual_seed(5)
    tgt = torch.randn(1, 1500, 2, generator=g, dtype=torch.float64)
    mix = tgt.sum(-1)
    est = tgt[:, :, [1, 0]] + 0.3 * torch.randn(
        1, 1500, 2, generator=g, dtype=torch.float64
    )
    scores = separation_scores(est, tgt, mix)
    for b in range(1):
        ref = tgt[b].T.numpy()
        with pytest.warns(FutureWarning):  # mir_eval deprecation warning
            sdr = mir_eval.separation.bss_eval_sources(ref, est[b].T.numpy())[0]
        with pytest.warns(FutureWarning):
            sdr0 = mir_eval.separation.bss_eval_sources(
                ref, np.stack([mix[b].numpy()] * 2)
            )[0]
        assert scores["sdr"][b].item() == pytest.approx(sdr.mean(), abs=1e-3)
        assert scores["sdr_i"][b].item() == pytest.approx(
            sdr.mean() - sdr0.mean(), abs=1e-3
        )
        best, _ = ref_pit(est[b].numpy(), tgt[b].numpy())
        si_mix = np.mean(
            [ref_si_snr(mix[b].numpy(), tgt[b, :, s].numpy()) for s in (0, 1)]
        )
        assert scores["si-snr"][b].item() == pytest.approx(best, abs=1e-6)
        assert scores["si-snr_i"][b].item() == pytest.approx(
            best - si_mix, abs=1e-6
        )


def test_separation_scores_uses_valid_part_only():
    g = torch.Generator().manual_seed(6)
    tgt = torch.randn(2, 1600, 2, generator=g)
    est = tgt + 0.2 * torch.randn(2, 1600, 2, generator=g)
    mix = tgt.sum(-1)
    tgt[1, 1000:] = 0  # padding
    est[1, 1000:] = 3.0
    mix[1, 1000:] = 0
    lengths = torch.tensor([1.0, 1000 / 1600])
    batched = separation_scores(est, tgt, mix, lengths)
    alone = separation_scores(est[1:, :1000], tgt[1:, :1000], mix[1:, :1000])
    for key in batched:
        assert batched[key][1].item() == pytest.approx(
            alone[key][0].item(), abs=1e-4
        )


def test_separation_scores_clear_errors():
    tgt = torch.randn(1, 2000, 2)
    tgt[0, :, 1] = 0
    with pytest.raises(ValueError, match=r"source\(s\) \[2\] are silent"):
        separation_scores(torch.randn(1, 2000, 2), tgt, tgt.sum(-1))
    short = torch.randn(1, 300, 2)
    with pytest.raises(ValueError, match="shorter than the BSS-eval"):
        separation_scores(short, short, short.sum(-1))
    with pytest.raises(ValueError, match="mixture"):
        separation_scores(short, short, short)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu():
    est, tgt = make_batch(2, 1200, 3, [1.0, 0.6], seed=7)
    est, tgt = est.float(), tgt.float()
    lengths = torch.tensor([1.0, 0.6])
    loss, perm = pit_si_snr_loss(est, tgt, lengths)
    loss_c, perm_c = pit_si_snr_loss(est.cuda(), tgt.cuda(), lengths)
    assert torch.allclose(loss_c.cpu(), loss, atol=1e-4)
    assert torch.equal(perm_c.cpu(), perm)
    scores = separation_scores(est, tgt, tgt.sum(-1), lengths)
    scores_c = separation_scores(est.cuda(), tgt.cuda(), tgt.sum(-1).cuda())
    assert scores_c["sdr"][0].item() == pytest.approx(scores["sdr"][0].item())


# ----------------------------------------------------------------------
# Test-stage scoring of bad utterances, optional PESQ / STOI
# ----------------------------------------------------------------------
def voices(num, seconds, sample_rate, seed=0):
    """``[time, num]`` float64 procedural speech-like voices."""
    from speechbrain_s4m.data.synthetic import random_speaker, synth_voice

    rng = np.random.default_rng(seed)
    return np.stack(
        [
            synth_voice(random_speaker(rng), seconds, sample_rate, rng)
            for _ in range(num)
        ],
        axis=1,
    ).astype(np.float64)


def test_score_test_batch_scores_what_can_be_scored():
    from speechbrain_s4m.metrics import score_test_batch

    g = torch.Generator().manual_seed(8)
    tgt = torch.randn(4, 2000, 2, generator=g, dtype=torch.float64)
    est = tgt[:, :, [1, 0]] + 0.4 * torch.randn(
        4, 2000, 2, generator=g, dtype=torch.float64
    )
    mix = tgt.sum(-1)
    tgt[1, :, 0] = 0  # silent reference source
    est[2, 5, 1] = float("nan")  # the model gave a NaN
    lengths = torch.tensor([1.0, 1.0, 1.0, 400 / 2000])  # 400 < 512 taps
    ids = ["ok", "silent", "nan", "short"]
    scored = score_test_batch(est, tgt, mix, lengths, ids)
    assert [u.snt_id for u in scored] == ids

    # a good utterance gets exactly the strict scores
    strict = separation_scores(est[:1], tgt[:1], mix[:1])
    assert scored[0].complete and scored[0].problems == []
    for key in strict:
        assert scored[0].scores[key] == pytest.approx(strict[key][0].item())

    # nothing is defined for a silent reference or a non-finite estimate
    for u, reason in ((scored[1], "[1] are silent"), (scored[2], "non-fin")):
        assert not u.complete
        assert all(math.isnan(v) for v in u.scores.values())
        assert len(u.problems) == 1 and reason in u.problems[0]
        assert set(u.row().values()) == {u.snt_id, None}

    # short: SI-SNR(i) defined and right, SDR(i) empty with the reason
    short = scored[3]
    best, _ = ref_pit(est[3, :400].numpy(), tgt[3, :400].numpy())
    si_mix = np.mean(
        [
            ref_si_snr(mix[3, :400].numpy(), tgt[3, :400, s].numpy())
            for s in (0, 1)
        ]
    )
    assert short.scores["si-snr"] == pytest.approx(best, abs=1e-6)
    assert short.scores["si-snr_i"] == pytest.approx(best - si_mix, abs=1e-6)
    row = short.row()
    assert row["sdr"] is None and row["sdr_i"] is None
    assert "SDR undefined: 400 samples" in short.problems[0]
    # the strict function still refuses the same utterances
    with pytest.raises(ValueError, match="utterance silent"):
        separation_scores(est, tgt, mix, ids=ids)


def test_average_scores_skips_undefined_and_counts():
    from speechbrain_s4m.metrics import average_scores, score_test_batch

    g = torch.Generator().manual_seed(9)
    tgt = torch.randn(3, 1200, 2, generator=g)
    est = tgt + 0.5 * torch.randn(3, 1200, 2, generator=g)
    lengths = torch.tensor([1.0, 0.3, 1.0])  # 360 samples: no SDR
    scored = score_test_batch(est, tgt, tgt.sum(-1), lengths)
    avg, n_scored = average_scores(scored)
    assert n_scored == {"sdr": 2, "sdr_i": 2, "si-snr": 3, "si-snr_i": 3}
    for key in ("sdr", "si-snr"):
        values = [
            u.scores[key] for u in scored if not math.isnan(u.scores[key])
        ]
        assert avg[key] == pytest.approx(sum(values) / len(values))
    assert avg["snt_id"] == "avg"
    assert average_scores(scored[1:2])[0]["sdr"] is None


def test_extra_metric_names_errors(monkeypatch):
    import sys

    from speechbrain_s4m.metrics import extra_metric_names, score_columns

    assert extra_metric_names(["STOI", "pesq"], 16000) == ("stoi", "pesq")
    assert extra_metric_names("") == ()
    assert score_columns(("stoi",))[-2:] == ["stoi", "stoi_i"]
    with pytest.raises(ValueError, match="Unknown extra metric 'pesk'"):
        extra_metric_names("pesk")
    with pytest.raises(ValueError, match="not at 44100 Hz"):
        extra_metric_names("pesq", sample_rate=44100)
    extra_metric_names("stoi", sample_rate=44100)  # STOI resamples itself
    monkeypatch.setitem(sys.modules, "pystoi", None)  # import fails
    with pytest.raises(ImportError, match="pip install pystoi"):
        extra_metric_names("pesq,stoi")


@pytest.mark.parametrize("sample_rate,mode", [(8000, "nb"), (16000, "wb")])
def test_pesq_stoi_match_the_packages_after_pit(sample_rate, mode):
    pesq = pytest.importorskip("pesq")
    pystoi = pytest.importorskip("pystoi")
    from speechbrain_s4m.metrics import extra_scores, score_test_batch

    tgt = voices(2, 1.5, sample_rate, seed=sample_rate)
    rng = np.random.default_rng(1)
    # estimate 0 is (a noisy) source 1 and estimate 1 is source 0
    est = tgt[:, ::-1] + 0.1 * tgt + 0.01 * rng.standard_normal(tgt.shape)
    mix = tgt.sum(1)
    want = {}
    for name, fn in (
        ("pesq", lambda r, d: pesq.pesq(sample_rate, r, d, mode)),
        ("stoi", lambda r, d: pystoi.stoi(r, d, sample_rate)),
    ):
        per_src = [fn(tgt[:, 0], est[:, 1]), fn(tgt[:, 1], est[:, 0])]
        per_mix = [fn(tgt[:, 0], mix), fn(tgt[:, 1], mix)]
        want[name] = np.mean(per_src)
        want[name + "_i"] = np.mean(per_src) - np.mean(per_mix)
    values, problems = extra_scores(
        est, tgt, mix, sample_rate, ("pesq", "stoi")
    )
    assert problems == []
    for key, value in want.items():
        assert values[key] == pytest.approx(value, abs=1e-9), key
    # the matched order matters: the unmatched pairs score lower
    unmatched = pesq.pesq(sample_rate, tgt[:, 0], est[:, 0], mode)
    assert unmatched < values["pesq"] - 0.5
    # through the batch API, with the permutation SI-SNR PIT found
    scored = score_test_batch(
        torch.from_numpy(est.copy())[None].float(),
        torch.from_numpy(tgt.copy())[None].float(),
        torch.from_numpy(mix)[None].float(),
        sample_rate=sample_rate,
        extra_metrics=("pesq", "stoi"),
    )[0]
    assert scored.complete
    for key, value in want.items():
        assert scored.scores[key] == pytest.approx(value, abs=0.05), key


def test_extra_metrics_undefined_on_short_utterances():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    from speechbrain_s4m.metrics import score_test_batch

    tgt = torch.from_numpy(voices(2, 0.2, 8000, seed=3))[None]  # 1600 samples
    est = tgt + 0.01 * torch.randn(tgt.shape, dtype=torch.float64)
    scored = score_test_batch(
        est, tgt, tgt.sum(-1), ids=["u1"], extra_metrics=("pesq", "stoi")
    )[0]
    row = scored.row()
    # SDR is defined (1600 >= 512 samples); PESQ needs 1/4 s, STOI 30 frames
    assert row["sdr"] is not None and row["si-snr"] is not None
    assert row["pesq"] is None and row["stoi"] is None
    assert any("PESQ undefined" in p and "1/4" in p for p in scored.problems)
    assert any("STOI undefined" in p for p in scored.problems)


def test_report_writes_and_reads_empty_cells(tmp_path):
    """One results format: the report writes it, read_test_results reads
    it (empty cells are NaN, notes are text)."""
    import csv

    from speechbrain_s4m.metrics import score_test_batch
    from speechbrain_s4m.results import TestReport, read_test_results

    g = torch.Generator().manual_seed(10)
    tgt = torch.randn(3, 1000, 2, generator=g)
    est = tgt + 0.3 * torch.randn(3, 1000, 2, generator=g)
    lengths = torch.tensor([1.0, 0.4, 1.0])  # 400 samples: no SDR
    scored = score_test_batch(est, tgt, tgt.sum(-1), lengths, ["a", "b", "c"])
    path = tmp_path / "test_results.csv"
    report = TestReport()
    report.add(scored)
    summary = report.write(path)
    assert summary["n_incomplete"] == 1 and summary["n"] == 3
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["snt_id"] for r in rows] == ["a", "b", "c", "avg"]
    assert rows[1]["sdr"] == "" and "BSS-eval" in rows[1]["notes"]
    assert rows[0]["notes"] == "" and "1 of 3" in rows[3]["notes"]
    sdr = [scored[0].scores["sdr"], scored[2].scores["sdr"]]
    assert float(rows[3]["sdr"]) == pytest.approx(np.mean(sdr))
    si = [u.scores["si-snr_i"] for u in scored]
    assert float(rows[3]["si-snr_i"]) == pytest.approx(np.mean(si))
    assert summary["si-snr_i"] == pytest.approx(np.mean(si))
    ids, columns = read_test_results(path)
    assert ids == ["a", "b", "c"] and "notes" not in columns
    assert math.isnan(columns["sdr"][1])
    header = path.read_text().splitlines()[0]
    assert header == "snt_id,sdr,sdr_i,si-snr,si-snr_i,notes"

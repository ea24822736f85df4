"""Tests of ``python -m speechbrain_s4m.compare`` on result folders written
here (numbers checked against scipy.stats and hand computations) and on a
real tiny recipe run."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats

from speechbrain_s4m import compare
from speechbrain_s4m.compare import (
    compare_folders,
    main,
    mean_ci,
    paired_comparison,
)

HPARAMS = """# Generated 2026-11-30 from:
# /x/recipes/SynthMix/separation/hparams/{stem}.yaml
# yamllint disable
experiment_name: {name}
MaskNet: &id001 !new:torch.nn.Linear
  in_features: {n_in}
  out_features: 4
modules:
  masknet: *id001
"""


def write_folder(root, name, ids, si, sdr, times=None, stem=None, n_in=3):
    """A recipe output folder: hyperparams.yaml, test_results.csv (None ->
    empty cell) and train_log.txt (3 epochs, ``time`` fields if given)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "hyperparams.yaml").write_text(
        HPARAMS.format(stem=stem or name, name=name, n_in=n_in)
    )
    with open(folder / "test_results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["snt_id", "sdr", "sdr_i", "si-snr", "si-snr_i"])
        for i, a, b in zip(ids, si, sdr):
            cell = ["" if v is None else v for v in (b, b, a, a)]
            w.writerow([i] + cell)
        w.writerow(["avg", 0, 0, 0, 0])  # never read as an utterance
    lines = []
    for epoch, valid in [(1, 2.5), (2, -1.25), (3, -3.0)]:
        meta = f"epoch: {epoch}, lr: 1.00e-03"
        if times:
            meta += f", time: {times[epoch - 1]:.2f}"
        lines.append(f"{meta} - train si-snr: 1.00 - valid si-snr: {valid}")
    lines.append("Epoch loaded: 3 - test si-snr: -2.00")
    (folder / "train_log.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def two_models(tmp_path):
    """Two folders on the same 12 utterances (A has one unscored SDR)."""
    rng = np.random.default_rng(0)
    ids = [f"utt{i:02d}" for i in range(12)]
    si_a = rng.normal(10, 3, 12)
    si_b = si_a - rng.normal(1, 1.5, 12)
    sdr_a = list(si_a + 0.5)
    sdr_a[4] = None
    sdr_b = list(si_b + 0.7)
    a = write_folder(
        tmp_path, "s4m", ids, si_a, sdr_a, times=[60, 61.5, 59], n_in=3
    )
    b = write_folder(tmp_path, "convtasnet", ids, si_b, sdr_b, n_in=5)
    return {
        "a": a,
        "b": b,
        "si_a": si_a,
        "si_b": si_b,
        "sdr_a": sdr_a,
        "sdr_b": sdr_b,
        "ids": ids,
    }


def _must_not_run(*args, **kwargs):
    raise AssertionError("a model was built before the outputs were checked")


def t_interval(x):
    """95% t interval of the mean, by scipy."""
    x = np.asarray(x, dtype=float)
    return stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))


def test_mean_ci_and_paired_against_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, 25)
    y = x + rng.normal(0.4, 1.0, 25)
    r = mean_ci(x)
    lo, hi = t_interval(x)
    assert (r["mean"], r["n"]) == (pytest.approx(x.mean()), 25)
    assert r["ci_low"] == pytest.approx(lo) and r["ci_high"] == pytest.approx(
        hi
    )
    p = paired_comparison(y, x)
    lo, hi = t_interval(y - x)
    assert p["mean"] == pytest.approx((y - x).mean())
    assert p["ci_low"] == pytest.approx(lo) and p["ci_high"] == pytest.approx(
        hi
    )
    assert p["a_wins"] == pytest.approx(np.mean(y > x))
    assert p["b_wins"] == pytest.approx(np.mean(y < x))
    # the interval excludes 0 exactly when the paired t-test rejects
    assert (lo > 0) == (stats.ttest_rel(y, x).pvalue < 0.05)
    one = mean_ci([4.0])
    assert one["mean"] == 4.0 and math.isnan(one["ci_low"])
    assert mean_ci([math.nan])["n"] == 0


def test_compare_numbers_match_hand_computation(two_models):
    m = two_models
    comparison = compare_folders([str(m["a"]), str(m["b"])])
    a, b = comparison["models"]
    assert (a["label"], b["label"]) == ("s4m", "convtasnet")
    assert a["masknet"] == "Linear" and a["hparams"] == "s4m"
    assert (a["params"], b["params"]) == (3 * 4 + 4, 5 * 4 + 4)
    assert a["n_test"] == b["n_test"] == 12
    lo, hi = t_interval(m["si_a"])
    s = a["stats"]["si-snr_i"]
    assert s["mean"] == pytest.approx(np.mean(m["si_a"]))
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # the unscored SDR (empty cell) is left out of A's mean and of the pair
    sdr_a = [v for v in m["sdr_a"] if v is not None]
    assert a["stats"]["sdr_i"]["n"] == 11
    assert a["stats"]["sdr_i"]["mean"] == pytest.approx(np.mean(sdr_a))
    (pair,) = comparison["pairs"]
    diff = m["si_a"] - m["si_b"]
    d = pair["diff"]["si-snr_i"]
    lo, hi = t_interval(diff)
    assert d["mean"] == pytest.approx(diff.mean())
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert d["a_wins"] == pytest.approx(np.sum(diff > 0) / 12)
    assert d["b_wins"] == pytest.approx(np.sum(diff < 0) / 12)
    keep = [i for i in range(12) if m["sdr_a"][i] is not None]
    sdr_diff = [m["sdr_a"][i] - m["sdr_b"][i] for i in keep]
    assert pair["diff"]["sdr_i"]["n"] == 11
    assert pair["diff"]["sdr_i"]["mean"] == pytest.approx(np.mean(sdr_diff))
    # training: 3 epochs; time only where the log records it
    assert (a["epochs"], b["epochs"]) == (3, 3)
    assert a["train_time_s"] == pytest.approx(60 + 61.5 + 59)
    assert b["train_time_s"] is None
    assert a["curve"]["valid_si_snr"] == [-2.5, 1.25, 3.0]  # minus the loss


def test_cli_writes_tables_and_plots(two_models, tmp_path, capsys):
    m = two_models
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "config": {"device": "cpu", "threads": 2},
                "models": {
                    "s4m": {
                        "params": 16,
                        "macs": {"1": {"total": 2e9}, "4": {"total": 8.4e9}},
                        "infer": {"1": {"median": 0.1}, "4": {"median": 0.5}},
                    }
                },
            }
        )
    )
    out = tmp_path / "out"
    args = [str(m["a"]), str(m["b"]), "--benchmark", str(bench)]
    assert main(args + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "comparison.md").read_text()
    assert table in printed
    row_a = next(line for line in table.splitlines() if "| s4m |" in line)
    mean = np.mean(m["si_a"])
    assert f"{mean:.2f} [" in row_a and "3.0 min" in row_a
    assert "| 2.1 | 0.500 |" in row_a  # 8.4 GMAC / 4 s, 4-second median
    row_b = next(
        line for line in table.splitlines() if "| convtasnet |" in line
    )
    assert row_b.endswith("| 3 | n/a | n/a | n/a |")
    data = json.loads((out / "comparison.json").read_text())
    assert data["models"][0]["bench"]["gmac_per_s"] == pytest.approx(2.1)
    assert data["n_utterances"] == 12
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["s4m", "convtasnet"]
    assert float(rows[1]["si-snr_i"]) == pytest.approx(np.mean(m["si_b"]))
    with open(out / "comparison_pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    assert [p["metric"] for p in pairs] == ["si-snr_i", "sdr_i"]
    for name in (
        "scatter_s4m_vs_convtasnet",
        "valid_vs_epoch",
        "valid_vs_time",
    ):
        assert (out / f"{name}.png").stat().st_size > 5000

    # never overwrite without --overwrite: refused before any work (no
    # model is built to count its parameters)
    stamp = (out / "comparison.md").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, "add_parameters", _must_not_run)
        assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert (out / "comparison.md").stat().st_mtime_ns == stamp
    # with --overwrite the outputs are replaced, stale ones removed
    shutil.rmtree(m["a"])
    write_folder(tmp_path, "s4m", m["ids"], m["si_a"], m["sdr_a"])  # no time
    assert main(args + ["--out", str(out), "--overwrite"]) == 0
    assert not (out / "valid_vs_time.png").exists()


def test_cli_refuses_different_test_sets_unless_intersect(
    two_models, tmp_path, capsys
):
    m = two_models
    ids = m["ids"][2:] + ["extra1", "extra2", "extra3"]
    rng = np.random.default_rng(3)
    c = write_folder(tmp_path, "dprnn", ids, rng.normal(8, 2, 13), [1.0] * 13)
    out = tmp_path / "out"
    assert main([str(m["a"]), str(c), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "different test utterances" in err and "--intersect" in err
    assert not out.exists()
    assert main([str(m["a"]), str(c), "--intersect", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 10 utterances common to all folders (of 15 in any)" in printed
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["models"][0]["n_test"] == 10
    # the paired difference uses the common utterances, matched by id
    with open(c / "test_results.csv") as f:
        si_c = {r["snt_id"]: float(r["si-snr_i"]) for r in csv.DictReader(f)}
    diff = [m["si_a"][i] - si_c[m["ids"][i]] for i in range(2, 12)]
    pair = comparison["pairs"][0]["diff"]["si-snr_i"]
    assert pair["mean"] == pytest.approx(np.mean(diff))


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing", "not a folder"),
        ("no_csv", "no test_results.csv"),
        ("no_hparams", "no hyperparams.yaml"),
        ("bad_csv", "needs the columns snt_id and si-snr_i"),
    ],
)
def test_cli_bad_folder_one_line(
    two_models, tmp_path, capsys, breakage, message
):
    bad = tmp_path / "bad"
    if breakage != "missing":
        shutil.copytree(two_models["b"], bad)
    if breakage == "no_csv":
        (bad / "test_results.csv").unlink()
    elif breakage == "no_hparams":
        (bad / "hyperparams.yaml").unlink()
    elif breakage == "bad_csv":
        (bad / "test_results.csv").write_text("id,score\nu1,3\n")
    out = tmp_path / "out"
    assert main([str(two_models["a"]), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(bad) in err and message in err
    assert not out.exists()  # before any work


def test_compare_real_recipe_output(tiny_recipe_output, tmp_path, capsys):
    """Two copies of a real tiny run: the real files parse, the parameters
    are those of the model the recipe trained, the difference is zero."""
    from speechbrain_s4m.config import load_hparams

    other = tmp_path / "copy"
    shutil.copytree(tiny_recipe_output, other)
    out = tmp_path / "out"
    assert main([str(tiny_recipe_output), str(other), "--out", str(out)]) == 0
    data = json.loads((out / "comparison.json").read_text())
    hparams = load_hparams(tiny_recipe_output / "hyperparams.yaml")
    want = sum(
        p.numel()
        for name in ("encoder", "masknet", "decoder")
        for p in hparams["modules"][name].parameters()
    )
    with open(tiny_recipe_output / "test_results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["snt_id"] != "avg"]
    a = data["models"][0]
    assert a["params"] == want and a["masknet"] == "S4MMaskNet"
    assert a["hparams"] == "s4m_tiny" and a["epochs"] == 1
    assert a["n_test"] == len(rows)
    assert a["stats"]["si-snr_i"]["mean"] == pytest.approx(
        np.mean([float(r["si-snr_i"]) for r in rows])
    )
    assert data["pairs"][0]["diff"]["si-snr_i"]["mean"] == 0
    assert data["pairs"][0]["diff"]["si-snr_i"]["ties"] == 1


def test_recorded_parameters_and_extra_columns(tmp_path):
    """A model that cannot be built here: the count SpeechBrain logged;
    PESQ / STOI columns present in every folder are reported too."""
    ids = ["u1", "u2", "u3"]
    a = write_folder(tmp_path, "a", ids, [1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    b = write_folder(tmp_path, "b", ids, [0.5, 2.5, 3.0], [1.0, 1.0, 1.0])
    text = (a / "hyperparams.yaml").read_text()
    (a / "hyperparams.yaml").write_text(
        text.replace("torch.nn.Linear", "no_such_package.Model")
    )
    (a / "log.txt").write_text(
        "* Total Number of Trainable Parameters: 1.8M\n"
        "* Total Number of Parameters: 1.8M\n"
    )
    for folder, pesq in ((a, [2.0, 3.0, 4.0]), (b, [1.0, 2.0, 2.5])):
        with open(folder / "test_results.csv", newline="") as f:
            rows = list(csv.reader(f))
        rows[0].append("pesq")
        for row, value in zip(rows[1:], pesq + [0]):
            row.append(value)
        with open(folder / "test_results.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    comparison = compare_folders([str(a), str(b)])
    ma, mb = comparison["models"]
    assert ma["params"] == 1_800_000 and ma["params_source"].startswith("log")
    assert mb["params"] == 3 * 4 + 4
    assert ma["stats"]["pesq"]["mean"] == pytest.approx(3.0)
    out = tmp_path / "out"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    assert "pesq [95% CI]" in (out / "comparison.md").read_text()


def add_columns(folder, values):
    """Appends ``{column: [value per utterance]}`` to test_results.csv."""
    with open(folder / "test_results.csv", newline="") as f:
        rows = list(csv.reader(f))
    for name, column in values.items():
        rows[0].append(name)
        for row, value in zip(rows[1:], list(column) + [0]):
            row.append(value)
    with open(folder / "test_results.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_missing_pesq_stoi_columns_are_reported(tmp_path, capsys):
    """One folder scored with --extra_metrics pesq,stoi, the other not: the
    columns are left out and one line names the folder and the columns."""
    ids = ["u1", "u2", "u3"]
    a = write_folder(tmp_path, "a", ids, [1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    b = write_folder(tmp_path, "b", ids, [0.5, 2.5, 3.0], [1.0, 1.0, 1.0])
    add_columns(
        a, {k: [1.0, 2.0, 3.0] for k in ("pesq", "pesq_i", "stoi", "stoi_i")}
    )
    comparison = compare_folders([str(a), str(b)])
    assert "pesq" not in comparison["metrics"]
    assert comparison["dropped"] == [
        {"folder": str(b), "columns": ["pesq", "pesq_i", "stoi", "stoi_i"]}
    ]
    out = tmp_path / "out"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    notes = [
        line for line in capsys.readouterr().err.splitlines() if "note:" in line
    ]
    assert notes == [
        f"s4m-compare: note: {b} has no pesq, pesq_i, stoi, stoi_i column "
        "in test_results.csv: left out of the comparison for every folder "
        f"(add them: train.py <its hparams> --output_folder {b} --test_only "
        "--extra_metrics pesq,stoi)"
    ]
    # both scored: no note
    add_columns(
        b, {k: [1.0, 2.0, 3.0] for k in ("pesq", "pesq_i", "stoi", "stoi_i")}
    )
    assert main([str(a), str(b), "--out", str(out), "--overwrite"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_readme_compare_section_uses_only_its_flags():
    """The README's s4m-compare section: every ``--flag`` in a command line
    of s4m-compare is one of its options; --extra_metrics is shown on
    train.py."""
    from conftest import REPO

    from speechbrain_s4m.compare import parser

    known = {o for a in parser()._actions for o in a.option_strings}
    text = (REPO / "README.md").read_text()
    commands = []
    for block in text.split("```")[1::2]:
        joined = block.replace("\\\n", " ")
        commands += [line for line in joined.splitlines() if line.strip()]
    compare = [c for c in commands if c.lstrip().startswith("s4m-compare")]
    assert compare
    for command in compare:
        flags = [w for w in command.split() if w.startswith("--")]
        assert set(flags) <= known, command
    assert any(
        "train.py" in c and "--extra_metrics pesq,stoi" in c for c in commands
    )

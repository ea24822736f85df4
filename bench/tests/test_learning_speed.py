"""Tests of the learning-speed harness (``bench/learning_speed.py``) with
tiny models, few updates and short segments."""

import argparse
import json

import learning_speed as ls
import pytest
import torch

from speechbrain_s4m.benchmark.models import build_model

TINY = "{num_iterations: 2, hidden_channels: 16, out_channels: 8, depth: 2}"
TINY_DICT = {
    "num_iterations": 2,
    "hidden_channels": 16,
    "out_channels": 8,
    "depth": 2,
}


def _common(tmp_path, *extra):
    return [
        "--updates",
        "4",
        "--eval-every",
        "2",
        "--seeds",
        "0",
        "1",
        "--segment",
        "0.1",
        "--train-mixtures",
        "3",
        "--valid-mixtures",
        "2",
        "--grad-updates",
        "3",
        "--json",
        str(tmp_path / "ls.json"),
        "--plot",
        str(tmp_path / "ls.png"),
        *extra,
    ]


def test_cli_json_structure_and_plot(tmp_path):
    argv = _common(
        tmp_path,
        "--models",
        "a=s4m_tiny",
        "b=s4m_tiny",
        "--override",
        f"a:{TINY}",
        f"b:{TINY}",
        "--set",
        "b:{lr: 3.0e-3, warmup: 2, init: masknet.block.res_conv=0}",
        "a:{decay: linear}",
    )
    ls.main(argv)
    result = json.loads((tmp_path / "ls.json").read_text())
    png = (tmp_path / "ls.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert result["settings"]["updates"] == 4
    assert result["data"]["train_shape"] == [3, 800]
    assert result["data"]["valid_shape"] == [2, 800]
    names = [v["name"] for v in result["variants"]]
    assert names == ["a", "b"]
    a, b = result["variants"]
    assert a["lr"] == 1e-3 and a["ssm_lr"] == 1e-3 and a["clip"] == 5.0
    assert b["lr"] == 3e-3 and b["warmup"] == 2
    assert b["overrides"]["num_iterations"] == 2
    assert b["init"] == "masknet.block.res_conv=0"
    for v in result["variants"]:
        assert [r["seed"] for r in v["runs"]] == [0, 1]
        for r in v["runs"]:
            assert [e["update"] for e in r["eval"]] == [0, 2, 4]
            cpu = [e["cpu_s"] for e in r["eval"]]
            assert cpu[0] == 0 and cpu == sorted(cpu) and cpu[-1] > 0
            assert len(r["train_loss"]) == 4 and len(r["lr"]) == 4
            assert len(r["grad_norms"]) == 3
            assert len(r["block_rms_init"]["block_out"]) == 2
            g = r["grad_norms"][0]
            for group in (
                "encoder",
                "decoder",
                "masknet.bottleneck",
                "masknet.block.proj",
                "masknet.block.pyramid",
                "masknet.block.s4",
                "masknet.block.ffn",
                "masknet.block.res_conv",
                "masknet.iter_conv",
                "masknet.mask_conv",
            ):
                assert group in g
            parts = sum(v_**2 for k, v_ in g.items() if k != "total")
            assert g["total"] == pytest.approx(parts**0.5, rel=1e-6)
        s = v["summary"]
        finals = [r["eval"][-1]["valid_si_snri"] for r in v["runs"]]
        assert s["final_si_snri_mean"] == pytest.approx(sum(finals) / 2)
        assert s["final_si_snri_min"] == min(finals)
    # warm-up: linear ramp over 2 updates, then the base lr
    assert b["runs"][0]["lr"] == pytest.approx([1.5e-3, 3e-3, 3e-3, 3e-3])
    # linear decay to 0 at the end of the run (update 4 of 4 at 1/4)
    assert a["decay"] == "linear" and b["decay"] == "none"
    assert a["runs"][0]["lr"] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    # the zero-initialised residual conv gets a gradient, the block's
    # insides none at the first update (each application is the identity)
    g_b = b["runs"][0]["grad_norms"][0]
    assert g_b["masknet.block.res_conv"] > 0
    assert g_b["masknet.block.s4"] == 0
    # nothing overwritten without --overwrite
    with pytest.raises(SystemExit, match="exists"):
        ls.main(argv)
    # re-plot without training: merged logs, one variant, gradient plot
    merged = ls.main(
        [
            "--from-json",
            str(tmp_path / "ls.json"),
            "--only",
            "b",
            "--json",
            str(tmp_path / "b.json"),
            "--plot-grads",
            str(tmp_path / "g.png"),
        ]
    )
    assert [v["name"] for v in merged["variants"]] == ["b"]
    assert json.loads((tmp_path / "b.json").read_text())["variants"] == [b]
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="same seed"):
        ls.merge_results([result, result])
    # seeds of the same variant from two logs become one variant
    one = ls.select_variants(result, ["a"])
    seed0 = dict(one, variants=[dict(a, runs=a["runs"][:1])])
    seed1 = dict(one, variants=[dict(a, runs=a["runs"][1:])])
    both = ls.merge_results([seed0, seed1])["variants"][0]
    assert [r["seed"] for r in both["runs"]] == [0, 1]
    assert both["summary"] == a["summary"]
    other = dict(one, variants=[dict(a, runs=a["runs"][1:], lr=0.1)])
    with pytest.raises(ValueError, match="different settings"):
        ls.merge_results([seed0, other])


def test_loss_decreases_when_overfitting_one_mixture():
    args = argparse.Namespace(
        updates=40,
        eval_every=40,
        batch=1,
        grad_updates=2,
        sample_rate=8000,
        device="cpu",
        eval_batch=1,
        segment=0.1,
        train_mixtures=1,
        valid_mixtures=1,
        train_speakers=2,
        valid_speakers=2,
        data_seed=0,
    )
    train, _ = ls.make_data(args)
    variant = ls.Variant("tiny", "s4m_tiny", TINY_DICT, lr=1e-2)
    log = ls.train_variant(variant, 0, train, train, args)
    losses = log["train_loss"]
    assert len(losses) == 40
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < first - 3.0  # dB of SI-SNR gained on the one mixture
    # the validation set is the training mixture: it improves as well
    assert log["eval"][-1]["valid_si_snri"] > log["eval"][0]["valid_si_snri"]


def test_zero_res_conv_init_makes_each_block_the_identity():
    torch.manual_seed(0)
    model = build_model("s4m_tiny", overrides=TINY_DICT)
    x = torch.randn(1, 8, 37)
    assert not torch.allclose(model.masknet.block(x), x)
    touched = ls.apply_init(model, "masknet.block.res_conv=0")
    assert touched == [
        "masknet.block.res_conv.weight",
        "masknet.block.res_conv.bias",
    ]
    assert torch.equal(model.masknet.block(x), x)


def test_block_output_rms_follows_the_iterations():
    torch.manual_seed(0)
    model = build_model("s4m_tiny", overrides=TINY_DICT)
    mix = torch.randn(1, 600)
    stats = ls.block_output_rms(model, mix)
    # reference: the iterations written out by hand
    m = model.masknet
    with torch.no_grad():
        x0 = m.bottleneck(m.norm(model.encoder(mix)))
        h1 = m.block(x0)
        in2 = m.iter_act(m.iter_conv(x0 + h1))
        h2 = m.block(in2)
    ref_in = [float(t.pow(2).mean().sqrt()) for t in (x0, in2)]
    ref_out = [float(t.pow(2).mean().sqrt()) for t in (h1, h2)]
    assert stats["block_in"] == pytest.approx(ref_in, rel=1e-5)
    assert stats["block_out"] == pytest.approx(ref_out, rel=1e-5)
    assert stats["bottleneck"] == pytest.approx(ref_in[0], rel=1e-5)
    assert stats["mask_mean"] >= 0
    conv = build_model("convtasnet")
    assert ls.block_output_rms(conv, mix) == {}


def test_apply_init_scales_only_the_prefix():
    torch.manual_seed(0)
    model = build_model("s4m_tiny", overrides=TINY_DICT)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ls.apply_init(model, "masknet.block.res_conv=0.5, masknet.mask_conv=2")
    for n, p in model.named_parameters():
        if n.startswith("masknet.block.res_conv."):
            factor = 0.5
        elif n.startswith("masknet.mask_conv."):
            factor = 2.0
        else:
            factor = 1.0
        assert torch.equal(p, before[n] * factor), n


def test_grad_norms_match_torch_total_norm():
    torch.manual_seed(0)
    model = build_model("s4m_tiny", overrides=TINY_DICT)
    mix, src = torch.randn(2, 400), torch.randn(2, 400, 2)
    from speechbrain_s4m.losses import pit_si_snr_loss

    pit_si_snr_loss(model(mix), src)[0].mean().backward()
    norms = ls.grad_norms(model)
    ref = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert norms["total"] == pytest.approx(float(ref), rel=1e-5)
    enc = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    assert norms["encoder"] == pytest.approx(float(enc.norm()), rel=1e-5)


def test_valid_si_snri_of_the_mixture_is_zero():
    src = torch.randn(3, 500, 2)
    mix = src.sum(-1)

    def passthrough(m):
        return m.unsqueeze(-1).expand(-1, -1, 2)

    si_snri, _ = ls.valid_si_snri(passthrough, mix, src, batch=2)
    assert si_snri == pytest.approx(0.0, abs=1e-4)


def test_variant_errors():
    base = ["--models", "a=s4m_tiny"]
    with pytest.raises(SystemExit, match="unknown key"):
        ls.build_variants(ls.parse_args(base + ["--set", "a:{lrr: 1}"]))
    with pytest.raises(SystemExit, match="no such variant"):
        ls.build_variants(ls.parse_args(base + ["--override", "b:{x: 1}"]))
    with pytest.raises(SystemExit, match="named twice"):
        ls.build_variants(ls.parse_args(["--models", "s4m_tiny", "s4m_tiny"]))
    with pytest.raises(ValueError, match="matches no parameter"):
        ls.apply_init(torch.nn.Linear(1, 1), "nothing=0")

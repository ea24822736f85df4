"""Tests of :class:`S4MStreamer`: the streamed output equals the causal
model on the whole signal, whatever the hops; the state does not grow."""

import pytest
import torch

from speechbrain_s4m.config import load_model_config
from speechbrain_s4m.inference import S4MStreamer
from speechbrain_s4m.inference.streamer import NOT_CAUSAL, StreamerStateError

SR = 8000
# a tiny causal S4M with every layer kind (4 scales, 2 shared iterations)
TINY = {
    "num_iterations": 2,
    "out_channels": 8,
    "hidden_channels": 16,
    "d_state": 4,
}


def _modules(name="s4m_tiny_causal", overrides=None, seed=0):
    torch.manual_seed(seed)
    hp = load_model_config(name, overrides=overrides)
    with torch.no_grad():  # non-trivial norm gains (every path matters)
        for pname, p in hp["MaskNet"].named_parameters():
            if pname.endswith(("norm.weight", "norm.bias")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return hp["Encoder"], hp["MaskNet"], hp["Decoder"]


@pytest.fixture(scope="module")
def tiny():
    return S4MStreamer.from_modules(*_modules(overrides=TINY), num_spks=2)


def speech_like(seconds, seed=0, batch=1):
    """Modulated tones plus noise, peak ~1 (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    out = []
    for b in range(batch):
        f = 120 + 40 * b
        v = torch.sin(2 * torch.pi * f * t) * torch.sin(2 * torch.pi * 1.3 * t)
        w = torch.sign(torch.sin(2 * torch.pi * 2.3 * f * t)) * 0.3
        out.append(0.5 * v + w + 0.05 * torch.randn(t.shape, generator=g))
    return torch.stack(out)


def hop_sizes(total, hop, seed=0, largest=400):
    """Fixed hops, or random sizes (0 included) when ``hop`` is None."""
    if hop is not None:
        return [min(hop, total - a) for a in range(0, total, hop)]
    g = torch.Generator().manual_seed(seed)
    sizes, a = [], 0
    while a < total:
        n = min(int(torch.randint(0, largest, (1,), generator=g)), total - a)
        sizes.append(n)
        a += n
    return sizes


def run_stream(streamer, mix, sizes):
    """Concatenated streamed output ``[batch, time, spks]`` and the number
    of output samples after each call."""
    streamer.reset()
    outs, ready, a = [], [], 0
    for n in sizes:
        outs.append(streamer.process(mix[:, a : a + n]))
        a += n
        ready.append(streamer.samples_out)
    outs.append(streamer.flush())
    return torch.cat(outs, dim=1), ready


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "seconds, hop",
    [
        (3.0, 8),
        (3.0, 80),
        (30.0, 256),
        (30.0, None),
        pytest.param(30.0, 80, marks=SLOW),
        pytest.param(30.0, 8, marks=SLOW),  # 30,000 calls: minutes
    ],
    ids=str,
)
def test_stream_equals_whole_signal(tiny, seconds, hop):
    """30 s at 8 kHz, float32: hops of 1 frame (8 samples), 10 ms, 32 ms
    and random sizes give the whole-signal causal output (< 1e-4), and
    output sample t is out once input sample t + latency is in (3 s
    versions of the many-call cases run fast)."""
    mix = speech_like(seconds, seed=1)
    ref = tiny.separate_whole(mix)
    sizes = hop_sizes(mix.shape[-1], hop, seed=2)
    est, ready = run_stream(tiny, mix, sizes)
    assert est.shape == ref.shape == (1, mix.shape[-1], 2)
    err = (est - ref).abs().max().item()
    assert err < 1e-4, err
    assert ref.abs().max() > 1e-2  # not a trivial output
    seen = 0
    for n, r in zip(sizes, ready):
        seen += n
        assert seen - tiny.latency_samples <= r <= seen, (seen, r)


def test_real_s4m_tiny_causal_2s():
    """The shipped s4m_tiny_causal (16 iterations, C=128, D=512), random
    weights, 2 s in 32 ms hops and in random sizes: equal to the whole
    signal."""
    streamer = S4MStreamer.from_modules(*_modules(seed=3), num_spks=2)
    assert streamer.latency_samples == 31
    assert streamer.latency_ms == pytest.approx(3.875)
    mix = speech_like(2.0, seed=4)
    ref = streamer.separate_whole(mix)
    for hop in (256, None):
        sizes = hop_sizes(mix.shape[-1], hop, seed=5, largest=600)
        est, _ = run_stream(streamer, mix, sizes)
        err = (est - ref).abs().max().item()
        assert err < 1e-4, (hop, err)


def test_state_does_not_grow(tiny):
    """The total size of the state tensors after 10 s of stream is what it
    was after 1 s: with 20-frame hops the buffers' lengths cycle with the
    phase of the frames in the 8-frame coarse period (two hops), so the
    sizes are compared hop for hop over whole periods."""
    mix = speech_like(10.0, seed=6)
    tiny.reset()
    sizes = []
    for a in range(0, mix.shape[-1], 160):
        tiny.process(mix[:, a : a + 160])
        state = tiny.state_tensors()
        sizes.append(sum(t.numel() for t in state))
    assert sizes[40:60] == sizes[-20:], (sizes[40:60], sizes[-20:])
    assert max(sizes) == max(sizes[:60]) > 0
    # an S4 recurrent state per iteration (the eigenbasis form, float64)
    iterations = tiny.masknet.num_iterations
    s4_states = [tiny._mask[f"iteration{r}"]["s4"] for r in range(iterations)]
    assert all(t.dtype == torch.float64 for t in s4_states)
    ids = {id(t) for t in state}
    assert all(id(t) in ids for t in s4_states)


def test_batch_one_dim_and_lifecycle(tiny):
    """A batch of streams; 1-D chunks give [m, spks]; flush ends the
    stream, reset starts a new one with the same result."""
    mix = speech_like(1.0, seed=7, batch=3)
    ref = tiny.separate_whole(mix)
    est, _ = run_stream(tiny, mix, hop_sizes(mix.shape[-1], 100))
    assert (est - ref).abs().max() < 1e-4
    with pytest.raises(StreamerStateError, match="reset"):
        tiny.process(mix[:, :10])
    with pytest.raises(StreamerStateError):
        tiny.flush()
    tiny.reset()
    out = [tiny.process(mix[0, a : a + 333]) for a in range(0, 8000, 333)]
    assert out[1].dim() == 2 and out[1].shape[-1] == 2
    out.append(tiny.flush(squeeze=True))
    torch.testing.assert_close(torch.cat(out), ref[0], atol=1e-4, rtol=0)
    tiny.reset()
    tiny.process(mix[:, :50])
    with pytest.raises(ValueError, match="batch size 3"):
        tiny.process(mix[:1, 50:60])
    tiny.reset()
    assert tiny.flush().shape == (1, 0, 2)  # empty stream
    assert tiny.samples_in == 0


def test_numpy_input_and_rtf(tiny):
    mix = speech_like(0.5, seed=8)
    tiny.reset()
    y = tiny.process(mix[0].numpy())
    assert y.dtype == torch.float32 and y.shape[-1] == 2
    assert tiny.rtf > 0 and tiny.compute_seconds > 0


def test_non_causal_model_is_refused():
    enc, net, dec = _modules("s4m_tiny", overrides=TINY)
    with pytest.raises(ValueError) as err:
        S4MStreamer.from_modules(enc, net, dec)
    assert str(err.value) == NOT_CAUSAL
    assert "causal" in NOT_CAUSAL and "s4m_tiny_causal" in NOT_CAUSAL


def test_from_hparams_exported_folder(tmp_path):
    """A recipe folder of the causal fragment, exported, streams; the
    result equals S4MSeparation.separate_batch."""
    from test_inference import make_recipe_folder

    from speechbrain_s4m.export import export_pretrained
    from speechbrain_s4m.inference import S4MSeparation

    torch.manual_seed(0)
    recipe = make_recipe_folder(tmp_path / "r", "s4m_tiny_causal", TINY)
    folder = export_pretrained(recipe, tmp_path / "model")
    streamer = S4MStreamer.from_hparams(folder, run_opts={"device": "cpu"})
    model = S4MSeparation.from_hparams(folder, run_opts={"device": "cpu"})
    mix = speech_like(1.5, seed=9)
    est, _ = run_stream(streamer, mix, hop_sizes(mix.shape[-1], 128))
    ref = model.separate_batch(mix)
    assert (est - ref).abs().max() < 1e-4
    offline = make_recipe_folder(tmp_path / "o", "s4m_tiny", TINY)
    offline = export_pretrained(offline, tmp_path / "offline")
    with pytest.raises(ValueError, match="causal fragment"):
        S4MStreamer.from_hparams(offline, run_opts={"device": "cpu"})


# ----------------------------------------------------------------------
# s4m-separate --stream
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported_models(tmp_path_factory):
    from test_inference import make_recipe_folder

    from speechbrain_s4m.export import export_pretrained

    root = tmp_path_factory.mktemp("stream_models")
    torch.manual_seed(0)
    causal = make_recipe_folder(root / "rc", "s4m_tiny_causal", TINY)
    offline = make_recipe_folder(root / "ro", "s4m_tiny", TINY)
    return (
        export_pretrained(causal, root / "causal"),
        export_pretrained(offline, root / "offline"),
    )


def test_cli_stream_equals_offline(exported_models, tmp_path, capsys):
    """``s4m-separate --stream`` writes the causal model's whole-file
    output (8 kHz file; and a 16 kHz stereo file at the model's rate,
    resampled block-wise), and prints the latency and the RTF."""
    import soundfile as sf

    from speechbrain_s4m.cli import separate_main
    from speechbrain_s4m.inference import S4MSeparation

    causal, _ = exported_models
    mix = speech_like(2.3, seed=10)
    sf.write(tmp_path / "a.wav", mix[0].numpy(), SR, subtype="FLOAT")
    stereo = speech_like(1.7, seed=11, batch=2) * 0.5
    sf.write(tmp_path / "b.wav", stereo.t().numpy(), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    args = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    args += ["--model", str(causal), "--output-folder", str(out)]
    args += ["--stream", "--hop-ms", "16", "--output-rate", "model"]
    assert separate_main(args + ["--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "algorithmic latency 3.9 ms (31 samples)" in err
    assert "real-time factor" in err and "16 ms hop" in err
    model = S4MSeparation.from_hparams(causal, run_opts={"device": "cpu"})
    ref_a = model.separate_batch(mix)[0]  # [time, spks]
    ref_b = model.separate_file(str(tmp_path / "b.wav"), scale="none")[0]
    for name, ref in (("a", ref_a), ("b", ref_b)):
        for i in range(2):
            got, rate = sf.read(out / f"{name}_s{i + 1}.wav", dtype="float32")
            assert rate == SR and got.shape[0] == ref.shape[0]
            diff = (torch.from_numpy(got) - ref[:, i]).abs().max()
            assert diff < 1e-4, (name, i, diff)
    # existing outputs are kept without --overwrite
    assert separate_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert separate_main(args + ["--overwrite", "--hop-ms", "5"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "streaming needs a causal model"),
        (["--scale", "mixture"], "--scale mixture needs future samples"),
        (["--chunk-seconds", "3"], "do not apply to --stream"),
    ],
)
def test_cli_stream_errors(exported_models, tmp_path, capsys, extra, message):
    """A non-causal model (or a non-causal option) with --stream: one
    error line, exit code 2, nothing written."""
    import soundfile as sf

    from speechbrain_s4m.cli import separate_main

    causal, offline = exported_models
    model = offline if not extra else causal
    sf.write(tmp_path / "a.wav", speech_like(0.5)[0].numpy(), SR)
    out = tmp_path / "out"
    rc = separate_main(
        [str(tmp_path / "a.wav"), "--model", str(model), "--stream"]
        + ["--output-folder", str(out)]
        + extra
    )
    assert rc == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------
# python -m speechbrain_s4m.benchmark.streaming
# ----------------------------------------------------------------------
def test_streaming_benchmark_tiny(tmp_path, capsys):
    """The benchmark on a tiny config: JSON rows with the promised keys,
    consistent numbers, a printed table and the RSS follow-up, reported
    reading by reading."""
    import json

    from speechbrain_s4m.benchmark import streaming as bench

    out = tmp_path / "s.json"
    rc = bench.main(
        [
            "--overrides",
            "{num_iterations: 1, out_channels: 8, "
            "hidden_channels: 16, d_state: 4}",
        ]
        + ["--hops-ms", "8", "16", "--threads", "1", "2"]
        + ["--seconds", "0.2", "--long-minutes", "0.01"]
        + ["--naive-repeats", "1", "--json", str(out)]
    )
    assert rc == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 8  # 2 hops x 2 thread counts x (streamer, naive)
    keys = {
        "hop_ms",
        "threads",
        "rtf",
        "latency_ms",
        "per_hop_ms_median",
        "per_hop_ms_p99",
        "rss_mib",
    }
    for row in rows:
        assert keys <= set(row), row
        assert row["per_hop_ms_p99"] >= row["per_hop_ms_median"] > 0
        assert row["latency_ms"] > row["hop_ms"] + 3.875 - 1e-9
        assert row["rss_mib"] > 0
    streamed = [r for r in rows if r["method"] == "streamer"]
    assert {(r["hop_ms"], r["threads"]) for r in streamed} == {
        (8, 1),
        (16, 1),
        (8, 2),
        (16, 2),
    }
    for r in streamed:  # rtf = compute per hop / hop duration (mean)
        assert r["rtf"] == pytest.approx(
            r["per_hop_ms_median"] / r["hop_ms"], rel=2.0
        )
    growth = [r for r in rows if "rss_growth" in r]
    assert len(growth) == 1 and len(growth[0]["rss_growth"]) == 4
    minutes = [m for m, _ in growth[0]["rss_growth"]]
    assert minutes == sorted(minutes) and minutes[0] > 0
    naive = [r for r in rows if r["method"] == "naive"]
    assert all(r["window_frames"] > 0 for r in naive)
    text = capsys.readouterr().out
    assert "hop compute ms (med)" in text and "naive window" in text
    # each RSS reading is printed as it is taken (a long run reports)
    assert text.count(" min: RSS ") == 4


def test_streaming_benchmark_times_a_trained_folder(
    exported_models, tmp_path, capsys
):
    """--model times an exported causal model folder (its own number of
    iterations in the rows); with --overrides, or a folder that is not
    there, it stops with one line before building anything."""
    import json

    from speechbrain_s4m.benchmark import streaming as bench

    causal, _ = exported_models
    out = tmp_path / "m.json"
    common = ["--hops-ms", "16", "--threads", "1", "--seconds", "0.1"]
    common += ["--long-minutes", "0", "--no-naive"]
    assert (
        bench.main(["--model", str(causal), "--json", str(out)] + common) == 0
    )
    (row,) = json.loads(out.read_text())
    assert row["config"] == str(causal) and row["method"] == "streamer"
    assert row["num_iterations"] == TINY["num_iterations"]
    assert row["per_hop_ms_median"] > 0 and row["allocator"]
    capsys.readouterr()
    for extra, message in [
        (["--model", str(causal), "--overrides", "{d_state: 4}"], "leave out"),
        (["--model", str(tmp_path / "nope")], "no such model folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            bench.main(extra + common)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err and "Traceback" not in err


def test_receptive_field_by_impulse():
    """conv_receptive_field bounds the measured reach of an impulse
    through the causal stack of one block (S4 and norms made local: the
    S4 kernel zeroed, cumulative norms replaced by identity)."""
    from speechbrain_s4m.benchmark.streaming import conv_receptive_field
    from speechbrain_s4m.lobes import S4MMaskNet

    torch.manual_seed(12)
    net = S4MMaskNet(5, 8, 8, depth=3, num_iterations=1, causal=True)
    net = net.double().eval()
    blk = net.block
    ident = torch.nn.Identity()
    blk.proj_norm.forward = ident.forward
    for module in blk.modules():
        if hasattr(module, "norm") and hasattr(module, "conv"):
            module.norm.forward = ident.forward
    blk.s4.s4.kernel = lambda length: torch.zeros(8, length).double()
    x = torch.zeros(1, 8, 200, dtype=torch.float64)
    with torch.no_grad():
        base = blk(x)
        x[..., 100] = 1.0
        diff = (blk(x) - base).abs().sum(1)[0]
    reach = int(torch.nonzero(diff > 1e-12).max()) - 100
    bound = conv_receptive_field(net)
    assert bound / 2 < reach <= bound, (reach, bound)
    net = S4MMaskNet(17, 8, 16, depth=4, num_iterations=2, causal=True)
    assert conv_receptive_field(net) == 218


@pytest.mark.slow
def test_compiled_block_step_equals_eager():
    """``compile=True`` (inductor on CPU; minutes of compilation on a
    shared 2-core machine) gives the same output."""
    small = {**TINY, "num_iterations": 1, "depth": 2}
    mods = _modules(overrides=small, seed=13)
    streamer = S4MStreamer.from_modules(*mods, num_spks=2, compile=True)
    mix = speech_like(0.5, seed=14)
    ref = streamer.separate_whole(mix)
    est, _ = run_stream(streamer, mix, hop_sizes(mix.shape[-1], 64))
    assert (est - ref).abs().max() < 1e-4


# ----------------------------------------------------------------------
# Issue 21 item 2: every block is checked; a refused block changes nothing
# ----------------------------------------------------------------------
def _feed(streamer, blocks, bad=None, at=1):
    """Streams ``blocks`` (``bad`` sent before block ``at``, and must be
    refused); returns the concatenated output and the refusal messages."""
    streamer.reset()
    outs, errors = [], []
    for i, block in enumerate(blocks):
        if bad is not None and i == at:
            with pytest.raises((ValueError, TypeError)) as err:
                streamer.process(bad)
            errors.append(str(err.value))
        outs.append(streamer.process(block))
    outs.append(streamer.flush(squeeze=outs[0].dim() == 2))
    return torch.cat(outs, dim=-2), errors


@pytest.mark.parametrize(
    "case, message",
    [
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("stereo", "expected a block of shape [1, n] or [n]"),
        ("batch", "stream has batch size 1"),
        ("3d", "expected mixture samples [batch, n]"),
        ("int64", "dtype int64 are not accepted"),
        ("bool", "dtype bool are not accepted"),
        ("ragged", "cannot be read as an array"),
        ("text", "got str"),
    ],
)
def test_refused_block_leaves_the_stream_untouched(tiny, case, message):
    """Feed A, a bad block, B: refused with a message saying what is
    expected, and the output is bitwise that of feeding A, B."""
    mix = speech_like(0.3, seed=12)
    a, b = mix[:, :1000], mix[:, 1000:]
    bad = {
        "nan": a.clone().index_fill_(1, torch.tensor([7]), float("nan")),
        "inf": a.clone().index_fill_(1, torch.tensor([3]), float("inf")),
        "stereo": torch.randn(256, 2),
        "batch": torch.randn(2, 100),
        "3d": torch.randn(1, 1, 100),
        "int64": torch.ones(1, 100, dtype=torch.int64),
        "bool": torch.ones(1, 100, dtype=torch.bool),
        "ragged": [[0.1, 0.2], [0.3]],
        "text": "0.1 0.2",
    }[case]
    ref, _ = _feed(tiny, [a, b])
    got, errors = _feed(tiny, [a, b], bad)
    assert len(errors) == 1 and message in errors[0], errors
    assert torch.equal(got, ref)
    assert tiny.samples_in == mix.shape[-1] and tiny.calls == 2


def test_first_block_stereo_is_refused(tiny):
    """A [frames, 2] block as the first one (soundfile's layout) does not
    start 256 streams: refused, with the expected shape."""
    tiny.reset()
    with pytest.raises(ValueError) as err:
        tiny.process(torch.randn(256, 2).numpy())
    assert "expected mixture samples [batch, n]" in str(err.value)
    assert "[frames, channels]" in str(err.value)
    assert tiny._batch is None and tiny.samples_in == 0
    with pytest.raises(ValueError, match="frames, channels"):
        tiny.process(torch.zeros(0, 2))
    # a batch of 3 streams starting with a 100-sample block is fine
    assert tiny.process(torch.randn(3, 100)).shape[0] == 3


@pytest.mark.parametrize("kind", ["int16", "int32", "list", "float64"])
def test_integer_and_sequence_blocks(tiny, kind):
    """int16 / int32 PCM blocks are rescaled (by 2**-15 / 2**-31), lists
    and float64 arrays are converted: the same output as float32."""
    mix = (speech_like(0.3, seed=13) * 0.5).clamp(-1, 1)
    ref, _ = _feed(tiny, list(mix.split(480, dim=-1)))
    pcm16 = torch.round(mix * 32767).to(torch.int16)
    if kind == "int16":
        blocks = [b.numpy() for b in pcm16.split(480, dim=-1)]
        ref, _ = _feed(tiny, list((pcm16 / 32768.0).split(480, dim=-1)))
    elif kind == "int32":
        pcm32 = pcm16.to(torch.int32) * 65536
        blocks = list(pcm32.split(480, dim=-1))
        ref, _ = _feed(tiny, list((pcm16 / 32768.0).split(480, dim=-1)))
    elif kind == "list":
        blocks = [b[0].tolist() for b in mix.split(480, dim=-1)]
        ref = ref[0]
    else:
        blocks = [b.double().numpy() for b in mix.split(480, dim=-1)]
    got, _ = _feed(tiny, blocks)
    assert got.abs().max() < 10  # the int16 block peaked at 151395
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_cli_stream_nan_file_one_line(exported_models, tmp_path, capsys):
    """``--stream`` on a file with a NaN: its error line only, exit 1; no
    timing summary ("real-time factor nan") for audio never streamed."""
    import soundfile as sf

    from speechbrain_s4m.cli import separate_main

    causal, _ = exported_models
    mix = speech_like(0.5)[0].numpy()
    mix[100] = float("nan")
    sf.write(tmp_path / "nan.wav", mix, SR, subtype="FLOAT")
    out = tmp_path / "out"
    rc = separate_main(
        [str(tmp_path / "nan.wav"), "--model", str(causal), "--stream"]
        + ["--output-folder", str(out), "--quiet"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "nan.wav" in lines[0] and "NaN" in lines[0]
    assert "real-time factor" not in err


def test_cli_stream_resampled_keeps_the_input_length(
    exported_models, tmp_path, capsys
):
    """``--stream`` on a 44.1 kHz stereo file of 67,727 frames (8 kHz
    model): outputs of 67,727 frames at 44.1 kHz, not 67,733."""
    import soundfile as sf

    from speechbrain_s4m.cli import separate_main

    causal, _ = exported_models
    frames = 67727
    mix = speech_like(1.6, seed=14, batch=2)
    mix = torch.nn.functional.interpolate(mix[None], size=frames)[0] * 0.5
    sf.write(tmp_path / "m.wav", mix.t().numpy(), 44100, subtype="FLOAT")
    out = tmp_path / "out"
    rc = separate_main(
        [str(tmp_path / "m.wav"), "--model", str(causal), "--stream"]
        + ["--output-folder", str(out), "--quiet"]
    )
    assert rc == 0, capsys.readouterr().err
    for i in (1, 2):
        info = sf.info(out / f"m_s{i}.wav")
        assert (info.samplerate, info.frames) == (44100, frames)

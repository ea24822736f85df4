"""Inference outputs: scale, speaker order, corrupt inputs, never overwrite.

Issue 9 items 1-7 (``S4MSeparation`` side) and issue 10 item 9.
"""

import os
import shutil
import struct
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from test_inference import local_model, make_recipe_folder, speechlike

from speechbrain_s4m.audio import (
    AudioError,
    AudioInputError,
    check_audio_file,
    check_audio_header,
)
from speechbrain_s4m.export import export_pretrained
from speechbrain_s4m.inference import S4MSeparation
from speechbrain_s4m.inference.chunking import (
    OverlapAddSeparator,
    mixture_gains,
    scale_to_mixture,
)
from speechbrain_s4m.inference.interface import OutputScaleWarning
from speechbrain_s4m.inference.loading import ModelFolderError
from speechbrain_s4m.inference.outputs import (
    OutputFolderError,
    check_output_folder,
)

SR = 8000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    recipe = make_recipe_folder(tmp_path_factory.mktemp("recipe"))
    return export_pretrained(recipe, tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def model(exported):
    return S4MSeparation.from_hparams(exported, run_opts={"device": "cpu"})


def loud_model(gain=200.0):
    """A model whose raw outputs are far beyond full scale (as SI-SNR
    training allows): the local test model with its decoder amplified."""
    m = local_model()
    with torch.no_grad():
        for p in m.mods.decoder.parameters():
            p.mul_(gain)
    return m


def mixture_09(seconds=1.0, seed=3):
    mix = speechlike(seconds, seed=seed)[0]
    return mix * (0.9 / mix.abs().max())


# --------------------------------------------------------------------------
# Least-squares gains: checked against numpy's lstsq on the full problem and
# against the optimality conditions (issue 21 item 1: signed gains)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["positive", "negative", "three"])
def test_mixture_gains_are_signed_least_squares(case):
    rng = np.random.default_rng(0)
    spks = 3 if case == "three" else 2
    s = rng.standard_normal((1500, spks))
    true = {"positive": [0.3, 2.0], "negative": [1.0, -0.5]}
    true = np.array(true.get(case, [-0.5, 1.5, -0.2]))
    y = s @ true + 0.1 * rng.standard_normal(1500)
    raw = s * np.array([30.0, 0.01, 7.0])[:spks]  # arbitrary model scales
    g = mixture_gains(torch.from_numpy(raw)[None], torch.from_numpy(y)[None])
    g = g[0].numpy()
    ref = np.linalg.lstsq(raw, y, rcond=None)[0]  # independent: full matrix
    np.testing.assert_allclose(g, ref, rtol=1e-6)
    # optimality: the residual is orthogonal to every source
    resid = y - raw @ g
    cos = raw.T @ resid / (np.linalg.norm(raw, axis=0) * np.linalg.norm(y))
    assert np.all(np.abs(cos) < 1e-10)
    np.testing.assert_allclose(g * [30.0, 0.01, 7.0][:spks], true, atol=0.02)


def test_mixture_gains_degenerate_cases():
    s = torch.randn(1, 1000, 2, dtype=torch.float64)
    # a silent mixture: silent sources
    assert torch.equal(
        mixture_gains(s, torch.zeros(1, 1000)), torch.zeros(1, 2)
    )
    # a silent source: gain 1 (it stays silent), the other one solved
    one = torch.stack([s[0, :, 0], torch.zeros(1000)], -1)[None] * 5
    g = mixture_gains(one, s[..., 0])
    torch.testing.assert_close(g, torch.tensor([[0.2, 1.0]]).double())
    # two identical sources (rank deficient): they share the mixture's
    # projection equally (minimum-norm solution), and sum to it
    same = s[..., :1].repeat(1, 1, 2) * 3
    mix = -0.5 * s[..., 0]
    g = mixture_gains(same, mix)
    torch.testing.assert_close(g, torch.full((1, 2), -0.5 / 6).double())
    # nearly identical sources: no huge gains of opposite signs that cancel
    # (the scaled sources' energy stays within 1 / rcond of the mixture's)
    near = s[..., :1] + 1e-3 * s[..., 1:]
    near = torch.cat([near, s[..., :1]], -1)
    mix = s[..., 0] + 0.3 * s[..., 1]
    out = near * mixture_gains(near, mix)[:, None, :]
    assert float(out.square().sum() / mix.square().sum()) < 2.0
    plain = near * torch.from_numpy(
        np.linalg.lstsq(near[0].numpy(), mix[0].numpy(), rcond=None)[0]
    )
    assert float(plain.square().sum() / mix.square().sum()) > 1e4


def _band_split(mix):
    """A stand-in separator at arbitrary scales: a distorted low band x 50
    and the high band x 0.02. ``[batch, n] -> [batch, n, 2]``."""
    kernel = torch.ones(1, 1, 9, dtype=mix.dtype) / 9
    low = torch.nn.functional.conv1d(mix[:, None], kernel, padding=4)[:, 0]
    return torch.stack([50 * torch.tanh(2 * low), 0.02 * (mix - low)], -1)


def test_scaled_sources_sum_to_the_mixture_in_least_squares_sense():
    """The sources satisfy the LS optimality conditions against the mixture
    (one chunk), whatever the model's own scale."""
    m = S4MSeparation(modules={}, hparams={"sample_rate": SR, "num_spks": 2})
    m.separate_batch = _band_split
    mix = mixture_09()
    raw = m.separate_long(mix, scale="none")[0].double()
    assert raw.abs().max() > 5  # the model's own scale is far off
    est = m.separate_long(mix)[0].double()  # default: scale="mixture"
    assert est.abs().max() <= 1.0
    resid = mix.double() - est.sum(-1)
    # d/dg_k ||mix - sum g_k s_k||^2 = 0 at g_k = 1 for each scaled source
    for k in range(2):
        cos = resid @ est[:, k] / (resid.norm() * est[:, k].norm())
        assert abs(float(cos)) < 1e-5
    assert float(resid.norm() / mix.norm()) < 0.5
    # the gains are the least-squares solution on the raw sources
    ref = np.linalg.lstsq(raw.numpy(), mix.double().numpy(), rcond=None)[0]
    torch.testing.assert_close(
        est, raw * torch.from_numpy(ref), atol=1e-5, rtol=1e-4
    )


def test_mixture_at_09_gives_sources_within_full_scale(tmp_path):
    m = loud_model()
    path = tmp_path / "mix.wav"
    sf.write(path, mixture_09().numpy(), SR, subtype="FLOAT")
    assert m.separate_file(str(path), scale="none").abs().max() > 1
    est = m.separate_file(str(path))
    assert 0.01 < float(est.abs().max()) <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutputScaleWarning)
        paths = m.separate_file_to_folder(
            str(path), tmp_path / "out", subtype="PCM_16"
        )
    out = np.stack([sf.read(p, dtype="float32")[0] for p in paths])
    ref = est[0].t().numpy()
    if np.abs(out[0] - ref[0]).max() > 1e-3:  # the model's random
        out = out[::-1]  # speaker order differs between the two runs
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_integer_format_is_rescaled_with_warning_never_clipped(tmp_path):
    m = loud_model()
    path = tmp_path / "mix.wav"
    sf.write(path, mixture_09().numpy(), SR, subtype="FLOAT")
    ref = m.separate_file_to_folder(
        str(path), tmp_path / "float", scale="none", output_sample_rate=SR
    )
    ref = np.stack([sf.read(p, dtype="float64")[0] for p in ref])
    peak = np.abs(ref).max()
    assert peak > 1  # FLOAT keeps the values
    with pytest.warns(OutputScaleWarning, match="mix.wav") as record:
        paths = m.separate_file_to_folder(
            str(path), tmp_path / "pcm", scale="none", subtype="PCM_16"
        )
    assert f"{1 / peak:.3g}" in str(record[0].message)
    out = np.stack([sf.read(p, dtype="float64")[0] for p in paths])
    if np.abs(out[0] - ref[0] / peak).max() > 1e-3:  # the model's random
        out = out[::-1]  # speaker order differs between the two runs
    # one factor for all sources, no sample clipped
    np.testing.assert_allclose(out, ref / peak, atol=1e-4)


# --------------------------------------------------------------------------
# Speaker order across a silent overlap (issue 10 item 9)
# --------------------------------------------------------------------------
def test_silent_overlap_keeps_the_speaker_order():
    """Chunks whose outputs are (nearly) silent on the overlap: the faint
    residue there correlates with the swapped order, so plain correlation
    swaps the speakers for the rest of the file; the order must be kept."""
    chunk, overlap = 1000, 200
    hop = chunk - overlap
    total = hop + chunk
    t = torch.arange(total, dtype=torch.float32) / SR
    s1 = torch.sin(2 * np.pi * 300 * t)
    s2 = torch.sign(torch.sin(2 * np.pi * 130 * t)) * 0.7
    quiet = torch.zeros(total, dtype=torch.bool)
    quiet[hop : hop + overlap] = True  # the overlap of chunks 1 and 2
    g = torch.Generator().manual_seed(0)
    a, b = 1e-6 * torch.randn(2, overlap, generator=g)
    calls = []

    def separate_fn(x):  # [1, n] -> [1, n, 2]; position from the call
        start = hop * len(calls)
        calls.append(start)
        n = x.shape[-1]
        out = torch.stack([s1, s2], -1)[start : start + n].clone()
        out[quiet[start : start + n]] = 0
        if start == 0:  # chunk 1's tail: residue (a, b)
            out[hop:chunk] = torch.stack([a, b], -1)
        else:  # chunk 2's head: residue (b, a)
            out[:overlap] = torch.stack([b, a], -1)
        return out[None]

    sep = OverlapAddSeparator(separate_fn, chunk, overlap)
    x = torch.ones(1, total)
    y = torch.cat([sep.push(x), sep.flush()], dim=1)[0]
    assert len(calls) == 2 and y.shape == (total, 2)
    after = slice(hop + overlap, total)
    torch.testing.assert_close(y[after, 0], s1[after])
    torch.testing.assert_close(y[after, 1], s2[after])
    # with energy on the overlap the correlation still decides
    sep = OverlapAddSeparator(
        lambda x: torch.stack([x, -2 * x], -1)[..., torch.randperm(2)],
        chunk,
        overlap,
    )
    x = torch.randn(1, 3 * chunk)
    y = torch.cat([sep.push(x), sep.flush()], dim=1)[0]
    ratio = y[:, 1] / y[:, 0]
    assert torch.allclose(ratio, ratio[:1].expand_as(ratio), atol=1e-4)


# --------------------------------------------------------------------------
# Truncated files are corrupt (header checks only)
# --------------------------------------------------------------------------
def _truncated(tmp_path, subtype="PCM_16"):
    path = tmp_path / "full.wav"
    sf.write(path, speechlike(1.0)[0].numpy() * 0.5, SR, subtype=subtype)
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    return path, cut


def test_truncated_wav_is_reported_corrupt(model, tmp_path):
    full, cut = _truncated(tmp_path)
    assert sf.info(cut).frames > 0  # soundfile alone does not notice
    assert check_audio_header(full).frames == SR
    with pytest.raises(AudioInputError, match="corrupt") as err:
        check_audio_header(cut)
    assert str(cut) in str(err.value) and "truncated" in str(err.value)
    with pytest.raises(AudioInputError, match="corrupt"):
        check_audio_file(cut)
    with pytest.raises(AudioInputError, match="cut.wav: corrupt"):
        model.separate_file(str(cut))
    out = tmp_path / "out"
    with pytest.raises(AudioInputError, match="corrupt"):
        model.separate_file_to_folder(str(cut), out)
    assert not out.exists()


def _wav_with_chunks(path, samples, extra_before=b"", extra_after=b""):
    """A 16-bit mono WAV built by hand, with optional extra chunks."""
    pcm = (np.asarray(samples) * 20000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, SR, 2 * SR, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += extra_before + b"data" + struct.pack("<I", len(pcm)) + pcm
    body += extra_after
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_header_check_walks_chunks(tmp_path):
    """Odd-sized chunks (word padded) before the data and chunks after it
    are fine; an unknown data size (0xFFFFFFFF, streamed) is accepted."""
    x = speechlike(0.5)[0].numpy()
    odd = b"LIST" + struct.pack("<I", 5) + b"INFOa" + b"\x00"
    _wav_with_chunks(tmp_path / "a.wav", x, odd, b"id3 " + b"\x00" * 4)
    assert check_audio_header(tmp_path / "a.wav", SR, 1).frames == len(x)
    assert check_audio_file(tmp_path / "a.wav")[1] == len(x)
    _wav_with_chunks(tmp_path / "b.wav", x, odd)
    data = (tmp_path / "b.wav").read_bytes()
    (tmp_path / "c.wav").write_bytes(data[:-3])
    with pytest.raises(AudioError, match="c.wav: corrupt"):
        check_audio_header(tmp_path / "c.wav")
    i = data.index(b"data") + 4
    streamed = data[:i] + b"\xff\xff\xff\xff" + data[i + 4 :]
    (tmp_path / "d.wav").write_bytes(streamed)
    check_audio_header(tmp_path / "d.wav")


def test_header_check_reads_headers_only(tmp_path, monkeypatch):
    """Headers only: a 10-minute file is checked without decoding a sample
    (soundfile's sample readers are never called) and with a few bytes read
    by the RIFF walk, whatever the file's size."""
    import builtins

    from speechbrain_s4m import audio

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(SR * 600, "int16"), SR)

    def no_decoding(*args, **kwargs):
        raise AssertionError("samples were decoded")

    for name in ("read", "blocks"):
        monkeypatch.setattr(sf.SoundFile, name, no_decoding)
    monkeypatch.setattr(sf, "read", no_decoding)
    read_bytes = []

    class CountingFile:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            data = self.fh.read(n)
            read_bytes.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def counting_open(*args, **kwargs):
        return CountingFile(builtins.open(*args, **kwargs))

    monkeypatch.setattr(audio, "open", counting_open, raising=False)
    info = check_audio_header(path)
    assert info.frames == SR * 600
    assert read_bytes and 0 < sum(read_bytes) < 1024 < os.path.getsize(path)


# --------------------------------------------------------------------------
# Writing: never over existing files, output folder checks, temporaries
# --------------------------------------------------------------------------
def test_existing_outputs_are_not_replaced(model, tmp_path):
    sf.write(tmp_path / "in.wav", mixture_09().numpy(), SR)
    out = tmp_path / "out"
    paths = model.separate_file_to_folder(str(tmp_path / "in.wav"), out)
    before = [p.read_bytes() for p in paths]
    sf.write(tmp_path / "in.wav", mixture_09(seed=9).numpy(), SR)
    with pytest.raises(FileExistsError) as err:
        model.separate_file_to_folder(str(tmp_path / "in.wav"), out)
    assert all(str(p) in str(err.value) for p in paths)
    assert [p.read_bytes() for p in paths] == before
    model.separate_file_to_folder(str(tmp_path / "in.wav"), out, overwrite=True)
    assert [p.read_bytes() for p in paths] != before
    # the input itself is never an output, even with overwrite=True
    with pytest.raises(ValueError, match="overwrite the input"):
        model.separate_file_to_folder(
            str(paths[0]), out, name="in", overwrite=True
        )


def test_output_folder_checks(model, tmp_path):
    sf.write(tmp_path / "in.wav", mixture_09().numpy(), SR)
    (tmp_path / "file").write_text("x")
    for folder, match in [
        (tmp_path / "file", "is not a folder"),
        (tmp_path / "file" / "sub", "is a file"),
    ]:
        with pytest.raises(OutputFolderError, match=match):
            check_output_folder(folder)
        with pytest.raises(OutputFolderError, match=match):
            model.separate_file_to_folder(str(tmp_path / "in.wav"), folder)
    check_output_folder(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only folders",
)
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="not writable"):
            check_output_folder(ro)
        with pytest.raises(OutputFolderError, match="not writable"):
            check_output_folder(ro / "sub")
    finally:
        ro.chmod(0o700)


def test_stale_temporaries_are_removed(model, tmp_path):
    sf.write(tmp_path / "in.wav", mixture_09().numpy(), SR)
    out = tmp_path / "out"
    out.mkdir()
    stale = [
        out / ".in_s1.999999999.k3j_x9.part.wav",  # dead process
        out / ".in_s2.abc12345.part.wav",  # old name, no process id
        out / ".in_s1.999999998.zz.norm.wav",
    ]
    live = out / ".in_s1.1.abc.part.wav"  # process 1 is running
    other = out / ".other_s1.999999999.k3.part.wav"  # not these outputs
    for p in stale + [live, other]:
        p.write_bytes(b"partial")
    model.separate_file_to_folder(str(tmp_path / "in.wav"), out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([live.name, other.name, "in_s1.wav", "in_s2.wav"])


def test_error_messages_are_whole(exported, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    key = "very_long_missing_key_" * 15
    with open(folder / "hyperparams.yaml", "a") as fh:
        fh.write(f"\nbroken: !ref <{key}>\n")
    with pytest.raises(ModelFolderError) as err:
        S4MSeparation.from_hparams(folder)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_scale_argument_is_checked():
    with pytest.raises(ValueError, match="scale must be one of"):
        OverlapAddSeparator(lambda x: x, 10, 2, scale="peak")
    s = torch.randn(1, 100, 2)
    torch.testing.assert_close(
        scale_to_mixture(s * 4, s.sum(-1)), s, atol=1e-5, rtol=1e-5
    )


def test_gains_per_chunk_undo_a_scale_that_changes_between_chunks():
    """Each chunk's forward pass may come at its own scale (here a random
    gain per call and per source): the per-chunk least-squares gains give
    the same sources as a model with a fixed scale, over the whole file."""
    g = torch.Generator().manual_seed(0)

    def drifting(mix):
        gain = torch.exp(3 * torch.randn(2, generator=g))
        return _band_split(mix) * gain

    mix = mixture_09(3.0)[None]
    sep = OverlapAddSeparator(drifting, 4000, 1000, scale="mixture")
    parts = [sep.push(b) for b in mix.split(3000, dim=-1)] + [sep.flush()]
    out = torch.cat([p for p in parts if p is not None], dim=1)
    sep = OverlapAddSeparator(_band_split, 4000, 1000, scale="mixture")
    ref = torch.cat([sep.push(mix), sep.flush()], dim=1)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)
    assert sep.chunks_done >= 6
    resid = mix[0] - out[0].sum(-1)
    assert float(resid.norm() / mix.norm()) < 0.5


# --------------------------------------------------------------------------
# Inverted outputs (issue 21 item 1): the written sources sum to the mixture
# --------------------------------------------------------------------------
def _inverted_band_split(mix):
    """Exact sources of any mixture (its low band and the rest), returned
    inverted and at arbitrary scales, as SI-SNR training allows.
    ``[batch, n] -> [batch, n, 2]``."""
    kernel = torch.ones(1, 1, 9, dtype=mix.dtype) / 9
    low = torch.nn.functional.conv1d(mix[:, None], kernel, padding=4)[:, 0]
    return torch.stack([-3.0 * low, -0.01 * (mix - low)], -1)


def mixture_snr(mix, sources):
    """SNR (dB) of the mixture against ``mix - sum(sources)``; 0 dB is
    what silent outputs give. ``mix`` ``[time]``, ``sources``
    ``[spks, time]``."""
    resid = mix - sources.sum(0)
    return float(10 * np.log10(np.sum(mix**2) / np.sum(resid**2)))


@pytest.mark.parametrize("sign", ["inverted", "sign_per_call"])
def test_inverted_outputs_sum_to_the_mixture(tmp_path, sign):
    """A model whose outputs are the true sources negated (or negated at
    random per forward pass and source: the sign of each chunk differs):
    the written files sum to the mixture, chunk by chunk, and each source
    keeps one polarity across the chunk boundaries."""
    signs = []
    g = torch.Generator().manual_seed(1)

    def separate(x):
        out = _inverted_band_split(x)
        if sign == "sign_per_call":
            signs.append(torch.randint(0, 2, (2,), generator=g) * 2 - 1)
            out = out * signs[-1]
        return out

    m = S4MSeparation(modules={}, hparams={"sample_rate": SR, "num_spks": 2})
    m.separate_batch = separate
    mix = mixture_09(3.0)
    sf.write(tmp_path / "mix.wav", mix.numpy(), SR, subtype="FLOAT")
    paths = m.separate_file_to_folder(
        str(tmp_path / "mix.wav"),
        tmp_path / "out",
        chunk_seconds=1.0,
        overlap_seconds=0.25,
    )
    written = np.stack([sf.read(p, dtype="float64")[0] for p in paths])
    assert mixture_snr(mix.double().numpy(), written) > 60
    # each source is the true one, of the right sign, on every chunk
    low = -_inverted_band_split(mix.double()[None])[0, :, 0].numpy() / 3
    true = np.stack([low, mix.double().numpy() - low])
    for k in range(2):
        assert mixture_snr(true[k], written[k][None]) > 30, k
    if sign == "sign_per_call":
        flips = torch.stack(signs)
        assert len(flips) >= 4 and (flips[1:] != flips[:-1]).any()


# --------------------------------------------------------------------------
# Publishing outputs (issue 21 item 3): final names claimed without a window
# --------------------------------------------------------------------------
@pytest.mark.parametrize("links", ["hard_links", "no_hard_links"])
def test_publish_claims_names_and_rolls_back(tmp_path, monkeypatch, links):
    """Names are claimed in order; a run that finds its second name taken
    by another writer keeps that file, removes the first name it had
    claimed, and says which file. Without hard links (FAT, some network
    file systems) the same holds through exclusive creation."""
    import errno

    from speechbrain_s4m.inference import outputs

    if links == "no_hard_links":

        def no_link(src, dst):
            raise PermissionError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(outputs.os, "link", no_link)
    finals = [tmp_path / "a_s1.wav", tmp_path / "a_s2.wav"]
    temps = [outputs.temporary_path(f) for f in finals]
    for i, tmp in enumerate(temps):
        tmp.write_bytes(b"ours %d" % i)
    finals[1].write_bytes(b"theirs")
    with pytest.raises(FileExistsError) as err:
        outputs.publish(temps, finals)
    assert str(finals[1]) in str(err.value) and "--overwrite" in str(err.value)
    assert not finals[0].exists() and finals[1].read_bytes() == b"theirs"
    for tmp in temps:  # the caller's to remove (PendingOutputs does)
        tmp.unlink(missing_ok=True)
    # nothing in the way: published, temporaries gone, usual permissions
    finals[1].unlink()
    temps = [outputs.temporary_path(f) for f in finals]
    for i, tmp in enumerate(temps):
        tmp.write_bytes(b"ours %d" % i)
    outputs.publish(temps, finals)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a_s1.wav",
        "a_s2.wav",
    ]
    assert finals[1].read_bytes() == b"ours 1"
    mode = finals[0].stat().st_mode & 0o777
    assert mode == outputs.default_file_mode()
    # overwrite=True replaces
    temps = [outputs.temporary_path(f) for f in finals]
    for tmp in temps:
        tmp.write_bytes(b"new")
    outputs.publish(temps, finals, overwrite=True)
    assert [f.read_bytes() for f in finals] == [b"new", b"new"]
    assert len(list(tmp_path.iterdir())) == 2


def test_audio_readers_ranges_rates_and_headers(tmp_path):
    """Moved from the doctests of speechbrain_s4m.audio."""
    from speechbrain_s4m import audio

    assert audio.is_audio_file("a/b.FLAC") and not audio.is_audio_file("x")
    path = tmp_path / "a.wav"
    sf.write(path, np.linspace(-0.5, 0.5, 800), SR, subtype="PCM_16")
    assert audio.audio_frames(path) == (800, SR)
    assert audio.read_audio(path, SR, start=100, stop=300).shape == (200,)
    assert audio.read_audio(path, 16000, resample=True).shape == (1600,)
    with pytest.raises(audio.AudioFormatError, match="1 channel.s.; 2 exp"):
        check_audio_header(path, channels=2)
    sf.write(path, np.zeros((1000, 2)), SR)
    shapes = [b.shape for b in audio.iter_audio_blocks(path, 400)]
    assert shapes == [(400, 2), (400, 2), (200, 2)]


def test_permutation_matches_sources_on_the_overlap():
    """Moved from the doctest of chunking._permutation."""
    from speechbrain_s4m.inference.chunking import _permutation

    ref = torch.randn(1, 100, 3)
    est = torch.cat([ref, torch.randn(1, 50, 3)], 1)[..., [2, 0, 1]]
    assert _permutation(est, ref).tolist() == [[1, 2, 0]]

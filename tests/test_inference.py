"""Tests of the pretrained interface, export and long-audio separation."""

import io
import itertools
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.lobes.models.dual_path import Decoder, Encoder
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_s4m import audio as s4m_audio
from speechbrain_s4m.audio import AudioInputError
from speechbrain_s4m.config import model_config_path
from speechbrain_s4m.export import (
    export_pretrained,
    find_best_checkpoint,
    results_averages,
)
from speechbrain_s4m.inference import S4MSeparation, loading
from speechbrain_s4m.inference.chunking import (
    OverlapAddSeparator,
    StreamingResampler,
)
from speechbrain_s4m.inference.loading import (
    ModelFolderError,
    ModelNotFoundError,
)

SR = 8000
# A very small S4M (a few thousand parameters) with the real layers.
TINY_S4M = {
    "num_iterations": 2,
    "hidden_channels": 16,
    "out_channels": 16,
    "depth": 2,
    "d_state": 4,
}
VALID_SCORES = [-3.0, -5.0, -4.0]  # meta "si-snr" (negative SI-SNR)
BEST = 1  # index of the min

RECIPE_HEAD = """\
seed: 1234
__set_seed: !apply:torch.manual_seed [!ref <seed>]
dataset: synthmix
data_folder: /data/synthmix
output_folder: results/synthmix/1234
save_folder: !ref <output_folder>/save
N_epochs: 3
batch_size: 1
lr: 0.001
num_spks: 2
sample_rate: 8000
model: !include:{fragment}
    sample_rate: !ref <sample_rate>
    num_spks: !ref <num_spks>
Encoder: !ref <model[Encoder]>
MaskNet: !ref <model[MaskNet]>
Decoder: !ref <model[Decoder]>
modules:
    encoder: !ref <Encoder>
    masknet: !ref <MaskNet>
    decoder: !ref <Decoder>
optimizer: !name:torch.optim.Adam
    lr: !ref <lr>
"""


def make_recipe_folder(root, fragment="s4m_tiny", overrides=None):
    """A recipe output folder laid out like the recipes' (resolved
    hyperparams.yaml with the model fragment included, three checkpoints
    with meta ``si-snr``, test_results.csv). Weights are random."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    text = RECIPE_HEAD.format(fragment=model_config_path(fragment))
    overrides = {"model": dict(TINY_S4M if overrides is None else overrides)}
    # as sb.create_experiment_directory saves it
    resolved = resolve_references(io.StringIO(text), overrides).getvalue()
    (root / "hyperparams.yaml").write_text(resolved)
    hparams = load_hyperpyyaml(resolved)
    modules = torch.nn.ModuleDict(hparams["modules"])
    ckpter = Checkpointer(root / "save", recoverables=hparams["modules"])
    for score in VALID_SCORES:
        with torch.no_grad():
            for p in modules.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ckpter.save_checkpoint(meta={"si-snr": score})
    (root / "test_results.csv").write_text(
        "snt_id,sdr,sdr_i,si-snr,si-snr_i\n"
        "u1,5.5,6.5,4.5,5.5\nu2,7.5,8.5,6.5,7.5\n"
        "avg,6.5,7.5,5.5,6.5\n"
    )
    (root / "train_log.txt").write_text(
        "epoch: 1, lr: 1e-3 - train si-snr: 1\n"
    )
    return root


def speechlike(seconds, rate=SR, seed=0, channels=1):
    """Two modulated harmonic 'voices' mixed (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    out = []
    for c in range(channels):
        f1, f2 = 140 + 20 * c, 230
        v1 = torch.sin(2 * np.pi * f1 * t) * (1 + torch.sin(2 * np.pi * 2 * t))
        v2 = torch.sign(torch.sin(2 * np.pi * f2 * t)) * (
            1 + torch.cos(2 * np.pi * 3.1 * t)
        )
        noise = 0.05 * torch.randn(t.shape, generator=g)
        out.append(0.2 * v1 + 0.1 * v2 + noise)
    return torch.stack(out)  # [channels, time]


def si_snr(est, ref):
    est, ref = est - est.mean(), ref - ref.mean()
    proj = (est * ref).sum() / (ref * ref).sum() * ref
    return float(10 * torch.log10((proj**2).sum() / ((est - proj) ** 2).sum()))


def best_perm_si_snr(est, ref):
    """Min over sources of SI-SNR under the best permutation, [T, S]."""
    spks = est.shape[-1]
    return max(
        min(si_snr(est[:, p[i]], ref[:, i]) for i in range(spks))
        for p in itertools.permutations(range(spks))
    )


@pytest.fixture(scope="module")
def recipe_folder(tmp_path_factory):
    torch.manual_seed(0)
    return make_recipe_folder(tmp_path_factory.mktemp("recipe"))


@pytest.fixture(scope="module")
def exported(recipe_folder, tmp_path_factory):
    target = tmp_path_factory.mktemp("exp") / "s4m_tiny_synth"
    return export_pretrained(recipe_folder, target)


@pytest.fixture(scope="module")
def model(exported):
    return S4MSeparation.from_hparams(exported, run_opts={"device": "cpu"})


def test_inference_imports_no_training_module():
    """The pretrained interface runs the separator from ``lobes``: loading
    it pulls in neither the Brain nor the recipe runner."""
    code = (
        "import sys, speechbrain_s4m.inference; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith('speechbrain_s4m')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "speechbrain_s4m.lobes.separator" in out
    for training in ("separation", "recipe", "training_curve"):
        assert f"'speechbrain_s4m.{training}'" not in out


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------
def test_export_writes_best_checkpoint_and_card(recipe_folder, exported):
    names = sorted(p.name for p in exported.iterdir())
    assert names == [
        "README.md",
        "decoder.ckpt",
        "encoder.ckpt",
        "hyperparams.yaml",
        "masknet.ckpt",
    ]
    # No temporary folder left next to the target
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]
    best, meta = find_best_checkpoint(recipe_folder / "save")
    assert meta["si-snr"] == min(VALID_SCORES)
    for name in ("encoder", "masknet", "decoder"):
        ref = torch.load(best / f"{name}.ckpt", weights_only=True)
        got = torch.load(exported / f"{name}.ckpt", weights_only=True)
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    text = (exported / "hyperparams.yaml").read_text()
    assert "pretrainer: !new:speechbrain.utils.parameter_transfer" in text
    hp = load_hyperpyyaml(text)
    assert (hp["sample_rate"], hp["num_spks"]) == (SR, 2)
    assert set(hp["modules"]) == {"encoder", "masknet", "decoder"}
    assert set(hp["pretrainer"].loadables) == {"encoder", "masknet", "decoder"}
    card = (exported / "README.md").read_text()
    assert "S4MMaskNet" in card and "5.00 dB" in card  # valid SI-SNR
    assert "Variant: the authors' S4M (their framing and joint decoder)" in card
    assert "| 5.50 | 6.50 | 6.50 | 7.50 | 2 |" in card  # test avg row
    n_params = sum(p.numel() for p in hp["modules"]["masknet"].parameters())
    assert f"masknet {n_params:,}" in card


def test_results_averages(recipe_folder, tmp_path):
    res = results_averages(recipe_folder / "test_results.csv")
    assert res == {
        "sdr": 6.5,
        "sdr_i": 7.5,
        "si-snr": 5.5,
        "si-snr_i": 6.5,
        "n": 2,
    }
    assert results_averages(tmp_path / "none.csv") is None


def test_export_matches_brain(recipe_folder, model):
    """Exported + loaded model == the training Brain on the best ckpt."""
    from speechbrain_s4m.brain import Separation

    hp = load_hyperpyyaml((recipe_folder / "hyperparams.yaml").read_text())
    ckpter = Checkpointer(recipe_folder / "save", recoverables=hp["modules"])
    ckpter.recover_if_possible(min_key="si-snr")
    brain = Separation(
        modules=hp["modules"],
        hparams={"num_spks": 2, "sample_rate": SR},
        run_opts={"device": "cpu"},
    )
    brain.modules.eval()
    mix = speechlike(1.0, seed=3).repeat(2, 1)
    mix[1] = torch.roll(mix[1], 1000)
    with torch.no_grad():
        ref = brain.separate(mix)
    est = model.separate_batch(mix)
    assert est.shape == ref.shape == (2, SR, 2)
    torch.testing.assert_close(est, ref, atol=1e-5, rtol=1e-4)
    assert ref.abs().max() > 1e-3


def test_export_loads_in_speechbrain(exported, tmp_path):
    """A model with SpeechBrain's per-source decoder (the causal S4M) loads
    in SpeechBrain's SepformerSeparation with the same output; the card of
    the authors' joint-decoder model does not claim it."""
    from speechbrain.inference.separation import SepformerSeparation

    torch.manual_seed(0)
    rec = make_recipe_folder(tmp_path / "rec", "s4m_tiny_causal")
    causal = export_pretrained(rec, tmp_path / "causal")
    assert "SepformerSeparation" in (causal / "README.md").read_text()
    assert "SepformerSeparation" not in (exported / "README.md").read_text()
    sb_model = SepformerSeparation.from_hparams(
        source=str(causal),
        savedir=str(tmp_path / "sb"),
        run_opts={"device": "cpu"},
    )
    model = S4MSeparation.from_hparams(causal, run_opts={"device": "cpu"})
    mix = speechlike(0.8, seed=4)
    with torch.no_grad():
        ref = sb_model.separate_batch(mix)
    torch.testing.assert_close(model.separate_batch(mix), ref)


def test_export_errors(recipe_folder, exported, tmp_path):
    with pytest.raises(FileExistsError, match="already exists"):
        export_pretrained(recipe_folder, exported)
    with pytest.raises(FileNotFoundError, match="no hyperparams.yaml"):
        export_pretrained(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not found"):
        export_pretrained(tmp_path / "nope", tmp_path / "out")
    # a checkpoint that does not fit the definition: nothing is written
    broken = tmp_path / "broken"
    shutil.copytree(recipe_folder, broken)
    best, _ = find_best_checkpoint(broken / "save")
    state = torch.load(best / "masknet.ckpt", weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, best / "masknet.ckpt")
    with pytest.raises(ModelFolderError, match="unexpected keys"):
        export_pretrained(broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    # no checkpoint carries the key
    with pytest.raises(ModelFolderError, match="meta key 'valid_loss'"):
        export_pretrained(recipe_folder, tmp_path / "o", min_key="valid_loss")
    # overwrite replaces
    target = export_pretrained(recipe_folder, exported, overwrite=True)
    assert (target / "masknet.ckpt").is_file()


def test_export_other_masknet(tmp_path):
    """The export is generic: a SepFormer-style recipe (shared sub-blocks
    referenced twice) exports and loads too."""
    frag = tmp_path / "sepformer_tiny.yaml"
    frag.write_text(
        """sample_rate: 8000
num_spks: 2
Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: 16
    out_channels: 16
block: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: 1
    d_model: 16
    nhead: 2
    d_ffn: 32
MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: 16
    out_channels: 16
    num_layers: 1
    K: 25
    intra_model: !ref <block>
    inter_model: !ref <block>
Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: 16
    out_channels: 1
    kernel_size: 16
    stride: 8
    bias: False
"""
    )
    rec = make_recipe_folder(tmp_path / "rec", fragment=frag, overrides={})
    out = export_pretrained(rec, tmp_path / "exp")
    m = S4MSeparation.from_hparams(out, run_opts={"device": "cpu"})
    assert m.separate_batch(torch.randn(1, 1200)).shape == (1, 1200, 2)
    assert "Dual_Path_Model" in (out / "README.md").read_text()


# --------------------------------------------------------------------------
# Loading: clear errors (no hub call for local paths, strict keys)
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source", ["./no/such/model", "no/such/model", "nosuchmodel", "/nope/x"]
)
def test_mistyped_local_path_is_file_not_found(source, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be contacted")

    monkeypatch.setattr(loading, "fetch", no_hub)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        S4MSeparation.from_hparams(source)


@pytest.mark.parametrize(
    "folder",
    [
        "owner/name",
        "owner",
        "a/b/c",
        "a/b/c/d",
        "./owner/name",
        "/abs/path",
        "~/models",
        "owner/name/",
    ],
)
def test_one_rule_for_hub_models_and_hub_files(folder):
    """A file is fetched exactly when its folder would be a hub model."""
    path = f"{folder.rstrip('/')}/mix.wav"
    assert loading.looks_like_hub_file(path) == (
        not loading.looks_like_local_path(folder.rstrip("/"))
    )


def test_audio_path_with_several_folders_is_local(model, monkeypatch):
    """``a/b/c/mix.wav`` was sent to the hub as repository ``a/b/c`` (two or
    more slashes counted as hub); under the model-source rule ``a/b/c`` is a
    local path, so a missing file is reported as such, without the hub."""

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub must not be contacted")

    monkeypatch.setattr(loading, "fetch", no_hub)
    assert not loading.looks_like_hub_file("no/such/dir/mix.wav")
    with pytest.raises(AudioInputError, match="no such file"):
        model.separate_file("no/such/dir/mix.wav")
    # owner/name/file still means a file of hub repository owner/name
    calls = []

    def fake_fetch(filename, source, savedir, **kwargs):
        calls.append((source, filename))
        raise FileNotFoundError("not on the hub")

    monkeypatch.setattr(loading, "fetch", fake_fetch)
    with pytest.raises(AudioInputError, match="fetching it failed"):
        model.separate_file("owner/name/mix.wav")
    assert calls == [("owner/name", "mix.wav")]


def test_one_audio_error_family(tmp_path):
    assert issubclass(s4m_audio.AudioInputError, s4m_audio.AudioError)
    assert issubclass(s4m_audio.AudioFormatError, s4m_audio.AudioError)
    assert issubclass(s4m_audio.AudioError, ValueError)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.zeros((800, 2), "float32"), SR)
    with pytest.raises(s4m_audio.AudioError, match="2 channels"):
        s4m_audio.read_audio(path, SR)
    with pytest.raises(s4m_audio.AudioError, match="silent"):
        s4m_audio.check_audio_file(path)


def test_model_folder_errors(exported, tmp_path):
    bad = tmp_path / "m"
    shutil.copytree(exported, bad)
    (bad / "decoder.ckpt").unlink()
    with pytest.raises(ModelNotFoundError, match="decoder.ckpt"):
        S4MSeparation.from_hparams(bad)
    (bad / "decoder.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFolderError, match="corrupt or unreadable"):
        S4MSeparation.from_hparams(bad)
    shutil.copy(exported / "decoder.ckpt", bad / "decoder.ckpt")
    # architecture mismatch: keys/shapes differ -> error, not a warning
    with pytest.raises(ModelFolderError, match="masknet.ckpt"):
        S4MSeparation.from_hparams(
            bad, overrides={"MaskNet": {"num_iterations": 2, "depth": 3}}
        )
    with pytest.raises(ModelFolderError, match="shape mismatch|keys"):
        S4MSeparation.from_hparams(
            bad, overrides={"MaskNet": {"hidden_channels": 8}}
        )
    (bad / "hyperparams.yaml").unlink()
    with pytest.raises(ModelNotFoundError, match="no hyperparams.yaml"):
        S4MSeparation.from_hparams(bad)


def test_hub_savedir_is_not_reused_for_another_source(
    exported, recipe_folder, tmp_path, monkeypatch
):
    """Hub sources (mocked): a savedir holding another model is refused."""
    other = export_pretrained(
        recipe_folder,
        tmp_path / "other",
        checkpoint=sorted((recipe_folder / "save").glob("CKPT+*"))[0],
    )
    repos = {"owner/a": exported, "owner/b": other}
    calls = []

    def fake_fetch(filename, source, savedir, fetch_config, **kwargs):
        calls.append((source, filename))
        dst = pathlib.Path(savedir) / filename
        if dst.exists() and not fetch_config.overwrite:
            return dst
        shutil.copy(repos[source] / filename, dst)
        return dst

    monkeypatch.setattr(loading, "fetch", fake_fetch)
    savedir = tmp_path / "savedir"
    a = S4MSeparation.from_hparams("owner/a", savedir=savedir)
    with pytest.raises(ModelFolderError, match="another source"):
        S4MSeparation.from_hparams("owner/b", savedir=savedir)
    b = S4MSeparation.from_hparams("owner/b", savedir=savedir, overwrite=True)
    mix = speechlike(0.5)
    assert not torch.allclose(a.separate_batch(mix), b.separate_batch(mix))
    ref = S4MSeparation.from_hparams(other)
    torch.testing.assert_close(b.separate_batch(mix), ref.separate_batch(mix))
    # the same source again reuses the savedir
    S4MSeparation.from_hparams("owner/b", savedir=savedir)
    with pytest.raises(ModelNotFoundError, match="fetching"):
        S4MSeparation.from_hparams("owner/c", savedir=tmp_path / "s2")


# --------------------------------------------------------------------------
# Files: rates, channels, caching
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rate,channels", [(8000, 1), (16000, 1), (44100, 2), (16000, 2)]
)
def test_separate_file_rates_and_channels(model, tmp_path, rate, channels):
    audio = speechlike(1.0, rate=rate, channels=channels)  # [C, T]
    path = tmp_path / "mix.wav"
    sf.write(path, audio.t().numpy(), rate, subtype="FLOAT")
    est = model.separate_file(str(path), scale="none")
    # reference: downmix at the file's rate, resample, separate
    mono = audio.mean(dim=0, keepdim=True)
    ref_in = torchaudio.functional.resample(mono, rate, SR)
    ref = model.separate_batch(ref_in)
    assert est.shape == ref.shape == (1, SR, 2)
    torch.testing.assert_close(est, ref, atol=1e-4, rtol=1e-3)
    # output at the input's rate
    est_in = model.separate_file(
        str(path), output_sample_rate="input", scale="none"
    )
    assert est_in.shape == (1, audio.shape[1], 2)
    back = torchaudio.functional.resample(ref.transpose(1, 2), SR, rate)
    torch.testing.assert_close(
        est_in, back.transpose(1, 2), atol=1e-4, rtol=1e-3
    )
    # SpeechBrain-like peak normalisation (opt-in)
    normed = model.separate_file(str(path), normalize=True)
    torch.testing.assert_close(normed.abs().amax(dim=1), torch.ones(1, 2))


def test_separate_file_does_not_reuse_cached_basename(model, tmp_path):
    for i in (1, 2):
        (tmp_path / f"d{i}").mkdir()
        audio = speechlike(0.6, seed=i)[0] * i
        sf.write(tmp_path / f"d{i}" / "mix.wav", audio.numpy(), SR)
    savedir = tmp_path / "savedir"
    one = model.separate_file(
        str(tmp_path / "d1/mix.wav"), savedir=savedir, scale="none"
    )
    two = model.separate_file(
        str(tmp_path / "d2/mix.wav"), savedir=savedir, scale="none"
    )
    ref2 = model.separate_batch(
        torch.from_numpy(sf.read(tmp_path / "d2/mix.wav", dtype="float32")[0])
    )
    torch.testing.assert_close(two, ref2)
    assert not torch.allclose(one, two)


def test_separate_file_to_folder(model, tmp_path):
    audio = speechlike(1.0, rate=16000, channels=2)
    sf.write(tmp_path / "in.flac", audio.t().numpy(), 16000)
    out = tmp_path / "out"
    paths = model.separate_file_to_folder(str(tmp_path / "in.flac"), out)
    assert [p.name for p in paths] == ["in_s1.wav", "in_s2.wav"]
    assert sorted(p.name for p in out.iterdir()) == ["in_s1.wav", "in_s2.wav"]
    est = model.separate_file(
        str(tmp_path / "in.flac"), output_sample_rate=16000
    )
    for i, p in enumerate(paths):
        data, rate = sf.read(p, dtype="float32")
        assert rate == 16000 and data.shape == (16000,)
        np.testing.assert_allclose(data, est[0, :, i].numpy(), atol=1e-5)
    paths = model.separate_file_to_folder(
        str(tmp_path / "in.flac"),
        out,
        output_sample_rate="model",
        normalize=True,
        subtype="PCM_16",
        name="x",
    )
    info = sf.info(paths[1])
    assert (info.samplerate, info.subtype) == (SR, "PCM_16")
    assert np.abs(sf.read(paths[1])[0]).max() > 0.99
    assert sorted(p.name for p in out.iterdir()) == [
        "in_s1.wav",
        "in_s2.wav",
        "x_s1.wav",
        "x_s2.wav",
    ]


# --------------------------------------------------------------------------
# Long audio: chunking, speaker order, streaming
# --------------------------------------------------------------------------
class LocalMaskNet(torch.nn.Module):
    """Masks from a short convolution (local receptive field), with the
    speaker order shuffled at random on every call: chunked separation must
    still give the unchunked result (up to one global permutation)."""

    def __init__(self, channels=16, num_spks=2):
        super().__init__()
        self.num_spks = num_spks
        self.conv = torch.nn.Conv1d(channels, channels * num_spks, 3, padding=1)
        self.gen = torch.Generator().manual_seed(0)
        self.calls = 0

    def forward(self, w):  # [batch, N, frames] -> [spks, batch, N, frames]
        b, n, frames = w.shape
        masks = torch.sigmoid(self.conv(w)).view(b, self.num_spks, n, frames)
        self.calls += 1
        perm = torch.randperm(self.num_spks, generator=self.gen)
        return masks.transpose(0, 1)[perm]


def local_model(num_spks=2):
    torch.manual_seed(1)
    return S4MSeparation(
        modules={
            "encoder": Encoder(kernel_size=16, out_channels=16),
            "masknet": LocalMaskNet(16, num_spks),
            "decoder": Decoder(16, 1, kernel_size=16, stride=8, bias=False),
        },
        hparams={"sample_rate": SR, "num_spks": num_spks},
        run_opts={"device": "cpu"},
    )


@pytest.mark.parametrize("num_spks", [2, 3])
def test_chunked_matches_unchunked_local_model(num_spks):
    m = local_model(num_spks)
    mix = speechlike(5.0, seed=5)
    full = m.separate_batch(mix)[0]
    calls = m.mods.masknet.calls
    chunked = m.separate_long(
        mix, chunk_seconds=1.0, overlap_seconds=0.25, scale="none"
    )[0]
    assert m.mods.masknet.calls - calls >= 6  # really chunked
    assert chunked.shape == full.shape
    assert best_perm_si_snr(chunked, full) > 30


def test_chunked_matches_unchunked_s4m(model):
    """The real (global-context) S4M: chunks of 3 s with 1 s overlap stay
    close to the one-pass result on a 6 s file."""
    mix = speechlike(6.0, seed=6)
    full = model.separate_batch(mix)[0]
    chunked = model.separate_long(mix, chunk_seconds=3.0, overlap_seconds=1.0)
    assert best_perm_si_snr(chunked[0], full) > 20
    # one chunk = one pass, exactly
    one = model.separate_long(
        mix, chunk_seconds=10.0, overlap_seconds=1.0, scale="none"
    )
    torch.testing.assert_close(one, full[None])


def test_overlap_add_streaming_block_sizes():
    """The stream's block sizes do not change the result."""
    fn = local_model().separate_batch
    x = speechlike(3.0, seed=7)
    outs = {}
    for block in (1, 333, 8000, 24000):
        sep = OverlapAddSeparator(fn, chunk=4000, overlap=1000)
        parts = [sep.push(b) for b in x.split(block, dim=-1)] + [sep.flush()]
        outs[block] = torch.cat([p for p in parts if p is not None], dim=1)
    # the random masknet permutations differ between runs: compare per perm
    ref = outs[24000][0]
    for y in outs.values():
        assert y.shape == (1, 24000, 2)
        assert best_perm_si_snr(y[0], ref) > 60
    with pytest.raises(ValueError, match="overlap"):
        OverlapAddSeparator(fn, chunk=100, overlap=100)


def test_streaming_file_is_bounded(model, tmp_path, monkeypatch):
    """A long file is read in blocks and fed to the model in chunks: the
    model never sees more than one chunk, reads never exceed one block, and
    the written result matches separate_long on the whole signal."""
    rate = 16000
    audio = speechlike(12.0, rate=rate, seed=8)
    sf.write(tmp_path / "long.wav", audio[0].numpy(), rate, subtype="FLOAT")
    monkeypatch.setattr(s4m_audio, "READ_BLOCK_SECONDS", 0.5)
    seen = {"model": 0, "read": 0}
    real_separate = model.separate_batch
    real_blocks = s4m_audio.iter_audio_blocks

    def spy_separate(mix):
        seen["model"] = max(seen["model"], mix.shape[-1])
        return real_separate(mix)

    def spy_blocks(path, block_frames):
        for block in real_blocks(path, block_frames):
            seen["read"] = max(seen["read"], block.shape[0])
            yield block

    monkeypatch.setattr(model, "separate_batch", spy_separate)
    monkeypatch.setattr(s4m_audio, "iter_audio_blocks", spy_blocks)
    paths = model.separate_file_to_folder(
        str(tmp_path / "long.wav"),
        tmp_path / "out",
        output_sample_rate="model",
        chunk_seconds=2.0,
        overlap_seconds=0.5,
    )
    assert seen["model"] == 2 * SR
    assert seen["read"] == rate // 2
    monkeypatch.undo()
    ref_in = torchaudio.functional.resample(audio, rate, SR)
    ref = model.separate_long(ref_in, chunk_seconds=2.0, overlap_seconds=0.5)
    for i, p in enumerate(paths):
        data = torch.from_numpy(sf.read(p, dtype="float32")[0])
        assert data.shape == (12 * SR,)
        assert si_snr(data, ref[0, :, i]) > 40


def test_streaming_resampler_matches_whole():
    for orig, new in [(44100, 8000), (8000, 16000), (16000, 8000)]:
        x = torch.randn(2, orig * 2 + 7)
        rs = StreamingResampler(orig, new)
        parts = [rs.push(b) for b in x.split(997, dim=-1)] + [rs.flush()]
        y = torch.cat(parts, dim=-1)
        ref = torchaudio.functional.resample(x, orig, new)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------
# Bad input: clear errors naming the file, never a partial output
# --------------------------------------------------------------------------
def _write_bad(kind, folder):
    path = folder / f"{kind}.wav"
    ok = speechlike(1.0)[0].numpy()
    if kind == "missing":
        return path
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "no_samples":
        sf.write(path, np.zeros(0, "float32"), SR)
    elif kind == "too_short":
        sf.write(path, ok[:200], SR)
    elif kind == "silent":
        sf.write(path, np.zeros(SR, "float32"), SR)
    elif kind in ("nan", "inf"):
        bad = ok.copy()
        bad[4000] = np.nan if kind == "nan" else np.inf
        sf.write(path, bad, SR, subtype="FLOAT")
    elif kind == "raw":
        path = folder / "raw.raw"
        ok.tofile(path)
    elif kind == "folder":
        path.mkdir()
    return path


BAD_INPUTS = {
    "missing": "no such file",
    "corrupt": "unreadable or corrupt",
    "empty_file": "unreadable or corrupt",
    "no_samples": "empty",
    "too_short": "too short",
    "silent": "silent",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "raw": "unknown sample rate",
    "folder": "is a folder",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_files(model, tmp_path, kind):
    path = _write_bad(kind, tmp_path)
    with pytest.raises(AudioInputError, match=BAD_INPUTS[kind]) as err:
        model.separate_file(str(path))
    assert str(path) in str(err.value)
    out = tmp_path / "out"
    with pytest.raises(AudioInputError, match=BAD_INPUTS[kind]):
        model.separate_file_to_folder(str(path), out)
    assert not out.exists()  # created only when something is written


def test_bad_input_tensors(model):
    x = speechlike(1.0)
    with pytest.raises(AudioInputError, match="silent"):
        model.separate_long(torch.zeros(1, SR))
    with pytest.raises(AudioInputError, match="NaN"):
        model.separate_long(torch.where(x > 0.3, torch.nan, x))
    with pytest.raises(AudioInputError, match="too short"):
        model.separate_long(x[:, :100])
    with pytest.raises(AudioInputError, match="unknown sample rate"):
        model.separate_long(x, sample_rate=0)
    with pytest.raises(ValueError, match="overlap"):
        model.separate_long(x, chunk_seconds=1.0, overlap_seconds=1.0)


def test_failure_mid_stream_leaves_no_partial_output(
    model, tmp_path, monkeypatch
):
    sf.write(tmp_path / "long.wav", speechlike(5.0)[0].numpy(), SR)
    calls = {"n": 0}
    real = model.separate_batch

    def failing(mix):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory (simulated)")
        return real(mix)

    monkeypatch.setattr(model, "separate_batch", failing)
    out = tmp_path / "out"
    out.mkdir()
    (out / "long_s1.wav").write_bytes(b"previous result")
    with pytest.raises(RuntimeError, match="simulated"):
        model.separate_file_to_folder(
            str(tmp_path / "long.wav"),
            out,
            chunk_seconds=1.0,
            overlap_seconds=0.2,
            overwrite=True,
        )
    # the temporary files are gone and the earlier output is untouched
    assert sorted(p.name for p in out.iterdir()) == ["long_s1.wav"]
    assert (out / "long_s1.wav").read_bytes() == b"previous result"


# --------------------------------------------------------------------------
# A real (tiny) recipe run: export reproduces the Brain and its test scores
# --------------------------------------------------------------------------
def test_export_of_real_recipe_run(tiny_recipe_output, tmp_path):
    import csv

    from speechbrain_s4m.brain import Separation
    from speechbrain_s4m.config import load_hparams
    from speechbrain_s4m.metrics import separation_scores

    out = export_pretrained(tiny_recipe_output, tmp_path / "exported")
    model = S4MSeparation.from_hparams(out, run_opts={"device": "cpu"})

    # the Brain, rebuilt from the recipe's own hyperparams + best checkpoint
    hp = load_hparams(str(tiny_recipe_output / "hyperparams.yaml"))
    ckpter = Checkpointer(
        tiny_recipe_output / "save", recoverables=hp["modules"]
    )
    assert ckpter.recover_if_possible(min_key="si-snr") is not None
    brain = Separation(
        modules=hp["modules"], hparams=hp, run_opts={"device": "cpu"}
    )
    brain.modules.eval()

    # every test utterance: same output as the Brain, same scores as the
    # recipe's test_results.csv
    with open(tiny_recipe_output / "test_results.csv") as fin:
        rows = {r["snt_id"]: r for r in csv.DictReader(fin)}
    with open(hp["test_data"]) as fin:
        test_rows = list(csv.DictReader(fin))
    assert len(test_rows) == len(rows) - 1 > 0
    for row in test_rows:
        mix, _ = sf.read(row["mix_wav"], dtype="float32")
        mix = torch.from_numpy(mix)[None]
        srcs = [sf.read(row[f"s{i}_wav"], dtype="float32")[0] for i in (1, 2)]
        targets = torch.from_numpy(np.stack(srcs, -1))[None]
        with torch.no_grad():
            ref = brain.separate(mix)
        est = model.separate_batch(mix)
        torch.testing.assert_close(est, ref, atol=1e-5, rtol=1e-4)
        scores = separation_scores(est, targets, mix)
        for key in ("si-snr", "si-snr_i"):
            assert float(scores[key][0]) == pytest.approx(
                float(rows[row["ID"]][key]), abs=1e-3
            )
    card = (out / "README.md").read_text()
    assert f"{float(rows['avg']['si-snr']):.2f}" in card

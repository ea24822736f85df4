"""The model fragments in speechbrain_s4m/hparams/models build and run."""

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_s4m.config import (
    UnknownOverrideError,
    list_model_configs,
    load_hparams,
    load_model_config,
    model_config_path,
)
from speechbrain_s4m.lobes import S4MMaskNet
from speechbrain_s4m.lobes.separator import Separator

FRAGMENTS = ["s4m_tiny", "s4m", "sepformer", "convtasnet"]


def _params(hp):
    return sum(
        p.numel()
        for key in ("Encoder", "MaskNet", "Decoder")
        for p in hp[key].parameters()
        if p.requires_grad
    )


def _separate(hp, mix, num_spks):
    """SpeechBrain's recipe forward with one decoder call per source:
    [batch, time] -> [batch, time', spks] (decoders of one source only)."""
    mix_w = hp["Encoder"](mix)
    est_mask = hp["MaskNet"](mix_w)
    assert est_mask.shape == (num_spks, *mix_w.shape)
    sep_h = torch.stack([mix_w] * num_spks) * est_mask
    return torch.stack(
        [
            hp["Decoder"](sep_h[i]).reshape(mix.shape[0], -1)
            for i in range(num_spks)
        ],
        dim=-1,
    )


def test_all_fragments_listed():
    assert set(FRAGMENTS) <= set(list_model_configs())
    with pytest.raises(ValueError, match="unknown model config"):
        model_config_path("no_such_model")


def _build(name, num_spks):
    """Build a fragment with hyperpyyaml and overrides (as the recipes do)."""
    torch.manual_seed(0)
    with open(model_config_path(name), encoding="utf-8") as fin:
        return load_hyperpyyaml(
            fin, {"sample_rate": 8000, "num_spks": num_spks}
        )


@pytest.fixture(scope="module")
def built():
    """Each full-size fragment, built once per test module (2 speakers)."""
    return {name: _build(name, 2) for name in FRAGMENTS}


def _check_forward(hp, num_spks):
    for key in ("kernel_size", "kernel_stride", "N_encoder_out"):
        assert isinstance(hp[key], int)
    mix = torch.randn(1, 803)
    sep = Separator(hp["Encoder"], hp["MaskNet"], hp["Decoder"], num_spks)
    with torch.no_grad():
        est = sep(mix)
    assert est.shape == (1, 803, num_spks)
    assert torch.isfinite(est).all()


@pytest.mark.parametrize("name", FRAGMENTS)
def test_fragment_builds_and_runs(built, name):
    """Full-size configs from hyperpyyaml with overrides, forward on 0.1 s."""
    _check_forward(built[name], 2)


@pytest.mark.parametrize("name", ["s4m_tiny"])
def test_fragment_three_speakers(name):
    _check_forward(_build(name, 3), 3)


@pytest.mark.parametrize(
    "name, target",
    [("s4m_tiny", 1.8e6), ("s4m", 3.6e6), ("sepformer", 25.68e6)],
)
def test_parameter_counts(built, name, target):
    """Published sizes at 8 kHz (encoder + masknet + decoder), +-5%."""
    n = _params(built[name])
    assert abs(n - target) <= 0.05 * target, n


@pytest.mark.parametrize(
    "name, exact",
    [("s4m_tiny", 1_824_359), ("s4m", 3_607_399), ("sepformer", 25_679_361)],
)
def test_exact_parameter_counts(built, name, exact):
    """The counts the README states, to the parameter (a wrong pyramid
    kernel or a stray layer would pass the +-5% check above)."""
    assert _params(built[name]) == exact


@pytest.mark.parametrize(
    "sample_rate, kernel, stride, channels",
    [(8000, 32, 8, 17), (16000, 64, 16, 33)],
)
def test_s4m_encoder_is_4ms(sample_rate, kernel, stride, channels):
    """K = 4 ms of samples, stride K // 4, E = K // 2 + 1."""
    hp = load_model_config(
        "s4m_tiny", sample_rate=sample_rate, overrides={"num_iterations": 1}
    )
    assert (hp["kernel_size"], hp["kernel_stride"]) == (kernel, stride)
    assert hp["N_encoder_out"] == channels
    enc, dec = hp["Encoder"], hp["Decoder"]
    assert enc.conv1d.kernel_size == (kernel,) and enc.stride == stride
    assert dec.kernel_size == (kernel,) and dec.stride == (stride,)
    masknet = hp["MaskNet"]
    assert isinstance(masknet, S4MMaskNet)
    assert masknet.in_channels == channels


@pytest.mark.parametrize("name", ["s4m_tiny_causal", "sepformer"])
def test_separator_matches_per_source_reference(name):
    """With SpeechBrain's decoder, the Separator (sources folded into the
    decoder's batch) equals the recipes' forward with one decoder call per
    source. (The authors' joint decoder: tests/test_authors.py.)"""
    overrides = {
        "s4m_tiny_causal": {"num_iterations": 1, "hidden_channels": 16}
    }
    hp = load_model_config(name, overrides=overrides.get(name))
    sep = Separator.from_modules(
        {
            "encoder": hp["Encoder"],
            "masknet": hp["MaskNet"],
            "decoder": hp["Decoder"],
        },
        num_spks=2,
    )
    mix = torch.randn(2, 803)
    with torch.no_grad():
        est, ref = sep(mix), _separate(hp, mix, 2)
    assert est.shape == (2, 803, 2)
    n = min(803, ref.shape[1])
    torch.testing.assert_close(est[:, :n], ref[:, :n], rtol=1e-5, atol=1e-6)
    assert (est[:, n:] == 0).all()  # padded to the mixture's length


def test_one_import_path_and_no_import_circle():
    """The Brain lives in ``brain``: no ``separation`` shim; the package's
    modules import each other without a circle (module-level imports)."""
    import ast
    import importlib
    import pathlib

    import speechbrain_s4m

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("speechbrain_s4m.separation")
    root = pathlib.Path(speechbrain_s4m.__file__).parent
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [
                    f"{node.module}.{a.name}" for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # A module's own packages are imported before it anyway
            deps |= {
                t
                for t in targets
                if t in names and not name.startswith(t + ".") and t != name
            }
        graph[name] = deps

    state = {}

    def visit(name, stack):
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", " -> ".join(stack + [dep])
            if dep not in state:
                visit(dep, stack + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_s4m_tiny_matches_published_structure(built):
    """C=128, D=512, S=4, R=16, N=16, NPLR, quirk on; S4M only widens D."""
    for hp, d in ((built["s4m_tiny"], 512), (built["s4m"], 736)):
        net = hp["MaskNet"]
        assert net.bottleneck.out_channels == 128
        assert net.block.proj.out_channels == d
        assert net.block.depth == 4 and net.num_iterations == 16
        assert net.block.fusion_index_quirk
        assert str(3) not in net.block.fuse  # unused layer not built


def test_misspelt_nested_override_names_the_closest_key(tmp_path):
    yaml_file = tmp_path / "hparams.yaml"
    yaml_file.write_text("lr: 0.1\noptim: {betas: [0.9, 0.99]}\n")
    with pytest.raises(UnknownOverrideError) as err:
        load_hparams(yaml_file, {"optim": {"beta": 1}})
    assert str(err.value).split(" of ")[0] == (
        "Override 'optim.beta' does not match any key"
    )
    assert str(err.value).endswith("did you mean 'betas'?")

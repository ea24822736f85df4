"""The baselines users know: SpeechBrain's Conv-TasNet and DPRNN recipe
models in the WSJ0Mix, LibriMix, WHAM and SynthMix recipes.

Each hparams file loads as shipped and builds SpeechBrain's recipe model
(exact parameter counts, non-causal Conv-TasNet with a causal override),
differs from its sibling only in the model and the training values, and runs
end to end (tiny model, tiny generated dataset) through the same train.py.
"""

import pytest
import ruamel.yaml
import torch
from conftest import (
    TINY_MODEL,
    hparams_path,
    run_recipe_inprocess,
    synthmix_command,
)
from test_recipes import check_finished_run

from speechbrain_s4m.config import load_hparams, load_model_config

BASELINES = ["convtasnet", "dprnn"]
RECIPES = ["WSJ0Mix", "LibriMix", "WHAM"]
DATASET = {"WSJ0Mix": "wsj0mix", "LibriMix": "librimix", "WHAM": "wham"}

#: Model overrides that make the baselines tiny and fast.
TINY_BASELINE = {
    "convtasnet": ("{N_encoder_out: 16, MaskNet: {B: 8, H: 16, X: 2, R: 1}}"),
    "dprnn": "{N_encoder_out: 16, out_channels: 16, num_layers: 1, K: 20}",
}
#: Parameters of SpeechBrain's recipe models (encoder + masknet + decoder,
#: 2 speakers), counted here from the layer sizes in ``expected_params``.
CONV_TASNET = {"N": 256, "L": 16, "B": 256, "H": 512, "P": 3, "X": 6}
CONV_TASNET.update({"R": 4, "C": 2})
DPRNN = {"N": 256, "L": 16, "layers": 6, "C": 2}


@pytest.fixture
def tiny_baselines(monkeypatch):
    """Registers the tiny baseline overrides for ``recipe_args``."""
    for name, override in TINY_BASELINE.items():
        monkeypatch.setitem(TINY_MODEL, name, override)


def expected_params(model):
    """The parameter count written out from the architecture."""
    if model == "convtasnet":
        N, L, B, H, P, X, R, C = CONV_TASNET.values()
        encoder = N * L  # conv, no bias
        decoder = N * L
        block = (
            B * H  # 1x1 conv in
            + 1  # PReLU
            + 2 * H  # gLN
            + H * P  # depthwise conv
            + 1  # PReLU
            + 2 * H  # gLN
            + H * B  # pointwise conv out
        )
        masknet = 2 * N + N * B + R * X * block + B * C * N
        return encoder + masknet + decoder
    N, L, layers, C = DPRNN.values()
    lstm = 2 * (4 * N * (N + N) + 8 * N)  # bidirectional, biases ih + hh
    path = lstm + (2 * N * N + N) + 2 * N  # LSTM, linear 2N -> N, norm
    masknet = (
        2 * N  # input norm
        + N * N  # 1x1 conv in (no bias)
        + layers * 2 * path  # intra + inter paths
        + 1  # PReLU
        + N * (C * N)
        + C * N  # 2-D conv to the speakers
        + 2 * (N * N + N)  # output tanh and gate convs
        + N * N  # end 1x1 conv (no bias)
    )
    return N * L + masknet + N * L


def count(modules):
    """Distinct parameters of the encoder, masknet and decoder."""
    return sum(
        p.numel()
        for key in ("encoder", "masknet", "decoder")
        for p in modules[key].parameters()
    )


@pytest.mark.parametrize(
    "recipe,model",
    [(r, m) for r in RECIPES for m in BASELINES] + [("SynthMix", "convtasnet")],
)
def test_baseline_hparams_load_as_shipped(recipe, model, tmp_path):
    path = hparams_path(recipe, model)
    overrides = {"output_folder": str(tmp_path / "out")}
    if recipe != "SynthMix":
        overrides["data_folder"] = str(tmp_path / "data")
    hp = load_hparams(path, overrides)
    assert count(hp["modules"]) == expected_params(model)
    assert hp["experiment_name"] == model
    assert hp["precision"] == "fp32"  # as SpeechBrain's recipes
    assert type(hp["optimizer"](torch.nn.Linear(1, 1).parameters())) is (
        torch.optim.Adam
    )
    if model == "convtasnet":
        # non-causal: no right-trimming (Chomp1d) after the dilated convs
        names = [type(m).__name__ for m in hp["MaskNet"].modules()]
        assert "GlobalLayerNorm" in names and "Chomp1d" not in names
        causal = load_hparams(path, {**overrides, "model": {"causal": True}})
        names = [type(m).__name__ for m in causal["MaskNet"].modules()]
        assert names.count("Chomp1d") == 24  # one per temporal block


def test_dprnn_fragment_forward():
    hp = load_model_config("dprnn", num_spks=3)
    mix = torch.randn(2, 800)
    with torch.no_grad():
        w = hp["Encoder"](mix)
        masks = hp["MaskNet"](w)
    assert w.shape == (2, 256, 99)
    assert masks.shape == (3, 2, 256, 99)
    assert (masks >= 0).all()  # ReLU masks


def test_convtasnet_causal_override_is_causal():
    """With per-frame norms, the causal variant's masks up to frame t do not
    depend on later frames; the recipe's non-causal model's do."""
    small = {"MaskNet": {"B": 8, "H": 16, "X": 3, "R": 1, "norm_type": "cLN"}}
    torch.manual_seed(0)
    w = torch.rand(1, 256, 60)
    later = w.clone()
    later[..., 40:] = torch.rand(1, 256, 20)
    for causal in (True, False):
        torch.manual_seed(0)
        hp = load_model_config(
            "convtasnet", overrides={**small, "causal": causal}
        )
        with torch.no_grad():
            a, b = hp["MaskNet"](w), hp["MaskNet"](later)
        past_same = torch.allclose(a[..., :40], b[..., :40], atol=1e-6)
        assert past_same == causal


def _top_level(path):
    """``{key: value}`` of a yaml file's top level (values as text)."""
    with open(path, encoding="utf-8") as f:
        tree = ruamel.yaml.YAML().load(f)
    return {k: repr(v) + str(getattr(v, "tag", "")) for k, v in tree.items()}


@pytest.mark.parametrize("model", BASELINES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_baseline_differs_from_sepformer_only_in_model(recipe, model):
    """Same data, experiment and schedule settings as the recipe's
    sepformer.yaml: only the model, its name and the precision differ."""
    ours = _top_level(hparams_path(recipe, model))
    theirs = _top_level(hparams_path(recipe, "sepformer"))
    assert list(ours) == list(theirs)
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ == {"experiment_name", "precision", "model"}


def test_synthmix_convtasnet_at_the_main_job_settings():
    """Same data and run as SynthMix s4m_tiny.yaml; SpeechBrain's optimiser."""
    ours = _top_level(hparams_path("SynthMix", "convtasnet"))
    main_job = _top_level(hparams_path("SynthMix", "s4m_tiny"))
    optimiser = {"lr", "ssm_lr", "weight_decay", "optimizer", "lr_scheduler"}
    assert set(ours) == set(main_job) - {"ssm_lr", "weight_decay"}
    differ = {k for k in ours if ours[k] != main_job[k]}
    assert differ <= optimiser | {"experiment_name", "model"}
    hp = load_hparams(hparams_path("SynthMix", "convtasnet"))
    assert hp["lr"] == 0.00015 and hp["N_epochs"] == 10
    assert hp["training_signal_len"] == hp["sample_rate"] // 2


@pytest.mark.parametrize("model", BASELINES)
@pytest.mark.parametrize("recipe", RECIPES, ids=str.lower)
def test_baseline_recipe_end_to_end(
    recipe, model, tiny_datasets, tiny_baselines, tmp_path
):
    out = tmp_path / "out"
    brain = run_recipe_inprocess(
        recipe, model, tiny_datasets[DATASET[recipe]], out
    )
    check_finished_run(out)
    assert len(brain.optimizer.param_groups) == 1  # plain Adam
    assert brain.hparams.use_speedperturb  # as SpeechBrain's recipes


def test_synthmix_convtasnet_end_to_end(tiny_baselines, tmp_path):
    from speechbrain_s4m.recipe import run_recipe

    args, write_synthmix = synthmix_command("convtasnet", tmp_path)
    run_recipe(args, before_prepare=write_synthmix)
    check_finished_run(tmp_path / "out")

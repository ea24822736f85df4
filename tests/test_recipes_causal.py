"""The causal S4M-tiny recipe hparams (``s4m_tiny_causal.yaml``) train and
test end to end in every recipe, on tiny generated data."""

import pytest
from conftest import (
    hparams_path,
    recipe_args,
    train_script,
)


def _causal(args, recipe):
    """The tiny S4M-tiny command line with the causal hparams file."""
    assert args[0] == str(hparams_path(recipe, "s4m_tiny"))
    return [str(hparams_path(recipe, "s4m_tiny_causal")), *args[1:]]


def _check(brain, out):
    masknet = brain.modules["masknet"]
    masknet = getattr(masknet, "module", masknet)
    assert masknet.causal and masknet.latency_frames == 0
    assert (out / "test_results.csv").is_file()


@pytest.mark.parametrize("recipe", ["WSJ0Mix", "LibriMix", "WHAM"])
def test_causal_recipe_end_to_end(recipe, tiny_datasets, tmp_path):
    from speechbrain_s4m.recipe import run_recipe

    dataset = {"WSJ0Mix": "wsj0mix", "LibriMix": "librimix", "WHAM": "wham"}
    out = tmp_path / "out"
    args = recipe_args(recipe, "s4m_tiny", tiny_datasets[dataset[recipe]], out)
    _check(run_recipe(_causal(args, recipe)), out)


def test_causal_synthmix_recipe(tmp_path):
    from speechbrain_s4m.recipe import run_recipe

    script = train_script("SynthMix")
    args = recipe_args(
        "SynthMix",
        "s4m_tiny",
        tmp_path / "data",
        tmp_path / "out",
        "--synth_sizes",
        "{tr: 2, cv: 2, tt: 2}",
        "--synth_duration",
        "[0.5, 0.6]",
        "--training_signal_len",
        "2000",
    )
    ns = {"__name__": "synthmix_train"}
    exec(compile(script.read_text(), str(script), "exec"), ns)
    brain = run_recipe(
        _causal(args, "SynthMix"), before_prepare=ns["write_synthmix"]
    )
    _check(brain, tmp_path / "out")

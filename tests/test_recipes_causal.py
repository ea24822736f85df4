"""The causal S4M-tiny recipe hparams (``s4m_tiny_causal.yaml``) train and
test end to end in every recipe, on tiny generated data."""

import pytest
from conftest import (
    hparams_path,
    recipe_args,
    synthmix_command,
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

    args, write_synthmix = synthmix_command("s4m_tiny", tmp_path)
    brain = run_recipe(_causal(args, "SynthMix"), before_prepare=write_synthmix)
    _check(brain, tmp_path / "out")

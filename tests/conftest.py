"""Shared pytest fixtures and helpers: tiny datasets written in the official
layouts, and tiny (fast) runs of the recipes.

Fixtures
--------
tiny_datasets
    ``{"wsj0mix": path, "librimix": path, "wham": path}``: 3 / 2 / 2
    (train / valid / test) synthetic mixtures of 0.5 s each, in the layouts
    of WSJ0-2mix (``.../2speakers``), Libri2Mix and WHAM!.
tiny_recipe_output
    The output folder of a finished tiny run of the WSJ0-2mix recipe with
    ``s4m_tiny.yaml`` (1 epoch): ``hyperparams.yaml``, ``save/CKPT+*/``,
    ``test_results.csv``, ``train_log.txt``. The model it trained is
    ``load_hparams(out / "hyperparams.yaml")`` + the checkpoint files
    ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt``; it separates as
    :class:`speechbrain_s4m.lobes.separator.Separator`.
"""

import os
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

#: Model overrides (``--model "{...}"``) that make each model tiny and fast.
_S4M_TINY = (
    "{num_iterations: 2, hidden_channels: 16, out_channels: 8, depth: 2,"
    " d_state: 4}"
)
_SEPFORMER_TINY = (
    "{N_encoder_out: 16, out_channels: 16, MaskNet: {K: 20},"
    " SBtfintra: {num_layers: 1, d_ffn: 32, nhead: 2},"
    " SBtfinter: {num_layers: 1, d_ffn: 32, nhead: 2}}"
)
TINY_MODEL = {
    "s4m_tiny": _S4M_TINY,
    "s4m": _S4M_TINY,
    "sepformer": _SEPFORMER_TINY,
}


def hparams_path(recipe, model):
    """Path of ``recipes/<recipe>/separation/hparams/<model>.yaml``."""
    return RECIPES / recipe / "separation" / "hparams" / f"{model}.yaml"


def train_script(recipe):
    """Path of ``recipes/<recipe>/separation/train.py``."""
    return RECIPES / recipe / "separation" / "train.py"


def recipe_args(recipe, model, data_folder, output_folder, *extra, drop=()):
    """Command line of a tiny, fast (CPU, fp32, 1 epoch) run of a recipe;
    ``extra`` options (``"--key", "value"`` pairs or flags) replace the
    defaults; the default options named in ``drop`` (e.g.
    ``"--ckpt_interval_minutes"``) are left out (the hparams decide)."""
    options = {
        "--data_folder": str(data_folder),
        "--output_folder": str(output_folder),
        "--model": TINY_MODEL[model],
        "--N_epochs": "1",
        "--num_workers": "0",
        "--n_audio_to_save": "1",
        "--device": "cpu",
        "--precision": "fp32",
        "--ckpt_interval_minutes": "0",
        "--noprogressbar": None,
    }
    for key in drop:
        options.pop(key)
    extra = [str(e) for e in extra]
    i = 0
    while i < len(extra):
        has_value = i + 1 < len(extra) and not extra[i + 1].startswith("--")
        options[extra[i]] = extra[i + 1] if has_value else None
        i += 2 if has_value else 1
    args = [str(hparams_path(recipe, model))]
    for key, value in options.items():
        args += [key] if value is None else [key, value]
    return args


def run_recipe_inprocess(
    recipe, model, data_folder, output_folder, *extra, drop=(), **kwargs
):
    """Runs a tiny recipe in this process; returns the Brain. ``kwargs``
    go to :func:`speechbrain_s4m.recipe.run_recipe` (``brain_class``)."""
    from speechbrain_s4m.recipe import run_recipe

    args = recipe_args(
        recipe, model, data_folder, output_folder, *extra, drop=drop
    )
    return run_recipe(args, **kwargs)


def synthmix_command(model, tmp_path):
    """The tiny SynthMix command line (data in ``tmp_path/data``, output in
    ``tmp_path/out``) and the recipe's own data writer, ``write_synthmix``
    from its train.py (for ``run_recipe(args, before_prepare=...)``)."""
    script = train_script("SynthMix")
    args = recipe_args(
        "SynthMix",
        model,
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
    return args, ns["write_synthmix"]


def write_tiny_datasets(root):
    """Writes the tiny WSJ0-2mix, Libri2Mix and WHAM! folders under root."""
    from speechbrain_s4m.data.synthetic import (
        write_librimix,
        write_wham,
        write_wsj0mix,
    )

    root = Path(root)
    dur = (0.5, 0.5)
    wsj = {"tr": 3, "cv": 2, "tt": 2}
    libri = {"train-360": 3, "dev": 2, "test": 2}
    return {
        "wsj0mix": write_wsj0mix(
            root / "wsj0-mix" / "2speakers", sizes=wsj, duration=dur
        ),
        "librimix": write_librimix(
            root / "Libri2Mix", sizes=libri, duration=dur
        ),
        "wham": write_wham(root / "wham_mix", sizes=wsj, duration=dur),
    }


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    """Tiny datasets in the official layouts (see the module docstring)."""
    return write_tiny_datasets(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="session")
def tiny_recipe_output(tiny_datasets, tmp_path_factory):
    """Output folder of a finished tiny WSJ0-2mix ``s4m_tiny`` run."""
    out = tmp_path_factory.mktemp("tiny_recipe") / "s4m_tiny"
    run_recipe_inprocess("WSJ0Mix", "s4m_tiny", tiny_datasets["wsj0mix"], out)
    return out


# ----------------------------------------------------------------------
# Helpers loaded by recipe subprocesses (``--loss !name:conftest...`` with
# this folder on PYTHONPATH)
# ----------------------------------------------------------------------
_TRAIN_CALLS = 0


def counting_loss(estimate, target, lengths=None):
    """``pit_si_snr_loss`` that records its training calls.

    Each call on a training batch (``estimate.requires_grad``) appends a
    line to ``$S4M_TEST_COUNT_FILE``; call number ``$S4M_TEST_KILL_AT``
    kills the process with SIGKILL (an abrupt crash, nothing cleaned up);
    ``$S4M_TEST_SLEEP_S`` seconds of sleep before each training call leave
    a test time to send a signal in the middle of a batch.
    """
    import time

    from speechbrain_s4m.losses import pit_si_snr_loss

    global _TRAIN_CALLS
    if estimate.requires_grad:
        time.sleep(float(os.environ.get("S4M_TEST_SLEEP_S", "0")))
        _TRAIN_CALLS += 1
        count_file = os.environ.get("S4M_TEST_COUNT_FILE")
        if count_file:
            with open(count_file, "a", encoding="utf-8") as f:
                f.write(f"{_TRAIN_CALLS}\n")
        if _TRAIN_CALLS == int(os.environ.get("S4M_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
    return pit_si_snr_loss(estimate, target, lengths)


def param_state(module):
    """Float64 CPU copies of a module's state tensors, for comparisons."""
    return {
        name: value.detach().double().cpu().clone()
        for name, value in module.state_dict().items()
        if torch.is_tensor(value)
    }

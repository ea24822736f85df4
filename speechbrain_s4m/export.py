"""Export a recipe output folder as a pretrained model folder.

:func:`export_pretrained` writes the best checkpoint of a recipe run as
``hyperparams.yaml`` (the recipe's model nodes, tags kept), the module
checkpoints and a ``README.md`` model card.
"""

import datetime
import io
import os
import pathlib
import shutil
import tempfile

import numpy as np
import torch
import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from speechbrain.utils.checkpoints import METAFNAME, Checkpointer

from speechbrain_s4m.checkpoints import check_checkpoint_files
from speechbrain_s4m.config import count_parameters
from speechbrain_s4m.inference import S4MSeparation
from speechbrain_s4m.inference.loading import (
    MODULE_KEYS,
    ModelFolderError,
    ModelNotFoundError,
)
from speechbrain_s4m.results import RESULTS_FILE, read_test_results

#: What to do when a file of the checkpoint to export does not read.
EXPORT_ADVICE = (
    "export another checkpoint (--checkpoint <recipe>/save/CKPT+...), or "
    "retrain (delete that checkpoint folder first)"
)
# Keys of the pretrained file whose nodes come from the recipe.
MODEL_KEYS = {"encoder": "Encoder", "masknet": "MaskNet", "decoder": "Decoder"}
# Recipe keys quoted in the model card when present.
TRAINING_KEYS = """dataset data_folder train_data N_epochs batch_size lr
training_signal_len limit_training_signal_len dynamic_mixing use_speedperturb
use_wavedrop seed""".split()

HPARAMS_HEADER = """\
# ############################################################################
# Pretrained speech separation model exported by speechbrain-s4m (s4m-export)
# from: {recipe}
# checkpoint: {ckpt} (validation SI-SNR: {valid})
#
# Load with speechbrain_s4m.inference.S4MSeparation.from_hparams(source=<this
# folder>) (SpeechBrain's SepformerSeparation.from_hparams works for models
# with SpeechBrain's per-source decoder).
# The pretrainer has no `paths`: each loadable is read from <source>/<name>.ckpt
# (the folder itself, or the hub repository it is uploaded to), like
# SpeechBrain's sepformer-* hub models.
# ############################################################################

"""

MODULES_TEXT = """
modules:
  encoder: !ref <Encoder>
  masknet: !ref <MaskNet>
  decoder: !ref <Decoder>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
    encoder: !ref <Encoder>
    masknet: !ref <MaskNet>
    decoder: !ref <Decoder>
"""


def find_best_checkpoint(save_folder, min_key="si-snr"):
    """``(folder, meta)`` of the checkpoint in ``save_folder`` with the
    smallest meta ``min_key``, as SpeechBrain's ``Checkpointer`` finds it."""
    save_folder = pathlib.Path(save_folder)
    ckpts = []
    if save_folder.is_dir():  # the Checkpointer would create it
        checkpointer = Checkpointer(save_folder)
        ckpts = checkpointer.list_checkpoints()
    if not ckpts:
        raise ModelNotFoundError(
            f"{save_folder}: no checkpoints (CKPT+*/{METAFNAME}) found"
        )
    if not any(c.meta.get(min_key) is not None for c in ckpts):
        raise ModelFolderError(
            f"{save_folder}: no checkpoint has the meta key '{min_key}' "
            f"(found keys: {sorted({k for c in ckpts for k in c.meta})})"
        )
    best = checkpointer.find_checkpoint(min_key=min_key)
    return pathlib.Path(best.path), dict(best.meta)


def results_averages(path):
    """The averages of a recipe's ``test_results.csv`` ``path`` (metric ->
    mean where defined, and ``n`` utterances); None if there is no file."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    ids, columns = read_test_results(path)
    out = {
        key: float(np.nanmean(values))
        for key, values in columns.items()
        if not np.isnan(values).all()
    }
    out["n"] = len(ids)
    return out


def extract_model_yaml(recipe_hparams, recipe_file="hyperparams.yaml"):
    """The pretrained ``hyperparams.yaml`` text (without header) from the
    round-trip loaded ``recipe_hparams`` (named ``recipe_file``): rate,
    speakers, ``Encoder``, ``MaskNet``, ``Decoder``, ``modules``,
    ``pretrainer``."""
    out = CommentedMap()
    for key in ("sample_rate", "num_spks"):
        if key not in recipe_hparams:
            raise ModelFolderError(f"{recipe_file}: missing key '{key}'")
        out[key] = recipe_hparams[key]
    modules = recipe_hparams.get("modules") or {}
    for mod, key in MODEL_KEYS.items():
        node = recipe_hparams.get(key)
        if node is None:
            node = modules.get(mod)
        if node is None:
            raise ModelFolderError(
                f"{recipe_file}: no '{key}' (nor modules.{mod}) definition"
            )
        out[key] = node
    yaml = YAML()
    yaml.width = 4096
    buf = io.StringIO()
    yaml.dump(out, buf)
    return buf.getvalue() + MODULES_TEXT


def _describe(node):
    """``ClassName(arg=value, ...)`` for a yaml node (scalars only)."""
    tag = getattr(getattr(node, "tag", None), "value", None) or ""
    name = tag.split(":", 1)[-1] if tag else type(node).__name__
    args = []
    if hasattr(node, "items"):
        for key, value in node.items():
            if isinstance(value, (int, float, str, bool)) and len(args) < 12:
                args.append(f"{key}={value}")
    return f"`{name}({', '.join(args)})`"


def _variant(encoder, decoder):
    """The model's framing and decoder, in words (the authors' S4M?)."""
    framing = getattr(encoder, "framing", None)
    joint = getattr(decoder, "all_sources", False) and getattr(
        decoder, "joint", False
    )
    if framing is None:
        return f"{type(encoder).__name__} / {type(decoder).__name__}"
    if framing == "authors" and joint:
        return "the authors' S4M (their framing and joint decoder)"
    decoding = "joint decoder" if joint else "each source decoded alone"
    return f"framing `{framing}`, {decoding} (not the authors' S4M)"


def _valid_text(meta, min_key):
    """The validation SI-SNR of a checkpoint's meta, as text."""
    if meta.get(min_key) is None:
        return f"unknown (no meta key `{min_key}`)"
    value = float(meta[min_key])
    if min_key == "si-snr":  # the recipes log the negative SI-SNR
        return f"{-value:.2f} dB (meta `si-snr` = {value:.4f}, best = min)"
    return f"meta `{min_key}` = {value:.4f} (best = min)"


#: The ``README.md`` model card of an exported folder.
MODEL_CARD = """\
# Speech separation model (speechbrain-s4m)

Exported on {date} from the recipe output `{recipe}`, checkpoint `{ckpt}`.

## Architecture

- Sample rate: {rate} Hz; sources: {spks}
- Encoder: {Encoder}
- MaskNet: {MaskNet}
- Decoder: {Decoder}
- Variant: {variant}
- Parameters: {total:,} (encoder {enc:,}, masknet {mask:,}, decoder {dec:,})

## Training

{training}- Validation SI-SNR of the exported checkpoint: {valid}

## Test results

{test}

## Usage

```python
from speechbrain_s4m.inference import S4MSeparation

model = S4MSeparation.from_hparams(source="path/to/this/folder")
est = model.separate_file("mixture.wav")  # [1, time, sources]
```

Command line: `s4m-separate mixture.wav --model path/to/this/folder \
--output-folder separated/`.
{sepformer}"""
# SepformerSeparation decodes each source alone: not a joint decoder
SEPFORMER_NOTE = """
The folder also loads with SpeechBrain's \
`speechbrain.inference.separation.SepformerSeparation.from_hparams` \
(with `speechbrain_s4m` installed).
"""


def write_model_card(
    path, recipe_hparams, model, ckpt, meta, test, recipe_folder, min_key
):
    """Writes the ``README.md`` model card of an exported folder."""
    enc, mask, dec = (model.mods[k] for k in MODULE_KEYS)
    training = "".join(
        f"- `{key}`: {recipe_hparams[key]}\n"
        for key in TRAINING_KEYS
        if key in recipe_hparams and not hasattr(recipe_hparams[key], "items")
    )
    counter = ckpt / "counter.ckpt"
    epoch = counter.read_text().strip() if counter.is_file() else ""
    if epoch.isdigit():
        training += f"- Epoch of the exported checkpoint: {int(epoch)}\n"
    if test:
        head = [k for k in ("si-snr", "si-snr_i", "sdr", "sdr_i") if k in test]
        test = (
            f"| {' | '.join(head)} | utterances |\n"
            + "|"
            + "---|" * (len(head) + 1)
            + f"\n| {' | '.join(f'{test[k]:.2f}' for k in head)} | "
            f"{test['n']} |\n\n"
            "(dB, average row of the recipe's `test_results.csv`.)"
        )
    else:
        test = "No `test_results.csv` with an `avg` row was found."
    text = MODEL_CARD.format(
        date=datetime.date.today().isoformat(),
        recipe=recipe_folder,
        ckpt=ckpt.name,
        rate=model.sample_rate,
        spks=model.num_spks,
        **{k: _describe(recipe_hparams.get(k)) for k in MODEL_KEYS.values()},
        variant=_variant(enc, dec),
        total=sum(count_parameters(m) for m in (enc, mask, dec)),
        enc=count_parameters(enc),
        mask=count_parameters(mask),
        dec=count_parameters(dec),
        training=training,
        valid=_valid_text(meta, min_key),
        test=test,
        sepformer="" if getattr(dec, "all_sources", False) else SEPFORMER_NOTE,
    )
    path.write_text(text, encoding="utf-8")


def export_pretrained(
    recipe_output_folder,
    target_folder,
    checkpoint=None,
    min_key="si-snr",
    overwrite=False,
):
    """Exports the best checkpoint of a recipe run as a pretrained folder.

    The folder is written next to the target under a temporary name,
    loaded back strictly with ``S4MSeparation`` as a check, and only then
    renamed: a failed export leaves nothing behind.

    Arguments
    ---------
    recipe_output_folder : str or pathlib.Path
        The recipe's output folder (``hyperparams.yaml``, ``save/``...).
    target_folder : str or pathlib.Path
        The folder to create.
    checkpoint : str or pathlib.Path, optional
        A specific ``CKPT+*`` folder instead of the best one.
    min_key : str
        Meta key whose minimum marks the best checkpoint.
    overwrite : bool
        Replace an existing ``target_folder``.

    Returns
    -------
    pathlib.Path
        ``target_folder``.
    """
    recipe = pathlib.Path(recipe_output_folder).expanduser()
    target = pathlib.Path(target_folder).expanduser()
    if not recipe.is_dir():
        raise ModelNotFoundError(f"{recipe}: recipe output folder not found")
    hp_file = recipe / "hyperparams.yaml"
    if not hp_file.is_file():
        raise ModelNotFoundError(
            f"{recipe}: no hyperparams.yaml (not a recipe output folder)"
        )
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target}: already exists (use --overwrite to replace it)"
        )
    try:  # round trip: tags kept
        with open(hp_file, encoding="utf-8") as fin:
            recipe_hparams = YAML().load(fin)
    except Exception as err:
        raise ModelFolderError(f"{hp_file}: cannot parse ({err})") from err

    if checkpoint is not None:
        ckpt = pathlib.Path(checkpoint).expanduser()
        if not (ckpt / METAFNAME).is_file():
            raise ModelNotFoundError(f"{ckpt}: not a checkpoint folder")
        with open(ckpt / METAFNAME, encoding="utf-8") as fin:
            meta = pyyaml.safe_load(fin) or {}
    else:
        save = recipe / "save"
        if not save.is_dir():
            save = pathlib.Path(str(recipe_hparams.get("save_folder", save)))
        ckpt, meta = find_best_checkpoint(save, min_key)
    for name in MODULE_KEYS:
        if not (ckpt / f"{name}.ckpt").is_file():
            raise ModelNotFoundError(f"{ckpt}: no {name}.ckpt")
    # torch's own message for a truncated file does not name it
    check_checkpoint_files(ckpt, MODULE_KEYS, advice=EXPORT_ADVICE)

    model_yaml = extract_model_yaml(recipe_hparams, str(hp_file))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)
    )
    try:
        header = HPARAMS_HEADER.format(
            recipe=recipe.resolve(),
            ckpt=ckpt.name,
            valid=_valid_text(meta, min_key),
        )
        (tmp / "hyperparams.yaml").write_text(
            header + model_yaml, encoding="utf-8"
        )
        for name in MODULE_KEYS:
            state = torch.load(
                ckpt / f"{name}.ckpt", map_location="cpu", weights_only=True
            )
            torch.save(state, tmp / f"{name}.ckpt")
        model = S4MSeparation.from_hparams(  # strict load: a check
            source=tmp, run_opts={"device": "cpu"}
        )
        write_model_card(
            tmp / "README.md",
            recipe_hparams,
            model,
            ckpt,
            meta,
            results_averages(recipe / RESULTS_FILE),
            recipe.resolve(),
            min_key,
        )
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

"""Export a recipe output folder as a pretrained model folder.

A recipe run leaves ``<output_folder>/hyperparams.yaml`` (resolved by
SpeechBrain), ``save/CKPT+*/`` checkpoints with the negative validation
SI-SNR as meta key ``si-snr``, and ``test_results.csv``. ``export_pretrained``
turns the best checkpoint into a folder that ``S4MSeparation`` loads offline
(and SpeechBrain's own ``SepformerSeparation`` too, for models that decode
each source alone with SpeechBrain's decoder: the causal S4M, SepFormer,
Conv-TasNet; it cannot run the authors' joint decoder)::

    target/
      hyperparams.yaml   sample_rate, num_spks, Encoder, MaskNet, Decoder,
                         modules, pretrainer (loadables encoder/masknet/decoder)
      encoder.ckpt  masknet.ckpt  decoder.ckpt   (plain state dicts)
      README.md          model card

The model definition is copied node by node from the recipe's resolved
``hyperparams.yaml`` (ruamel round trip, tags kept), so any masknet works.

Authors
 * speechbrain-s4m contributors 2026
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
TRAINING_KEYS = (
    "dataset",
    "data_folder",
    "train_data",
    "N_epochs",
    "batch_size",
    "lr",
    "training_signal_len",
    "limit_training_signal_len",
    "dynamic_mixing",
    "use_speedperturb",
    "use_wavedrop",
    "seed",
)

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


def _read_meta(ckpt):
    """The meta data (``CKPT.yaml``) of a checkpoint folder, as a dict."""
    with open(ckpt / METAFNAME, encoding="utf-8") as fin:
        return pyyaml.safe_load(fin) or {}


def find_best_checkpoint(save_folder, min_key="si-snr"):
    """The checkpoint with the smallest ``min_key`` meta value, as
    SpeechBrain's ``Checkpointer`` finds it.

    The recipes log the negative validation SI-SNR as ``si-snr``, so the
    smallest value is the best model (as ``Checkpointer(min_keys=...)``).

    Arguments
    ---------
    save_folder : str or pathlib.Path
        A SpeechBrain checkpointer folder.
    min_key : str
        Meta key to minimise.

    Returns
    -------
    pathlib.Path
        The checkpoint folder.
    dict
        Its meta data.
    """
    save_folder = pathlib.Path(save_folder)
    ckpts = []
    if save_folder.is_dir():  # the Checkpointer would create it
        ckpts = Checkpointer(save_folder).list_checkpoints()
    if not ckpts:
        raise ModelNotFoundError(
            f"{save_folder}: no checkpoints (CKPT+*/{METAFNAME}) found"
        )
    if not any(c.meta.get(min_key) is not None for c in ckpts):
        raise ModelFolderError(
            f"{save_folder}: no checkpoint has the meta key '{min_key}' "
            f"(found keys: {sorted({k for c in ckpts for k in c.meta})})"
        )
    best = Checkpointer(save_folder).find_checkpoint(min_key=min_key)
    return pathlib.Path(best.path), dict(best.meta)


def results_averages(path):
    """The averages of a recipe's ``test_results.csv`` (read by
    :func:`speechbrain_s4m.results.read_test_results`), for the model card.

    Arguments
    ---------
    path : str or pathlib.Path
        The csv.

    Returns
    -------
    dict or None
        Metric name -> mean over the utterances where it is defined, and
        ``n`` (number of test utterances); None if the file does not exist.
    """
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


def _load_recipe_yaml(path):
    """Round-trip loads the recipe's resolved yaml (tags kept)."""
    yaml = YAML()
    try:
        with open(path, encoding="utf-8") as fin:
            return yaml.load(fin)
    except Exception as err:
        raise ModelFolderError(f"{path}: cannot parse ({err})") from err


def extract_model_yaml(recipe_hparams, recipe_file="hyperparams.yaml"):
    """Extracts the model definition from a recipe's resolved hparams.

    Arguments
    ---------
    recipe_hparams : ruamel.yaml.comments.CommentedMap
        The round-trip loaded recipe ``hyperparams.yaml``.
    recipe_file : str
        Its name, for the messages.

    Returns
    -------
    str
        YAML text with ``sample_rate``, ``num_spks``, ``Encoder``,
        ``MaskNet``, ``Decoder`` (nodes inlined; shared sub-nodes kept as
        anchors/aliases), ``modules`` and ``pretrainer``.
    """
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
    """Which framing and decoder the model has, in words (the model card
    names the S4M variant: the authors' or speechbrain-s4m 0.1's)."""
    framing = getattr(encoder, "framing", None)
    joint = getattr(decoder, "all_sources", False) and getattr(
        decoder, "joint", False
    )
    if framing is None:
        return f"{type(encoder).__name__} / {type(decoder).__name__}"
    decoding = "joint decoder" if joint else "each source decoded alone"
    if framing == "authors" and joint:
        return "the authors' S4M (their framing and joint decoder)"
    return f"framing `{framing}`, {decoding} (not the authors' S4M)"


def _valid_text(meta, min_key):
    """The validation SI-SNR of a checkpoint's meta, as text."""
    if meta.get(min_key) is None:
        return f"unknown (no meta key `{min_key}`)"
    value = float(meta[min_key])
    if min_key == "si-snr":  # the recipes log the negative SI-SNR
        return f"{-value:.2f} dB (meta `si-snr` = {value:.4f}, best = min)"
    return f"meta `{min_key}` = {value:.4f} (best = min)"


def _read_epoch(ckpt):
    counter = ckpt / "counter.ckpt"
    if counter.is_file():
        text = counter.read_text().strip()
        if text.isdigit():
            return int(text)
    return None


def write_model_card(
    path, recipe_hparams, model, ckpt, meta, test, recipe_folder, min_key
):
    """Writes the ``README.md`` model card of an exported folder."""
    enc, mask, dec = (model.mods[k] for k in MODULE_KEYS)
    total = sum(count_parameters(m) for m in (enc, mask, dec))
    lines = [
        "# Speech separation model (speechbrain-s4m)",
        "",
        f"Exported on {datetime.date.today().isoformat()} from the recipe "
        f"output `{recipe_folder}`, checkpoint `{ckpt.name}`.",
        "",
        "## Architecture",
        "",
        f"- Sample rate: {model.sample_rate} Hz; sources: {model.num_spks}",
        f"- Encoder: {_describe(recipe_hparams.get('Encoder'))}",
        f"- MaskNet: {_describe(recipe_hparams.get('MaskNet'))}",
        f"- Decoder: {_describe(recipe_hparams.get('Decoder'))}",
        f"- Variant: {_variant(enc, dec)}",
        f"- Parameters: {total:,} (encoder {count_parameters(enc):,}, "
        f"masknet {count_parameters(mask):,}, decoder "
        f"{count_parameters(dec):,})",
        "",
        "## Training",
        "",
    ]
    for key in TRAINING_KEYS:
        if key in recipe_hparams and not hasattr(recipe_hparams[key], "items"):
            lines.append(f"- `{key}`: {recipe_hparams[key]}")
    epoch = _read_epoch(ckpt)
    if epoch is not None:
        lines.append(f"- Epoch of the exported checkpoint: {epoch}")
    lines += [
        "- Validation SI-SNR of the exported checkpoint: "
        f"{_valid_text(meta, min_key)}",
        "",
        "## Test results",
        "",
    ]
    if test:
        head = [k for k in ("si-snr", "si-snr_i", "sdr", "sdr_i") if k in test]
        lines += [
            "| " + " | ".join(head) + " | utterances |",
            "|" + "---|" * (len(head) + 1),
            "| "
            + " | ".join(f"{test[k]:.2f}" for k in head)
            + f" | {test['n']} |",
            "",
            "(dB, average row of the recipe's `test_results.csv`.)",
        ]
    else:
        lines.append("No `test_results.csv` with an `avg` row was found.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from speechbrain_s4m.inference import S4MSeparation",
        "",
        'model = S4MSeparation.from_hparams(source="path/to/this/folder")',
        'est = model.separate_file("mixture.wav")  # [1, time, sources]',
        "```",
        "",
        "Command line: `s4m-separate mixture.wav --model path/to/this/folder "
        "--output-folder separated/`.",
        "",
    ]
    if not getattr(dec, "all_sources", False):
        # SepformerSeparation decodes each source alone: not a joint decoder
        lines += [
            "The folder also loads with SpeechBrain's "
            "`speechbrain.inference.separation.SepformerSeparation."
            "from_hparams` (with `speechbrain_s4m` installed).",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


def export_pretrained(
    recipe_output_folder,
    target_folder,
    checkpoint=None,
    min_key="si-snr",
    overwrite=False,
):
    """Exports the best checkpoint of a recipe run as a pretrained folder.

    Arguments
    ---------
    recipe_output_folder : str or pathlib.Path
        The recipe's output folder (with ``hyperparams.yaml``, ``save/``,
        ``test_results.csv``).
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
        ``target_folder``. It is written to a temporary folder next to it,
        loaded back strictly with ``S4MSeparation`` as a check, and only then
        renamed: a failed export leaves nothing behind.
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
    recipe_hparams = _load_recipe_yaml(hp_file)

    if checkpoint is not None:
        ckpt = pathlib.Path(checkpoint).expanduser()
        if not (ckpt / METAFNAME).is_file():
            raise ModelNotFoundError(f"{ckpt}: not a checkpoint folder")
        meta = _read_meta(ckpt)
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
        # Strict load check: the definition and the weights match.
        model = S4MSeparation.from_hparams(
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

"""Hyperparameters: loading recipe hparams with checked overrides, and the
registry of the model fragments shipped in ``speechbrain_s4m/hparams/models``.

* :func:`load_hparams` loads a recipe's hparams file; every override key,
  also the nested ones passed into an ``!include:``-d model fragment, must
  exist in the file (:func:`check_overrides`), where HyperPyYAML alone would
  accept a misspelt nested key silently.
* :func:`load_model_config` builds one of the model fragments (``s4m_tiny``,
  ``s4m``, ``sepformer``, ``convtasnet``); each defines ``Encoder``,
  ``MaskNet`` and ``Decoder``. :func:`list_model_configs` names them and
  :func:`model_config_path` finds their files.

Authors
 * speechbrain-s4m contributors 2026
"""

import difflib
import logging
import os
import sys
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

__all__ = [
    "MODEL_CONFIG_DIR",
    "GluedValueError",
    "UnknownOverrideError",
    "check_glued_values",
    "check_overrides",
    "count_parameters",
    "list_model_configs",
    "load_hparams",
    "load_model_config",
    "model_config_path",
]

#: Folder of the shipped model fragments.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "hparams" / "models"

#: Top-level keys that the recipe code reads with a default (the Brain's
#: ``extra_metrics``, e.g. ``--extra_metrics pesq,stoi``): accepted as
#: overrides even where a recipe's hparams file does not define them.
OPTIONAL_KEYS = ("extra_metrics",)


# ----------------------------------------------------------------------
# Recipe hparams
# ----------------------------------------------------------------------
class UnknownOverrideError(KeyError):
    """An override (``--key value``) that cannot apply: a key the hparams
    file lacks, or a new class (``!new:``) for an object of the file.

    The message is one line: the key, the file and the closest existing
    key or what to do (a ``KeyError``, printed without the quotes
    ``KeyError`` adds).
    """

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class _DropMessage(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        return not str(record.msg).startswith(self.prefix)


def _import_train_logger_quietly():
    """Imports ``speechbrain.utils.train_logger`` without its warning
    ``torchvision is not available - cannot save figures``.

    The recipes' ``train_logger`` (``FileTrainLogger``) lives in that
    module; at import, its ``ProgressSampleLogger`` (image samples of
    generative recipes, unused here) looks for torchvision and warns on
    every run without it. The training curve does not need torchvision
    (matplotlib draws it), so that warning misleads; every other record of
    the module still gets through.
    """
    name = "speechbrain.utils.train_logger"
    if name in sys.modules:
        return
    log = logging.getLogger(name)
    quiet = _DropMessage("torchvision is not available")
    log.addFilter(quiet)
    try:
        __import__(name)
    finally:
        log.removeFilter(quiet)


def load_hparams(hparams_file, overrides=None):
    """Loads a recipe's hparams file with overrides, checking every
    override key (nested ones too) against the file.

    Model fragments are included with ``!include:`` (e.g. ``model:
    !include:.../s4m_tiny.yaml``); an override such as ``--model
    "{num_iterations: 1}"`` is passed into the included file and its keys
    are checked against that file. HyperPyYAML alone would accept a
    misspelt nested key silently.

    Arguments
    ---------
    hparams_file : str
        Path of the yaml file.
    overrides : str, dict, None
        Overrides (a yaml string as returned by ``sb.parse_arguments``).

    Returns
    -------
    dict
        The loaded hyperparameters.

    Example
    -------
    >>> yaml_file = getfixture("tmp_path") / "hparams.yaml"
    >>> _ = yaml_file.write_text("lr: 0.1\\noptim: {betas: [0.9, 0.99]}\\n")
    >>> load_hparams(yaml_file, "lr: 0.2")["lr"]
    0.2
    >>> try:  # a misspelt nested key
    ...     load_hparams(yaml_file, {"optim": {"beta": 1}})
    ... except KeyError as e:
    ...     print(str(e).split(" of ")[0], "/", str(e).split("; ")[-1])
    Override 'optim.beta' does not match any key / did you mean 'betas'?
    """
    parsed = overrides
    if isinstance(overrides, str):
        parsed = ruamel.yaml.YAML().load(overrides)
    check_overrides(hparams_file, parsed or {})
    _import_train_logger_quietly()
    with open(hparams_file, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides, overrides_must_match=False)


def check_overrides(yaml_file, overrides):
    """Raises :class:`UnknownOverrideError` (a ``KeyError``) naming any
    override key absent from ``yaml_file`` (following ``!include:`` tags
    into the included files), with the closest existing key.

    Arguments
    ---------
    yaml_file : str
        The yaml file the overrides apply to.
    overrides : dict
        The overrides.

    Example
    -------
    >>> yaml_file = getfixture("tmp_path") / "hparams.yaml"
    >>> _ = yaml_file.write_text("N_epochs: 10\\nlr: 0.1\\n")
    >>> check_overrides(yaml_file, {"N_epochs": 1})
    >>> try:
    ...     check_overrides(yaml_file, {"N_epoch": 1})
    ... except UnknownOverrideError as e:
    ...     print(str(e).split("; ")[-1])
    did you mean 'N_epochs'?
    """
    with open(yaml_file, encoding="utf-8") as f:
        tree = ruamel.yaml.YAML().load(f)
    overrides = {k: v for k, v in overrides.items() if k not in OPTIONAL_KEYS}
    _check_keys(tree, overrides, "", yaml_file)


def _glued_mapping_key(key, value):
    """Whether ``key: value`` came from ``{key:value}`` written without a
    space (YAML reads it as the key ``"key:value"`` with no value)."""
    return value is None and isinstance(key, str) and ":" in key.strip(":")


def _check_keys(node, overrides, prefix, yaml_file):
    """Checks ``overrides`` against the yaml ``node`` (recursively)."""
    for key, value in overrides.items():
        if not isinstance(node, dict) or key not in node:
            known = [str(k) for k in node] if isinstance(node, dict) else []
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = (
                f"did you mean '{close[0]}'?"
                if close
                else f"the file has {len(known)} keys"
            )
            if _glued_mapping_key(key, value):
                # {tr:200} is YAML for the key "tr:200" with no value
                fixed = ", ".join(
                    str(k).replace(":", ": ", 1)
                    if _glued_mapping_key(k, v)
                    else f"{k}: {v}"
                    for k, v in overrides.items()
                )
                hint = (
                    "a YAML mapping needs a space after each colon: write "
                    f"{{{fixed}}}"
                )
            raise UnknownOverrideError(
                f"Override '{prefix}{key}' does not match any key of "
                f"{yaml_file}; {hint}"
            )
        sub = node[key]
        if not isinstance(value, dict):
            continue
        tag = getattr(getattr(sub, "tag", None), "value", None) or ""
        new_tag = getattr(getattr(value, "tag", None), "value", None)
        if new_tag and new_tag != tag:
            # HyperPyYAML merges an override into the node and keeps the
            # file's tag: the new class would be silently dropped
            raise UnknownOverrideError(
                f"Override '{prefix}{key}' replaces {tag or 'a mapping'} "
                f"with {new_tag}: a different class cannot be set from the "
                f"command line (its arguments would go to the old one); "
                f"edit {yaml_file} instead"
            )
        if tag.startswith("!include:"):
            included = os.path.normpath(
                os.path.join(
                    os.path.dirname(os.path.realpath(yaml_file)),
                    tag[len("!include:") :],
                )
            )
            with open(included, encoding="utf-8") as f:
                inc_tree = ruamel.yaml.YAML().load(f)
            _check_keys(inc_tree, value, f"{prefix}{key}.", included)
        elif isinstance(sub, dict):
            _check_keys(sub, value, f"{prefix}{key}.", yaml_file)


# ----------------------------------------------------------------------
# Model fragments
# ----------------------------------------------------------------------
def list_model_configs():
    """Names of the shipped model fragments.

    Returns
    -------
    list of str
        E.g. ``["convtasnet", "s4m", "s4m_tiny", "sepformer"]``.

    Example
    -------
    >>> "s4m_tiny" in list_model_configs()
    True
    """
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))


def model_config_path(name):
    """Path of a model fragment given its name (or a path to a yaml file).

    Arguments
    ---------
    name : str or pathlib.Path
        ``"s4m_tiny"``, ``"s4m"``, ``"sepformer"``, ``"convtasnet"`` or a path.

    Returns
    -------
    pathlib.Path
        The yaml file.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = MODEL_CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown model config {name!r}; "
            f"available: {', '.join(list_model_configs())}"
        )
    return path


def load_model_config(name, sample_rate=8000, num_spks=2, overrides=None):
    """Build a model fragment with HyperPyYAML.

    Arguments
    ---------
    name : str or pathlib.Path
        Fragment name (see :func:`list_model_configs`) or yaml path.
    sample_rate : int
        Sampling rate in Hz (sets the encoder kernel of the S4M configs).
    num_spks : int
        Number of sources.
    overrides : dict, optional
        Further overrides of keys defined in the fragment.

    Returns
    -------
    dict
        The loaded hparams, with at least ``Encoder``, ``MaskNet``,
        ``Decoder``, ``kernel_size``, ``kernel_stride`` and ``N_encoder_out``.

    Example
    -------
    >>> hp = load_model_config(
    ...     "s4m_tiny", overrides={"num_iterations": 1, "hidden_channels": 16}
    ... )
    >>> hp["kernel_size"], hp["kernel_stride"], hp["N_encoder_out"]
    (32, 8, 17)
    """
    all_overrides = {"sample_rate": sample_rate, "num_spks": num_spks}
    all_overrides.update(overrides or {})
    with open(model_config_path(name), encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, all_overrides)


def count_parameters(*modules):
    """Parameters of a model: of ``modules`` together, each counted once
    (the parameter counts of the model card, ``s4m-compare`` and the
    benchmark).

    Arguments
    ---------
    *modules : torch.nn.Module
        The model, or its parts (encoder, masknet, decoder); anything else
        is ignored.

    Returns
    -------
    int

    Example
    -------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)  # 3 * 2 + 2
    >>> count_parameters(lin), count_parameters(lin, lin, "not a module")
    (8, 8)
    """
    import torch

    seen = {}
    for module in modules:
        if isinstance(module, torch.nn.Module):
            seen.update((id(p), p.numel()) for p in module.parameters())
    return sum(seen.values())


class GluedValueError(ValueError):
    """A command-line word that SpeechBrain would glue onto the value of
    the override before it (``--output_folder X --noprogressbar True``
    would write into ``"X True"``)."""


def check_glued_values(argv):
    """Raises :class:`GluedValueError` (one line) for a word of ``argv``
    that is the value of no option.

    SpeechBrain's parser takes its own options (``--device cuda``,
    ``--noprogressbar``) out of the command line and joins what is left
    into YAML overrides, so a stray word becomes part of the previous
    override's value: ``--output_folder X --noprogressbar True`` sets
    ``output_folder: X True`` (``--noprogressbar`` takes no value). An
    override takes exactly one word (quote a value with spaces).

    Arguments
    ---------
    argv : list of str
        The command line after the script (hparams file first).

    Example
    -------
    >>> check_glued_values(["h.yaml", "--lr", "0.1", "--noprogressbar"])
    >>> try:
    ...     check_glued_values(
    ...         ["h.yaml", "--output_folder", "X", "--noprogressbar", "True"]
    ...     )
    ... except GluedValueError as e:
    ...     print(str(e).split(": ")[0])
    --noprogressbar takes no value
    """
    from speechbrain.utils.run_opts import RunOptions

    parser = RunOptions._create_parser()
    flags = {
        o for a in parser._actions if a.nargs == 0 for o in a.option_strings
    }
    try:
        _, rest = parser.parse_known_args(argv)
    except SystemExit:
        return  # SpeechBrain's own parser reports it
    key, words = None, []
    for word in [*rest, "--"]:  # "--" flushes the last override
        if not word.startswith("--"):
            words.append(word)
            continue
        allowed = 0 if key is None or "=" in key else 1
        if len(words) > allowed:
            raise GluedValueError(
                _glued_message(argv, key, words, allowed, flags)
            )
        key, words = word, []


def _glued_message(argv, key, words, allowed, flags):
    """The one line of :func:`check_glued_values`."""
    stray = words[allowed]
    # The word before the stray one in the command line as typed
    before = None
    start = argv.index(key) if key in argv else 0
    for i in range(start + 1, len(argv)):
        if argv[i] == stray:
            before = argv[i - 1]
            break
    name, _, inline = (key or "").partition("=")
    glued = " ".join(([inline] if inline else []) + words)
    target = (
        f"onto {name}, whose value would be '{glued}'"
        if key
        else "into the YAML overrides"
    )
    if before in flags:
        return (
            f"{before} takes no value: write it alone, without "
            f"'{stray}' (SpeechBrain would glue '{stray}' {target})"
        )
    return (
        f"'{stray}' is the value of no option: SpeechBrain would glue it "
        f"{target}; quote a value that has spaces, or remove the word"
    )

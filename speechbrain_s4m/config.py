"""Hyperparameters: recipe hparams with checked overrides
(:func:`load_hparams`), the shipped model fragments
(:func:`load_model_config`), the command line's stray words
(:func:`check_glued_values`) and :func:`count_parameters`.
"""

import difflib
import logging
import os
import sys
from pathlib import Path

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

#: Folder of the shipped model fragments.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "hparams" / "models"
#: Keys read with a default: accepted as overrides where the file lacks them.
OPTIONAL_KEYS = ("extra_metrics",)


class UnknownOverrideError(KeyError):
    """An override that cannot apply (unknown key, or a new ``!new:``
    class); one line, without ``KeyError``'s quotes."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def _import_train_logger_quietly():
    """Imports ``speechbrain.utils.train_logger`` without its misleading
    ``torchvision is not available`` warning (our curve uses matplotlib)."""
    name = "speechbrain.utils.train_logger"
    if name in sys.modules:
        return
    log = logging.getLogger(name)

    def quiet(record):
        return not str(record.msg).startswith("torchvision is not available")

    log.addFilter(quiet)
    try:
        __import__(name)
    finally:
        log.removeFilter(quiet)


def load_hparams(hparams_file, overrides=None):
    """Loads a recipe's hparams file with ``overrides`` (a yaml string or a
    dict), each key checked by :func:`check_overrides` (HyperPyYAML alone
    accepts a misspelt key nested in an ``!include:``-d fragment).

    Example
    -------
    >>> yaml_file = getfixture("tmp_path") / "hparams.yaml"
    >>> _ = yaml_file.write_text("lr: 0.1\\noptim: {betas: [0.9, 0.99]}\\n")
    >>> load_hparams(yaml_file, "lr: 0.2")["lr"]
    0.2
    """
    parsed = overrides
    if isinstance(overrides, str):
        parsed = ruamel.yaml.YAML().load(overrides)
    check_overrides(hparams_file, parsed or {})
    _import_train_logger_quietly()
    with open(hparams_file, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides, overrides_must_match=False)


def check_overrides(yaml_file, overrides):
    """Raises :class:`UnknownOverrideError` for an ``overrides`` key absent
    from ``yaml_file`` (following ``!include:``), naming the closest key."""
    with open(yaml_file, encoding="utf-8") as f:
        tree = ruamel.yaml.YAML().load(f)
    overrides = {k: v for k, v in overrides.items() if k not in OPTIONAL_KEYS}
    _check_keys(tree, overrides, "", yaml_file)


def _glued_mapping_key(key, value):
    """Whether ``key: value`` came from ``{key:value}`` (no space)."""
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
            # HyperPyYAML would merge the override into the node and keep
            # the file's tag: the new class would be silently dropped
            raise UnknownOverrideError(
                f"Override '{prefix}{key}' replaces {tag or 'a mapping'} "
                f"with {new_tag}: a different class cannot be set from the "
                f"command line (its arguments would go to the old one); "
                f"edit {yaml_file} instead"
            )
        if tag.startswith("!include:"):
            folder = os.path.dirname(os.path.realpath(yaml_file))
            included = os.path.normpath(
                os.path.join(folder, tag.removeprefix("!include:"))
            )
            with open(included, encoding="utf-8") as f:
                inc_tree = ruamel.yaml.YAML().load(f)
            _check_keys(inc_tree, value, f"{prefix}{key}.", included)
        elif isinstance(sub, dict):
            _check_keys(sub, value, f"{prefix}{key}.", yaml_file)


def list_model_configs():
    """Names of the shipped model fragments (``s4m_tiny``, ``s4m``, ...)."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))


def model_config_path(name):
    """The yaml file of a model fragment, given its name or a path."""
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
    """The hparams (``Encoder``, ``MaskNet``, ``Decoder``, ``kernel_size``,
    ...) of a model fragment (a name of :func:`list_model_configs` or a
    path) at ``sample_rate`` (Hz) for ``num_spks`` sources, with
    ``overrides``.

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
    """Parameters of ``modules`` together, each counted once (non-modules
    ignored).

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
    the override before it."""


def check_glued_values(argv):
    """Raises :class:`GluedValueError` (one line) for a word of ``argv``
    that is the value of no option: SpeechBrain would glue it onto the
    override before (``--output_folder X --noprogressbar True`` sets
    ``output_folder: X True``)."""
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
    start = argv.index(key) if key in argv else 0
    before = next(  # the word before the stray one, as typed
        (argv[i - 1] for i in range(start + 1, len(argv)) if argv[i] == stray),
        None,
    )
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

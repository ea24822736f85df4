"""Checks of SpeechBrain checkpoint folders before anything is loaded.

PyTorch fails on a truncated file without naming it:
:func:`check_checkpoint_files` names it. :func:`check_model_matches_checkpoint`
refuses a model that cannot load the checkpoint a run would resume from.
"""

import os
import pathlib
import zipfile

import ruamel.yaml
import torch
import yaml
from speechbrain.utils.checkpoints import METAFNAME, Checkpointer

#: What to do about a corrupt file of a training run's checkpoint.
RESUME_ADVICE = (
    "delete that checkpoint folder (the run then resumes from the "
    "checkpoint before it, or starts again if there is none), or use "
    "another --output_folder"
)
#: Larger files that are not PyTorch archives are not read as text.
MAX_TEXT_BYTES = 1 << 20
#: Model keys that change how a model trains, not the trained function.
TRAINING_ONLY_MODEL_KEYS = ("checkpoint_iterations", "dropout")


class CorruptCheckpointError(ValueError):
    """A checkpoint file ``path`` that cannot be read: the message says the
    ``problem`` and the ``advice``."""

    def __init__(self, path, problem, advice=RESUME_ADVICE):
        self.path = pathlib.Path(path)
        super().__init__(
            f"{self.path}: corrupt checkpoint file ({problem}); {advice}"
        )


class CheckpointMismatchError(ValueError):
    """This run's model does not fit the checkpoints of its output folder."""


def check_checkpoint_files(ckpt, names=None, advice=RESUME_ADVICE):
    """Raises :class:`CorruptCheckpointError` naming the first unreadable
    file of the ``CKPT+*`` folder ``ckpt``: PyTorch archives are opened
    memory-mapped (tensors not read), other files must be non-empty YAML.

    Arguments
    ---------
    ckpt : str or pathlib.Path
        A ``CKPT+*`` folder.
    names : list of str, None
        The recoverables to check (``<name>.ckpt``; a missing one is an
        error); default: every ``*.ckpt`` file there, and ``CKPT.yaml``.
    advice : str
        What the message tells the user to do.
    """
    ckpt = pathlib.Path(ckpt)
    if names is None:
        files = sorted(ckpt.glob("*.ckpt"))
        if (ckpt / METAFNAME).is_file():
            files.insert(0, ckpt / METAFNAME)
    else:
        files = [ckpt / f"{name}.ckpt" for name in names]
    for path in files:
        problem = _problem(path)
        if problem:
            raise CorruptCheckpointError(path, problem, advice)


def _problem(path):
    """What makes ``path`` unreadable (None: it reads)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if zipfile.is_zipfile(path):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            return f"unreadable PyTorch archive: {_first_line(err)}"
        return None
    if size <= MAX_TEXT_BYTES:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and "\x00" not in text:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as err:
                return f"unparsable text: {_first_line(err)}"
            return "empty file" if value is None else None
    try:  # a PyTorch file in the legacy (non-zip) format
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return "neither a PyTorch archive nor text: truncated or overwritten"
    return None


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def latest_checkpoint(save_folder):
    """The checkpoint folder a run in ``save_folder`` resumes from (the
    newest, as SpeechBrain's ``Checkpointer`` finds it), or None."""
    if not os.path.isdir(save_folder):  # the Checkpointer would make it
        return None
    ckpt = Checkpointer(save_folder).find_checkpoint()
    return None if ckpt is None else str(ckpt.path)


def check_model_matches_checkpoint(hparams, ckpt, record=None):
    """Raises :class:`CheckpointMismatchError` (one line) if the modules
    of ``hparams`` cannot load the checkpoint ``ckpt``.

    Compares the state names and shapes of each module recoverable with
    ``<ckpt>/<name>.ckpt`` (memory-mapped: fast, before any data
    preparation), then the plain ``model`` settings with those of the
    trained run's ``hyperparams.yaml`` ``record`` (named in the message).

    Example
    -------
    >>> ckpt = getfixture("tmp_path")
    >>> torch.save(torch.nn.Linear(4, 2).state_dict(), ckpt / "net.ckpt")
    >>> check_model_matches_checkpoint(
    ...     {"modules": {"net": torch.nn.Linear(8, 2)}}, ckpt
    ... )
    Traceback (most recent call last):
      ...
    speechbrain_s4m.checkpoints.CheckpointMismatchError: ...: net: 'weight' \
is [2, 4] in the checkpoint, [2, 8] in this model. Use the trained run's ...
    """
    checkpointer = hparams.get("checkpointer")
    modules = getattr(checkpointer, "recoverables", None) or hparams.get(
        "modules", {}
    )
    problems = []
    for name, module in modules.items():
        path = os.path.join(ckpt, f"{name}.ckpt")
        if not isinstance(module, torch.nn.Module) or not os.path.isfile(path):
            continue
        saved = torch.load(
            path, map_location="cpu", weights_only=True, mmap=True
        )
        own = module.state_dict()
        shapes = {k: list(v.shape) for k, v in saved.items()}
        diff = [
            f"'{k}' is {shapes[k]} in the checkpoint, {list(v.shape)} in "
            "this model"
            for k, v in own.items()
            if k in shapes and shapes[k] != list(v.shape)
        ]
        missing = sum(k not in shapes for k in own)
        unexpected = sum(k not in own for k in shapes)
        if missing:
            diff.append(f"{missing} tensor(s) not in the checkpoint")
        if unexpected:
            diff.append(f"{unexpected} checkpoint tensor(s) not here")
        if diff:
            more = f" (+{len(diff) - 2} more)" if len(diff) > 2 else ""
            problems.append(f"{name}: " + "; ".join(diff[:2]) + more)
    has_record = bool(record) and os.path.isfile(record)
    if not problems and has_record:
        problems = _model_settings_differ(record, hparams.get("model"))
    if problems:
        where = f" (its model is recorded in {record})" if has_record else ""
        raise CheckpointMismatchError(
            f"this run's model does not match the checkpoint {ckpt}{where}: "
            + " | ".join(problems)
            + ". Use the trained run's model options, or another "
            "--output_folder."
        )


def _model_settings_differ(record, model):
    """At most one message listing the plain settings of ``model`` that
    differ from those recorded in ``record`` (e.g. ``num_iterations``)."""
    if not isinstance(model, dict):
        return []
    try:
        with open(record, encoding="utf-8") as f:
            recorded = ruamel.yaml.YAML().load(f).get("model")
    except Exception:  # an unreadable record: the shapes decided
        return []
    if not isinstance(recorded, dict):
        return []
    plain = (bool, int, float, str)
    diff = [
        f"{key}: {recorded[key]} in the trained run, {value} here"
        for key, value in model.items()
        if key in recorded
        and key not in TRAINING_ONLY_MODEL_KEYS
        and isinstance(value, plain)
        and isinstance(recorded[key], plain)
        and recorded[key] != value
    ]
    return ["model " + ", ".join(diff)] if diff else []

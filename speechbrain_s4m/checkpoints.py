"""Reading a SpeechBrain checkpoint folder: is every file readable?

A ``CKPT+*`` folder written by SpeechBrain's ``Checkpointer`` holds
``CKPT.yaml`` (its meta data) and one ``<name>.ckpt`` per recoverable: a
PyTorch archive (modules, optimizer) or a short YAML text (the Brain's
counters, the epoch counter, a data loader's position). A file cut short
(disk full, a copy that stopped) or overwritten makes PyTorch fail with a
message that does not name it; :func:`check_checkpoint_files` names it
before anything is loaded. The recipe runner, the ``Separation`` Brain and
``s4m-export`` use it. :func:`latest_checkpoint` finds the checkpoint a run
resumes from (with SpeechBrain's ``Checkpointer``), and
:func:`check_model_matches_checkpoint` refuses a model that cannot load it.

Authors
 * speechbrain-s4m contributors 2026
"""

import os
import pathlib
import zipfile

import ruamel.yaml
import torch
import yaml
from speechbrain.utils.checkpoints import METAFNAME, Checkpointer

__all__ = [
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "check_checkpoint_files",
    "check_model_matches_checkpoint",
    "latest_checkpoint",
]

#: What to do about a corrupt file of a training run's checkpoint.
RESUME_ADVICE = (
    "delete that checkpoint folder (the run then resumes from the "
    "checkpoint before it, or starts again if there is none), or use "
    "another --output_folder"
)

#: Text files of SpeechBrain's recoverables are a few bytes; larger
#: files that are not PyTorch archives are not read as text.
MAX_TEXT_BYTES = 1 << 20


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated or overwritten).

    Arguments
    ---------
    path : pathlib.Path
        The file.
    problem : str
        What is wrong with it.
    advice : str
        What to do.
    """

    def __init__(self, path, problem, advice=RESUME_ADVICE):
        self.path = pathlib.Path(path)
        super().__init__(
            f"{self.path}: corrupt checkpoint file ({problem}); {advice}"
        )


def check_checkpoint_files(ckpt, names=None, advice=RESUME_ADVICE):
    """Raises :class:`CorruptCheckpointError` naming the first file of the
    checkpoint folder ``ckpt`` that cannot be read.

    PyTorch archives are opened as PyTorch opens them (the tensors are
    memory-mapped, not read); the other files must be non-empty YAML text.

    Arguments
    ---------
    ckpt : str or pathlib.Path
        A ``CKPT+*`` folder.
    names : list of str, None
        The recoverables to check (``<name>.ckpt``; a missing one is an
        error); default: every ``*.ckpt`` file there, and ``CKPT.yaml``.
    advice : str
        What the message tells the user to do.

    Example
    -------
    >>> ckpt = getfixture("tmp_path")
    >>> torch.save({"w": torch.ones(3)}, ckpt / "model.ckpt")
    >>> _ = (ckpt / "counter.ckpt").write_text("3")
    >>> check_checkpoint_files(ckpt)
    >>> raw = (ckpt / "model.ckpt").read_bytes()
    >>> _ = (ckpt / "model.ckpt").write_bytes(raw[: len(raw) // 2])
    >>> try:
    ...     check_checkpoint_files(ckpt, advice="delete it")
    ... except CorruptCheckpointError as e:
    ...     print(e.path.name)
    ...     print(str(e).split(": ", 1)[1])
    model.ckpt
    corrupt checkpoint file (neither a PyTorch archive nor text: truncated \
or overwritten); delete it
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
            # The tensors are memory-mapped: only the records are read
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
    """The first line of an exception's message."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class CheckpointMismatchError(ValueError):
    """The model of this run does not fit the checkpoints in its output
    folder (another model trained there)."""


def latest_checkpoint(save_folder):
    """The newest checkpoint in ``save_folder`` (None if none), as
    SpeechBrain's ``Checkpointer`` finds it (the one a run resumes from).

    Arguments
    ---------
    save_folder : str
        The run's ``save_folder``.

    Returns
    -------
    str or None
        The checkpoint folder.

    Example
    -------
    >>> latest_checkpoint(getfixture("tmp_path")) is None
    True
    """
    if not os.path.isdir(save_folder):  # the Checkpointer would make it
        return None
    ckpt = Checkpointer(save_folder).find_checkpoint()
    return None if ckpt is None else str(ckpt.path)


def check_model_matches_checkpoint(hparams, ckpt, record=None):
    """Raises :class:`CheckpointMismatchError` (one line) if the modules
    of ``hparams`` cannot load the checkpoint ``ckpt``.

    Compares, for each ``torch.nn.Module`` among the checkpointer's
    recoverables, the names and shapes of its state with the saved file
    (``<ckpt>/<name>.ckpt``). Only the tensors' headers are compared
    (memory-mapped): fast, before any data preparation or training.

    Arguments
    ---------
    hparams : dict
        The run's hparams (``checkpointer``, or ``modules``).
    ckpt : str
        A ``CKPT+*`` folder.
    record : str, None
        The trained run's ``hyperparams.yaml`` (named in the message).

    Example
    -------
    >>> import torch
    >>> ckpt = getfixture("tmp_path")
    >>> torch.save(torch.nn.Linear(4, 2).state_dict(), ckpt / "net.ckpt")
    >>> check_model_matches_checkpoint(
    ...     {"modules": {"net": torch.nn.Linear(4, 2)}}, ckpt
    ... )
    >>> try:
    ...     check_model_matches_checkpoint(
    ...         {"modules": {"net": torch.nn.Linear(8, 2)}}, ckpt
    ...     )
    ... except CheckpointMismatchError as e:
    ...     print(str(e).split(": ", 1)[1][:60])
    net: 'weight' is [2, 4] in the checkpoint, [2, 8] in this mo
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
        missing = [k for k in own if k not in shapes]
        unexpected = [k for k in shapes if k not in own]
        if missing:
            diff.append(f"{len(missing)} tensor(s) not in the checkpoint")
        if unexpected:
            diff.append(f"{len(unexpected)} checkpoint tensor(s) not here")
        if diff:
            more = f" (+{len(diff) - 2} more)" if len(diff) > 2 else ""
            problems.append(f"{name}: " + "; ".join(diff[:2]) + more)
    if not problems and record and os.path.isfile(record):
        problems = _model_settings_differ(record, hparams.get("model"))
    if problems:
        where = (
            f" (its model is recorded in {record})"
            if record and os.path.isfile(record)
            else ""
        )
        raise CheckpointMismatchError(
            f"this run's model does not match the checkpoint {ckpt}"
            f"{where}: "
            + " | ".join(problems)
            + ". Use the trained run's model options, or another "
            "--output_folder."
        )


#: Model keys that change how a model trains, not the trained function.
TRAINING_ONLY_MODEL_KEYS = ("checkpoint_iterations", "dropout")


def _model_settings_differ(record, model):
    """Differences between the plain settings (numbers, strings) of the
    ``model`` fragment recorded in ``record`` and this run's ``model``
    (e.g. ``num_iterations``, which shares weights and so keeps the
    shapes). Returns a list with at most one message."""
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

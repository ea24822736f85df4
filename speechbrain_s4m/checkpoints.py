"""Reading a SpeechBrain checkpoint folder: is every file readable?

A ``CKPT+*`` folder written by SpeechBrain's ``Checkpointer`` holds
``CKPT.yaml`` (its meta data) and one ``<name>.ckpt`` per recoverable: a
PyTorch archive (modules, optimizer) or a short YAML text (the Brain's
counters, the epoch counter, a data loader's position). A file cut short
(disk full, a copy that stopped) or overwritten makes PyTorch fail with a
message that does not name it; :func:`check_checkpoint_files` names it
before anything is loaded. The recipe runner, the ``Separation`` Brain and
``s4m-export`` use it.

Authors
 * speechbrain-s4m contributors 2026
"""

import pathlib
import zipfile

import torch
import yaml
from speechbrain.utils.checkpoints import METAFNAME

__all__ = ["CorruptCheckpointError", "check_checkpoint_files"]

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

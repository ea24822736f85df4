"""Writing separated sources to files: nothing partial, nothing lost.

Each output is written to a hidden temporary beside its final name
(:class:`PendingOutputs`) and published only once complete (:func:`publish`);
disk and system errors name the file; leftovers of killed runs are removed.
"""

import contextlib
import errno
import os
import pathlib
import re
import shutil
import tempfile

import soundfile as sf

from speechbrain_s4m import audio

#: ``errno`` values of a full disk or an exhausted quota.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
#: ``os.link`` errors of file systems without hard links (FAT, FUSE...).
_NO_LINKS = {
    errno.EPERM,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.EMLINK,
    errno.ENOSYS,
}
#: Free bytes under which a libsndfile "System error" means a full disk.
FULL_BELOW = 1 << 20
#: libsndfile's code for a failed system call ("System error.", no reason).
_SFE_SYSTEM = 2


class OutputFolderError(ValueError):
    """An output folder that cannot be written (names it and why)."""


class OutputWriteError(OSError):
    """An output file could not be written; the message names it and what
    to do. ``errno`` is ``ENOSPC`` / ``EDQUOT`` when the disk is full."""

    def __str__(self):
        return self.strerror or super().__str__()  # without "[Errno n]"


def check_output_folder(folder):
    """Raises :class:`OutputFolderError` unless ``folder`` is a writable
    folder, or does not exist yet and its nearest existing ancestor is a
    writable folder (creates nothing)."""
    folder = pathlib.Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise OutputFolderError(
                f"output folder {folder} exists and is not a folder"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputFolderError(f"output folder {folder} is not writable")
        return
    parent = folder.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputFolderError(
            f"output folder {folder} cannot be created: {parent} is a file, "
            "not a folder"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"output folder {folder} cannot be created: {parent} is not "
            "writable"
        )


def planned_outputs_problem(plan, overwrite=False, flag="--overwrite"):
    """One line if writing ``plan`` (a list of (input, its outputs)) would
    replace an input, or an existing file without ``overwrite``; else None.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> a, b = tmp / "a.wav", tmp / "a_s1.wav"
    >>> planned_outputs_problem([(a, [b])])
    >>> _ = b.write_bytes(b"")
    >>> planned_outputs_problem([(a, [b])])
    'output file(s) already exist: ...a_s1.wav (--overwrite replaces them)'
    >>> planned_outputs_problem([(a, [b]), (b, [tmp / "x.wav"])], True)
    'refusing to overwrite input file(s): ...a_s1.wav (output of ...a.wav)...'
    """
    inputs = {os.path.realpath(path) for path, _ in plan}
    clashes, existing = [], []
    for path, outs in plan:
        for out in outs:
            if os.path.realpath(out) in inputs:
                clashes.append(f"{out} (output of {path})")
            elif os.path.lexists(out):
                existing.append(str(out))
    if clashes:
        return (
            "refusing to overwrite input file(s): "
            + ", ".join(clashes)
            + "; choose another output folder"
        )
    if existing and not overwrite:
        return exists_message(existing, flag)
    return None


def same_file(a, b):
    """Whether two paths name the same existing file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def exists_message(existing, flag="--overwrite"):
    """One line naming the ``existing`` outputs and how to replace them."""
    names = ", ".join(str(p) for p in existing)
    return f"output file(s) already exist: {names} ({flag} replaces them)"


def default_file_mode():
    """Permissions of a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_path(final):
    """A new empty hidden file ``.<stem>.<pid>.<random>.part.wav`` beside
    ``final`` (the pid tells another run whether it is stale)."""
    final = pathlib.Path(final)
    with _write_errors(final):
        fd, tmp = tempfile.mkstemp(
            prefix=f".{final.stem}.{os.getpid()}.",
            suffix=".part.wav",
            dir=final.parent,
        )
    os.close(fd)
    return pathlib.Path(tmp)


def publish(temps, finals, overwrite=False):
    """Gives finished temporary files ``temps`` their ``finals`` names.

    With ``overwrite``, ``os.replace``. Without, the names are claimed in
    order with ``os.link``, which fails if the name exists (no window in
    which another run's file could be lost); a run that loses a name
    removes those it had claimed and raises ``FileExistsError``.
    """
    mode = default_file_mode()
    for tmp in temps:
        os.chmod(tmp, mode)  # mkstemp makes 0600 files
    if overwrite:
        for tmp, final in zip(temps, finals):
            with _write_errors(final):
                os.replace(tmp, final)
        return
    claimed = []  # (final, identity of our file)
    try:
        for tmp, final in zip(temps, finals):
            identity = _identity(tmp)
            _claim(tmp, final)
            claimed.append((final, identity))
    except FileExistsError:
        for name, identity in claimed:
            # ours unless replaced since (by an --overwrite run): keep that
            if _identity(name) == identity:
                os.unlink(name)
        raise FileExistsError(
            f"{final} was created by another writer while this run was "
            "working; it was kept and this run's outputs were not written "
            "(--overwrite / overwrite=True replaces it)",
        ) from None
    for tmp in temps:
        pathlib.Path(tmp).unlink(missing_ok=True)


def _identity(path):
    """(device, inode) of a file, or None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _claim(tmp, final):
    """Makes ``final`` name the file ``tmp`` unless it exists."""
    with _write_errors(final):
        try:
            os.link(tmp, final)
            return
        except FileExistsError:
            raise
        except OSError as err:
            if err.errno not in _NO_LINKS:
                raise
        # No hard links here: claim the name by exclusive creation, then
        # put the complete file in its place.
        fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.replace(tmp, final)


@contextlib.contextmanager
def _write_errors(path):
    """OS errors writing ``path`` raised as :func:`write_error`'s."""
    try:
        yield
    except (OutputWriteError, FileExistsError):
        raise
    except (OSError, sf.LibsndfileError) as err:
        raise write_error(pathlib.Path(path), err) from err


def write_error(path, err):
    """The one-line :class:`OutputWriteError` for ``err`` (``OSError`` or
    ``LibsndfileError``) writing ``path``: reason, free space, advice."""
    folder = pathlib.Path(path).parent
    try:
        free_bytes = shutil.disk_usage(folder).free
        free = f"{free_bytes / 2**20:.1f} MiB free"
    except OSError:
        free_bytes, free = None, "free space unknown"
    code = getattr(err, "errno", None)
    sf_system = isinstance(err, sf.LibsndfileError) and err.code == _SFE_SYSTEM
    if sf_system and free_bytes is not None and free_bytes < FULL_BELOW:
        code = errno.ENOSPC  # libsndfile hides the errno; the disk says it
    if code in NO_SPACE:
        reason = "no space left on the device"
        if code != errno.ENOSPC:
            reason = "disk quota exceeded"
        advice = "free some space or write to another folder"
    elif sf_system:  # libsndfile does not say which call failed or why
        code = errno.EIO
        reason = "the system refused the write (libsndfile: System error)"
        advice = (
            "check that the disk is not full and that the folder still "
            "exists and is writable, or write to another folder"
        )
    else:
        code = code or errno.EIO
        reason = " ".join(str(err).split()) or type(err).__name__
        advice = "check the folder, or write to another folder"
    return OutputWriteError(
        code,
        f"could not write {path}: {reason} ({free} in {folder}); {advice}; "
        "no partial output was left",
    )


def _sound_file(path, sample_rate, subtype):
    """A mono WAV file open for writing."""
    return sf.SoundFile(path, "w", sample_rate, 1, subtype, format="WAV")


class PendingOutputs:
    """The output files of one input while they are written.

    One hidden temporary per source beside its final name (created, with
    the folder, at the first :meth:`write`), maybe rewritten
    (:meth:`rescale`), then published (:meth:`publish`); leaving the
    ``with`` block otherwise (an error, Ctrl-C) removes them.

    Arguments
    ---------
    finals : list of pathlib.Path
        The final files, one per source.
    sample_rate : int
        Their sample rate.
    overwrite : bool
        Replace existing final files when publishing.
    """

    def __init__(self, finals, sample_rate, overwrite=False):
        self.finals = [pathlib.Path(f) for f in finals]
        self.sample_rate = int(sample_rate)
        self.overwrite = overwrite
        self.temps = []
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        try:
            self._close()
        except Exception:
            if err is None:  # else the first error (or Ctrl-C) is the one
                raise
        finally:
            self.discard()
        return False

    def write(self, data):
        """Appends ``[spks, n]`` float samples to the files."""
        if not self._handles:
            with _write_errors(self.finals[0]):
                self.finals[0].parent.mkdir(parents=True, exist_ok=True)
            for final in self.finals:
                self.temps.append(temporary_path(final))
                with _write_errors(final):
                    self._handles.append(
                        _sound_file(self.temps[-1], self.sample_rate, "FLOAT")
                    )
        for final, handle, samples in zip(self.finals, self._handles, data):
            with _write_errors(final):
                handle.write(samples)

    def _close(self):
        handles, self._handles = self._handles, []  # sizes written on close
        first = None
        for final, handle in zip(self.finals, handles):
            try:
                with _write_errors(final):
                    handle.close()
            except OutputWriteError as err:
                first = first or err  # close the others all the same
        if first is not None:
            raise first

    def rescale(self, gains, subtype):
        """Rewrites each file times its gain in the soundfile ``subtype``,
        block by block into new temporaries (``.norm.wav``)."""
        self._close()
        new = []
        try:
            for final, tmp, gain in zip(self.finals, self.temps, gains):
                target = tmp.with_name(tmp.name.replace(".part", ".norm"))
                new.append(target)
                with _write_errors(final):
                    with _sound_file(target, self.sample_rate, subtype) as out:
                        for block in audio.iter_audio_blocks(tmp, 1 << 16):
                            out.write(block[:, 0] * float(gain))
        except BaseException:
            for f in new:
                f.unlink(missing_ok=True)
            raise
        old, self.temps = self.temps, new
        for tmp in old:
            tmp.unlink(missing_ok=True)

    def publish(self):
        """Gives the complete files their final names (:func:`publish`)."""
        self._close()
        publish(self.temps, self.finals, self.overwrite)
        self.temps = []

    def discard(self):
        """Removes the temporaries not published."""
        temps, self.temps = self.temps, []
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def remove_stale_temporaries(finals):
    """Removes the temporaries of ``finals`` left by dead processes."""
    removed = []
    for final in finals:
        final = pathlib.Path(final)
        if not final.parent.is_dir():
            continue
        stem = re.escape(final.stem)
        pattern = re.compile(
            rf"^\.{stem}\.(?:(\d+)\.)?\w+\.(?:part|norm)\.wav$"
        )
        for candidate in final.parent.iterdir():
            match = pattern.match(candidate.name)
            if not match:
                continue
            pid = match.group(1)
            if pid is not None and _process_alive(int(pid)):
                continue
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _process_alive(pid):
    """Whether a process with this id runs (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, run by another user
        return True
    except (OverflowError, ValueError):  # not a process id at all
        return False
    return True

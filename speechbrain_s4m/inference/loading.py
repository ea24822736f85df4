"""Where a pretrained model comes from, and loading it strictly.

One role: turn a ``source`` (a local folder or a hub id) into modules with
their weights loaded. It decides local folder vs hub repository with one
rule (:func:`looks_like_local_path`, also used for hub audio files), fetches
hub files into a ``savedir`` that remembers its source, builds the modules
from ``hyperparams.yaml`` and loads every checkpoint strictly.

Deliberate differences from SpeechBrain's ``Pretrained.from_hparams``:

* a mistyped local path is a ``FileNotFoundError`` (``ModelNotFoundError``),
  never sent to the hub as a repository name;
* a checkpoint with missing, unexpected or mis-shaped keys is an error
  (``ModelFolderError``), not a logged warning;
* a ``savedir`` filled from another source is refused (or re-fetched with
  ``overwrite=True``), never reused silently;
* a local folder is read in place (no symlinks or copies in a savedir).

Authors
 * speechbrain-s4m contributors 2026
"""

import contextlib
import os
import pathlib
import shutil
import tempfile

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch
from speechbrain.utils.parameter_transfer import Pretrainer

from speechbrain_s4m.audio import AudioInputError

#: The modules every pretrained folder defines (and ``<name>.ckpt`` files).
MODULE_KEYS = ("encoder", "masknet", "decoder")
#: File in a hub ``savedir`` that records which source filled it.
SOURCE_MARKER = ".s4m_source"


class ModelFolderError(ValueError):
    """A model folder (or hub repository) that cannot be loaded."""


class ModelNotFoundError(ModelFolderError, FileNotFoundError):
    """The model folder (or a file in it) does not exist."""


# ---------------------------------------------------------------------------
# Local path or hub?
# ---------------------------------------------------------------------------
def looks_like_local_path(source):
    """Whether ``source`` names a local folder rather than a hub repository.

    A hub id is ``owner/name``: one slash, no leading ``.``, ``/`` or ``~``.
    Anything that exists, is a ``pathlib.Path``, starts like a path, uses the
    OS separator (other than one ``/``) or has several components is a path.

    Arguments
    ---------
    source : str or pathlib.Path
        The ``source`` given to ``from_hparams``.

    Returns
    -------
    bool

    Example
    -------
    >>> looks_like_local_path("speechbrain/sepformer-wsj02mix")
    False
    >>> looks_like_local_path("./models/s4m")
    True
    >>> looks_like_local_path("models/s4m/wsj0-2mix")
    True
    """
    if isinstance(source, pathlib.PurePath):
        return True
    source = str(source)
    if os.path.exists(os.path.expanduser(source)):
        return True
    if source.startswith((".", "/", "~")) or source.endswith("/"):
        return True
    if os.sep != "/" and os.sep in source:
        return True
    if source.startswith(("http://", "https://")):
        return False
    return source.count("/") != 1


def looks_like_hub_file(path):
    """Whether ``path`` names a file to fetch rather than a local file.

    A URL, or ``owner/name/file``: a file whose folder is a hub id by
    :func:`looks_like_local_path` (the same rule as for model sources). A
    path that exists is always local.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio path given to ``separate_file``.

    Returns
    -------
    bool

    Example
    -------
    >>> looks_like_hub_file("speechbrain/sepformer-wsj02mix/test_mixture.wav")
    True
    >>> looks_like_hub_file("https://example.org/mix.wav")
    True
    >>> looks_like_hub_file("data/mixtures/test/mix.wav")
    False
    >>> looks_like_hub_file("mix.wav")
    False
    """
    if isinstance(path, pathlib.PurePath):
        return False
    path = str(path)
    if os.path.exists(os.path.expanduser(path)):
        return False
    if path.startswith(("http://", "https://")):
        return True
    if "/" not in path:
        return False
    return not looks_like_local_path(path.rsplit("/", 1)[0])


def _describe_error(err):
    """``TypeName: message`` on one line, whole (whitespace collapsed).

    Example
    -------
    >>> text = _describe_error(ValueError("a  b " + "c" * 300))
    >>> len(text), text[:16]
    (316, 'ValueError: a b ')
    """
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"


# ---------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------
def _torch_load(path):
    """Loads a checkpoint file, mapping any failure to ModelFolderError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFolderError(
            f"{path}: corrupt or unreadable checkpoint ({_describe_error(err)})"
        ) from err


def load_state_dict_strict(module, path):
    """Loads a plain state dict into ``module``; any key mismatch is an error.

    SpeechBrain's parameter transfer only logs warnings for missing or
    unexpected keys, so a mismatched architecture loads silently. This fails.

    Arguments
    ---------
    module : torch.nn.Module
        The module to fill.
    path : str or pathlib.Path
        A ``.ckpt`` file written with ``torch.save(module.state_dict())``.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> torch.save(torch.nn.Linear(2, 2).state_dict(), tmp / "lin.ckpt")
    >>> load_state_dict_strict(torch.nn.Linear(2, 2), tmp / "lin.ckpt")
    >>> load_state_dict_strict(torch.nn.Linear(2, 3), tmp / "lin.ckpt")
    Traceback (most recent call last):
      ...
    speechbrain_s4m.inference.loading.ModelFolderError: ...lin.ckpt: ...
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: checkpoint file not found")
    state = _torch_load(path)
    if not isinstance(state, dict):
        raise ModelFolderError(
            f"{path}: not a state dict (found {type(state).__name__})"
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelFolderError(
            f"{path}: checkpoint does not match the model defined in "
            f"hyperparams.yaml (missing keys: {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys: "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    bad = [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        k = bad[0]
        raise ModelFolderError(
            f"{path}: shape mismatch for {k}: checkpoint "
            f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    module.load_state_dict(state, strict=True)


def load_model_folder(
    folder,
    hparams_file="hyperparams.yaml",
    overrides=None,
    overrides_must_match=True,
):
    """Builds the modules of a pretrained folder and loads them strictly.

    Arguments
    ---------
    folder : str or pathlib.Path
        A folder with ``hyperparams.yaml`` (with ``modules``, ``sample_rate``,
        ``num_spks`` and a ``pretrainer``) and ``<name>.ckpt`` per loadable.
    hparams_file : str
        Name of the hyperparameter file inside ``folder``.
    overrides : dict, optional
        Overrides for the hyperparameter file.
    overrides_must_match : bool
        Whether an override of an absent key is an error.

    Returns
    -------
    dict
        The loaded hyperparameters (``hparams["modules"]`` filled).
    """
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder}: model folder not found")
    hparams_path = folder / hparams_file
    if not hparams_path.is_file():
        raise ModelNotFoundError(
            f"{folder}: no {hparams_file} in this folder (not a pretrained "
            "model folder; use s4m-export to make one from a recipe output)"
        )
    try:
        with open(hparams_path, encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(
                fin, overrides or {}, overrides_must_match
            )
    except Exception as err:
        raise ModelFolderError(
            f"{hparams_path}: cannot load ({_describe_error(err)})"
        ) from err
    for key in ("modules", "sample_rate", "num_spks"):
        if key not in hparams:
            raise ModelFolderError(f"{hparams_path}: missing key '{key}'")
    missing = [k for k in MODULE_KEYS if k not in hparams["modules"]]
    if missing:
        raise ModelFolderError(
            f"{hparams_path}: 'modules' lacks {', '.join(missing)}"
        )
    pretrainer = hparams.get("pretrainer")
    if isinstance(pretrainer, Pretrainer):
        loadables = dict(pretrainer.loadables)
        paths = dict(pretrainer.paths)
    else:
        loadables = {k: hparams["modules"][k] for k in MODULE_KEYS}
        paths = {}
    for name, module in loadables.items():
        path = folder / f"{name}.ckpt"
        if name in paths:
            given = pathlib.Path(str(paths[name])).expanduser()
            path = given if given.is_absolute() else folder / given
        load_state_dict_strict(module, path)
    return hparams


# ---------------------------------------------------------------------------
# Hub fetching
# ---------------------------------------------------------------------------
def fetch_hub_folder(source, savedir, names, overwrite, fetch_config):
    """Fetches ``names`` from a hub repository into ``savedir``.

    A marker file in ``savedir`` records the source; a ``savedir`` filled
    from another source is refused unless ``overwrite`` (then re-fetched).

    Arguments
    ---------
    source : str
        Hub id ``owner/name``.
    savedir : str or pathlib.Path or None
        Where to put the files (default: ``$S4M_CACHE`` or
        ``~/.cache/speechbrain_s4m``, then ``owner--name``).
    names : list of str
        Files of the repository to fetch.
    overwrite : bool
        Re-fetch even when present; allows reusing another source's savedir.
    fetch_config : speechbrain.utils.fetching.FetchConfig or None
        Hub options (revision, token, ...).

    Returns
    -------
    pathlib.Path
        The savedir.
    """
    if savedir is None:
        savedir = pathlib.Path(
            os.environ.get("S4M_CACHE", "~/.cache/speechbrain_s4m")
        ).expanduser() / str(source).replace("/", "--")
    savedir = pathlib.Path(savedir)
    marker = savedir / SOURCE_MARKER
    stale = False
    if marker.exists():
        stale = marker.read_text().strip() != str(source)
    elif savedir.is_dir() and any(savedir.iterdir()):
        stale = True  # filled by something else (e.g. SpeechBrain)
    if stale and not overwrite:
        held = marker.read_text().strip() if marker.exists() else "unknown"
        raise ModelFolderError(
            f"savedir {savedir} already holds files from another source "
            f"({held}), not {source}; use another savedir or overwrite=True"
        )
    savedir.mkdir(parents=True, exist_ok=True)
    config = FetchConfig(
        overwrite=overwrite or stale,
        allow_updates=fetch_config.allow_updates if fetch_config else False,
        allow_network=fetch_config.allow_network if fetch_config else True,
        token=fetch_config.token if fetch_config else False,
        revision=fetch_config.revision if fetch_config else None,
    )
    for name in names:
        try:
            fetch(
                name,
                source=source,
                savedir=savedir,
                local_strategy=LocalStrategy.COPY,
                fetch_config=config,
            )
        except Exception as err:
            raise ModelNotFoundError(
                f"'{source}' is not a local folder, and fetching {name} "
                f"from the hub failed ({_describe_error(err)})"
            ) from err
    marker.write_text(str(source))
    return savedir


def resolve_model_folder(
    source,
    hparams_file="hyperparams.yaml",
    savedir=None,
    overrides=None,
    overwrite=False,
    fetch_config=None,
):
    """The local folder holding the model named by ``source``.

    A local path (:func:`looks_like_local_path`) is returned as it is and
    must exist; a hub id has its ``hparams_file`` and checkpoints (one per
    loadable of its pretrainer) fetched into ``savedir`` first.

    Arguments
    ---------
    source : str or pathlib.Path
        A local folder or a hub id ``owner/name``.
    hparams_file : str
        Hyperparameter file name in the folder.
    savedir : str or pathlib.Path, optional
        Hub sources only: where to put the fetched files.
    overrides : dict, optional
        Overrides for the hyperparameter file (to read its pretrainer).
    overwrite : bool
        Re-fetch hub files into ``savedir`` even when present.
    fetch_config : speechbrain.utils.fetching.FetchConfig, optional
        Hub fetching options.

    Returns
    -------
    pathlib.Path
        The model folder.

    Example
    -------
    >>> resolve_model_folder(getfixture("tmp_path")) == getfixture("tmp_path")
    True
    >>> resolve_model_folder("./no/such/model")
    Traceback (most recent call last):
      ...
    speechbrain_s4m.inference.loading.ModelNotFoundError: ./no/such/model: ...
    """
    if looks_like_local_path(source):
        folder = pathlib.Path(str(source)).expanduser()
        if not folder.exists():
            raise ModelNotFoundError(
                f"{source}: model folder not found (local path; hub ids "
                "look like 'owner/name')"
            )
        return folder
    folder = fetch_hub_folder(
        str(source), savedir, [hparams_file], overwrite, fetch_config
    )
    with open(folder / hparams_file, encoding="utf-8") as fin:
        text = fin.read()
    names = [f"{k}.ckpt" for k in MODULE_KEYS]
    if "pretrainer" in text:
        hp = load_hyperpyyaml(text, overrides or {})
        pre = hp.get("pretrainer")
        if isinstance(pre, Pretrainer):
            names = [f"{k}.ckpt" for k in pre.loadables]
    fetch_hub_folder(str(source), folder, names, overwrite, fetch_config)
    return folder


@contextlib.contextmanager
def local_audio_file(path, savedir=None):
    """Context manager giving a local copy of an audio file.

    A local file (or any path that is not a hub file, see
    :func:`looks_like_hub_file`) is used as it is; a URL or an
    ``owner/name/file`` hub path is fetched afresh into a new temporary
    folder (never the cached copy of another file with the same basename),
    removed on exit.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio path.
    savedir : str or pathlib.Path, optional
        Parent folder of the temporary folder (default: system temp).

    Yields
    ------
    str
        A local path.

    Example
    -------
    >>> with local_audio_file("data/test/mix/a.wav") as local:
    ...     local
    'data/test/mix/a.wav'
    """
    path_str = str(path)
    if not looks_like_hub_file(path_str):
        yield path_str
        return
    if savedir is not None:
        pathlib.Path(savedir).mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="s4m_audio_", dir=savedir)
    try:
        source, name = path_str.rsplit("/", 1)
        try:
            got = fetch(
                name,
                source=source,
                savedir=tmp,
                local_strategy=LocalStrategy.COPY,
                fetch_config=FetchConfig(overwrite=True),
            )
        except Exception as err:
            raise AudioInputError(
                f"{path_str}: no such local file, and fetching it "
                f"failed ({type(err).__name__})"
            ) from err
        yield str(got)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

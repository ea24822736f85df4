"""Where a pretrained model comes from, and loading it strictly.

Unlike SpeechBrain's ``Pretrained.from_hparams``, a mistyped local path is
never sent to the hub, checkpoint key or shape mismatches are errors, and a
savedir of another source is never reused silently (docs/inference.md).
"""

import contextlib
import dataclasses
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


def looks_like_local_path(source):
    """Whether ``source`` names a local folder rather than a hub repository.

    A hub id is ``owner/name``: one slash, no leading ``.``, ``/`` or ``~``;
    a ``pathlib.Path`` or a path that exists is always local.

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
    """Whether an audio ``path`` names a file to fetch: a URL, or
    ``owner/name/file`` whose folder is a hub id by
    :func:`looks_like_local_path`. A path that exists is always local.

    Example
    -------
    >>> looks_like_hub_file("https://example.org/mix.wav")
    True
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
    """``TypeName: message`` on one line, whole (whitespace collapsed)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"


def load_state_dict_strict(module, path):
    """Loads the state dict file ``path`` into ``module``; key or shape
    mismatches raise :class:`ModelFolderError` (SpeechBrain logs them)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFolderError(
            f"{path}: corrupt or unreadable checkpoint ({_describe_error(err)})"
        ) from err
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
    """Builds the modules of a pretrained folder (``hparams_file`` and a
    ``<name>.ckpt`` per loadable, or the pretrainer's ``paths``), loads them
    strictly and returns the hyperparameters; ``overrides`` and
    ``overrides_must_match`` as in ``load_hyperpyyaml``."""
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


def fetch_hub_folder(source, savedir, names, overwrite, fetch_config):
    """Fetches the files ``names`` of hub repository ``source`` into
    ``savedir`` (default ``$S4M_CACHE`` or ``~/.cache/speechbrain_s4m``,
    then ``owner--name``) and returns it; a ``savedir`` filled from another
    source (:data:`SOURCE_MARKER`) is refused unless ``overwrite``."""
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
    config = dataclasses.replace(
        fetch_config or FetchConfig(), overwrite=overwrite or stale
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
    """The local folder holding the model ``source``: a local path as it
    is, or the hub files fetched by :func:`fetch_hub_folder`; the arguments
    are those of ``S4MSeparation.from_hparams``."""
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
        pre = load_hyperpyyaml(text, overrides or {}).get("pretrainer")
        if isinstance(pre, Pretrainer):
            names = [f"{k}.ckpt" for k in pre.loadables]
    fetch_hub_folder(str(source), folder, names, overwrite, fetch_config)
    return folder


@contextlib.contextmanager
def local_audio_file(path, savedir=None):
    """Context manager giving a local path for an audio ``path``: a hub
    file (:func:`looks_like_hub_file`) is fetched afresh into a temporary
    folder under ``savedir`` (default: system temp), removed on exit."""
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

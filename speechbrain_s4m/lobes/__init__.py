"""Model lobes: the S4M mask network, its encoder, and model fragments.

``load_model_config`` builds one of the HyperPyYAML model fragments shipped in
``speechbrain_s4m/hparams/models`` (``s4m_tiny``, ``s4m``, ``sepformer``,
``convtasnet``); each defines ``Encoder``, ``MaskNet`` and ``Decoder``.
"""

from pathlib import Path

from speechbrain_s4m.lobes.s4m import (
    S4MBlock,
    S4MEncoder,
    S4MMaskNet,
)

__all__ = [
    "MODEL_CONFIG_DIR",
    "S4MBlock",
    "S4MEncoder",
    "S4MMaskNet",
    "list_model_configs",
    "load_model_config",
    "model_config_path",
]

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "hparams" / "models"


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
    from hyperpyyaml import load_hyperpyyaml

    all_overrides = {"sample_rate": sample_rate, "num_spks": num_spks}
    all_overrides.update(overrides or {})
    with open(model_config_path(name), encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, all_overrides)

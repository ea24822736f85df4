"""Training curves: the per-epoch losses read back from a recipe's
``train_log.txt`` and plotted to ``training_curve.png``.

:func:`parse_train_log` is the one reader of train logs (the plot, and
``s4m-compare``'s curves and training times).

Authors
 * speechbrain-s4m contributors 2026
"""

import math

__all__ = ["TIME_KEYS", "parse_train_log", "plot_training_curve"]

#: Names of the per-epoch losses in the logs: ``loss`` (negative SI-SNR in
#: dB), or ``si-snr`` in logs written before it was renamed (same value).
_LOSS_KEYS = ("loss", "si-snr")
#: Keys of an epoch line that hold the epoch's training time in seconds:
#: the recipes' ``train time``, and those of other logs.
TIME_KEYS = ("train time", "time", "epoch_time", "time_s", "train time_s")


def _fields(line):
    """``{key: value}`` of a ``FileTrainLogger`` line; values are floats
    where they parse as numbers (``nan`` too; ``12.5s`` too), strings
    otherwise."""
    fields = {}
    for group in line.strip().split(" - "):
        for item in group.split(", "):
            key, sep, value = item.partition(": ")
            if not sep:
                continue
            value = value.strip()
            number = value[:-1] if value.endswith("s") else value
            try:
                fields[key.strip()] = float(number)
            except ValueError:
                fields[key.strip()] = value
    return fields


def _loss(fields, stage):
    """The ``stage`` (train / valid) loss of an epoch line, or None."""
    for key in _LOSS_KEYS:
        value = fields.get(f"{stage} {key}")
        if isinstance(value, float):
            return value
    return None


def parse_train_log(train_log):
    """Reads the per-epoch losses, learning rates and times from a
    SpeechBrain ``train_log.txt``.

    Reads the epoch lines the recipes write (``epoch: 3, lr: 1.00e-03,
    lr_ssm: 4.00e-04 - train loss: -5.1, train skipped: 0, train time:
    12.3, train samples_per_s: 45.6 - valid loss: -4.2``) and those of
    other logs (``train si-snr`` / ``valid si-snr`` for the loss, a time
    under one of ``TIME_KEYS``, no learning rate or train loss: NaN).

    Arguments
    ---------
    train_log : str
        Path of the log written by ``FileTrainLogger``.

    Returns
    -------
    dict
        ``"epoch"``, ``"lr"``, ``"lr_ssm"`` (the S4 parameters' learning
        rate; ``lr`` where the log has no ``lr_ssm``), ``"train"`` and
        ``"valid"`` (losses: negative SI-SNR in dB), lists over the epochs
        with a valid loss;
        ``"time"`` (training seconds per epoch), ``"samples_per_s"`` and
        ``"skipped"`` (training batches skipped), lists too when every
        epoch line records them, else None. The last line of each epoch
        wins (a resumed epoch is logged again).

    Example
    -------
    >>> import os
    >>> import tempfile
    >>> log = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> with open(log, "w") as f:
    ...     for epoch, loss in [(1, 2.5), (2, -2.0)]:
    ...         _ = f.write(
    ...             f"epoch: {epoch}, lr: 1.00e-03, lr_ssm: 4.00e-04 - "
    ...             f"train loss: 3.10, train skipped: 0, train time: 12.50, "
    ...             f"train samples_per_s: 8.00 - valid loss: {loss}\\n"
    ...         )
    >>> curve = parse_train_log(log)
    >>> curve["valid"], curve["time"], curve["lr_ssm"]
    ([2.5, -2.0], [12.5, 12.5], [0.0004, 0.0004])
    """
    rows = {}
    with open(train_log, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("epoch: "):
                continue
            fields = _fields(line)
            train, valid = _loss(fields, "train"), _loss(fields, "valid")
            epoch, lr = fields.get("epoch"), fields.get("lr")
            if valid is None or not isinstance(epoch, float):
                continue
            lr = lr if isinstance(lr, float) else math.nan
            lr_ssm = fields.get("lr_ssm")
            time = [fields[k] for k in TIME_KEYS if k in fields]
            rows[int(epoch)] = {
                "lr": lr,
                "lr_ssm": lr_ssm if isinstance(lr_ssm, float) else lr,
                "train": math.nan if train is None else train,
                "valid": valid,
                "time": time[0] if time else None,
                "samples_per_s": fields.get("train samples_per_s"),
                "skipped": fields.get("train skipped"),
            }
    epochs = sorted(rows)
    curve = {"epoch": epochs}
    for key in ("lr", "lr_ssm", "train", "valid"):
        curve[key] = [rows[e][key] for e in epochs]
    for key in ("time", "samples_per_s", "skipped"):
        values = [rows[e][key] for e in epochs]
        every = epochs and all(isinstance(v, float) for v in values)
        curve[key] = values if every else None
    if curve["skipped"] is not None:
        curve["skipped"] = [int(v) for v in curve["skipped"]]
    return curve


def plot_training_curve(train_log, png_path, title=None):
    """Plots train/valid loss (negative SI-SNR, dB) per epoch to a PNG.

    Arguments
    ---------
    train_log : str
        The recipe's ``train_log.txt``.
    png_path : str
        Where to write the figure.
    title : str, None
        Figure title.

    Returns
    -------
    str, None
        ``png_path``, or None when the log holds no epoch yet.
    """
    curve = parse_train_log(train_log)
    if not curve["epoch"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["epoch"], curve["train"], "o-", label="train")
    ax.plot(curve["epoch"], curve["valid"], "s-", label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss = negative SI-SNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path

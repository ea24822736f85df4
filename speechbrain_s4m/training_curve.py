"""Training curves: the per-epoch losses of a recipe's ``train_log.txt`` (read
by :func:`parse_train_log`, the one reader of train logs) and their plot.
"""

import math

# ``si-snr``: the loss's name (same value) in logs written before ``loss``
_LOSS_KEYS = ("loss", "si-snr")
# The epoch's training seconds: the recipes' ``train time``, other logs'
_TIME_KEYS = ("train time", "time", "epoch_time", "time_s", "train time_s")


def _fields(line):
    """``{key: value}`` of a ``FileTrainLogger`` line; floats where they
    parse (also ``nan`` and ``12.5s``), strings otherwise."""
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
    values = [fields.get(f"{stage} {key}") for key in _LOSS_KEYS]
    return next((v for v in values if isinstance(v, float)), None)


def parse_train_log(train_log):
    """The per-epoch values of a ``train_log.txt`` (``epoch: 3, lr: 1e-03,
    lr_ssm: 4e-04 - train loss: -5.1, train skipped: 0, train time: 12.3,
    train samples_per_s: 45.6 - valid loss: -4.2``; a resumed epoch's last
    line wins): lists over the epochs with a valid loss, ``"epoch"``,
    ``"lr"``, ``"lr_ssm"`` (else ``lr``), ``"train"`` (else NaN),
    ``"valid"``; ``"time"``, ``"samples_per_s"``, ``"skipped"`` where every
    epoch has them, else None.
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
            time = [fields[k] for k in _TIME_KEYS if k in fields]
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
    """Plots the losses of ``train_log`` to ``png_path`` (returned; None
    before the first epoch)."""
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

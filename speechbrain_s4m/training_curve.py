"""Training curves: the per-epoch losses read back from a recipe's
``train_log.txt`` and plotted to ``training_curve.png``.

Authors
 * speechbrain-s4m contributors 2026
"""

import re

__all__ = ["parse_train_log", "plot_training_curve"]

_NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf)"


def parse_train_log(train_log):
    """Reads the per-epoch losses from a SpeechBrain ``train_log.txt``.

    Arguments
    ---------
    train_log : str
        Path of the log written by ``FileTrainLogger``.

    Returns
    -------
    dict
        ``{"epoch": [...], "lr": [...], "train": [...], "valid": [...]}``
        (losses are negative SI-SNR in dB), the last line of each epoch
        winning (a resumed epoch is logged again).

    Example
    -------
    >>> import os
    >>> import tempfile
    >>> log = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> with open(log, "w") as f:
    ...     for epoch, loss in [(1, 2.5), (2, -2.0)]:
    ...         _ = f.write(
    ...             f"epoch: {epoch}, lr: 1.00e-03 - train si-snr: 3.10"
    ...             f" - valid si-snr: {loss}\\n"
    ...         )
    >>> parse_train_log(log)["valid"]
    [2.5, -2.0]
    """
    rows = {}
    pattern = re.compile(
        rf"epoch: (\d+), lr: {_NUMBER} - train si-snr: {_NUMBER}"
        rf" - valid si-snr: {_NUMBER}"
    )
    with open(train_log, encoding="utf-8") as f:
        for line in f:
            m = pattern.search(line)
            if m:
                rows[int(m.group(1))] = [float(g) for g in m.groups()[1:]]
    epochs = sorted(rows)
    return {
        "epoch": epochs,
        "lr": [rows[e][0] for e in epochs],
        "train": [rows[e][1] for e in epochs],
        "valid": [rows[e][2] for e in epochs],
    }


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

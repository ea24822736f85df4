"""Learning speed: how fast separation models start learning, side by side.

Trains each *variant* (a model fragment, overrides of its keys and the
optimiser settings, under one name) for a fixed number of updates on
SynthMix-style mixtures generated in memory, at equal settings, and records:

* the validation SI-SNRi every ``eval_every`` updates (mixtures of speakers
  unseen in training), against the number of updates, the CPU seconds of
  training (``time.process_time``, evaluation excluded) and the wall time;
* the training loss of every update;
* the gradient norm of every top-level module group (encoder, the masknet's
  children, the S4M block's children, decoder) over the first updates,
  before clipping.

The data: a fixed pool of training mixtures of two voices drawn from the
training speakers, and a fixed validation set from a disjoint pool of
speakers (``speechbrain_s4m.data.synthetic`` voices, wsj0-2mix-like relative
gains in [-2.5, 2.5] dB). Every variant sees the same mixtures in the same
order for a given seed; the seed also sets the model's initialisation.

Command line::

    python bench/learning_speed.py \\
        --models r16=s4m_tiny r4=s4m_tiny convtasnet \\
        --override r4:"{num_iterations: 4}" \\
        --set r16:"{init: masknet.block.res_conv=0.1}" \\
        --updates 200 --eval-every 25 --seeds 0 1 --segment 0.5 \\
        --lr 1e-3 --clip 5 --threads 1 --json ls.json --plot ls.png

A model entry is ``fragment`` or ``name=fragment``; ``--override
name:"{yaml}"`` overrides the fragment's keys and ``--set name:"{yaml}"`` the
variant's optimiser settings (``lr``, ``ssm_lr``, ``warmup``, ``decay``,
``clip``, ``init``), which default to the command-line values.

``--from-json A.json B.json --plot P.png --plot-grads G.png [--only ...]``
merges logs of runs on the same data without training (to draw variants
that ran in separate processes in one figure).

``init`` rescales parameters after construction (the model code is not
touched): ``"prefix=factor[,prefix=factor...]"`` multiplies every parameter
whose name starts with ``prefix`` by ``factor`` (e.g.
``masknet.block.res_conv=0`` starts each application of S4M's shared block
as the identity).

Authors
 * speechbrain-s4m contributors 2026
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import ruamel.yaml
import torch

from speechbrain_s4m.benchmark.measure import pyplot
from speechbrain_s4m.benchmark.models import build_model
from speechbrain_s4m.config import count_parameters
from speechbrain_s4m.data.synthetic import random_speaker, synth_voice
from speechbrain_s4m.losses import pit_si_snr_loss, si_snr
from speechbrain_s4m.nnet import ssm_aware_optimizer
from speechbrain_s4m.nnet.schedulers import DECAYS, WarmupDecayScheduler

__all__ = [
    "DATA_SETTINGS",
    "TRAIN_SETTINGS",
    "Variant",
    "apply_init",
    "block_output_rms",
    "grad_group",
    "grad_norms",
    "make_mixtures",
    "merge_results",
    "plot_curves",
    "plot_grad_norms",
    "run",
    "train_variant",
    "valid_si_snri",
]

#: Per-variant optimiser settings (and their command-line defaults' names).
TRAIN_SETTINGS = ("lr", "ssm_lr", "warmup", "decay", "clip", "init")


class Variant:
    """A named training set-up: model fragment, overrides, optimiser.

    Arguments
    ---------
    name : str
        Label in the log and the plot.
    model : str
        Model fragment (``s4m_tiny``, ``convtasnet``, ...).
    overrides : dict, optional
        Overrides of the fragment's keys.
    lr : float
        Adam learning rate of the ordinary parameters.
    ssm_lr : float, optional
        Learning rate of the S4 parameters A, B, dt (default ``lr``).
    warmup : int
        Updates of linear learning-rate warm-up (0: none).
    decay : str
        Learning-rate decay over the run after the warm-up: ``"none"``
        (constant), ``"linear"`` or ``"cosine"`` to 0 at the last update
        (:class:`speechbrain_s4m.nnet.schedulers.WarmupDecayScheduler`,
        as in the recipes).
    clip : float, optional
        Gradient-norm clipping (``None`` or <= 0: none).
    init : str, optional
        Parameter rescaling after construction, see :func:`apply_init`.

    Example
    -------
    >>> v = Variant("r4", "s4m_tiny", {"num_iterations": 4}, lr=2e-3)
    >>> v.as_dict()["ssm_lr"]
    0.002
    """

    def __init__(
        self,
        name,
        model,
        overrides=None,
        lr=1e-3,
        ssm_lr=None,
        warmup=0,
        decay="none",
        clip=5.0,
        init=None,
    ):
        self.name = name
        self.model = model
        self.overrides = dict(overrides or {})
        self.lr = float(lr)
        self.ssm_lr = float(lr if ssm_lr is None else ssm_lr)
        self.warmup = int(warmup or 0)
        self.decay = decay or "none"
        self.clip = float(clip) if clip and float(clip) > 0 else None
        self.init = init or None

    def as_dict(self):
        """The variant's settings as a JSON-able dict."""
        return {
            "name": self.name,
            "model": self.model,
            "overrides": self.overrides,
            "lr": self.lr,
            "ssm_lr": self.ssm_lr,
            "warmup": self.warmup,
            "decay": self.decay,
            "clip": self.clip,
            "init": self.init,
        }


# ----------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------
def make_mixtures(count, speakers, segment, sample_rate, rng):
    """Two-voice mixtures of fixed length from a speaker pool.

    Arguments
    ---------
    count : int
        Number of mixtures.
    speakers : list of SpeakerProfile
        The pool (two distinct speakers per mixture).
    segment : float
        Duration in seconds.
    sample_rate : int
        Sampling rate.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    mix : torch.Tensor
        ``[count, time]``, the exact sum of the sources.
    sources : torch.Tensor
        ``[count, time, 2]``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> pool = [random_speaker(rng) for _ in range(3)]
    >>> mix, src = make_mixtures(2, pool, 0.1, 8000, rng)
    >>> mix.shape, src.shape
    (torch.Size([2, 800]), torch.Size([2, 800, 2]))
    >>> bool(torch.allclose(mix, src.sum(-1)))
    True
    """
    n = int(round(segment * sample_rate))
    sources = np.zeros((count, n, 2), dtype=np.float32)
    for m in range(count):
        picks = rng.choice(len(speakers), size=2, replace=False)
        gain = rng.uniform(0.0, 2.5)  # wsj0-2mix: +g and -g dB
        for j, (p, g) in enumerate(zip(picks, (gain, -gain))):
            wav = synth_voice(speakers[p], segment, sample_rate, rng)[:n]
            rms = np.sqrt(np.mean(wav**2)) + 1e-8
            sources[m, : len(wav), j] = wav / rms * 0.1 * 10 ** (g / 20)
    sources = torch.from_numpy(sources)
    return sources.sum(-1), sources


def make_data(args):
    """Training pool and validation set (disjoint speakers) from ``args``."""
    rng = np.random.default_rng([args.data_seed, 11])
    train_spk = [random_speaker(rng) for _ in range(args.train_speakers)]
    valid_spk = [random_speaker(rng) for _ in range(args.valid_speakers)]
    seg, sr = args.segment, args.sample_rate
    train = make_mixtures(args.train_mixtures, train_spk, seg, sr, rng)
    valid = make_mixtures(args.valid_mixtures, valid_spk, seg, sr, rng)
    return train, valid


# ----------------------------------------------------------------------
# Model helpers
# ----------------------------------------------------------------------
def parse_init(spec):
    """``"a=0.1,b=0"`` -> ``[("a", 0.1), ("b", 0.0)]``."""
    out = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        prefix, _, factor = item.partition("=")
        if not factor:
            raise ValueError(f"init item {item!r} is not prefix=factor")
        out.append((prefix.strip(), float(factor)))
    return out


def apply_init(model, spec):
    """Rescales the parameters named by ``spec`` (in place).

    Arguments
    ---------
    model : torch.nn.Module
        The model.
    spec : str or None
        ``"prefix=factor[,prefix=factor...]"``: every parameter whose name
        starts with ``prefix`` is multiplied by ``factor``.

    Returns
    -------
    list of str
        Names of the rescaled parameters.

    Example
    -------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> apply_init(net, "1=0")
    ['1.weight', '1.bias']
    >>> float(net[1].weight.detach().abs().sum())
    0.0
    >>> apply_init(net, "2=0")
    Traceback (most recent call last):
    ...
    ValueError: init prefix '2' matches no parameter
    """
    touched = []
    with torch.no_grad():
        for prefix, factor in parse_init(spec):
            hits = [
                (n, p)
                for n, p in model.named_parameters()
                if n == prefix or n.startswith(prefix + ".")
            ]
            if not hits:
                raise ValueError(f"init prefix {prefix!r} matches no parameter")
            for n, p in hits:
                p.mul_(factor)
                touched.append(n)
    return touched


def grad_group(name):
    """Module group of a parameter, for the gradient-norm log.

    ``encoder`` and ``decoder`` as a whole; the masknet's children
    (``masknet.bottleneck``, ``masknet.mask_conv``, ...); inside S4M's
    shared block its children (``masknet.block.s4``, ...), with the
    projection's norm and activation counted in ``masknet.block.proj``.

    Arguments
    ---------
    name : str
        Parameter name in a :class:`Separator`.

    Returns
    -------
    str

    Example
    -------
    >>> grad_group("masknet.block.pyramid.2.conv.weight")
    'masknet.block.pyramid'
    >>> grad_group("masknet.block.proj_norm.weight")
    'masknet.block.proj'
    >>> grad_group("encoder.conv1d.weight"), grad_group("masknet.norm.beta")
    ('encoder', 'masknet.norm')
    """
    parts = name.split(".")
    if parts[0] != "masknet" or len(parts) < 3:
        return parts[0]
    if parts[1] == "block" and len(parts) > 3:
        child = parts[2]
        if child.startswith("proj_"):
            child = "proj"
        return f"masknet.block.{child}"
    return f"masknet.{parts[1]}"


def grad_norms(model):
    """L2 norm of the gradients per :func:`grad_group`, and in total.

    Arguments
    ---------
    model : torch.nn.Module
        A model after ``backward``.

    Returns
    -------
    dict
        ``{group: norm}`` with ``"total"``.

    Example
    -------
    >>> net = torch.nn.ModuleDict({"encoder": torch.nn.Linear(2, 1)})
    >>> net["encoder"](torch.ones(1, 2)).sum().backward()
    >>> {k: round(v, 4) for k, v in grad_norms(net).items()}
    {'encoder': 1.7321, 'total': 1.7321}
    """
    sq = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        group = grad_group(name)
        sq[group] = sq.get(group, 0.0) + float(p.grad.detach().pow(2).sum())
    out = {k: math.sqrt(v) for k, v in sq.items()}
    out["total"] = math.sqrt(sum(sq.values()))
    return out


def block_output_rms(model, mix):
    """RMS of the masknet's input to and output of every application of
    S4M's shared block (one forward, no gradient).

    Arguments
    ---------
    model : Separator
        A separator with an S4M masknet (``masknet.block``).
    mix : torch.Tensor
        ``[batch, time]``.

    Returns
    -------
    dict
        ``bottleneck`` (RMS of the bottleneck output x0), ``block_in`` and
        ``block_out`` (lists, one per application), ``mask_mean`` (mean of
        the ReLU masks); empty if the masknet has no ``block``.

    Example
    -------
    >>> model = build_model("s4m_tiny", overrides={"num_iterations": 3,
    ...     "hidden_channels": 8, "out_channels": 4, "depth": 2})
    >>> stats = block_output_rms(model, torch.randn(1, 400))
    >>> len(stats["block_in"]), len(stats["block_out"])
    (3, 3)
    """
    masknet = model.masknet
    if not hasattr(masknet, "block"):
        return {}
    stats = {"block_in": [], "block_out": []}

    def rms(t):
        return float(t.detach().pow(2).mean().sqrt())

    def hook(_module, inputs, output):
        stats["block_in"].append(rms(inputs[0]))
        stats["block_out"].append(rms(output))

    handles = [
        masknet.block.register_forward_hook(hook),
        masknet.bottleneck.register_forward_hook(
            lambda _m, _i, out: stats.__setitem__("bottleneck", rms(out))
        ),
        masknet.register_forward_hook(
            lambda _m, _i, out: stats.__setitem__(
                "mask_mean", float(out.detach().mean())
            )
        ),
    ]
    try:
        with torch.no_grad():
            model(mix.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return stats


def valid_si_snri(model, mix, sources, batch=4):
    """Mean SI-SNR improvement (dB, PIT) and loss on a validation set.

    Arguments
    ---------
    model : torch.nn.Module
        ``[batch, time]`` -> ``[batch, time, 2]``.
    mix : torch.Tensor
        ``[n, time]``.
    sources : torch.Tensor
        ``[n, time, 2]``.
    batch : int
        Mixtures per forward.

    Returns
    -------
    si_snri : float
        Mean over mixtures and sources.
    loss : float
        Mean PIT SI-SNR loss (minus the SI-SNR, dB).

    Example
    -------
    >>> src = torch.randn(3, 400, 2)
    >>> oracle = lambda m: src[: len(m)] if len(m) == 3 else None
    >>> si_snri, loss = valid_si_snri(oracle, src.sum(-1), src, batch=3)
    >>> si_snri > 50, loss < -50
    (True, True)
    """
    device = next(iter(getattr(model, "parameters", lambda: [])()), mix).device
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    improvements, losses = [], []
    with torch.no_grad():
        for i in range(0, len(mix), batch):
            m = mix[i : i + batch].to(device)
            s = sources[i : i + batch].to(device)
            loss, _ = pit_si_snr_loss(model(m), s)
            base = si_snr(m.unsqueeze(-1).expand_as(s), s).mean(-1)
            improvements.append((-loss - base).cpu())
            losses.append(loss.cpu())
    if was_training:
        model.train()
    return float(torch.cat(improvements).mean()), float(
        torch.cat(losses).mean()
    )


# ----------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------
def train_variant(variant, seed, train, valid, args):
    """Trains one variant with one seed; returns its log.

    Arguments
    ---------
    variant : Variant
        What to train.
    seed : int
        Seed of the initialisation and of the order of the mixtures.
    train : tuple
        ``(mix [n, time], sources [n, time, 2])`` training pool.
    valid : tuple
        Validation set, same form.
    args : argparse.Namespace
        ``updates``, ``eval_every``, ``batch``, ``grad_updates``,
        ``sample_rate``, ``device``.

    Returns
    -------
    dict
        ``seed``, ``parameters``, ``eval`` (list of ``update``, ``cpu_s``,
        ``wall_s``, ``valid_si_snri``, ``valid_loss``), ``train_loss`` (per
        update), ``grad_norms`` (per update, first ``grad_updates``),
        ``lr`` (per update), ``cpu_s`` and ``wall_s`` of training,
        ``init_touched``.
    """
    device = torch.device(args.device)
    torch.manual_seed(seed)
    model = build_model(
        variant.model, args.sample_rate, 2, variant.overrides
    ).to(device)
    touched = apply_init(model, variant.init)
    opt = ssm_aware_optimizer(
        model.parameters(),
        lr=variant.lr,
        ssm_lr=variant.ssm_lr,
        optimizer=torch.optim.Adam,
    )
    schedule = WarmupDecayScheduler(
        args.updates, warmup_updates=variant.warmup, decay=variant.decay
    )
    order = np.random.default_rng([seed, 5])
    mix_all, src_all = train
    log = {
        "seed": seed,
        "parameters": count_parameters(model),
        "init_touched": touched,
        "eval": [],
        "train_loss": [],
        "grad_norms": [],
        "lr": [],
    }
    cpu = wall = 0.0

    def evaluate(update):
        si_snri, loss = valid_si_snri(model, *valid, batch=args.eval_batch)
        log["eval"].append(
            {
                "update": update,
                "cpu_s": round(cpu, 3),
                "wall_s": round(wall, 3),
                "valid_si_snri": si_snri,
                "valid_loss": loss,
            }
        )
        print(
            f"  {variant.name} seed {seed} update {update:5d} "
            f"cpu {cpu:7.1f}s valid SI-SNRi {si_snri:6.2f} dB",
            flush=True,
        )

    log["block_rms_init"] = block_output_rms(model, valid[0][:1])
    model.train()
    evaluate(0)
    for update in range(1, args.updates + 1):
        idx = order.choice(len(mix_all), size=args.batch, replace=False)
        mix, src = mix_all[idx].to(device), src_all[idx].to(device)
        c0, w0 = time.process_time(), time.perf_counter()
        schedule(opt)  # this update's rates (warm-up, decay)
        loss, _ = pit_si_snr_loss(model(mix), src)
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if update <= args.grad_updates:
            log["grad_norms"].append(grad_norms(model))
        if variant.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), variant.clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        log["train_loss"].append(loss.item())
        log["lr"].append(opt.param_groups[-1]["lr"])
        if not math.isfinite(log["train_loss"][-1]):
            print(f"  {variant.name} seed {seed}: loss not finite, stopped")
            break
        if update % args.eval_every == 0 or update == args.updates:
            evaluate(update)
    log["cpu_s"], log["wall_s"] = cpu, wall
    log["block_rms_final"] = block_output_rms(model, valid[0][:1])
    return log


def summarise(runs):
    """Mean, min and max over seeds of the validation SI-SNRi at the last
    update that every run reached; CPU seconds per update.

    Example
    -------
    >>> ev = [{"update": 0, "valid_si_snri": -20.0},
    ...       {"update": 10, "valid_si_snri": 1.0},
    ...       {"update": 20, "valid_si_snri": 3.0}]
    >>> runs = [{"eval": ev, "cpu_s": 4.0, "train_loss": [0.0] * 20},
    ...         {"eval": ev[:2], "cpu_s": 1.0, "train_loss": [0.0] * 10}]
    >>> s = summarise(runs)
    >>> s["final_update"], s["final_si_snri_mean"]
    (10, 1.0)
    >>> round(s["cpu_s_per_update"], 3)  # mean of 4/20 and 1/10
    0.15
    """
    last = min(r["eval"][-1]["update"] for r in runs)
    finals = [
        next(e["valid_si_snri"] for e in r["eval"] if e["update"] == last)
        for r in runs
    ]
    return {
        "final_update": last,
        "final_si_snri_mean": float(np.mean(finals)),
        "final_si_snri_min": float(np.min(finals)),
        "final_si_snri_max": float(np.max(finals)),
        "cpu_s_mean": float(np.mean([r["cpu_s"] for r in runs])),
        "cpu_s_per_update": float(
            np.mean([r["cpu_s"] / max(len(r["train_loss"]), 1) for r in runs])
        ),
    }


def format_curve_table(result):
    """Text table: mean validation SI-SNRi (over seeds) at every
    evaluation that all runs of a variant reached (markdown)."""
    updates = sorted(
        {
            e["update"]
            for v in result["variants"]
            for r in v["runs"]
            for e in r["eval"]
        }
    )
    lines = [
        "| variant | seeds | " + " | ".join(str(u) for u in updates) + " |",
        "|---|---|" + "---:|" * len(updates),
    ]
    for v in result["variants"]:
        cells = []
        for u in updates:
            vals = [
                e["valid_si_snri"]
                for r in v["runs"]
                for e in r["eval"]
                if e["update"] == u
            ]
            full = len(vals) == len(v["runs"])
            cells.append(f"{np.mean(vals):.2f}" if full else "")
        seeds = ",".join(str(r["seed"]) for r in v["runs"])
        lines.append(f"| {v['name']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _curve(runs, key):
    """Eval points shared by all runs: x (mean over seeds) and y stats."""
    n = min(len(r["eval"]) for r in runs)
    x = np.array([[r["eval"][i][key] for i in range(n)] for r in runs])
    y = np.array(
        [[r["eval"][i]["valid_si_snri"] for i in range(n)] for r in runs]
    )
    return x.mean(0), y.mean(0), y.min(0), y.max(0)


def plot_curves(result, path, ymin=None):
    """PNG of the validation SI-SNRi against updates and CPU seconds.

    One line per variant (mean over seeds) with a min/max band.

    Arguments
    ---------
    result : dict
        As returned by :func:`run`.
    path : str or pathlib.Path
        Output file.
    ymin : float, optional
        Lower limit of the SI-SNRi axis (to zoom past the first updates).
    """
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for v in result["variants"]:
        for ax, key in zip(axes, ("update", "cpu_s")):
            x, mean, lo, hi = _curve(v["runs"], key)
            n = len(v["runs"])
            label = v["name"] + (f" ({n} seeds)" if n > 1 else "")
            (line,) = ax.plot(x, mean, label=label, lw=1.6, marker=".")
            if len(v["runs"]) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18)
    s = result["settings"]
    axes[0].set_xlabel("updates")
    axes[1].set_xlabel("training CPU seconds (process_time)")
    axes[0].set_ylabel("valid SI-SNRi (dB)")
    if ymin is not None:
        axes[0].set_ylim(bottom=ymin)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Learning speed: {s['segment']} s segments, batch {s['batch']}, "
        f"seeds {s['seeds']} (mean over a variant's seeds, min-max band), "
        "unseen speakers",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(variants, args, on_variant=None):
    """Trains every variant with every seed.

    Arguments
    ---------
    variants : list of Variant
        The set-ups.
    args : argparse.Namespace
        Settings (see :func:`parse_args`).
    on_variant : callable, optional
        Called with the result so far after each variant (e.g. to save a
        partial log).

    Returns
    -------
    dict
        ``settings``, ``data``, ``variants`` (each with its settings,
        ``runs`` and ``summary``).
    """
    torch.set_num_threads(args.threads)
    c0 = time.process_time()
    train, valid = make_data(args)
    data_cpu = time.process_time() - c0
    valid_base = float(
        si_snr(valid[0].unsqueeze(-1).expand_as(valid[1]), valid[1]).mean()
    )
    result = {
        "settings": {
            k: getattr(args, k)
            for k in (
                "updates",
                "eval_every",
                "seeds",
                *DATA_SETTINGS,
                "grad_updates",
                "threads",
                "device",
            )
        },
        "data": {
            "train_shape": list(train[0].shape),
            "valid_shape": list(valid[0].shape),
            "valid_mixture_si_snr": valid_base,
            "generation_cpu_s": data_cpu,
        },
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "variants": [],
    }
    for variant in variants:
        runs = [
            train_variant(variant, seed, train, valid, args)
            for seed in args.seeds
        ]
        entry = variant.as_dict()
        entry["runs"] = runs
        entry["summary"] = summarise(runs)
        result["variants"].append(entry)
        if on_variant is not None:
            on_variant(result)
    return result


def format_table(result):
    """Text table: final SI-SNRi (mean [min, max]) and CPU per update."""
    lines = [
        f"{'variant':<28} {'params':>9} {'upd':>5} "
        f"{'SI-SNRi dB mean [min, max]':>28} {'CPU s/upd':>10}"
    ]
    for v in result["variants"]:
        s = v["summary"]
        rng = (
            f"{s['final_si_snri_mean']:6.2f} "
            f"[{s['final_si_snri_min']:.2f}, {s['final_si_snri_max']:.2f}]"
        )
        lines.append(
            f"{v['name']:<28} {v['runs'][0]['parameters']:>9,} "
            f"{s['final_update']:>5} {rng:>28} {s['cpu_s_per_update']:>10.3f}"
        )
    return "\n".join(lines)


#: Settings that must agree for logs to be merged into one comparison.
DATA_SETTINGS = (
    "segment",
    "batch",
    "sample_rate",
    "train_mixtures",
    "valid_mixtures",
    "train_speakers",
    "valid_speakers",
    "data_seed",
)


def merge_results(results):
    """Merges logs of runs on the same data into one result.

    Arguments
    ---------
    results : list of dict
        Results of :func:`run` (e.g. loaded from several ``--json`` files).

    Returns
    -------
    dict
        The first result's settings and data, every result's variants;
        a variant in several logs (same name and settings, other seeds)
        becomes one variant with all the runs. ``settings["updates"]`` is
        the largest, ``settings["seeds"]`` all the seeds.

    Example
    -------
    >>> run = {"seed": 0, "eval": [{"update": 20, "valid_si_snri": 1.0}],
    ...        "cpu_s": 2.0, "train_loss": [0.0] * 20}
    >>> def log(name, updates, runs, segment=0.5):
    ...     return {"settings": {"segment": segment, "updates": updates},
    ...             "variants": [{"name": name, "runs": runs}]}
    >>> m = merge_results([log("x", 10, [run]), log("y", 20, [run])])
    >>> [v["name"] for v in m["variants"]], m["settings"]["updates"]
    (['x', 'y'], 20)
    >>> seed1 = log("y", 20, [dict(run, seed=1)])
    >>> m = merge_results([log("y", 20, [run]), seed1])
    >>> [r["seed"] for r in m["variants"][0]["runs"]]
    [0, 1]
    >>> merge_results([log("x", 10, [run]), log("y", 20, [run], 1.0)])
    Traceback (most recent call last):
    ...
    ValueError: cannot merge logs with different segment: 0.5 vs 1.0
    >>> merge_results([log("y", 20, [run]), log("y", 20, [run])])
    Traceback (most recent call last):
    ...
    ValueError: variant 'y' in two logs with the same seed
    """
    first = results[0]
    merged = dict(first)
    merged["settings"] = dict(first["settings"])
    merged["variants"] = []
    for res in results:
        for key in DATA_SETTINGS:
            a, b = first["settings"].get(key), res["settings"].get(key)
            if a != b:
                raise ValueError(
                    f"cannot merge logs with different {key}: {a} vs {b}"
                )
        merged["settings"]["updates"] = max(
            merged["settings"]["updates"], res["settings"]["updates"]
        )
        for v in res["variants"]:
            same = [w for w in merged["variants"] if w["name"] == v["name"]]
            if not same:
                merged["variants"].append(dict(v, runs=list(v["runs"])))
                continue
            # the same variant with other seeds: one variant, more runs
            w = same[0]
            keys = set(v) - {"runs", "summary"}
            if any(w.get(k) != v.get(k) for k in keys):
                raise ValueError(
                    f"variant {v['name']!r} in two logs with different settings"
                )
            seeds = {r["seed"] for r in w["runs"]}
            if seeds & {r["seed"] for r in v["runs"]}:
                raise ValueError(
                    f"variant {v['name']!r} in two logs with the same seed"
                )
            w["runs"] = w["runs"] + v["runs"]
            w["summary"] = summarise(w["runs"])
    seeds = sorted({r["seed"] for v in merged["variants"] for r in v["runs"]})
    merged["settings"]["seeds"] = seeds
    return merged


def select_variants(result, names):
    """The result with only the named variants, in the order given."""
    by_name = {v["name"]: v for v in result["variants"]}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"no variant(s) {missing}; have {list(by_name)}")
    return dict(result, variants=[by_name[n] for n in names])


def mean_grad_norms(runs):
    """Per group: mean gradient norm over the logged first updates and
    the seeds; also the first update's (mean over seeds)."""
    groups = {}
    for r in runs:
        for i, g in enumerate(r["grad_norms"]):
            for k, v in g.items():
                groups.setdefault(k, {"all": [], "first": []})
                groups[k]["all"].append(v)
                if i == 0:
                    groups[k]["first"].append(v)
    return {
        k: (float(np.mean(d["all"])), float(np.mean(d["first"] or [0.0])))
        for k, d in groups.items()
    }


def format_grad_table(result):
    """Text table: gradient norm per module group, mean over the logged
    first updates (and the first update's), per variant."""
    lines = []
    for v in result["variants"]:
        stats = mean_grad_norms(v["runs"])
        if not stats:
            continue
        n = len(v["runs"][0]["grad_norms"])
        lines.append(
            f"{v['name']}: gradient norm, mean of updates 1-{n} (update 1)"
        )
        for k in sorted(stats, key=lambda k: (k == "total", k)):
            mean, first = stats[k]
            lines.append(f"    {k:<26} {mean:10.4f} ({first:.4f})")
    return "\n".join(lines)


def plot_grad_norms(result, path):
    """PNG of the gradient norm per module group over the first updates,
    one panel per variant (mean over seeds), log scale.

    Arguments
    ---------
    result : dict
        As returned by :func:`run`.
    path : str or pathlib.Path
        Output file.
    """
    plt = pyplot()

    variants = [v for v in result["variants"] if v["runs"][0]["grad_norms"]]
    cols = min(3, max(len(variants), 1))
    rows = max(1, math.ceil(len(variants) / cols))
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(5.2 * cols, 3.8 * rows),
        squeeze=False,
        sharey=True,
    )
    for ax, v in zip(axes.flat, variants):
        n = min(len(r["grad_norms"]) for r in v["runs"])
        keys = sorted(
            {k for r in v["runs"] for g in r["grad_norms"] for k in g}
        )
        for c, k in enumerate(keys):
            y = np.mean(
                [
                    [r["grad_norms"][i].get(k, np.nan) for i in range(n)]
                    for r in v["runs"]
                ],
                axis=0,
            )
            style = {"color": plt.cm.tab20(c % 20), "lw": 1.1}
            if k == "total":
                style = {"color": "k", "lw": 2.2}
            ax.semilogy(np.arange(1, n + 1), y, label=k, **style)
        ax.set_title(v["name"], fontsize=10)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(variants) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("gradient L2 norm (before clipping)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------
def _yaml(text):
    value = ruamel.yaml.YAML(typ="safe").load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a yaml mapping: {text!r}")
    return value


def _named(items, what):
    """``["name:{yaml}", ...]`` -> ``{name: dict}``."""
    out = {}
    for item in items or []:
        name, sep, text = item.partition(":")
        if not sep:
            raise SystemExit(f'--{what} {item!r}: expected NAME:"{{yaml}}"')
        out.setdefault(name.strip(), {}).update(_yaml(text))
    return out


def build_variants(args):
    """The variants named by ``--models``, ``--override`` and ``--set``."""
    overrides = _named(args.override, "override")
    settings = _named(args.set, "set")
    variants, names = [], []
    for entry in args.models:
        name, sep, model = entry.partition("=")
        if not sep:
            name = model = entry
        if name in names:
            raise SystemExit(f"variant {name!r} named twice")
        names.append(name)
        opts = {k: getattr(args, k) for k in TRAIN_SETTINGS}
        extra = settings.get(name, {})
        unknown = set(extra) - set(TRAIN_SETTINGS)
        if unknown:
            raise SystemExit(
                f"--set {name}: unknown key(s) {sorted(unknown)}; "
                f"use {list(TRAIN_SETTINGS)}"
            )
        opts.update(extra)
        variants.append(Variant(name, model, overrides.get(name), **opts))
    for what, named in (("override", overrides), ("set", settings)):
        for name in set(named) - set(names):
            raise SystemExit(f"--{what} {name}: no such variant in --models")
    return variants


def parse_args(argv=None):
    """Parses the command line."""
    p = argparse.ArgumentParser(
        prog="python bench/learning_speed.py",
        description="Early learning speed of separation models on "
        "generated SynthMix-style data, at equal settings.",
    )
    p.add_argument("--models", nargs="+", default=["s4m_tiny", "convtasnet"])
    p.add_argument("--override", nargs="*", help='NAME:"{yaml}" model keys')
    p.add_argument(
        "--set",
        nargs="*",
        help='NAME:"{yaml}" of lr, ssm_lr, warmup, decay, clip, init',
    )
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--segment", type=float, default=1.0, help="seconds")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ssm-lr", type=float, default=None, help="default: lr")
    p.add_argument("--warmup", type=int, default=0, help="updates")
    p.add_argument(
        "--decay",
        default="none",
        choices=DECAYS,
        help="learning-rate decay to 0 at the last update",
    )
    p.add_argument("--clip", type=float, default=5.0, help="<= 0: none")
    p.add_argument("--init", default=None, help="prefix=factor[,...]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--train-mixtures", type=int, default=200)
    p.add_argument("--valid-mixtures", type=int, default=16)
    p.add_argument("--train-speakers", type=int, default=16)
    p.add_argument("--valid-speakers", type=int, default=6)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--grad-updates", type=int, default=20)
    p.add_argument("--eval-batch", type=int, default=4)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--plot-grads", default=None, help="PNG of grad norms")
    p.add_argument("--ymin", type=float, default=None, help="SI-SNRi axis")
    p.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        help="no training: merge these logs (same data settings) and "
        "write the table, --json, --plot and --plot-grads",
    )
    p.add_argument(
        "--only", nargs="+", default=None, help="keep these variants only"
    )
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    """Runs the benchmark from the command line (or re-plots logs)."""
    args = parse_args(argv)
    if args.train_mixtures < args.batch:
        raise SystemExit("--train-mixtures must be >= --batch")
    for path in (args.json, args.plot, args.plot_grads):
        if path and Path(path).exists() and not args.overwrite:
            raise SystemExit(f"{path} exists (use --overwrite)")
    if args.from_json:
        result = merge_results(
            [json.loads(Path(p).read_text()) for p in args.from_json]
        )
    else:

        def save_partial(partial):
            if args.json:  # the log so far, rewritten after each variant
                Path(args.json).write_text(json.dumps(partial, indent=1))

        result = run(build_variants(args), args, on_variant=save_partial)
    if args.only:
        result = select_variants(result, args.only)
    print(format_table(result))
    print("valid SI-SNRi (dB, mean over seeds) after N updates:")
    print(format_curve_table(result))
    print(format_grad_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot_curves(result, args.plot, ymin=args.ymin)
        print(f"wrote {args.plot}")
    if args.plot_grads:
        plot_grad_norms(result, args.plot_grads)
        print(f"wrote {args.plot_grads}")
    return result


if __name__ == "__main__":
    main()

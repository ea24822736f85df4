"""Side-by-side benchmark of model fragments (S4M-tiny, S4M, SepFormer,
Conv-TasNet): parameters, MACs per second of audio, time and peak memory of
inference and of a training step (forward, PIT SI-SNR, backward, Adam) per
input length and precision. On the CPU each case runs in its own subprocess
(a clean peak RSS); cases predicted to exceed the budget are skipped.
"""

import itertools
import json
import math
import os
import statistics
import subprocess
import sys

import torch

from speechbrain_s4m.benchmark.measure import (
    PRECISIONS,
    PeakMemory,
    StepTimer,
    apply_allocator,
    autocast_context,
    check_device,
    count_macs,
    grad_scaler,
    markdown,
    pyplot,
)
from speechbrain_s4m.config import (
    check_overrides,
    count_parameters,
    load_model_config,
    model_config_path,
)
from speechbrain_s4m.lobes.separator import Separator

DEFAULT_MODELS = ("s4m_tiny", "s4m", "sepformer", "convtasnet")
REFERENCE = "sepformer"


def build_model(name, sample_rate=8000, num_spks=2, overrides=None):
    """The :class:`~speechbrain_s4m.lobes.separator.Separator` of the model
    fragment ``name`` (e.g. ``s4m_tiny``), with ``overrides`` of its keys."""
    hp = load_model_config(name, sample_rate, num_spks, overrides)
    return Separator(hp["Encoder"], hp["MaskNet"], hp["Decoder"], num_spks)


def parse_model_spec(spec):
    """A ``--models`` entry, ``fragment`` or ``label=fragment``, as
    ``(label, fragment)``."""
    label, sep, fragment = spec.partition("=")
    if not sep:
        return spec, spec
    if not label or not fragment:
        raise ValueError(f"model {spec!r}: expected NAME or LABEL=FRAGMENT")
    return label, fragment


def checkpointing_variants(models, overrides=None):
    """``(models, overrides)`` with ``<label>+ckpt`` (the base's overrides
    and ``checkpoint_iterations: True``) after each model having that key."""
    out_models, out_over = [], dict(overrides or {})
    for spec in models:
        out_models.append(spec)
        label, fragment = parse_model_spec(spec)
        try:
            check_overrides(
                model_config_path(fragment), {"checkpoint_iterations": None}
            )
        except KeyError:
            continue
        out_models.append(f"{label}+ckpt={fragment}")
        out_over[f"{label}+ckpt"] = {
            **out_over.get(label, {}),
            "checkpoint_iterations": True,
        }
    return out_models, out_over


def mode_key(mode, precision):
    """``infer``/``train`` at fp32 (read by :mod:`speechbrain_s4m.results`),
    else ``infer_fp16`` etc."""
    return mode if precision == "fp32" else f"{mode}_{precision}"


def run_case(spec):
    """Measures one case in this process: ``spec`` as built by
    :func:`run_benchmark`; returns ``times``/``median`` (wall or CUDA-event
    time: ``timing``), ``wall_``/``cpu_``/``sys_`` ``times``/``median``,
    ``peak_mib``, ``base_mib``, ``allocator``, ``precision``, ``macs``."""
    allocator = apply_allocator(spec.get("default_allocator", False))
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = check_device(spec["device"])
    precision = spec.get("precision", "fp32")
    rate, overrides = spec["sample_rate"], spec.get("overrides")
    model = build_model(spec["model"], rate, spec["num_spks"], overrides)
    model.to(device)
    length = int(round(spec["seconds"] * rate))
    mix = torch.randn(1, length, device=device)
    result = {}
    if spec.get("count_macs"):
        model.eval()
        result["macs"] = count_macs(model, mix)
    memory = PeakMemory(device)
    timer = StepTimer(device)
    cast = autocast_context(device, precision)

    if spec["mode"] == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), cast:
                model(mix)

    else:
        from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        # a disabled scaler is the plain backward and step
        scaler = grad_scaler(device, precision)
        scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
        sources = torch.randn(1, length, spec["num_spks"], device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with cast:
                est = model(mix)
            loss = get_si_snr_with_pitwrapper(sources, est.float()).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    base = memory.start()  # before the warm-up: the RSS stays at its peak
    for _ in range(spec["warmup"]):
        step()
    runs = [timer(step) for _ in range(spec["repeats"])]
    peak = memory.peak()
    clock = "gpu" if timer.is_cuda else "wall"
    times = [r[f"{clock}_s"] for r in runs]
    result.update(
        times=times,
        median=statistics.median(times),
        timing="cuda_events" if timer.is_cuda else "wall",
    )
    for kind in ("wall", "cpu", "sys"):
        result[f"{kind}_times"] = [r[f"{kind}_s"] for r in runs]
        result[f"{kind}_median"] = statistics.median(result[f"{kind}_times"])
    result.update(
        peak_mib=peak, base_mib=base, allocator=allocator, precision=precision
    )
    if timer.is_cuda:
        del model, mix
        torch.cuda.empty_cache()
    return result


def _run_in_subprocess(spec, timeout):
    """:func:`run_case` in a fresh interpreter (a clean peak RSS)."""
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "speechbrain_s4m.benchmark"]
    try:
        proc = subprocess.run(
            cmd + ["--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"timeout > {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"skipped": f"error: {tail[0][:120]}"}
    return json.loads(lines[-1])


def _extrapolate(points, x, offset=0.0):
    """Power-law extrapolation of ``y - offset`` from ``[(x_i, y_i)]`` to
    ``x`` (exponent of the last two points, in [1, 2])."""
    if not points:
        return None
    pts = [(px, max(py - offset, 1e-9)) for px, py in points]
    (x2, y2) = pts[-1]
    p = 1.0
    if len(pts) > 1:
        (x1, y1) = pts[-2]
        if x2 > x1:
            p = min(2.0, max(1.0, math.log(y2 / y1) / math.log(x2 / x1)))
    return offset + y2 * (x / x2) ** p


def run_benchmark(
    models=DEFAULT_MODELS,
    durations=(1, 4, 16, 60),
    repeats=5,
    device="cpu",
    threads=2,
    skip_train=False,
    max_seconds=120.0,
    max_memory_gib=8.0,
    sample_rate=8000,
    num_spks=2,
    in_process=False,
    log=print,
    precisions=("fp32",),
    model_overrides=None,
    default_allocator=False,
):
    """Runs the whole benchmark (the options of ``python -m
    speechbrain_s4m.benchmark``; ``in_process``: no subprocess per case;
    ``model_overrides``: ``{label: {key: value}}``, checked first).

    Returns ``config`` and ``models``: per label ``fragment``,
    ``overrides``, ``params``, ``macs`` and :func:`run_case` results per
    :func:`mode_key`, each per duration.
    """
    check_device(device)
    model_overrides = dict(model_overrides or {})
    specs = [parse_model_spec(m) for m in models]
    labels = [label for label, _ in specs]
    unknown = set(model_overrides) - set(labels)
    if unknown:
        raise ValueError(
            f"overrides for {sorted(unknown)}, which are not among the "
            f"models {labels}"
        )
    for label, fragment in specs:
        if model_overrides.get(label):
            check_overrides(model_config_path(fragment), model_overrides[label])
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"precision {p!r} not in {PRECISIONS}")
    modes = ["infer"] if skip_train else ["infer", "train"]
    if in_process:  # the cases run here: this process's condition is theirs
        apply_allocator(default_allocator)
    out = {
        "config": {
            "durations": list(durations),
            "repeats": repeats,
            "device": device,
            "threads": threads,
            "precisions": list(precisions),
            "timing": "cuda_events" if device != "cpu" else "wall",
            "sample_rate": sample_rate,
            "num_spks": num_spks,
            "max_seconds": max_seconds,
            "max_memory_gib": max_memory_gib,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "load_avg_start": list(os.getloadavg()),
        },
        "models": {},
    }
    if device != "cpu":
        out["config"]["gpu"] = torch.cuda.get_device_name(device)
    for label, fragment in specs:
        overrides = model_overrides.get(label) or {}
        model = build_model(fragment, sample_rate, num_spks, overrides)
        entry = {
            "fragment": fragment,
            "overrides": overrides,
            "params": count_parameters(model),
            "macs": {},
        }
        for precision in precisions:
            entry.update({mode_key(m, precision): {} for m in modes})
        # MACs on the meta device (no compute) where the model's ops allow
        # it; otherwise they are counted in the inference case
        model.to("meta").eval()
        for sec in durations:
            try:
                mix = torch.empty(1, round(sec * sample_rate), device="meta")
                entry["macs"][str(sec)] = count_macs(model, mix)
            except (RuntimeError, NotImplementedError):
                break
        del model
        out["models"][label] = entry
        log(f"{label}: {entry['params']:,} trainable parameters")
    # models interleaved per (mode, precision, duration): on a shared
    # machine the cases compared with each other run close together in time
    history, conditions = {}, set()
    cases = itertools.product(modes, precisions, sorted(durations), specs)
    for mode, precision, sec, (label, fragment) in cases:
        entry, key = out["models"][label], str(sec)
        key_mode = mode_key(mode, precision)
        time_pts, mem_pts, base = history.setdefault(
            (label, key_mode), ([], [], [0.0])
        )
        # fewer runs of long inputs: all up to 4 s, half to 16 s, else 1
        reps = repeats if sec <= 4 else max(1, repeats // 2) if sec <= 16 else 1
        warm = int(sec <= 16)
        t_pred = _extrapolate(time_pts, sec)
        m_pred = _extrapolate(mem_pts, sec, offset=base[0])
        if t_pred is not None and t_pred > max_seconds:
            res = {
                "skipped": f"predicted {t_pred:.0f} s/run > {max_seconds:.0f} s"
            }
        elif m_pred is not None and m_pred > max_memory_gib * 1024:
            res = {
                "skipped": f"predicted {m_pred / 1024:.1f} GiB"
                f" > {max_memory_gib:.0f} GiB"
            }
        else:
            spec = {
                "model": fragment,
                "overrides": entry["overrides"],
                "seconds": sec,
                "mode": mode,
                "precision": precision,
                "repeats": reps,
                "warmup": warm,
                "device": device,
                "threads": threads,
                "sample_rate": sample_rate,
                "num_spks": num_spks,
                "default_allocator": default_allocator,
                "count_macs": mode == "infer" and key not in entry["macs"],
            }
            if in_process:
                res = run_case(spec)
            else:
                budget = max_seconds * (reps + warm + 2) + 60
                res = _run_in_subprocess(spec, budget)
            if "median" in res:
                time_pts.append((sec, min(res["times"])))
                mem_pts.append((sec, res["peak_mib"]))
                base[0] = res["base_mib"]
                conditions.add(res["allocator"])
            if "macs" in res:
                entry["macs"][key] = res.pop("macs")
        entry[key_mode][key] = res
        msg = res.get("skipped") or (
            f"median {res['median']:.3f} s (CPU {res['cpu_median']:.3f} s, "
            f"sys {res['sys_median']:.3f} s), peak {res['peak_mib']:.0f} MiB"
        )
        log(f"{label:>10s} {key_mode:5s} {sec:>5g} s: {msg}")
    out["config"]["allocator"] = " + ".join(sorted(conditions)) or (
        "default" if default_allocator else "freed memory kept"
    )
    out["config"]["load_avg_end"] = list(os.getloadavg())
    return out


def _fmt_time(res, ref):
    if not res or "median" not in res:
        return (res or {}).get("skipped", "-").replace("|", "/")
    s = f"{res['median']:.2f} / {res['cpu_median']:.2f}"
    if ref and "median" in ref:
        s += (
            f" ({ref['median'] / res['median']:.1f}x"
            f" / {ref['cpu_median'] / res['cpu_median']:.1f}x)"
        )
    return s


def _fmt_mem(res):
    return f"{res['peak_mib']:.0f}" if res and "peak_mib" in res else "-"


def describe_conditions(config):
    """One line naming what the results were measured under."""
    device = config.get("device", "cpu")
    parts = [device]
    if device == "cpu":
        n = config.get("threads")
        parts.append(f"{n} thread" + ("" if n == 1 else "s"))
    elif config.get("gpu"):
        parts.append(config["gpu"])
    parts.append(" + ".join(config.get("precisions", ["fp32"])))
    timing = config.get("timing", "wall")
    parts.append("CUDA-event time" if timing == "cuda_events" else "wall time")
    allocator = config.get("allocator", "not recorded")
    return ", ".join(parts) + f"; allocator: {allocator}"


def format_tables(results):
    """Markdown of :func:`run_benchmark` results: the conditions, a
    sizes/MACs table and a speed/memory table per precision."""
    cfg = results["config"]
    models = results["models"]
    durs = [str(d) for d in cfg["durations"]]
    ref = models.get(REFERENCE) or {}
    head = ["model", "params"] + [f"GMACs/s @{d} s" for d in durs]
    head += [f"% of {REFERENCE} MACs @{' / '.join(durs)} s"]
    rows = [head + ["FFT+complex share (longest)"], ["---"] * (len(durs) + 4)]
    for name, e in models.items():
        cells, pct, share = [], [], "-"
        for d in durs:
            m = e["macs"].get(d)
            r = m and ref.get("macs", {}).get(d)
            cells.append(f"{m['total'] / 1e9 / float(d):.2f}" if m else "-")
            pct.append(f"{100 * m['total'] / r['total']:.1f}" if r else "-")
            if m:
                share = f"{100 * (m['fft'] + m['complex']) / m['total']:.1f}%"
        cells += [" / ".join(pct) or "-", share]
        rows.append([name, f"{e['params'] / 1e6:.3f}M"] + cells)
    out = f"Measured on {describe_conditions(cfg)}\n\n" + markdown(rows)
    unit = "GPU MiB (max allocated)" if cfg["device"] != "cpu" else "MiB RSS"
    cuda = cfg.get("timing") == "cuda_events"
    timed = "GPU (CUDA events) / CPU" if cuda else "wall / CPU"
    for precision in cfg.get("precisions", ["fp32"]):
        keys = mode_key("infer", precision), mode_key("train", precision)
        head = ["model", "input"]
        head += [f"inference s: {timed}, medians (speed-up vs {REFERENCE})"]
        head += [f"train step s: {timed} (speed-up)"]
        rows = [head + [f"peak infer {unit}", f"peak train {unit}"]]
        rows.append(["---"] * 6)
        for name, e in models.items():
            for d in durs:
                inf, trn = (e.get(k, {}).get(d) for k in keys)
                r_inf, r_trn = (ref.get(k, {}).get(d) for k in keys)
                rows.append(
                    [name, f"{d} s", _fmt_time(inf, r_inf)]
                    + [_fmt_time(trn, r_trn), _fmt_mem(inf), _fmt_mem(trn)]
                )
        out += f"\n\n{precision}:\n\n" + markdown(rows)
    return out


def plot_results(results, path):
    """Log-log plot (PNG) of time per second of audio vs input length, an
    inference and a training-step panel; returns the number of curves."""
    import matplotlib.ticker

    plt = pyplot()
    cfg = results.get("config", {})
    precisions = cfg.get("precisions", ["fp32"])
    styles = ["-", "--", ":", "-."]
    timed = "GPU" if cfg.get("timing") == "cuda_events" else "wall"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curves = 0
    panels = (("infer", "inference"), ("train", "training step"))
    for ax, (mode, title) in zip(axes, panels):
        for i, (name, entry) in enumerate(results.get("models", {}).items()):
            for j, precision in enumerate(precisions):
                cases = entry.get(mode_key(mode, precision), {})
                pts = sorted(
                    (float(d), r["median"] / float(d))
                    for d, r in cases.items()
                    if isinstance(r, dict) and "median" in r
                )
                if not pts:
                    continue
                label = name if len(precisions) == 1 else f"{name} {precision}"
                ax.plot(
                    *zip(*pts),
                    styles[j % len(styles)],
                    marker="o",
                    color=colours[i % len(colours)],
                    label=label,
                )
                curves += 1
        ax.set(xscale="log", yscale="log", title=title)
        ax.set_xlabel("input length (s of audio)")
        durations = sorted(float(d) for d in cfg.get("durations", []))
        if durations:  # the measured lengths as the x ticks
            ax.set_xticks(durations, [f"{d:g}" for d in durations])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    axes[0].set_ylabel(f"{timed} time per second of audio (s/s)")
    fig.suptitle(describe_conditions(cfg), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return curves

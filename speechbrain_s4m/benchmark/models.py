"""Side-by-side benchmark of S4M-tiny, S4M, SepFormer and Conv-TasNet.

Measures, for each model fragment of ``speechbrain_s4m/hparams/models``:

* trainable parameters (encoder + masknet + decoder);
* MACs per second of 8 kHz audio, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
  attention) extended by :func:`mac_counter` with the FFTs and the complex
  arithmetic of the S4 layers (which the stock counter does not see);
* time of inference and of one training step (forward + PIT SI-SNR loss +
  backward + Adam step), median of repeats: wall and process CPU time on
  the CPU, CUDA-event time on a GPU (:mod:`.measure`), at fp32 and
  optionally fp16/bf16 autocast;
* peak memory: on CPU every (model, duration, mode) runs in its own
  subprocess and reports its peak resident set size (``ru_maxrss``) and the
  resident size just before the measured runs; on GPU
  ``torch.cuda.max_memory_allocated`` after a reset per case.

Every case process keeps freed memory for reuse
(:func:`speechbrain_s4m.allocator.keep_freed_memory`, all models alike)
unless ``default_allocator`` is set; the condition is recorded in the
results and printed with the tables. Model labels may carry fragment
overrides (``label=fragment``), e.g. an activation-checkpointing variant
(:func:`checkpointing_variants`) measured beside the plain model.
:func:`plot_results` draws time per second of audio against the length.

Runs whose predicted wall time or memory (extrapolated from the shorter
durations of the same model) exceed the budget are skipped and marked.

Authors: the speechbrain-s4m contributors
"""

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
    grad_scaler,
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

aten = torch.ops.aten


def build_model(name, sample_rate=8000, num_spks=2, overrides=None):
    """Build a :class:`Separator` from a model fragment.

    Arguments
    ---------
    name : str
        Fragment name (``s4m_tiny``, ``s4m``, ``sepformer``, ``convtasnet``).
    sample_rate : int
        Sampling rate.
    num_spks : int
        Number of sources.
    overrides : dict, optional
        Overrides of the fragment's keys.

    Returns
    -------
    Separator
        :class:`speechbrain_s4m.lobes.separator.Separator`, the model of the
        training recipes and of inference.

    Example
    -------
    >>> sep = build_model(
    ...     "s4m_tiny", overrides={"num_iterations": 1, "hidden_channels": 8}
    ... )
    >>> sep(torch.randn(1, 100)).shape
    torch.Size([1, 100, 2])
    """
    hp = load_model_config(name, sample_rate, num_spks, overrides)
    return Separator(hp["Encoder"], hp["MaskNet"], hp["Decoder"], num_spks)


# ---------------------------------------------------------------- MACs --
# FlopCounterMode counts 2 flops per real multiply-accumulate of matmuls,
# convolutions and attention. The additions below use the same unit.


def _numel(shape):
    return math.prod(shape) if len(shape) else 1


def _fft_flops(n, batch):
    """2 * real MACs of ``batch`` FFTs of size ``n``.

    Convention: a (real or complex) FFT of size n costs (n/2) log2(n) complex
    multiply-accumulates (radix-2 butterflies; an overestimate by ~2x for real
    FFTs), and one complex MAC is 4 real MACs.
    """
    if n <= 1:
        return 0
    return int(2 * 4 * batch * (n / 2) * math.log2(n))


def _fft_r2c(x, dim, *args, out_val=None, **kwargs):
    n = _numel([x.shape[d] for d in dim])
    return _fft_flops(n, x.numel() // max(n, 1))


def _fft_c2r(x, dim, normalization, last_dim_size, *args, out_val=None, **kw):
    n = _numel([out_val.shape[d] for d in dim])
    return _fft_flops(n, out_val.numel() // max(n, 1))


def _fft_c2c(x, dim, *args, out_val=None, **kwargs):
    n = _numel([x.shape[d] for d in dim])
    return _fft_flops(n, x.numel() // max(n, 1))


def _complex_elementwise(*args, out_val=None, **kwargs):
    """Complex products/quotients: 4 real MACs per output element."""
    if isinstance(out_val, torch.Tensor) and out_val.is_complex():
        return 2 * 4 * out_val.numel()
    return 0


def _complex_aware(op):
    """Stock formula of ``op``, times 4 when its operands are complex."""
    from torch.utils.flop_counter import flop_registry

    base = flop_registry[op]

    def formula(*args, out_val=None, **kwargs):
        flops = base(*args, out_val=out_val, **kwargs)
        if any(isinstance(a, torch.Tensor) and a.is_complex() for a in args):
            flops *= 4
        return flops

    formula._get_raw = True
    return formula


def _raw(f):
    f._get_raw = True
    return f


FFT_OPS = (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c)
COMPLEX_ELEMENTWISE_OPS = (aten.mul, aten.div, aten.reciprocal)


def mac_counter():
    """A ``FlopCounterMode`` that also sees FFTs and complex arithmetic.

    Returns
    -------
    torch.utils.flop_counter.FlopCounterMode
        Use as a context manager; see :func:`count_macs`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {
        aten._fft_r2c: _raw(_fft_r2c),
        aten._fft_c2r: _raw(_fft_c2r),
        aten._fft_c2c: _raw(_fft_c2c),
    }
    for op in COMPLEX_ELEMENTWISE_OPS:
        mapping[op] = _raw(_complex_elementwise)
    for op in (aten.mm, aten.bmm, aten.addmm, aten.baddbmm):
        mapping[op] = _complex_aware(op)
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_macs(model, mix):
    """MACs of ``model(mix)`` split into categories.

    Arguments
    ---------
    model : torch.nn.Module
        The separator.
    mix : torch.Tensor
        ``[batch, time]`` input.

    Returns
    -------
    dict
        ``total``, ``fft`` (FFT convolutions), ``complex`` (complex
        element-wise products, e.g. spectra products and the Cauchy kernel)
        and ``dense`` (matmul/conv/attention, the stock counter's part).

    Example
    -------
    >>> m = torch.nn.Linear(4, 3, bias=False)
    >>> count_macs(m, torch.randn(2, 4))["total"]
    24
    """
    counter = mac_counter()
    with counter, torch.no_grad():
        model(mix)
    per_op = counter.get_flop_counts()["Global"]
    fft = sum(v for k, v in per_op.items() if k in FFT_OPS) // 2
    cplx = sum(v for k, v in per_op.items() if k in COMPLEX_ELEMENTWISE_OPS)
    total = counter.get_total_flops() // 2
    return {
        "total": total,
        "fft": fft,
        "complex": cplx // 2,
        "dense": total - fft - cplx // 2,
    }


# ------------------------------------------------------------ variants --
def parse_model_spec(spec):
    """Splits a ``--models`` entry into (label, fragment).

    ``"s4m_tiny"`` measures the fragment under its own name;
    ``"label=fragment"`` measures the fragment under another name, so that
    one fragment can run with different overrides in the same run.

    Arguments
    ---------
    spec : str
        The entry.

    Returns
    -------
    tuple of str
        ``(label, fragment)``.

    Example
    -------
    >>> parse_model_spec("s4m_tiny")
    ('s4m_tiny', 's4m_tiny')
    >>> parse_model_spec("tiny_ckpt=s4m_tiny")
    ('tiny_ckpt', 's4m_tiny')
    """
    label, sep, fragment = spec.partition("=")
    if not sep:
        return spec, spec
    if not label or not fragment:
        raise ValueError(f"model {spec!r}: expected NAME or LABEL=FRAGMENT")
    return label, fragment


def fragment_has_key(fragment, key):
    """Whether the model fragment defines the top-level ``key``.

    Example
    -------
    >>> fragment_has_key("s4m_tiny", "checkpoint_iterations")
    True
    >>> fragment_has_key("sepformer", "checkpoint_iterations")
    False
    """
    try:
        check_overrides(model_config_path(fragment), {key: None})
    except KeyError:
        return False
    return True


def checkpointing_variants(models, overrides=None):
    """Adds an activation-checkpointing variant of every model that has one.

    For each entry whose fragment defines ``checkpoint_iterations`` (the S4M
    masknets), a variant ``<label>+ckpt`` with ``checkpoint_iterations:
    True`` is inserted right after it, so that both run side by side.

    Arguments
    ---------
    models : sequence of str
        ``--models`` entries (``name`` or ``label=fragment``).
    overrides : dict, optional
        ``{label: {key: value}}``; the variant inherits its base's.

    Returns
    -------
    tuple
        ``(models, overrides)``, extended.

    Example
    -------
    >>> m, o = checkpointing_variants(["s4m_tiny", "sepformer"])
    >>> m
    ['s4m_tiny', 's4m_tiny+ckpt=s4m_tiny', 'sepformer']
    >>> o
    {'s4m_tiny+ckpt': {'checkpoint_iterations': True}}
    """
    out_models, out_over = [], dict(overrides or {})
    for spec in models:
        out_models.append(spec)
        label, fragment = parse_model_spec(spec)
        if fragment_has_key(fragment, "checkpoint_iterations"):
            variant = f"{label}+ckpt"
            out_models.append(f"{variant}={fragment}")
            out_over[variant] = {
                **out_over.get(label, {}),
                "checkpoint_iterations": True,
            }
    return out_models, out_over


def mode_key(mode, precision):
    """Results key of a mode at a precision: ``infer``/``train`` for fp32
    (what :mod:`speechbrain_s4m.compare` reads), else ``infer_fp16`` etc.

    Example
    -------
    >>> mode_key("infer", "fp32"), mode_key("train", "fp16")
    ('infer', 'train_fp16')
    """
    return mode if precision == "fp32" else f"{mode}_{precision}"


# -------------------------------------------------------------- timing --
def run_case(spec):
    """Measure one (model, duration, mode, precision) case in this process.

    Arguments
    ---------
    spec : dict
        ``model`` (fragment), ``seconds``, ``mode`` ("infer" or "train"),
        ``repeats``, ``warmup``, ``device``, ``threads``, ``sample_rate``,
        ``num_spks``, ``count_macs`` (bool); optional ``precision``
        ("fp32" default, "fp16", "bf16": autocast), ``overrides`` (dict of
        fragment keys) and ``default_allocator`` (bool: leave the C
        allocator as it is instead of
        :func:`speechbrain_s4m.allocator.keep_freed_memory`).

    Returns
    -------
    dict
        ``times`` (s) and ``median``: wall time on the CPU, CUDA-event time
        on a GPU (``timing`` says which); ``wall_times`` / ``wall_median``,
        ``cpu_times`` / ``cpu_median`` (CPU time of the process, all
        threads; robust to other processes' load when run with 1 thread),
        ``sys_times`` / ``sys_median`` (its system part: page faults of
        large temporaries show here),
        ``peak_mib`` (peak memory of the case: process RSS on the CPU,
        ``torch.cuda.max_memory_allocated`` since a reset on a GPU),
        ``base_mib`` (memory before the measured runs), ``allocator``,
        ``precision``, optional ``macs``.
    """
    allocator = apply_allocator(spec.get("default_allocator", False))
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = check_device(spec["device"])
    precision = spec.get("precision", "fp32")
    model = build_model(
        spec["model"],
        spec["sample_rate"],
        spec["num_spks"],
        spec.get("overrides"),
    )
    model.to(device)
    length = int(round(spec["seconds"] * spec["sample_rate"]))
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
        scaler = grad_scaler(device, precision)
        sources = torch.randn(1, length, spec["num_spks"], device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with cast:
                est = model(mix)
            loss = get_si_snr_with_pitwrapper(sources, est.float()).mean()
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

    base = memory.start()  # before the warm-up: the RSS stays at its peak
    for _ in range(spec["warmup"]):
        step()
    runs = [timer(step) for _ in range(spec["repeats"])]
    peak = memory.peak()
    wall = [r["wall_s"] for r in runs]
    cpu = [r["cpu_s"] for r in runs]
    sys_times = [r["sys_s"] for r in runs]
    gpu = [r["gpu_s"] for r in runs] if timer.is_cuda else None
    times = gpu if gpu is not None else wall
    result.update(
        times=times,
        median=statistics.median(times),
        timing="cuda_events" if gpu is not None else "wall",
        wall_times=wall,
        wall_median=statistics.median(wall),
        cpu_times=cpu,
        cpu_median=statistics.median(cpu),
        sys_times=sys_times,
        sys_median=statistics.median(sys_times),
        peak_mib=peak,
        base_mib=base,
        allocator=allocator,
        precision=precision,
    )
    if timer.is_cuda:
        del model, mix
        torch.cuda.empty_cache()
    return result


def _run_in_subprocess(spec, timeout):
    """Run :func:`run_case` in a fresh interpreter (clean peak memory)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    env["MKL_NUM_THREADS"] = str(spec["threads"])
    cmd = [
        sys.executable,
        "-m",
        "speechbrain_s4m.benchmark",
        "--worker",
        json.dumps(spec),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"timeout > {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"skipped": f"error: {tail[0][:120]}"}
    return json.loads(lines[-1])


def _extrapolate(points, x, offset=0.0):
    """Power-law extrapolation of ``[(x_i, y_i)]`` to ``x``.

    ``y - offset`` is extrapolated with an exponent fitted on the last two
    points and clamped to [1, 2] (linear to quadratic in the duration).
    """
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


def repeats_for(seconds, repeats):
    """Fewer repeats for long inputs: all up to 4 s, half to 16 s, else 1."""
    if seconds <= 4:
        return repeats
    if seconds <= 16:
        return max(1, repeats // 2)
    return 1


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
    """Run the whole benchmark.

    Arguments
    ---------
    models : sequence of str
        Model fragments, or ``label=fragment`` entries
        (:func:`parse_model_spec`).
    durations : sequence of float
        Input durations in seconds.
    repeats : int
        Timed runs for inputs up to 4 s (see :func:`repeats_for`).
    device : str
        ``cpu`` or ``cuda[:i]``.
    threads : int
        ``torch.set_num_threads`` in the workers.
    skip_train : bool
        Only measure inference.
    max_seconds : float
        Skip a case when one run is predicted to take longer (and kill a
        case that runs past its predicted total).
    max_memory_gib : float
        Skip a case whose peak memory is predicted above this.
    sample_rate, num_spks : int
        Model configuration.
    in_process : bool
        Measure in this process (GPU default); memory is then the process
        peak so far on CPU.
    log : callable
        Progress output.
    precisions : sequence of str
        ``fp32``, ``fp16``, ``bf16`` (autocast), each measured.
    model_overrides : dict, optional
        ``{label: {key: value}}``: fragment overrides per model label,
        checked against the fragment before anything runs.
    default_allocator : bool
        Leave the C allocator as it is; by default every case process
        calls :func:`speechbrain_s4m.allocator.keep_freed_memory` (all
        models alike).

    Returns
    -------
    dict
        JSON-serialisable results: ``config`` (with ``allocator``, the
        condition the cases ran under, and ``precisions``), ``models`` (per
        label: ``fragment``, ``overrides``, ``params``, ``macs`` per
        duration, ``infer`` / ``train`` (fp32) and ``infer_fp16`` ... per
        duration).
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
    if in_process:
        # the cases run here: this process's condition is theirs
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
        # MACs without computing, on the meta device, where the model's
        # ops support it (SepFormer, Conv-TasNet); otherwise they are
        # counted during the inference case (one real forward)
        model.to("meta").eval()
        for sec in durations:
            length = int(round(sec * sample_rate))
            try:
                mix = torch.empty(1, length, device="meta")
                entry["macs"][str(sec)] = count_macs(model, mix)
            except (RuntimeError, NotImplementedError):
                break
        del model
        out["models"][label] = entry
        log(f"{label}: {entry['params']:,} trainable parameters")
    # models interleaved per (mode, precision, duration): on a shared
    # machine the cases compared with each other run close together in time
    history, conditions = {}, set()
    for mode in modes:
        for precision in precisions:
            key_mode = mode_key(mode, precision)
            for sec in sorted(durations):
                for label, fragment in specs:
                    entry = out["models"][label]
                    time_pts, mem_pts, base = history.setdefault(
                        (label, key_mode), ([], [], [0.0])
                    )
                    reps = repeats_for(sec, repeats)
                    warm = 1 if sec <= 16 else 0
                    t_pred = _extrapolate(time_pts, sec)
                    m_pred = _extrapolate(mem_pts, sec, offset=base[0])
                    key = str(sec)
                    if t_pred is not None and t_pred > max_seconds:
                        res = {
                            "skipped": f"predicted {t_pred:.0f} s/run"
                            f" > {max_seconds:.0f} s"
                        }
                    elif m_pred is not None and m_pred > max_memory_gib * 1024:
                        res = {
                            "skipped": f"predicted {m_pred / 1024:.1f} GiB"
                            f" > {max_memory_gib:.0f} GiB"
                        }
                    else:
                        spec = {
                            "model": fragment,
                            "label": label,
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
                            "count_macs": mode == "infer"
                            and key not in entry["macs"],
                        }
                        budget = max_seconds * (reps + warm + 2) + 60
                        if in_process:
                            res = run_case(spec)
                        else:
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
                        f"median {res['median']:.3f} s (CPU "
                        f"{res['cpu_median']:.3f} s, sys "
                        f"{res['sys_median']:.3f} s), peak "
                        f"{res['peak_mib']:.0f} MiB"
                    )
                    log(f"{label:>10s} {key_mode:5s} {sec:>5g} s: {msg}")
    out["config"]["allocator"] = " + ".join(sorted(conditions)) or (
        "default" if default_allocator else "freed memory kept"
    )
    out["config"]["load_avg_end"] = list(os.getloadavg())
    return out


# -------------------------------------------------------------- report --
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
    if not res or "peak_mib" not in res:
        return "-"
    return f"{res['peak_mib']:.0f}"


def describe_conditions(config):
    """One line naming what the results were measured under.

    Example
    -------
    >>> describe_conditions({"device": "cpu", "threads": 2})
    'cpu, 2 threads, fp32, wall time; allocator: not recorded'
    """
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
    """Markdown tables of :func:`run_benchmark` results.

    Arguments
    ---------
    results : dict
        Output of :func:`run_benchmark`.

    Returns
    -------
    str
        A line with the conditions (device, threads, precisions, timing,
        allocator), a sizes/MACs table and a speed/memory table per
        precision.
    """
    cfg = results["config"]
    models = results["models"]
    durs = [str(d) for d in cfg["durations"]]
    ref = models.get(REFERENCE)
    lines = [
        f"Measured on {describe_conditions(cfg)}",
        "",
        "| model | params | "
        + " | ".join(f"GMACs/s @{d} s" for d in durs)
        + f" | % of {REFERENCE} MACs @{' / '.join(durs)} s"
        + " | FFT+complex share (longest) |",
        "|---" * (len(durs) + 4) + "|",
    ]
    for name, e in models.items():
        cells = []
        pct, share = [], "-"
        for d in durs:
            m = e["macs"].get(d)
            if not m:
                cells.append("-")
                pct.append("-")
                continue
            cells.append(f"{m['total'] / 1e9 / float(d):.2f}")
            if ref and ref["macs"].get(d):
                pct.append(f"{100 * m['total'] / ref['macs'][d]['total']:.1f}")
            else:
                pct.append("-")
            extra = m["fft"] + m["complex"]
            share = f"{100 * extra / m['total']:.1f}%"
        lines.append(
            f"| {name} | {e['params'] / 1e6:.3f}M | "
            + " | ".join(cells)
            + f" | {' / '.join(pct) or '-'} | {share} |"
        )
    unit = "GPU MiB (max allocated)" if cfg["device"] != "cpu" else "MiB RSS"
    timed = (
        "GPU (CUDA events) / CPU"
        if cfg.get("timing") == "cuda_events"
        else "wall / CPU"
    )
    for precision in cfg.get("precisions", ["fp32"]):
        k_inf, k_trn = (
            mode_key("infer", precision),
            mode_key("train", precision),
        )
        lines += [
            "",
            f"{precision}:",
            "",
            f"| model | input | inference s: {timed}, medians (speed-up vs "
            f"{REFERENCE}) | train step s: {timed} (speed-up) "
            f"| peak infer {unit} | peak train {unit} |",
            "|---|---|---|---|---|---|",
        ]
        for name, e in models.items():
            for d in durs:
                inf = e.get(k_inf, {}).get(d)
                trn = e.get(k_trn, {}).get(d)
                r_inf = ref.get(k_inf, {}).get(d) if ref else None
                r_trn = ref.get(k_trn, {}).get(d) if ref else None
                lines.append(
                    f"| {name} | {d} s | {_fmt_time(inf, r_inf)} | "
                    f"{_fmt_time(trn, r_trn)} | {_fmt_mem(inf)} "
                    f"| {_fmt_mem(trn)} |"
                )
    return "\n".join(lines)


# ---------------------------------------------------------------- plot --
def plot_results(results, path):
    """Log-log plot of time per second of audio vs input length.

    Two panels, inference and training step; one line per model (colour)
    and precision (line style); skipped cases are left out. The title names
    the device, threads, precisions and the allocator condition.

    Arguments
    ---------
    results : dict
        Output of :func:`run_benchmark` (or a benchmark JSON loaded).
    path : str or pathlib.Path
        The PNG to write.

    Returns
    -------
    int
        Number of curves drawn.

    Example
    -------
    >>> import json, os, tempfile
    >>> results = {
    ...     "config": {"device": "cpu", "threads": 2, "durations": [1, 4]},
    ...     "models": {
    ...         "m": {"infer": {"1": {"median": 0.2}, "4": {"median": 0.5}}}
    ...     },
    ... }
    >>> path = os.path.join(tempfile.mkdtemp(), "plot.png")
    >>> plot_results(results, path), os.path.getsize(path) > 0
    (1, True)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    styles[j % len(styles)],
                    marker="o",
                    color=colours[i % len(colours)],
                    label=label,
                )
                curves += 1
        ax.set_xscale("log")
        ax.set_yscale("log")
        durations = sorted(float(d) for d in cfg.get("durations", []))
        if durations:  # the measured lengths as the x ticks
            ax.set_xticks(durations, [f"{d:g}" for d in durations])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(title)
        ax.set_xlabel("input length (s of audio)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    axes[0].set_ylabel(f"{timed} time per second of audio (s/s)")
    fig.suptitle(describe_conditions(cfg), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return curves

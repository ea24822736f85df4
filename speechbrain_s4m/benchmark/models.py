"""Side-by-side benchmark of S4M-tiny, S4M, SepFormer and Conv-TasNet.

Measures, for each model fragment of ``speechbrain_s4m/hparams/models``:

* trainable parameters (encoder + masknet + decoder);
* MACs per second of 8 kHz audio, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
  attention) extended by :func:`mac_counter` with the FFTs and the complex
  arithmetic of the S4 layers (which the stock counter does not see);
* CPU (or GPU) wall time of inference and of one training step
  (forward + PIT SI-SNR loss + backward + Adam step), median of repeats;
* peak memory: on CPU every (model, duration, mode) runs in its own
  subprocess and reports its peak resident set size (``ru_maxrss``) and the
  resident size just before the measured runs; on GPU
  ``torch.cuda.max_memory_allocated``.

Runs whose predicted wall time or memory (extrapolated from the shorter
durations of the same model) exceed the budget are skipped and marked.

Authors: the speechbrain-s4m contributors
"""

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from speechbrain_s4m.config import load_model_config

# The model the recipes train and inference runs; also importable from here
from speechbrain_s4m.lobes.separator import Separator as Separator

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


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


# -------------------------------------------------------------- timing --
def _rss_mib():
    """Current resident set size of this process in MiB (Linux)."""
    try:
        with open("/proc/self/statm") as fin:
            pages = int(fin.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def _peak_rss_mib():
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(spec):
    """Measure one (model, duration, mode) case in this process.

    Arguments
    ---------
    spec : dict
        ``model``, ``seconds``, ``mode`` ("infer" or "train"), ``repeats``,
        ``warmup``, ``device``, ``threads``, ``sample_rate``, ``num_spks``,
        ``count_macs`` (bool).

    Returns
    -------
    dict
        ``times`` (wall, s), ``median`` (s), ``cpu_times`` / ``cpu_median``
        (CPU time of the process, all threads; robust to other processes'
        load when run with 1 thread), ``peak_mib`` (peak memory of the case),
        ``base_mib`` (memory before the measured runs), optional ``macs``.
    """
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = build_model(spec["model"], spec["sample_rate"], spec["num_spks"])
    model.to(device)
    length = int(round(spec["seconds"] * spec["sample_rate"]))
    mix = torch.randn(1, length, device=device)
    result = {}
    if spec.get("count_macs"):
        model.eval()
        result["macs"] = count_macs(model, mix)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = _rss_mib()

    if spec["mode"] == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                model(mix)

    else:
        from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        sources = torch.randn(1, length, spec["num_spks"], device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            est = model(mix)
            loss = get_si_snr_with_pitwrapper(sources, est).mean()
            loss.backward()
            opt.step()

    times, cpu_times = [], []
    for i in range(spec["warmup"] + spec["repeats"]):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _peak_rss_mib()
    result.update(
        times=times,
        median=statistics.median(times),
        cpu_times=cpu_times,
        cpu_median=statistics.median(cpu_times),
        peak_mib=peak,
        base_mib=base,
    )
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
):
    """Run the whole benchmark.

    Arguments
    ---------
    models : sequence of str
        Model fragments.
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

    Returns
    -------
    dict
        JSON-serialisable results: ``config``, ``models`` (per model:
        ``params``, ``macs`` per duration, ``infer`` / ``train`` per
        duration).
    """
    modes = ["infer"] if skip_train else ["infer", "train"]
    out = {
        "config": {
            "durations": list(durations),
            "repeats": repeats,
            "device": device,
            "threads": threads,
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
    for name in models:
        model = build_model(name, sample_rate, num_spks)
        entry = {"params": count_parameters(model), "macs": {}}
        entry.update({mode: {} for mode in modes})
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
        out["models"][name] = entry
        log(f"{name}: {entry['params']:,} trainable parameters")
    # models interleaved per (mode, duration): on a shared machine the
    # cases compared with each other run close together in time
    history = {}
    for mode in modes:
        for sec in sorted(durations):
            for name in models:
                entry = out["models"][name]
                time_pts, mem_pts, base = history.setdefault(
                    (name, mode), ([], [], [0.0])
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
                        "model": name,
                        "seconds": sec,
                        "mode": mode,
                        "repeats": reps,
                        "warmup": warm,
                        "device": device,
                        "threads": threads,
                        "sample_rate": sample_rate,
                        "num_spks": num_spks,
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
                    if "macs" in res:
                        entry["macs"][key] = res.pop("macs")
                entry[mode][key] = res
                msg = res.get("skipped") or (
                    f"median {res['median']:.3f} s (CPU {res['cpu_median']:.3f}"
                    f" s), peak {res['peak_mib']:.0f} MiB"
                )
                log(f"{name:>10s} {mode:5s} {sec:>5g} s: {msg}")
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


def format_tables(results):
    """Markdown tables of :func:`run_benchmark` results.

    Arguments
    ---------
    results : dict
        Output of :func:`run_benchmark`.

    Returns
    -------
    str
        A sizes/MACs table and a speed/memory table.
    """
    cfg = results["config"]
    models = results["models"]
    durs = [str(d) for d in cfg["durations"]]
    ref = models.get(REFERENCE)
    lines = [
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
    lines.append("")
    unit = "GPU MiB (max allocated)" if cfg["device"] != "cpu" else "MiB RSS"
    lines.append(
        "| model | input | inference s: wall / CPU, medians (speed-up vs "
        f"{REFERENCE}: wall / CPU) | train step s: wall / CPU "
        f"(speed-up) | peak infer {unit} | peak train {unit} |"
    )
    lines.append("|---|---|---|---|---|---|")
    for name, e in models.items():
        for d in durs:
            inf = e.get("infer", {}).get(d)
            trn = e.get("train", {}).get(d)
            r_inf = ref.get("infer", {}).get(d) if ref else None
            r_trn = ref.get("train", {}).get(d) if ref else None
            lines.append(
                f"| {name} | {d} s | {_fmt_time(inf, r_inf)} | "
                f"{_fmt_time(trn, r_trn)} | {_fmt_mem(inf)} | {_fmt_mem(trn)} |"
            )
    return "\n".join(lines)

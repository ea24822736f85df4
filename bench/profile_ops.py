"""Where a model's inference time goes: per-operator CPU profile vs length.

For each input length, after a warm-up forward, one forward under
``torch.inference_mode`` is timed with the process's user and system CPU
time and its minor page faults (``getrusage``), then one more runs under
``torch.profiler``. Three tables per length:

* operators: the aten operators by self CPU time (share of the total);
* kinds: the same time grouped into depthwise convolutions, other
  convolutions, matmuls, FFTs, resampling (interpolate / pooling),
  reductions (norm statistics), element-wise arithmetic, copies and layout,
  and the rest (a convolution is depthwise when its weight has one input
  channel per group);
* regions: the time grouped by the innermost enclosing module class or
  named helper function of the model (labelled with
  ``torch.profiler.record_function`` through forward hooks and wrappers put
  in place only while profiling; the model's code is unchanged), e.g. the
  gLN statistics of the S4M masknet.

Usage::

    python bench/profile_ops.py --model s4m_tiny \\
        --seconds 4 16 60 --threads 1 [--top 10] [--json profile.json]

Profiles on a loaded machine are indicative: shares are more stable than
absolute times.

Authors
 * speechbrain-s4m contributors 2026
"""

import argparse
import contextlib
import functools
import importlib
import json
import resource
import sys
import time
from collections import defaultdict

import torch

from speechbrain_s4m.benchmark.measure import apply_allocator
from speechbrain_s4m.benchmark.models import build_model

#: ``module:function`` helpers labelled as regions when they exist (looked
#: up by name in the module that calls them; missing names are skipped).
REGION_FUNCTIONS = (
    "speechbrain_s4m.lobes.s4m:gln_statistics",
    "speechbrain_s4m.lobes.s4m:_gln_affine",
    "speechbrain_s4m.lobes.s4m:_gln_scale_shift",
    "speechbrain_s4m.lobes.s4m:_pool",
    "speechbrain_s4m.lobes.s4m:small_conv",
    "speechbrain_s4m.nnet.ssm:fft_conv",
)

_KINDS = (
    ("FFT", ("fft",)),
    ("matmul", ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear")),
    (
        "resample (interpolate/pool)",
        ("upsample", "interpolate", "pool", "adaptive_avg"),
    ),
    (
        "reduction (norm statistics)",
        ("sum", "mean", "var", "std", "norm", "amax", "max", "min"),
    ),
    (
        "copy/layout",
        (
            "copy_",
            "clone",
            "contiguous",
            "cat",
            "pad",
            "empty",
            "zeros",
            "fill_",
            "_to_copy",
            "to",
            "index",
            "stack",
            "narrow",
            "slice",
            "as_strided",
            "transpose",
            "view",
            "reshape",
            "unsqueeze",
            "squeeze",
            "permute",
            "expand",
            "flip",
            "resolve",
        ),
    ),
)


def op_kind(name, input_shapes=None):
    """The kind of work of an aten operator (see the module docstring).

    Arguments
    ---------
    name : str
        Operator name, e.g. ``"aten::mkldnn_convolution"``.
    input_shapes : list, optional
        Shapes of its inputs as recorded by the profiler (``[input,
        weight, ...]`` for convolutions).

    Returns
    -------
    str

    Example
    -------
    >>> op_kind("aten::mkldnn_convolution", [[1, 512, 400], [512, 1, 5]])
    'conv depthwise'
    >>> op_kind("aten::mkldnn_convolution", [[1, 128, 400], [512, 128, 1]])
    'conv other'
    >>> op_kind("aten::_fft_r2c"), op_kind("aten::addmm"), op_kind("aten::mul")
    ('FFT', 'matmul', 'element-wise')
    >>> op_kind("aten::upsample_nearest1d"), op_kind("aten::sum")
    ('resample (interpolate/pool)', 'reduction (norm statistics)')
    """
    op = name.split("::")[-1].lstrip("_")
    if "conv" in op:
        shapes = input_shapes or []
        if (
            len(shapes) > 1
            and len(shapes[0]) > 1
            and len(shapes[1]) > 1
            and shapes[1][1] == 1
            and shapes[0][1] > 1
        ):
            return "conv depthwise"
        return "conv other"
    base = op.rstrip("_") if op.endswith("_") and op != "copy_" else op
    for kind, names in _KINDS:
        for n in names:
            if (
                base == n
                or base.startswith(n + "_")
                or (len(n) >= 3 and n in base)
            ):
                return kind
    if name.startswith("aten::"):
        return "element-wise"
    return "other"


@contextlib.contextmanager
def labelled_regions(model, functions=REGION_FUNCTIONS):
    """Labels every module's forward and the named helper functions with
    ``torch.profiler.record_function`` while the context is active.

    Arguments
    ---------
    model : torch.nn.Module
        The model; a label per call of each submodule (``module::<class>``).
    functions : sequence of str
        ``package.module:function`` names, replaced by labelled wrappers in
        their module for the duration (``fn::<function>``).

    Example
    -------
    >>> lin = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> with labelled_regions(lin, ()):
    ...     with torch.profiler.profile() as prof:
    ...         _ = lin(torch.randn(1, 3))
    >>> any(e.name == "module::Linear" for e in prof.events())
    True
    """
    handles, patched, open_ranges = [], [], []

    def pre(mod, args):
        rf = torch.profiler.record_function(f"module::{type(mod).__name__}")
        rf.__enter__()
        open_ranges.append(rf)

    def post(mod, args, out):
        open_ranges.pop().__exit__(None, None, None)

    for mod in model.modules():
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    for spec in functions:
        mod_name, _, fn_name = spec.partition(":")
        try:
            where = importlib.import_module(mod_name)
        except ImportError:
            continue
        fn = getattr(where, fn_name, None)
        if not callable(fn):
            continue

        def wrapper(*args, _fn=fn, _label=f"fn::{fn_name}", **kwargs):
            with torch.profiler.record_function(_label):
                return _fn(*args, **kwargs)

        functools.update_wrapper(wrapper, fn)
        setattr(where, fn_name, wrapper)
        patched.append((where, fn_name, fn))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for where, fn_name, fn in patched:
            setattr(where, fn_name, fn)


def _region(event):
    """Innermost enclosing label (``module::`` / ``fn::``) of an event."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(("module::", "fn::")):
            return parent.name
        parent = parent.cpu_parent
    return "(outside the model)"


def summarise(events, top=10):
    """Self CPU time per operator, kind and region from profiler events.

    Arguments
    ---------
    events : iterable of torch.autograd.profiler_util.FunctionEvent
        ``prof.events()``.
    top : int
        Rows kept per table (the rest are summed as ``(others)``).

    Returns
    -------
    dict
        ``total_ms`` (self CPU time of all operators) and ``ops``,
        ``kinds``, ``regions``: lists of ``[name, ms, share, calls]``,
        largest first.
    """
    ops = defaultdict(lambda: [0.0, 0])
    kinds = defaultdict(lambda: [0.0, 0])
    regions = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.name.startswith(("module::", "fn::")):
            continue
        ms = e.self_cpu_time_total / 1000.0
        for table, key in (
            (ops, e.name),
            (kinds, op_kind(e.name, e.input_shapes)),
            (regions, _region(e)),
        ):
            table[key][0] += ms
            table[key][1] += 1
    total = sum(v[0] for v in ops.values()) or 1.0

    def rows(table, n):
        items = sorted(table.items(), key=lambda kv: -kv[1][0])
        out = [[k, v[0], v[0] / total, v[1]] for k, v in items[:n]]
        rest = items[n:]
        if rest:
            ms = sum(v[0] for _, v in rest)
            calls = sum(v[1] for _, v in rest)
            out.append(["(others)", ms, ms / total, calls])
        return out

    return {
        "total_ms": total,
        "ops": rows(ops, top),
        "kinds": rows(kinds, len(kinds)),
        "regions": rows(regions, top),
    }


def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def profile_length(model, seconds, sample_rate=8000, warmup=1, top=10):
    """Times and profiles one inference forward of ``seconds`` of audio.

    Arguments
    ---------
    model : torch.nn.Module
        The separator (``[batch, time]`` in).
    seconds : float
        Input length.
    sample_rate : int
        Samples per second.
    warmup : int
        Unmeasured forwards first.
    top : int
        Rows per table.

    Returns
    -------
    dict
        ``seconds``, ``wall_s``, ``user_s``, ``sys_s``, ``minor_faults`` of
        the unprofiled forward, and :func:`summarise`'s tables of the
        profiled one.

    Example
    -------
    >>> sep = build_model(
    ...     "s4m_tiny", overrides={"num_iterations": 1, "hidden_channels": 8}
    ... )
    >>> res = profile_length(sep.eval(), 0.05, warmup=0, top=3)
    >>> len(res["ops"]) <= 4 and abs(sum(r[2] for r in res["kinds"]) - 1) < 1e-6
    True
    """
    mix = torch.randn(1, int(round(seconds * sample_rate)))
    with torch.inference_mode():
        for _ in range(warmup):
            model(mix)
        t0, u0, s0, f0 = _usage()
        model(mix)
        t1, u1, s1, f1 = _usage()
        with labelled_regions(model):
            with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU],
                record_shapes=True,
            ) as prof:
                model(mix)
    result = {
        "seconds": seconds,
        "wall_s": t1 - t0,
        "user_s": u1 - u0,
        "sys_s": s1 - s0,
        "minor_faults": f1 - f0,
    }
    result.update(summarise(prof.events(), top))
    return result


def format_profile(res, title=""):
    """Text tables of one :func:`profile_length` result."""
    lines = [
        f"== {title}{res['seconds']:g} s: forward wall {res['wall_s']:.3f} s, "
        f"user {res['user_s']:.3f} s, sys {res['sys_s']:.3f} s, "
        f"{res['minor_faults']} minor page faults; profiled self CPU "
        f"{res['total_ms']:.0f} ms"
    ]
    for key, head in (
        ("ops", "operator"),
        ("kinds", "kind"),
        ("regions", "region (innermost module / function)"),
    ):
        lines += ["", f"| {head} | self CPU ms | share | calls |"]
        lines.append("|---|---:|---:|---:|")
        for name, ms, share, calls in res[key]:
            lines.append(
                f"| {name} | {ms:.1f} | {100 * share:.1f}% | {calls} |"
            )
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python bench/profile_ops.py",
        description=__doc__.split("\n")[0],
    )
    p.add_argument("--model", default="s4m_tiny", help="model fragment")
    p.add_argument(
        "--overrides", default=None, help="fragment overrides (YAML mapping)"
    )
    p.add_argument("--seconds", nargs="+", type=float, default=[4, 16])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--top", type=int, default=10)
    p.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave the C allocator as it is (default: keep freed memory)",
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import yaml

    allocator = apply_allocator(args.default_allocator)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = yaml.safe_load(args.overrides) if args.overrides else None
    model = build_model(args.model, args.sample_rate, overrides=overrides)
    model.eval()
    print(
        f"{args.model}, {args.threads} thread(s), torch {torch.__version__}, "
        f"allocator: {allocator}",
        flush=True,
    )
    results = []
    for sec in args.seconds:
        res = profile_length(
            model, sec, args.sample_rate, args.warmup, args.top
        )
        results.append(res)
        print(format_profile(res, f"{args.model}, ") + "\n", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fout:
            json.dump(
                {
                    "model": args.model,
                    "overrides": overrides,
                    "threads": args.threads,
                    "allocator": allocator,
                    "torch": torch.__version__,
                    "results": results,
                },
                fout,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

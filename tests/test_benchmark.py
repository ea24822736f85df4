"""Benchmark machinery: allocator condition, CUDA timing/memory selection
(with a fake ``torch.cuda``), precision, model overrides, plot, CLI."""

import json
import pathlib

import pytest
import torch

from speechbrain_s4m.allocator import _glibc, allocator_mode
from speechbrain_s4m.benchmark import __main__ as cli
from speechbrain_s4m.benchmark import measure, models

DOCS_JSON = (
    pathlib.Path(__file__).parents[1] / "docs/benchmarks/s4m_benchmark.json"
)
# a masknet small enough to run a case in well under a second
TINY = {"num_iterations": 1, "hidden_channels": 8}


class FakeEvent:
    """Stands for ``torch.cuda.Event``; times come from the fake's clock."""

    def __init__(self, fake, enable_timing=False):
        assert enable_timing
        self.fake = fake
        self.at = None

    def record(self):
        self.fake.calls.append("record")
        self.at = self.fake.clock_ms

    def elapsed_time(self, other):
        assert self.fake.calls[-1] == "synchronize", "read before a sync"
        return other.at - self.at


class FakeCuda:
    """Stands for the ``torch.cuda`` module: logs calls, fakes memory."""

    def __init__(self, available=True, count=1):
        self.available, self.count = available, count
        self.calls = []
        self.clock_ms = 0.0
        self.allocated = 3 * 2**20
        self.max_allocated = 0

    def is_available(self):
        return self.available

    def device_count(self):
        return self.count

    def synchronize(self, device=None):
        self.calls.append("synchronize")

    def Event(self, enable_timing=False):
        return FakeEvent(self, enable_timing)

    def reset_peak_memory_stats(self, device=None):
        self.calls.append("reset")
        self.max_allocated = self.allocated

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.max_allocated


def test_step_timer_uses_cuda_events_on_cuda():
    fake = FakeCuda()
    timer = measure.StepTimer(torch.device("cuda:0"), cuda=fake)

    def work():
        fake.calls.append("work")
        fake.clock_ms += 250.0  # the GPU works for 250 ms

    t = timer(work)
    assert t["gpu_s"] == pytest.approx(0.25)
    # synchronised before the start, events bracket the work, synchronised
    # before the events are read
    assert fake.calls == [
        "synchronize",
        "record",
        "work",
        "record",
        "synchronize",
    ]
    assert t["wall_s"] >= 0 and t["cpu_s"] >= 0


def test_step_timer_and_memory_leave_cuda_alone_on_cpu():
    fake = FakeCuda()
    timer = measure.StepTimer(torch.device("cpu"), cuda=fake)
    mem = measure.PeakMemory(torch.device("cpu"), cuda=fake)
    base = mem.start()
    x = torch.ones(8 * 2**20)  # 32 MiB, touched
    t = timer(lambda: x.sum())
    assert t["gpu_s"] is None and fake.calls == []
    assert mem.unit == "MiB RSS"
    assert mem.peak() >= base > 0


def test_peak_memory_on_cuda_resets_and_reads_max_allocated():
    fake = FakeCuda()
    mem = measure.PeakMemory(torch.device("cuda"), cuda=fake)
    fake.max_allocated = 100 * 2**20  # an earlier case's peak
    assert mem.start() == 3.0
    assert "reset" in fake.calls
    fake.max_allocated = 7 * 2**20  # this case's tensors
    assert mem.peak() == 7.0
    assert mem.unit.startswith("GPU MiB")


def test_check_device_errors():
    assert measure.check_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="--device cuda: CUDA is not"):
        measure.check_device("cuda", cuda=FakeCuda(available=False))
    with pytest.raises(RuntimeError, match="there are 1 CUDA device"):
        measure.check_device("cuda:1", cuda=FakeCuda(count=1))
    assert measure.check_device("cuda:0", cuda=FakeCuda()).index == 0
    with pytest.raises(RuntimeError, match="only cpu and cuda"):
        measure.check_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs no CUDA")
def test_cli_cuda_without_cuda_is_a_clear_error(capsys, tmp_path):
    assert cli.main(["--device", "cuda", "--models", "s4m_tiny"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_precision_contexts():
    cpu = torch.device("cpu")
    lin = torch.nn.Linear(4, 2)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with measure.autocast_context(cpu, precision):
            assert lin(torch.randn(3, 4)).dtype == dtype
    with pytest.raises(ValueError, match="fp8"):
        measure.autocast_context(cpu, "fp8")
    # fp16 on CUDA trains with a gradient scaler; nothing else needs one
    assert isinstance(
        measure.grad_scaler(torch.device("cuda"), "fp16"), torch.amp.GradScaler
    )
    assert measure.grad_scaler(torch.device("cuda"), "bf16") is None
    assert measure.grad_scaler(cpu, "fp16") is None


def test_checkpointing_variant_reaches_the_masknet():
    m, o = models.checkpointing_variants(
        ["s4m_tiny", "tiny=s4m_tiny", "convtasnet"], {"tiny": TINY}
    )
    assert m == [
        "s4m_tiny",
        "s4m_tiny+ckpt=s4m_tiny",
        "tiny=s4m_tiny",
        "tiny+ckpt=s4m_tiny",
        "convtasnet",
    ]
    assert o["tiny+ckpt"] == {**TINY, "checkpoint_iterations": True}
    label, fragment = models.parse_model_spec(m[3])
    sep = models.build_model(fragment, overrides=o[label])
    assert sep.masknet.checkpoint_iterations is True
    assert sep.masknet.num_iterations == 1


def test_cli_model_overrides_parse_and_are_checked(capsys):
    assert cli.parse_model_overrides(
        ["a:{checkpoint_iterations: True}", "a:{num_iterations: 2}"]
    ) == {"a": {"checkpoint_iterations": True, "num_iterations": 2}}
    with pytest.raises(ValueError, match="LABEL:YAML"):
        cli.parse_model_overrides(["{checkpoint_iterations: True}"])
    # a key the fragment lacks, and a label not measured: refused up front
    argv = ["--models", "sepformer", "--durations", "0.1"]
    assert (
        cli.main(argv + ["--model-overrides", "sepformer:{no_such_key: 1}"])
        == 2
    )
    assert "no_such_key" in capsys.readouterr().err
    assert cli.main(argv + ["--model-overrides", "other:{a: 1}"]) == 2
    assert "not among the models" in capsys.readouterr().err


def test_run_benchmark_in_process_records_conditions(tmp_path):
    """Two precisions, inference and training, a checkpointing variant."""
    m, o = models.checkpointing_variants(["tiny=s4m_tiny"], {"tiny": TINY})
    logs = []
    res = models.run_benchmark(
        models=m,
        model_overrides=o,
        durations=[0.05],
        repeats=2,
        threads=1,
        in_process=True,
        precisions=("fp32", "bf16"),
        default_allocator=True,  # leave this test process's allocator be
        log=logs.append,
    )
    cfg = res["config"]
    assert cfg["allocator"] == allocator_mode()
    assert cfg["precisions"] == ["fp32", "bf16"] and cfg["timing"] == "wall"
    assert set(res["models"]) == {"tiny", "tiny+ckpt"}
    for entry in res["models"].values():
        assert entry["fragment"] == "s4m_tiny"
        assert entry["overrides"]["num_iterations"] == 1
        for key in ("infer", "train", "infer_bf16", "train_bf16"):
            case = entry[key]["0.05"]
            assert len(case["times"]) == 2 and case["timing"] == "wall"
            assert 0 <= case["sys_median"] <= case["cpu_median"] + 0.01
            assert case["precision"] == (key.partition("_")[2] or "fp32")
            assert case["peak_mib"] > 0
    assert res["models"]["tiny+ckpt"]["overrides"]["checkpoint_iterations"]
    table = models.format_tables(json.loads(json.dumps(res)))
    assert f"allocator: {allocator_mode()}" in table.splitlines()[0]
    assert "\nbf16:\n" in table and "| tiny+ckpt | 0.05 s |" in table
    assert len(logs) == 2 + 2 * 4


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_case_subprocess_keeps_freed_memory_unless_told_not_to():
    spec = {
        "model": "s4m_tiny",
        "overrides": TINY,
        "seconds": 0.05,
        "mode": "infer",
        "repeats": 1,
        "warmup": 0,
        "device": "cpu",
        "threads": 1,
        "sample_rate": 8000,
        "num_spks": 2,
        "count_macs": False,
    }
    kept = models._run_in_subprocess(spec, timeout=300)
    plain = models._run_in_subprocess(
        {**spec, "default_allocator": True}, timeout=300
    )
    assert kept["allocator"] == "glibc, freed memory kept"
    assert plain["allocator"] == "glibc, default"


def test_plot_of_the_published_json(tmp_path):
    results = json.loads(DOCS_JSON.read_text())
    path = tmp_path / "bench.png"
    drawn = models.plot_results(results, path)
    # every model with at least one measured case, in each panel
    expected = sum(
        any("median" in r for r in e.get(mode, {}).values())
        for e in results["models"].values()
        for mode in ("infer", "train")
    )
    assert drawn == expected == 8
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20000


def test_cli_from_json_writes_plot_and_never_overwrites(tmp_path, capsys):
    src = tmp_path / "bench.json"
    src.write_text(DOCS_JSON.read_text())
    assert cli.main(["--from-json", str(src)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Measured on cpu, 2 threads, fp32, wall time; ")
    assert "allocator: not recorded" in out
    png = tmp_path / "bench.png"  # next to the JSON
    stamp = png.stat().st_mtime_ns
    assert cli.main(["--from-json", str(src)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert png.stat().st_mtime_ns == stamp
    other = tmp_path / "other.png"
    assert cli.main(["--from-json", str(src), "--plot", str(other)]) == 0
    assert other.stat().st_size > 20000

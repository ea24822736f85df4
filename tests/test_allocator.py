"""keep_freed_memory: large temporaries stop costing page faults."""

import subprocess
import sys
import textwrap

import pytest

from speechbrain_s4m.allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc only")

# Allocates and frees a 64 MiB tensor (filled, so every page is touched)
# 22 times and prints the minor page faults of the last six rounds (the
# first rounds grow and fragment the heap until freed blocks fit the next
# request: up to ~8 rounds here).
_PROBE = textwrap.dedent(
    """
    import resource, sys
    import torch
    from speechbrain_s4m.allocator import keep_freed_memory, allocator_mode
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    n = 16 * 2**20  # float32 -> 64 MiB

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    for _ in range(16):
        torch.ones(n).sum()
    before = faults()
    for _ in range(6):
        torch.ones(n).sum()
    print(faults() - before, allocator_mode())
    """
)


def _faults(mode):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(maxsplit=1)
    return int(out[0]), out[1].strip()


def test_freed_memory_is_reused_without_page_faults():
    pages = 16 * 2**20 * 4 // 4096  # pages of one 64 MiB tensor
    default, default_mode = _faults("default")
    kept, kept_mode = _faults("keep")
    assert default_mode == "glibc, default"
    assert kept_mode == "glibc, freed memory kept"
    # by default each round maps the tensor afresh: a fault per page
    assert default > 5 * pages  # 6 rounds
    # kept: the pages of the first rounds are reused, (almost) no new faults
    assert kept < pages / 4


# A pretrained-model object built on the CPU (tiny modules), as
# S4MSeparation.from_hparams builds it; prints the allocator condition.
_MODEL_PROBE = textwrap.dedent(
    """
    import sys
    from speechbrain.lobes.models import dual_path as dp
    from speechbrain_s4m.allocator import allocator_mode
    from speechbrain_s4m.inference import S4MSeparation
    enc = dp.Encoder(kernel_size=8, out_channels=8)
    mask = dp.Dual_Path_Model(
        8, 8, dp.SBTransformerBlock(1, 8, 2, d_ffn=16),
        dp.SBTransformerBlock(1, 8, 2, d_ffn=16), num_layers=1, K=10,
    )
    dec = dp.Decoder(8, 1, kernel_size=8, stride=4, bias=False)
    kwargs = {} if sys.argv[1] == "default" else {"keep_freed_memory": False}
    model = S4MSeparation(
        modules={"encoder": enc, "masknet": mask, "decoder": dec},
        hparams={"sample_rate": 8000, "num_spks": 2},
        run_opts={"device": "cpu"}, **kwargs,
    )
    print(model.freed_memory_kept, allocator_mode())
    """
)


@pytest.mark.parametrize(
    "how,kept,mode",
    [
        ("default", "True", "glibc, freed memory kept"),
        ("off", "False", "glibc, default"),
    ],
)
def test_separation_model_keeps_freed_memory_on_cpu(how, kept, mode):
    """S4MSeparation (and so s4m-separate) applies the setting itself on a
    CPU device; keep_freed_memory=False leaves glibc's defaults."""
    out = (
        subprocess.run(
            [sys.executable, "-c", _MODEL_PROBE, how],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(maxsplit=1)
    )
    assert out == [kept, mode]

"""Tests of the operator profiles (``bench/profile_ops.py``): operator kinds
and module regions."""

import profile_ops
import pytest
import torch

from speechbrain_s4m.benchmark import models

# a masknet small enough to profile in well under a second
TINY = {"num_iterations": 1, "hidden_channels": 8}


def _profile(fn):
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    return prof.events()


def test_profile_kinds_tell_depthwise_from_dense_convolutions():
    x = torch.randn(1, 64, 2000)
    dw, dense = torch.randn(64, 1, 5), torch.randn(64, 64, 1)
    with torch.inference_mode():
        kinds = {
            k: share
            for k, _, share, _ in profile_ops.summarise(
                _profile(lambda: torch.conv1d(x, dw, groups=64))
            )["kinds"]
        }
        assert kinds.get("conv depthwise", 0) > 0.5
        assert "conv other" not in kinds
        res = profile_ops.summarise(_profile(lambda: torch.conv1d(x, dense)))
    kinds = {k: share for k, _, share, _ in res["kinds"]}
    assert kinds.get("conv other", 0) > 0.5 and "conv depthwise" not in kinds
    assert sum(kinds.values()) == pytest.approx(1.0)


def test_profile_regions_label_modules_and_helpers_then_restore():
    from speechbrain_s4m.lobes import s4m

    original = s4m.gln_statistics
    sep = models.build_model("s4m_tiny", overrides=TINY).eval()
    res = profile_ops.profile_length(sep, 0.1, warmup=0, top=50)
    regions = {name for name, *_ in res["regions"]}
    assert "fn::gln_statistics" in regions
    assert "module::S4MEncoder" in regions
    assert any(name.startswith("module::S4") for name in regions)
    assert s4m.gln_statistics is original  # unpatched afterwards
    assert res["user_s"] >= 0 and res["minor_faults"] >= 0
    for table in ("ops", "kinds", "regions"):
        assert sum(r[2] for r in res[table]) == pytest.approx(1.0)
    # the operator table is ordered by self time
    ms = [r[1] for r in res["ops"] if r[0] != "(others)"]
    assert ms == sorted(ms, reverse=True)

"""The per-update learning-rate schedule (WarmupDecayScheduler)."""

import math

import pytest
import torch

from speechbrain_s4m.nnet.schedulers import (
    WarmupDecayScheduler,
    check_lr_scheduler,
    scale_learning_rates,
)


def _two_groups(lr_a=0.1, lr_b=1.0):
    p, q = torch.ones(2).requires_grad_(), torch.ones(3).requires_grad_()
    groups = [{"params": [p], "lr": lr_a}, {"params": [q], "lr": lr_b}]
    return torch.optim.Adam(groups)


@pytest.mark.parametrize("decay", ["linear", "cosine", "none"])
def test_factors_follow_the_written_out_schedule(decay):
    """Warm-up 3, decay over updates 3..10 to 0.1 of the peak; the
    expected factors are the formulas evaluated by hand."""
    sched = WarmupDecayScheduler(
        total_updates=11, warmup_updates=3, decay=decay, final_factor=0.1
    )
    got = [sched.factor(k) for k in range(13)]
    assert got[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    p = [min(j / 8, 1.0) for j in range(10)]  # updates 3..12
    shape = {
        "linear": [1 - x for x in p],
        "cosine": [(1 + math.cos(math.pi * x)) / 2 for x in p],
        "none": [1.0] * 10,
    }[decay]
    expected = [0.1 + 0.9 * s for s in shape]  # "none": shape 1, factor 1
    assert got[3:] == pytest.approx(expected)
    if decay != "none":
        assert got[11] == pytest.approx(0.1)  # the last scheduled update
        assert got[12] == pytest.approx(0.1)  # past the end: stays there


def test_every_group_keeps_its_own_peak():
    """The S4 group (own rate) and the others are scaled by the same
    factor; the peak is kept in the group (saved with the optimizer)."""
    opt = _two_groups(0.1, 1.0)
    sched = WarmupDecayScheduler(total_updates=4)
    seen = []
    for _ in range(4):
        sched(opt)
        seen += [g["lr"] for g in opt.param_groups]
    assert seen == pytest.approx(
        [0.1, 1.0, 0.075, 0.75, 0.05, 0.5, 0.025, 0.25]
    )
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 1.0]


def test_resumed_schedule_continues_where_it_stopped(tmp_path):
    """Save after 4 updates (scheduler count and optimizer), load into
    fresh objects: the next rates are those of the uninterrupted run."""
    ref_opt, ref = _two_groups(), WarmupDecayScheduler(10, warmup_updates=2)
    ref_rates = []
    for _ in range(10):
        ref(ref_opt)
        ref_rates.append(ref_opt.param_groups[1]["lr"])

    opt, sched = _two_groups(), WarmupDecayScheduler(10, warmup_updates=2)
    for _ in range(4):
        sched(opt)
    sched.save(tmp_path / "sched.ckpt")
    state = opt.state_dict()

    opt2, sched2 = _two_groups(), WarmupDecayScheduler(10, warmup_updates=2)
    opt2.load_state_dict(state)
    sched2.load(tmp_path / "sched.ckpt")
    rates = []
    for _ in range(6):
        sched2(opt2)
        rates.append(opt2.param_groups[1]["lr"])
    assert rates == pytest.approx(ref_rates[4:])


def test_bad_settings_fail_with_the_setting_named():
    with pytest.raises(ValueError, match="decay"):
        WarmupDecayScheduler(10, decay="exp")
    with pytest.raises(ValueError, match="final_factor"):
        WarmupDecayScheduler(10, final_factor=2)
    with pytest.raises(ValueError, match="total_updates"):
        WarmupDecayScheduler(5, warmup_updates=5)
    with pytest.raises(RuntimeError, match="total_updates"):
        WarmupDecayScheduler().factor(3)


def test_unapplied_scheduler_fails_and_scaling_keeps_ratios():
    check_lr_scheduler(WarmupDecayScheduler(total_updates=10))
    with pytest.raises(ValueError, match="str is not applied by this Brain"):
        check_lr_scheduler("cosine")
    opt = _two_groups(1.0, 0.1)
    scale_learning_rates(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05]

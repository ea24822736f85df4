"""The DDP-consistent steps mixin (:mod:`speechbrain_s4m.training.steps`)
on its own: a linear model, one process (the DDP side is in test_ddp.py)."""

import math
import types

import pytest
import speechbrain as sb
import torch

from speechbrain_s4m.training.steps import ConsistentSteps, NonFiniteLossError


class Steps(ConsistentSteps, sb.Brain):
    """The per-utterance loss is the model's output on ``batch.x``."""

    def training_losses(self, batch):
        return self.modules.lin(batch.x).squeeze(-1)


def make(extra=None, **hparams):
    """A brain over ``lin`` (and an ``extra`` parameter only the optimizer
    holds, as an S4 group may be)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    params = [{"params": lin.parameters()}]
    if extra is not None:
        params.append({"params": [extra], "lr": 0.1})
    brain = Steps(
        modules={"lin": lin},
        opt_class=lambda _: torch.optim.SGD(params, lr=1.0),
        hparams=hparams,
        run_opts={"device": "cpu"},
    )
    brain.init_optimizers()
    brain.step = 1  # SpeechBrain's loop counts the batch before fit_batch
    brain._stage = sb.Stage.TRAIN
    return brain


def batch(*rows):
    return types.SimpleNamespace(
        id=list(range(len(rows))), x=torch.tensor(rows)
    )


def weights(brain):
    return [p.detach().clone() for p in brain.modules.parameters()]


def test_a_normal_batch_steps():
    brain = make()
    before = weights(brain)
    loss = brain.fit_batch(batch([1.0, 2.0], [0.5, -1.0]))
    assert math.isfinite(loss) and brain.skipped_batches == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(brain)))
    assert brain.train_samples == 2


@pytest.mark.parametrize(
    "hparams, rows",
    [
        ({"loss_upper_lim": -1e9}, ([1.0, 2.0],)),  # loss above the limit
        ({"threshold_byloss": True, "threshold": 1e9}, ([1.0, 2.0],)),
        ({}, ([float("nan"), 1.0],)),  # non-finite loss
    ],
)
def test_a_skipped_batch_leaves_the_weights(hparams, rows):
    brain = make(**hparams)
    before = weights(brain)
    loss = brain.fit_batch(batch(*rows))
    assert math.isnan(loss) and brain.skipped_batches == 1
    assert all(torch.equal(a, b) for a, b in zip(before, weights(brain)))
    assert all(p.grad is None for p in brain.modules.parameters())
    # the epoch's mean leaves it out
    assert math.isnan(brain.update_average(loss, 0.0))
    assert brain.update_average(torch.tensor(2.0), math.nan) == 2.0
    assert brain.counted_batches == 1


def test_nonfinite_patience_stops_training():
    brain = make()
    brain.nonfinite_patience = 2
    for _ in range(2):
        brain.fit_batch(batch([float("nan"), 1.0]))
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        brain.fit_batch(batch([float("nan"), 1.0]))


def test_clipping_covers_every_parameter_group():
    """A parameter outside ``self.modules`` (own optimizer group) is
    clipped too: SpeechBrain clips ``self.modules.parameters()`` only."""
    extra = torch.nn.Parameter(torch.zeros(1))
    brain = make(extra=extra, clip_grad_norm=1e-3)

    def losses(batch):
        return brain.modules.lin(batch.x).squeeze(-1) + 1e3 * extra

    brain.training_losses = losses
    brain.fit_batch(batch([1.0, 2.0]))
    # SGD at lr 0.1 on a gradient of norm <= 1e-3 overall
    assert 0 < abs(extra.item()) <= 0.1 * 1e-3 + 1e-9

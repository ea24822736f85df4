"""Our S4M is the authors' model: weights from their class load, and the
forward and one training step's gradients equal their computation (written
out in tests/authors_reference.py) in float64."""

import pytest
import torch
from authors_reference import (
    authors_forward,
    authors_s4_kernel,
    authors_state_dict,
)

from speechbrain_s4m.lobes.authors_weights import (
    authors_name_table,
    from_authors_state_dict,
    to_authors_state_dict,
)

R = 3  # block applications (their num_blocks)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def theirs():
    return authors_state_dict(L=40)


@pytest.mark.parametrize("n", [1, 15, 1001, 2600])
def test_forward_equals_the_authors(theirs, n):
    """1e-10 relative at any length: shorter than their S4 length buffer,
    and longer (2600 samples: 651 frames, 82 at the coarsest scale, above
    L = 40, so their kernel doubles its length twice)."""
    sep = from_authors_state_dict(theirs, num_iterations=R).double()
    mix = torch.randn(
        2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)
    )
    with torch.no_grad():
        ours = sep(mix)  # [batch, n, spks]
        ref = authors_forward(theirs, mix, R)  # [batch, spks, n]
    assert ours.shape == (2, n, 2)
    assert _rel(ours.transpose(1, 2), ref) < 1e-10
    # the weights were not rewritten by the longer input
    assert int(sep.masknet.block.s4.s4.c_length) == 40


def test_gradients_equal_the_authors(theirs):
    """One training step (a loss on 4000 samples): every parameter's
    gradient equals theirs to 1e-8 relative, the S4 ones (C̃ trained, no
    gradient through the Ā^L of C̃ = C (I - Ā^L)) included."""
    sd = {k: v.clone() for k, v in theirs.items()}
    sd["sm.unet.s4.layer.kernel.kernel.L"] = torch.tensor(64)  # >= 63 frames
    sep = from_authors_state_dict(sd, num_iterations=R).double()
    leaves = {
        k: v.clone().requires_grad_(v.is_floating_point())
        for k, v in sd.items()
    }
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(2, 4000, dtype=torch.float64, generator=g)
    target = torch.randn(2, 2, 4000, dtype=torch.float64, generator=g)
    loss_ours = ((sep(mix).transpose(1, 2) - target) ** 2).mean()
    loss_ref = ((authors_forward(leaves, mix, R) - target) ** 2).mean()
    assert abs(loss_ours.item() - loss_ref.item()) < 1e-10 * loss_ref.item()
    loss_ours.backward()
    loss_ref.backward()
    table, unused = authors_name_table(4)
    params = dict(sep.named_parameters())
    checked = 0
    for their_name, our_name in table.items():
        if our_name not in params:
            continue  # the length buffer
        ours = params[our_name].grad.reshape(leaves[their_name].shape)
        rel = _rel(ours, leaves[their_name].grad)
        assert rel < 1e-8, (their_name, rel)
        checked += 1
    assert checked == len(params) == 106
    for name in unused:  # their dead fusion layer gets no gradient
        grad = leaves[name].grad
        assert grad is None or not grad.any()


def test_first_forward_sets_up_c_tilde_like_theirs():
    """Their L = 0 (never run): the first forward turns C into C̃ for its
    length, in both."""
    sd = authors_state_dict(L=0)
    sep = from_authors_state_dict(sd, num_iterations=1).double()
    mix = torch.randn(1, 2000, dtype=torch.float64)
    with torch.no_grad():
        ours = sep(mix)
    s4 = sep.masknet.block.s4.s4
    assert int(s4.c_length) == 64  # 510 frames -> 64 at the coarsest scale
    # their first call, same algebra: C̃ = C (I - Ā^64), then the kernel
    ref_kernel = authors_s4_kernel(
        {
            **sd,
            "sm.unet.s4.layer.kernel.kernel.L": torch.tensor(64),
            "sm.unet.s4.layer.kernel.kernel.C": torch.view_as_real(
                s4._ssm()[3]
            ).clone(),
        },
        64,
    )
    assert _rel(s4.kernel(64), ref_kernel) < 1e-10
    # and the output matrix is the C drawn before (function unchanged)
    c0 = torch.view_as_complex(sd["sm.unet.s4.layer.kernel.kernel.C"])
    assert _rel(s4.output_matrix(), c0) < 1e-10
    assert ours.shape == (1, 2000, 2)


def test_round_trip_and_refusals(theirs):
    sep = from_authors_state_dict(theirs, num_iterations=R)
    back = to_authors_state_dict(sep)
    table, unused = authors_name_table(4)
    assert set(back) == set(theirs) - unused
    for name, value in back.items():
        assert value.shape == theirs[name].shape, name
        torch.testing.assert_close(value, theirs[name].to(value.dtype))
    extra = {**theirs, "sm.unet.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unknown keys.*extra"):
        from_authors_state_dict(extra)
    missing = {k: v for k, v in theirs.items() if "res_conv.bias" not in k}
    with pytest.raises(ValueError, match="missing keys.*res_conv.bias"):
        from_authors_state_dict(missing)
    wrong = {**theirs, "mask_net.1.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match="shapes do not match.*mask_net"):
        from_authors_state_dict(wrong)
    with pytest.raises(ValueError, match="not a state dict of the authors"):
        from_authors_state_dict({"weight": torch.zeros(1)})

"""Tests of the S4 layers (speechbrain_s4m.nnet.ssm) against slow references."""

import copy
import types

import pytest
import torch
from authors_reference import authors_s4_kernel
from torch.func import functional_call

from speechbrain_s4m.nnet import S4, ssm, ssm_aware_optimizer
from speechbrain_s4m.nnet import ssm_parameter_groups as groups_of

MODES = [("s4d", "lin"), ("s4d", "inv"), ("nplr", "lin")]


def randomise(layer, seed=0):
    """Random (but stable) SSM parameters, away from the initialisation."""
    g = torch.Generator().manual_seed(seed)

    def rnd(p):
        return torch.randn(p.shape, generator=g, dtype=torch.float64).to(p)

    with torch.no_grad():
        layer.log_dt.copy_(torch.rand(layer.log_dt.shape, generator=g) * 3 - 5)
        layer.log_A_real.add_(0.5 * rnd(layer.log_A_real))
        layer.A_imag.add_(rnd(layer.A_imag))
        layer.B.add_(0.5 * rnd(layer.B))
        layer.C.copy_(rnd(layer.C))
        layer.D.copy_(rnd(layer.D))
        if layer.mode == "nplr":
            layer.P.add_(0.3 * rnd(layer.P))
    return layer


def dense_discrete_system(layer):
    """Textbook discretisation with dense full-state matrices (float64).

    Returns Ā [H, N, N], B̄ [H, N], C [channels, H, N] of the conjugate
    completed real system. An NPLR layer whose ``C`` holds C̃ = C (I -
    Ā^M) (``c_length`` = M > 0) gives C = C̃ (I - Ā^M)^{-1}, Ā^M by
    repeated multiplication.
    """
    dt, A, B, C, P = layer._ssm()
    Lam = torch.cat([A, A.conj()], -1)
    A_d = torch.diag_embed(Lam)
    if layer.mode == "nplr":
        P_f = torch.cat([P, P.conj()], -1)
        A_d = A_d - P_f[:, :, None] * P_f.conj()[:, None, :]
    B_f = torch.cat([B, B.conj()], -1)
    C_f = torch.cat([C, C.conj()], -1)
    N = A_d.shape[-1]
    eye = torch.eye(N, dtype=A_d.dtype)
    dtA = dt[:, None, None] * A_d
    dtB = (dt[:, None] * B_f)[..., None]
    if layer.mode == "s4d":  # zero-order hold
        A_bar = torch.linalg.matrix_exp(dtA)
        B_bar = torch.linalg.solve(dtA, (A_bar - eye) @ dtB)
    else:  # bilinear
        M = eye - dtA / 2
        A_bar = torch.linalg.solve(M, eye + dtA / 2)
        B_bar = torch.linalg.solve(M, dtB)
        c_length = int(layer.c_length)
        if c_length:
            power = eye.expand_as(A_bar)
            for _ in range(c_length):
                power = power @ A_bar
            # C_f = C̃_f (I - Ā^M)^{-1}: solve X (I - Ā^M) = C̃_f
            C_f = torch.linalg.solve(
                eye - power, C_f.unsqueeze(-2), left=False
            ).squeeze(-2)
    return A_bar, B_bar[..., 0], C_f


def reference_kernel(layer, L):
    """Unrolled recurrence x_k = Ā x_{k-1} + B̄ u_k on an impulse."""
    A_bar, B_bar, C_f = dense_discrete_system(layer)
    x = B_bar.clone()  # state after the impulse, [H, N]
    out = []
    for _ in range(L):
        out.append((C_f * x).sum(-1).real)  # [channels, H]
        x = (A_bar @ x[..., None])[..., 0]
    return torch.stack(out, -1)  # [channels, H, L]


def direct_conv(u, k):
    """Causal convolution by explicit sums: u [B, H, L], k [H, L]."""
    L = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(L):
        y[..., t] = (u[..., : t + 1].flip(-1) * k[:, : t + 1]).sum(-1)
    return y


@pytest.mark.parametrize("mode,init", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("L", [1, 2, 3, 17, 64])
def test_kernel_matches_recurrence(mode, init, bidirectional, L):
    torch.manual_seed(0)
    layer = S4(3, d_state=8, mode=mode, s4d_init=init)
    layer = randomise(layer.double(), seed=L)
    if bidirectional:
        layer = S4(3, d_state=8, mode=mode, s4d_init=init, bidirectional=True)
        layer = randomise(layer.double(), seed=L)
    k = layer.kernel(L)
    assert k.dtype == torch.float64
    ref = reference_kernel(layer, L)
    if not bidirectional:
        ref = ref[0]
    assert k.shape == ref.shape
    err = ((k - ref).norm() / ref.norm()).item()
    # float64: both modes measure ~1e-15 against the unrolled recurrence
    assert err < 1e-10, err


@pytest.mark.parametrize("mode,init", MODES)
def test_kernel_float32_close_to_float64(mode, init):
    layer = randomise(S4(4, d_state=16, mode=mode, s4d_init=init))
    k32 = layer.kernel(300)
    k64 = copy.deepcopy(layer).double().kernel(300)
    assert k32.dtype == torch.float32
    err = ((k32.double() - k64).norm() / k64.norm()).item()
    assert err < 1e-4, err


def test_chunked_kernels_equal_direct(monkeypatch):
    """The chunked (checkpointed) Cauchy path gives the same values/grads."""
    layer = randomise(S4(3, d_state=8, mode="nplr", bidirectional=True))
    layer = layer.double()

    def value_and_grads():
        layer.zero_grad()
        k = layer.kernel(50)
        (k * torch.linspace(-1, 1, 50, dtype=k.dtype)).sum().backward()
        return k.detach(), [
            p.grad.clone() for p in layer.parameters() if p.grad is not None
        ]

    k_ref, g_ref = value_and_grads()
    monkeypatch.setattr(ssm, "_CHUNK_ELEMENTS", 7 * 3 * 8)  # chunks of 7
    k_chk, g_chk = value_and_grads()
    torch.testing.assert_close(k_chk, k_ref)
    for a, b in zip(g_chk, g_ref):
        torch.testing.assert_close(a, b)


def test_cauchy_chunks_and_gradient(monkeypatch):
    """Chunked Cauchy sums equal the dense formula; custom backward is right."""
    g = torch.Generator().manual_seed(0)

    def crand(*shape):
        return torch.randn(*shape, 2, generator=g, dtype=torch.float64)

    v = torch.view_as_complex(crand(3, 2, 4)).requires_grad_()
    w = torch.view_as_complex(crand(2, 4)).requires_grad_()
    a = torch.view_as_complex(crand(9))
    s = torch.view_as_complex(crand(9))
    dense = (v[..., None] / (a - s * w[..., None])).sum(-2)
    monkeypatch.setattr(ssm, "_CHUNK_ELEMENTS", 2 * 4 * 2)  # chunks of 2
    torch.testing.assert_close(ssm._cauchy(v, w, a, s), dense)
    assert torch.autograd.gradcheck(
        lambda v, w: ssm._cauchy(v, w, a, s), (v, w), atol=1e-7
    )


def test_fft_conv_matches_direct_sums():
    torch.manual_seed(0)
    for L in [1, 2, 5, 33]:
        u = torch.randn(2, 3, L, dtype=torch.float64)
        k = torch.randn(2, 3, L, dtype=torch.float64)
        torch.testing.assert_close(ssm.fft_conv(u, k[0]), direct_conv(u, k[0]))
        # backward half: y_t += k1_j u_{t+j+1}
        back = direct_conv(u.flip(-1), k[1]).flip(-1)
        back = torch.nn.functional.pad(back[..., 1:], (0, 1))
        expected = direct_conv(u, k[0]) + back
        torch.testing.assert_close(ssm.fft_conv(u, k), expected)


@pytest.mark.parametrize("mode", ["s4d", "nplr"])
def test_bidirectional_is_two_causal_layers(mode):
    """Bidirectional = causal on x + causal on reversed x, one step later."""
    torch.manual_seed(1)
    bi = randomise(S4(4, d_state=8, mode=mode, bidirectional=True)).double()
    fwd = S4(4, d_state=8, mode=mode).double()
    bwd = S4(4, d_state=8, mode=mode).double()
    for causal, c in ((fwd, 0), (bwd, 1)):
        state = {k: v for k, v in bi.state_dict().items() if k != "C"}
        state["C"] = bi.C[c : c + 1].detach()
        causal.load_state_dict(state)
    L = 23
    x = torch.randn(2, 4, L, dtype=torch.float64)
    k = bi.kernel(L)
    torch.testing.assert_close(k[0], fwd.kernel(L))
    torch.testing.assert_close(k[1], bwd.kernel(L))
    # full layers: SSM part of the bidirectional layer rebuilt from the
    # two causal convolutions
    D = bi.D[:, None]
    y_f = direct_conv(x, fwd.kernel(L))
    y_b = direct_conv(x.flip(-1), bwd.kernel(L)).flip(-1)
    y_b = torch.nn.functional.pad(y_b[..., 1:], (0, 1))  # starts at t+1
    pre = y_f + y_b + D * x
    expected = torch.nn.functional.glu(
        bi.output_linear(torch.nn.functional.gelu(pre)), dim=1
    )
    torch.testing.assert_close(bi(x), expected)


@pytest.mark.parametrize("mode,init", MODES)
def test_forward_equals_step_loop(mode, init):
    torch.manual_seed(2)
    layer = randomise(S4(5, d_state=8, mode=mode, s4d_init=init)).eval()
    x = torch.randn(3, 5, 40)
    y = layer(x)
    state = layer.default_state(3)
    steps = []
    for t in range(x.shape[-1]):
        y_t, state = layer.step(x[:, :, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, -1), y, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError):
        S4(5, bidirectional=True).step(x[:, :, 0], state)


@pytest.mark.parametrize("mode,init", MODES)
def test_forward_stream_chunks_equal_forward(mode, init):
    """Recurrent mode over chunks (0 included) == convolution mode, float64."""
    torch.manual_seed(3)
    layer = S4(5, d_state=8, mode=mode, s4d_init=init).double()
    layer = randomise(layer).eval()
    x = torch.randn(2, 5, 53, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        state, outs, a = None, [], 0
        for n in (1, 0, 7, 8, 20, 17):
            out, state = layer.forward_stream(x[..., a : a + n], state)
            outs.append(out)
            a += n
    torch.testing.assert_close(torch.cat(outs, -1), y, rtol=1e-10, atol=1e-12)


def _direct_ssm(layer, u):
    """Slow reference: ``y_t = sum_s K[t - s] u_s + D u_t`` with the
    materialised kernel (Cauchy/Vandermonde code, no eigendecomposition),
    one output at a time, float64."""
    K = layer.kernel(u.shape[-1]).double()  # [H, L]
    y = torch.zeros_like(u)
    for t in range(u.shape[-1]):
        past = u[..., : t + 1].flip(-1)  # u_t, u_{t-1}, ...
        y[..., t] = (K[:, : t + 1] * past).sum(-1) + layer.D.double() * u[
            ..., t
        ]
    return y


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("mode", ["s4d", "nplr"])
def test_diagonal_recurrence_equals_direct_convolution(mode, init):
    """The eigenbasis recurrence of forward_stream, run in float64 over
    chunks, equals the kernel convolution summed term by term; at the
    HiPPO initialisation (cond(V) ~ 3e7 for N = 16: error 2e-10) and away
    from it."""
    torch.manual_seed(5)
    layer = S4(6, d_state=16, mode=mode, bidirectional=False).double().eval()
    if not init:
        layer = randomise(layer, seed=3)
    u = torch.randn(2, 6, 37, dtype=torch.float64)
    with torch.no_grad():
        *form, cond = layer._real_diagonal_form()
        state, outs, a = None, [], 0
        for n in (5, 0, 1, 16, 15):
            y, state = layer._diagonal_ssm_recurrence(
                u[..., a : a + n], state, form
            )
            outs.append(y)
            a += n
        ref = _direct_ssm(layer, u)
    assert cond >= 1.0
    scale = ref.abs().max()
    err = (torch.cat(outs, -1) - ref).abs().max() / scale
    assert err < max(1e-12, 1e-14 * cond), (err, cond)


def test_stream_form_chooses_by_precision_and_conditioning(monkeypatch):
    """float32 layers stream through the diagonal form and equal forward();
    float64 layers, autograd and an ill-conditioned eigenbasis keep the
    dense recurrence."""
    torch.manual_seed(6)
    layer = S4(8, d_state=16, bidirectional=False).eval()
    x = torch.randn(1, 8, 40)
    with torch.no_grad():
        assert layer.stream_form() is not None
        y1, st = layer.forward_stream(x[..., :17])
        y2, st = layer.forward_stream(x[..., 17:], st)
        torch.testing.assert_close(
            torch.cat([y1, y2], -1), layer(x), atol=1e-5, rtol=1e-4
        )
        assert st.dtype == torch.float64 and st.shape == (1, 2, 8, 16)
        assert copy.deepcopy(layer).double().stream_form() is None
    assert layer.stream_form() is None  # gradients enabled
    bad = S4(8, d_state=16, bidirectional=False).eval()
    form = bad._real_diagonal_form()
    monkeypatch.setattr(bad, "_real_diagonal_form", lambda: (*form[:-1], 1e12))
    with torch.no_grad():
        assert bad.stream_form() is None
        y, st = bad.forward_stream(x)
        torch.testing.assert_close(y, bad(x), atol=1e-5, rtol=1e-4)
        assert st.is_complex()  # default_state's form


def test_recurrence_discretisation_is_cached(monkeypatch):
    """step() discretises once while the parameters stay the same, again
    after they change, and never caches under autograd."""
    torch.manual_seed(4)
    layer = S4(4, d_state=4).eval()
    calls = []
    original = layer._discrete_recurrence

    def counting():
        calls.append(1)
        return original()

    monkeypatch.setattr(layer, "_discrete_recurrence", counting)
    u, state = torch.randn(2, 4), layer.default_state(2)
    with torch.no_grad():
        y1, _ = layer.step(u, state)
        for _ in range(5):
            assert torch.equal(layer.step(u, state)[0], y1)
        assert len(calls) == 1
        layer.log_dt.add_(0.3)  # an optimizer step changes the version
        y2, _ = layer.step(u, state)
    assert len(calls) == 2 and not torch.allclose(y1, y2)
    fresh = S4(4, d_state=4).eval()
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.step(u, state)[0], y2)
    y3, _ = layer.step(u, state)  # with gradients: recomputed, not cached
    assert len(calls) == 3 and y3.requires_grad


@pytest.mark.parametrize("mode", ["s4d", "nplr"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradcheck(mode, bidirectional):
    torch.manual_seed(3)
    layer = S4(2, d_state=4, mode=mode, bidirectional=bidirectional)
    layer = randomise(layer.double())
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["s4d", "nplr"])
@pytest.mark.parametrize("L", [1, 2, 3, 17])
def test_short_and_odd_lengths(mode, L):
    layer = S4(4, d_state=16, mode=mode, bidirectional=True)
    x = torch.randn(2, 4, L, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # a longer precomputed kernel is truncated to the input length
    torch.testing.assert_close(layer(x, kernel=layer.kernel(L + 5)), y)


@pytest.mark.parametrize("mode", ["s4d", "nplr"])
def test_long_sequence(mode):
    L = 2**17
    layer = S4(2, d_state=16, mode=mode, bidirectional=True)
    layer = randomise(layer.double())
    k = layer.kernel(L)
    assert k.shape == (2, 2, L) and torch.isfinite(k).all()
    # the first samples agree with a short kernel (same system)
    torch.testing.assert_close(k[..., :64], layer.kernel(64), atol=1e-9, rtol=0)
    u = torch.randn(1, 2, L, dtype=torch.float64)
    y = ssm.fft_conv(u, k[0])
    for t in [0, 1, 1000, L - 1]:
        direct = (u[..., : t + 1].flip(-1) * k[0, :, : t + 1]).sum(-1)
        torch.testing.assert_close(y[..., t], direct)
    out = S4(2, d_state=16, mode=mode)(torch.randn(1, 2, L))
    assert out.shape == (1, 2, L) and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["s4d", "nplr"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(mode, dtype):
    torch.manual_seed(4)
    layer = S4(8, d_state=16, mode=mode, bidirectional=True)
    x = torch.randn(2, 8, 300)
    ref = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        k = layer.kernel(300)
        y = layer(x)
        y_k = layer(x, kernel=k)
    assert k.dtype == torch.float32
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y_k, y)
    err = ((y.float() - ref).norm() / ref.norm()).item()
    assert err < 2e-2, err
    # half precision inputs are cast up for the FFT convolution
    with torch.autocast("cpu", dtype=dtype):
        y_half = layer(x.to(dtype))
    assert y_half.dtype == dtype and torch.isfinite(y_half).all()


def test_c_tilde_set_up_once_then_stateless():
    """The first kernel turns C into C̃ for its length (the authors'
    ``_setup_C``: same kernel as the output matrix C gave); after that no
    kernel of any length changes the weights."""
    layer = randomise(S4(4, d_state=8, mode="nplr", bidirectional=True))
    layer = layer.double()
    ref = reference_kernel(layer, 100)  # from the output matrix C itself
    k1 = layer.kernel(100)
    assert int(layer.c_length) == 100
    torch.testing.assert_close(k1, ref, rtol=1e-9, atol=1e-12)
    before = copy.deepcopy(layer.state_dict())
    layer.kernel(1000)
    k2 = layer.kernel(100)
    torch.testing.assert_close(k1, k2, rtol=0, atol=0)
    after = layer.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(before[name], after[name], rtol=0, atol=0)
    assert [n for n, _ in layer.named_buffers()] == ["c_length"]
    with pytest.raises(RuntimeError, match="already set up"):
        layer.setup_c_tilde(50)


def _authors_kernel(params, M, L):
    """The authors' NPLR kernel (tests/authors_reference.py: dense algebra,
    their in-place doubling as a constant factor for L > M) of our layer's
    tensors, renamed to theirs."""
    theirs = {
        "log_dt": params["log_dt"],
        "inv_w_real": params["log_A_real"],
        "w_imag": params["A_imag"],
        "B": params["B"][None],
        "P": params["P"][None],
        "C": params["C"],
        "L": torch.tensor(M),
    }
    return authors_s4_kernel(theirs, L, prefix="")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("M,L", [(16, 16), (16, 9), (16, 40), (5, 64)])
def test_kernel_and_gradients_are_the_authors(bidirectional, M, L):
    """Given C̃ and its length M, the kernel and the gradients of every SSM
    parameter are those of the authors' parametrisation (C̃ trained, no
    gradient through the Ā^M of C̃ = C (I - Ā^M)), also for L > M (their
    doubling), to 1e-8 relative in float64."""
    layer = S4(3, d_state=8, mode="nplr", bidirectional=bidirectional)
    layer = randomise(layer.double(), seed=M + L)
    layer.setup_c_tilde(M)
    params = {
        k: v.detach().clone().requires_grad_(True)
        for k, v in layer.named_parameters()
        if k != "output_linear"
    }
    k = layer.kernel(L)
    k = k if bidirectional else k[None]
    ref = _authors_kernel(params, M, L)
    torch.testing.assert_close(k, ref, rtol=1e-9, atol=1e-12)
    weights = torch.randn(ref.shape, dtype=torch.float64)
    (k * weights).sum().backward()
    (ref * weights).sum().backward()
    for name in ("log_dt", "log_A_real", "A_imag", "B", "P", "C"):
        ours, theirs = getattr(layer, name).grad, params[name].grad
        rel = ((ours - theirs).norm() / theirs.norm()).item()
        assert rel < 1e-8, (name, rel)


def test_parameter_groups_and_optimizer():
    model = torch.nn.Sequential(
        S4(4, d_state=8, mode="nplr"),
        S4(4, d_state=8, mode="s4d"),
        torch.nn.Linear(4, 4),
    )
    groups = groups_of(model, lr=1e-2, ssm_lr=1e-3, weight_decay=0.05)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
    ssm_ids = {id(p) for p in groups[0]["params"]}
    expected = {
        id(p)
        for n, p in model.named_parameters()
        if n.split(".")[-1] in ("log_dt", "log_A_real", "A_imag", "B", "P")
    }
    assert ssm_ids == expected and len(expected) == 9
    n_all = len(list(model.parameters()))
    assert sum(len(g["params"]) for g in groups) == n_all
    torch.optim.AdamW(groups)  # usable directly

    # the SpeechBrain opt_class path: plain parameters, also after deepcopy
    clone = copy.deepcopy(model)
    opt = ssm_aware_optimizer(clone.parameters(), lr=1e-2, ssm_lr=1e-4)
    assert isinstance(opt, torch.optim.AdamW)
    assert [len(g["params"]) for g in opt.param_groups] == [9, n_all - 9]
    assert opt.param_groups[0]["lr"] == 1e-4
    sgd = ssm_aware_optimizer(
        model.parameters(), lr=0.1, optimizer=torch.optim.SGD, momentum=0.9
    )
    assert sgd.param_groups[1]["momentum"] == 0.9
    # a model without SSM layers gives one group
    plain = groups_of(torch.nn.Linear(2, 2), lr=1.0)
    assert len(plain) == 1 and plain[0]["lr"] == 1.0


@pytest.mark.parametrize("mode", ["s4d", "nplr"])
def test_reset_parameters_survives_speechbrain_reset(mode):
    from speechbrain.lobes.models.dual_path import SepformerWrapper

    torch.manual_seed(5)
    layer = S4(4, d_state=8, mode=mode, bidirectional=True)
    fresh = {k: v.clone() for k, v in layer.state_dict().items()}
    randomise(layer)
    fake = types.SimpleNamespace()
    fake.reset_layer_recursively = types.MethodType(
        SepformerWrapper.reset_layer_recursively, fake
    )
    fake.reset_layer_recursively(torch.nn.Sequential(layer))
    # structured parts are restored exactly, random parts redrawn in range
    for name in ("log_A_real", "A_imag", "B") + (
        ("P",) if mode == "nplr" else ()
    ):
        torch.testing.assert_close(getattr(layer, name), fresh[name])
    dt = layer.log_dt.exp()
    assert (dt >= 1e-3 * (1 - 1e-6)).all() and (dt <= 0.1 * (1 + 1e-6)).all()
    if mode == "nplr":  # Re Λ = -1/2 (HiPPO-LegS)
        torch.testing.assert_close(
            layer.log_A_real.exp(), torch.full((4, 4), 0.5)
        )
    assert all(getattr(p, "_ssm_param", False) for p in (layer.log_dt, layer.B))
    k = layer.double().kernel(20)
    ref = reference_kernel(layer, 20)
    assert ((k - ref).norm() / ref.norm()) < 1e-10


def test_nplr_init_is_legs():
    """(Λ - P P*, B̃) is a unitary change of basis of HiPPO-LegS (A, B)."""
    N = 8
    layer = S4(1, d_state=N, mode="nplr").double()
    layer.reset_parameters()  # initialise in float64
    dt, Lam, B, C, P = layer._ssm()
    Lam_f = torch.cat([Lam[0], Lam[0].conj()])
    P_f = torch.cat([P[0], P[0].conj()])
    A = torch.diag(Lam_f) - torch.outer(P_f, P_f.conj())
    B_f = torch.cat([B[0], B[0].conj()])
    n = torch.arange(N, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    legs = -(torch.tril(torch.outer(q, q), -1) + torch.diag(n + 1))
    # unitary invariants: tr(A^k) and B* A^k B
    for k in range(4):
        Ak = torch.linalg.matrix_power(A, k)
        legs_k = torch.linalg.matrix_power(legs, k)
        if k:
            assert torch.trace(Ak).real.item() == pytest.approx(
                torch.trace(legs_k).item(), rel=1e-9
            )
        gram = (B_f.conj() @ Ak @ B_f).real.item()
        assert gram == pytest.approx((q @ legs_k @ q).item(), rel=1e-9)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        S4(4, mode="dplr")
    with pytest.raises(ValueError):
        S4(4, d_state=5)
    with pytest.raises(ValueError):
        S4(4, s4d_init="foo")
    with pytest.raises(ValueError):
        S4(4).kernel(0)
    layer = S4(4, d_state=4, bidirectional=True)
    x = torch.randn(1, 4, 10)
    for bad in (layer.kernel(9), layer.kernel(10)[0], torch.zeros(2, 3, 10)):
        with pytest.raises(ValueError):
            layer(x, kernel=bad)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("mode", ["s4d", "nplr"])
def test_jit_trace_save_load(mode):
    """A traced layer (fixed length) can be saved and gives the same output
    (once C̃ is set up, as in any trained or loaded model)."""
    import io

    layer = S4(4, d_state=4, mode=mode, bidirectional=True).eval()
    x = torch.randn(2, 4, 10)
    layer(x)  # the first forward sets C̃ up (NPLR); tracing records one path
    traced = torch.jit.trace(layer, (x,))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(x), layer(x))

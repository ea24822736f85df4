"""Structured state-space (S4) layers: S4 (NPLR) and S4D (diagonal).

One linear SSM per channel, ``x' = A x + B u``, ``y = C x + D u``,
discretised with a learned step Δ and applied as a long FFT convolution
with its kernel ``K = (C B̄, C Ā B̄, ..., C Ā^{L-1} B̄)``, or (causal layers)
step by step as a recurrence. ``mode="nplr"``: HiPPO-LegS ``A = Λ - P P*``,
bilinear, Cauchy kernel + Woodbury (Gu et al. 2022, S4); ``mode="s4d"``:
diagonal A, zero-order hold, Vandermonde kernel (Gu et al. 2022, S4D).
``N = d_state`` real dimensions are stored as N/2 conjugate pairs.
"""

import math

import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len
from torch import nn
from torch.utils.checkpoint import checkpoint

from speechbrain_s4m.nnet.chunk_ops import linear_frames

# The parameters that define A, B and Δ: own learning rate, no weight decay.
SSM_PARAMETER_NAMES = ("log_dt", "log_A_real", "A_imag", "B", "P")


def _real_dtype(dtype):
    """Float dtype of the kernel math (float32 unless float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fft_conv(u, kernel):
    """Long convolution of ``u`` ``[batch, channels, time]`` with an SSM
    kernel, by real FFTs of a fast length >= ``2 L`` (no wrap-around).

    ``kernel``: ``[channels, time]`` (``y_t += K_j u_{t-j}``) or ``[2,
    channels, time]``, ``kernel[1]`` backward from t+1 (``y_t += K1_j
    u_{t+j+1}``). Returns ``[batch, channels, time]``.
    """
    if torch.jit.is_tracing():  # plain differentiable ops, traceable
        L, n, u_f, k_f = _spectra(u, kernel)
        return torch.fft.irfft(u_f * k_f, n=n)[..., :L]
    return _FFTConv.apply(u, kernel)


def _spectra(u, kernel):
    """``L``, FFT size ``n``, rfft of ``u`` and of the kernel ``[H, L]`` or
    ``[2, H, L]`` laid out on ``n`` circular taps (lags 0..L-1 at the
    start, -1..-L at the end)."""
    L = int(u.shape[-1])
    n = next_fast_len(2 * L, real=True)
    k = kernel
    if kernel.dim() == 3:
        k = kernel.new_zeros(kernel.shape[1:-1] + (n,))
        k[..., :L] = kernel[0]
        k[..., n - L :] = kernel[1].flip(-1)
    return L, n, torch.fft.rfft(u, n=n), torch.fft.rfft(k, n=n)


class _FFTConv(torch.autograd.Function):
    """``irfft(rfft(u, n) rfft(k, n), n)[:L]``; the backward is the adjoint
    (circular correlations, 3 real FFTs), not autograd through each FFT."""

    @staticmethod
    def forward(ctx, u, kernel):
        L, n, u_f, k_f = _spectra(u, kernel)  # [..., H, n/2+1], [H, n/2+1]
        ctx.save_for_backward(u_f, k_f)
        ctx.shape = (L, n, kernel.dim())
        return torch.fft.irfft(u_f * k_f, n=n)[..., :L]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        u_f, k_f = ctx.saved_tensors
        L, n, kdim = ctx.shape
        g_f = torch.fft.rfft(grad, n=n)  # zero padded to n
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(g_f * k_f.conj(), n=n)[..., :L]
        if ctx.needs_input_grad[1]:
            gk_f = g_f * u_f.conj()
            gk_f = gk_f.reshape(-1, *gk_f.shape[-2:]).sum(0)  # [H, n/2+1]
            gk = torch.fft.irfft(gk_f, n=n)  # [H, n]
            if kdim == 2:
                grad_k = gk[..., :L]
            else:
                grad_k = torch.stack([gk[..., :L], gk[..., n - L :].flip(-1)])
        return grad_u, grad_k


# Complex elements of the largest intermediate of the Cauchy kernel: longer
# kernels run in frequency chunks (memory O(channels * length), cache sized).
_CHUNK_ELEMENTS = 1 << 21


def _vandermonde(W, x, L):
    """``out[c, h, l] = Σ_n W[c, h, n] exp(x[h, n] l)`` for ``l < L``.

    With ``l = i m + j`` (``m ≈ sqrt(L)``), ``exp(x l) = exp(x i m)
    exp(x j)``: one batched matmul, memory O(H (L + N sqrt(L))) instead of
    O(H N L), every power computed directly (no accumulated error).
    ``W`` ``[channels, H, N]``, ``x`` ``[H, N]`` -> ``[channels, H, L]``.
    """
    m = max(1, math.isqrt(L - 1) + 1) if L > 1 else 1
    n_blocks = -(-L // m)
    real = x.real.dtype
    j = torch.arange(m, device=x.device, dtype=real)
    i = torch.arange(n_blocks, device=x.device, dtype=real) * m
    inner = torch.exp(x.unsqueeze(-1) * j)  # [H, N, m]
    outer = torch.exp(x.unsqueeze(-1) * i)  # [H, N, L/m]
    Wi = W.unsqueeze(-1) * outer  # [channels, H, N, L/m]
    c, H, N, _ = Wi.shape
    Wi = Wi.permute(1, 0, 3, 2).reshape(H, c * n_blocks, N)
    out = torch.bmm(Wi, inner)  # [H, channels * L/m, m]
    out = out.reshape(H, c, n_blocks * m).transpose(0, 1)
    return out[..., :L]


def _cauchy_chunks(H, N, F_, device):
    """Frequencies per chunk so that ``[H, N, chunk]`` stays small (GPU
    chunks 16x larger: fewer launches)."""
    elements = _CHUNK_ELEMENTS * (16 if device.type == "cuda" else 1)
    return max(1, min(F_, elements // (H * N)))


def _reciprocals(w, a, s):
    """``1 / (a_f - s_f w[h, n])`` ``[H, N, F]``."""
    return torch.addcmul(a, s, w.unsqueeze(-1), value=-1).reciprocal_()


class _Cauchy(torch.autograd.Function):
    """``Σ_n v[k, h, n] / (a_f - s_f w[h, n])``, the ``[H, N, F]``
    reciprocals rebuilt chunk by chunk, never stored. Holomorphic: ``grad_v
    = Σ_f g conj(1 / R)``, ``grad_w = conj(v) Σ_f g conj(s / R^2)``."""

    @staticmethod
    def forward(ctx, v, w, a, s):
        H, N = w.shape
        chunk = _cauchy_chunks(H, N, a.shape[-1], w.device)
        v_t = v.transpose(0, 1)  # [H, K, N]
        F_ = a.shape[-1]
        out = v.new_empty(H, v.shape[0], F_)
        for i in range(0, F_, chunk):
            inv = _reciprocals(w, a[i : i + chunk], s[i : i + chunk])
            out[..., i : i + chunk] = torch.matmul(v_t, inv)
        ctx.save_for_backward(v, w, a, s)
        return out.transpose(0, 1)  # [K, H, F]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        v, w, a, s = ctx.saved_tensors
        H, N = w.shape
        chunk = _cauchy_chunks(H, N, a.shape[-1], w.device)
        # conj(g): plain matmuls with the transposed chunk; conj at the end
        g_c = grad.conj().transpose(0, 1)  # [H, K, F]
        acc_v = torch.zeros_like(v.transpose(0, 1))  # [H, K, N]
        acc_w = torch.zeros_like(acc_v)  # [H, K, N]
        for i in range(0, a.shape[-1], chunk):
            s_c = s[i : i + chunk]
            inv = _reciprocals(w, a[i : i + chunk], s_c)  # [H, N, c]
            g_i = g_c[..., i : i + chunk]  # [H, K, c]
            if ctx.needs_input_grad[0]:
                acc_v += torch.matmul(g_i, inv.transpose(1, 2))
            if ctx.needs_input_grad[1]:
                inv2 = inv.square_().mul_(s_c)  # s / R^2
                acc_w += torch.matmul(g_i, inv2.transpose(1, 2))
        grad_w = gv = None
        if ctx.needs_input_grad[0]:
            gv = acc_v.conj().transpose(0, 1)  # [K, H, N]
        if ctx.needs_input_grad[1]:
            grad_w = (v.transpose(0, 1) * acc_w).sum(1).conj()  # [H, N]
        return gv, grad_w, None, None


def _cauchy(v, w, a, s):
    """``Σ_n v[k, h, n] / (a_f - s_f w[h, n])`` ``[K, H, F]`` for ``v``
    ``[K, H, N]``, ``w`` ``[H, N]``, constant ``a``, ``s`` ``[F]``; memory
    O(K H F + H N chunk) (:class:`_Cauchy`)."""
    if torch.jit.is_tracing():  # plain differentiable ops, traceable
        inv = torch.reciprocal(a - s * w.unsqueeze(-1))  # [H, N, F]
        return torch.matmul(v.transpose(0, 1), inv).transpose(0, 1)
    return _Cauchy.apply(v, w, a.detach(), s.detach())


def _woodbury(v, w, a, s):
    """Generating function of the DPLR kernel at some frequencies.

    ``v`` stacks ``[C̃ ΔB, C̃ ΔP, P* ΔB, P* ΔP]``; with the Cauchy sums
    ``k_xy = x* R^{-1} y``, ``R = 2(1-ω) - (1+ω) ΔΛ``: ``K̂ = 2 (k_CB -
    k_CP (1+ω) k_PB / (1 + (1+ω) k_PP))`` ``[channels, H, F]``.
    """
    channels = (v.shape[0] - 2) // 2
    r = _cauchy(v, w, a, s)  # [2 * channels + 2, H, F]
    k00, k01, k10, k11 = r.split([channels, channels, 1, 1])
    q = s / (1 + s * k11)  # [1, H, F]
    return 2 * (k00 - k01 * (k10 * q))


def _dplr_response(v, w, a, s):
    """:func:`_woodbury` over all frequencies in chunks; under autograd each
    chunk is checkpointed (only the ``[channels, H, F]`` result is kept)."""
    H, N = w.shape
    F_ = a.shape[-1]
    chunk = _cauchy_chunks(H, N, F_, w.device)
    if chunk >= F_:
        return _woodbury(v, w, a, s)
    grad = torch.is_grad_enabled() and (v.requires_grad or w.requires_grad)
    out = []
    for i in range(0, F_, chunk):
        args = (v, w, a[i : i + chunk], s[i : i + chunk])
        if grad:
            out.append(checkpoint(_woodbury, *args, use_reentrant=False))
        else:
            out.append(_woodbury(*args))
    return torch.cat(out, dim=-1)


def _row_times_power(v, M, L):
    """``v M^L`` (``v`` [c, H, N], ``M`` [H, N, N]) by binary
    exponentiation, multiplying only the rows by the squares of ``M``."""
    while True:
        if L & 1:
            v = torch.einsum("chn,hnm->chm", v, M)
        L >>= 1
        if not L:
            return v
        M = torch.bmm(M, M)


def _legs_dplr(N):
    """HiPPO-LegS ``A = V (Λ - P̃ P̃*) V*``: ``Λ, P̃ = V* P, B̃ = V* B``
    ``[N/2]`` (complex128, positive imaginary parts). ``A + P P^T`` (``P_n
    = sqrt(n + 1/2)``) is ``-I/2`` + skew-symmetric, hence normal."""
    n = torch.arange(N, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    A = -(torch.tril(torch.outer(q, q), -1) + torch.diag(n + 1))
    P = torch.sqrt(n + 0.5)
    skew = A + torch.outer(P, P) + 0.5 * torch.eye(N, dtype=torch.float64)
    # skew = V diag(i mu) V*, mu real: eigen-decompose the Hermitian -i skew
    mu, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    keep = mu > 0
    mu, V = mu[keep], V[:, keep]
    Lam = -0.5 + 1j * mu
    P_t = V.conj().T @ P.to(torch.complex128)
    B_t = V.conj().T @ q.to(torch.complex128)
    return Lam, P_t, B_t


def _agree_on_length(length, like, training):
    """The largest ``length`` over the ranks of a distributed training run
    (each sets C̃ up at its first batch; weights must stay equal)."""
    dist = torch.distributed
    if not (training and dist.is_available() and dist.is_initialized()):
        return length
    if dist.get_world_size() == 1:
        return length
    t = torch.tensor(length, dtype=torch.long, device=like.device)
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


class S4(nn.Module):
    """S4 layer: ``y = GLU(W GELU(K * u + D u))``, ``K`` the SSM kernel.

    Input and output ``[batch, d_model, time]``, any length.

    Arguments
    ---------
    d_model : int
        Channels H (one SSM each).
    d_state : int
        State size N per SSM (even: N/2 conjugate pairs).
    mode : str
        ``"nplr"`` (S4) or ``"s4d"`` (diagonal), see the module docstring.
    bidirectional : bool
        Add a kernel backward in time (from t+1); not for recurrent modes.
    dt_min, dt_max : float
        Range of the initial step Δ (log-uniform).
    s4d_init : str
        ``"lin"`` (S4D-Lin) or ``"inv"`` (S4D-Inv), for ``mode="s4d"``.
    dropout : float
        Dropout after the GELU.

    Notes
    -----
    NPLR layers train C̃ = C (I - Ā^L) as the authors' S4: ``C`` holds C̃
    for the length in the buffer ``c_length`` (0: ``C`` itself), set up by
    the first :meth:`kernel` (their ``_setup_C``).

    Example
    -------
    >>> layer = S4(8, d_state=4, bidirectional=True)
    >>> x, k = torch.randn(2, 8, 13), layer.kernel(13)  # [2, 8, 13]
    >>> torch.allclose(layer(x, kernel=k), layer(x))
    True
    """

    def __init__(
        self,
        d_model,
        d_state=16,
        mode="nplr",
        bidirectional=False,
        dt_min=0.001,
        dt_max=0.1,
        s4d_init="lin",
        dropout=0.0,
    ):
        super().__init__()
        if mode not in ("nplr", "s4d"):
            raise ValueError(f"mode must be 'nplr' or 's4d', got {mode!r}")
        if s4d_init not in ("lin", "inv"):
            raise ValueError(f"s4d_init must be 'lin' or 'inv', not {s4d_init}")
        if d_state % 2:
            raise ValueError(f"d_state must be even, got {d_state}")
        self.d_model = d_model
        self.d_state = d_state
        self.mode = mode
        self.bidirectional = bidirectional
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.s4d_init = s4d_init
        H, N2 = d_model, d_state // 2
        channels = 2 if bidirectional else 1
        # A = -exp(log_A_real) + i A_imag; complex parameters as real [..., 2]
        self.log_dt = nn.Parameter(torch.empty(H))
        self.log_A_real = nn.Parameter(torch.empty(H, N2))
        self.A_imag = nn.Parameter(torch.empty(H, N2))
        self.B = nn.Parameter(torch.empty(H, N2, 2))
        if mode == "nplr":
            self.P = nn.Parameter(torch.empty(H, N2, 2))
            # the length L that C̃ = C (I - Ā^L) refers to (0: C is C itself)
            self.register_buffer("c_length", torch.zeros((), dtype=torch.long))
        self.C = nn.Parameter(torch.empty(channels, H, N2, 2))
        self.D = nn.Parameter(torch.empty(H))
        self._mark_ssm_parameters()
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Conv1d(H, 2 * H, kernel_size=1)
        self.reset_parameters()

    def _mark_ssm_parameters(self):
        for name in SSM_PARAMETER_NAMES:
            p = getattr(self, name, None)
            if isinstance(p, nn.Parameter):
                p._ssm_param = True

    def __setstate__(self, state):
        # Parameter attributes are lost by copy.deepcopy: mark them again.
        super().__setstate__(state)
        self._mark_ssm_parameters()

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_recurrence_cache", None)  # not part of a copy/pickle
        return state

    @torch.no_grad()
    def reset_parameters(self):
        """(Re-)draw Δ, C, D and restore the structured A, B (and P): the
        S4 / S4D initialisation (SpeechBrain's ``reset_layer_recursively``
        calls it)."""
        H, N2 = self.d_model, self.d_state // 2
        dev = self.log_dt.device
        dtype = self.log_dt.dtype
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        u = torch.rand(H, device=dev, dtype=dtype)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        self.log_dt.copy_(u * (log_max - log_min) + log_min)
        if self.mode == "nplr":
            Lam, P, B = _legs_dplr(self.d_state)
            Lam, P, B = (
                t.to(device=dev, dtype=cdtype).expand(H, N2)
                for t in (Lam, P, B)
            )
            self.log_A_real.copy_(torch.log(-Lam.real))
            self.A_imag.copy_(Lam.imag)
            self.P.copy_(torch.view_as_real(P))
            self.B.copy_(torch.view_as_real(B))
        else:
            n = torch.arange(N2, device=dev, dtype=dtype)
            if self.s4d_init == "lin":
                imag = math.pi * n
            else:
                N = self.d_state
                imag = N / math.pi * (N / (2 * n + 1) - 1)
            self.log_A_real.fill_(math.log(0.5))
            self.A_imag.copy_(imag.expand(H, N2))
            self.B.zero_()
            self.B[..., 0] = 1.0
        # C ~ complex standard normal (variance 1/2 per component); it is
        # the output matrix itself until the first kernel sets up C̃
        self.C.normal_(0.0, math.sqrt(0.5))
        if self.mode == "nplr":
            self.c_length.zero_()
        self.D.normal_(0.0, 1.0)
        self.output_linear.reset_parameters()

    def _ssm(self):
        """Complex parameters: dt ``[H]``, A (Λ for NPLR), B ``[H, N/2]``,
        C ``[channels, H, N/2]``, P ``[H, N/2]`` (None for S4D)."""
        dt = torch.exp(self.log_dt)
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        B = torch.view_as_complex(self.B)
        C = torch.view_as_complex(self.C)
        P = torch.view_as_complex(self.P) if self.mode == "nplr" else None
        return dt, A, B, C, P

    def _bilinear(self, dt, A, B, P):
        """Bilinear discretisation of ``diag(Λ, Λ̄) - P_f P_f*``, dense,
        conjugate completed: Ā ``[H, N, N]``, B̄ ``[H, N]``."""
        Lam_f = torch.cat([A, A.conj()], dim=-1)  # [H, N]
        P_f = torch.cat([P, P.conj()], dim=-1)  # [H, N]
        outer = P_f.unsqueeze(-1) * P_f.conj().unsqueeze(-2)
        A_d = torch.diag_embed(Lam_f) - outer
        N = A_d.shape[-1]
        eye = torch.eye(N, dtype=A_d.dtype, device=A_d.device)
        half = (dt / 2).to(A_d.dtype)[:, None, None]
        M = eye - half * A_d
        A_bar = torch.linalg.solve(M, eye + half * A_d)
        B_f = torch.cat([B, B.conj()], dim=-1)  # [H, N]
        B_bar = torch.linalg.solve(M, dt[:, None] * B_f)
        return A_bar, B_bar

    # C̃ in real coordinates: the completed state [x, x̄] is T r with r =
    # [Re x, Im x], T = [[I, iI], [I, -iI]]; T^-1 A T, Ā and the row C_f T
    # = [2 Re C, -2 Im C] are real, so solves and powers are 4x cheaper.
    def _bar_A_real(self, dt, Lam, P):
        """Bilinear Ā in real coordinates ``[H, N, N]``."""
        # blocks of the completed matrix: A11 = diag(Λ) - P P*, A12 = -P P^T
        A11 = torch.diag_embed(Lam) - P.unsqueeze(-1) * P.conj().unsqueeze(-2)
        A12 = -P.unsqueeze(-1) * P.unsqueeze(-2)
        top = torch.cat([(A11 + A12).real, (A12 - A11).imag], dim=-1)
        bottom = torch.cat([(A11 + A12).imag, (A11 - A12).real], dim=-1)
        A_r = torch.cat([top, bottom], dim=-2)
        eye = torch.eye(A_r.shape[-1], dtype=A_r.dtype, device=A_r.device)
        half = (dt / 2)[:, None, None]
        return torch.linalg.solve(eye - half * A_r, eye + half * A_r)

    @staticmethod
    def _c_to_real(C):
        """``C_f T`` = ``[2 Re C, -2 Im C]`` ``[..., N]`` (real)."""
        return torch.cat([2 * C.real, -2 * C.imag], dim=-1)

    @staticmethod
    def _c_from_real(y):
        """Inverse of :meth:`_c_to_real`: the kept half ``(y1 - i y2) / 2``."""
        n2 = y.shape[-1] // 2
        return torch.complex(y[..., :n2], -y[..., n2:]) / 2

    def kernel(self, length):
        """The SSM kernel of length L >= 1 (without the D term): ``[d_model,
        L]``, or ``[2, d_model, L]`` (forward, backward) if bidirectional.
        In float32 (float64 for a double module), autocast off, not cached;
        an NPLR layer's first call sets C̃ up (class notes).

        Example
        -------
        >>> layer = S4(4, d_state=4)
        >>> k = layer.kernel(6)  # sets C̃ up for L = 6
        >>> torch.allclose(layer.kernel(4), k[:, :4])  # truncation
        True
        >>> torch.allclose(layer.kernel(20)[:, :6], k, atol=1e-6)
        True
        >>> int(layer.c_length)  # longer kernels do not change the weights
        6
        """
        length = int(length)
        if length < 1:
            raise ValueError(f"kernel length must be >= 1, got {length}")
        with torch.autocast(self.log_dt.device.type, enabled=False):
            if self.mode == "s4d":
                k = self._kernel_s4d(length)
            else:
                # one read of the buffer (a host sync on GPU) per kernel
                c_length = int(self.c_length)
                if c_length == 0:
                    self.setup_c_tilde(length)
                    c_length = int(self.c_length)
                k = self._kernel_nplr(length, c_length)
        return k if self.bidirectional else k[0]

    def _kernel_s4d(self, L):
        """``K_l = 2 Re Σ_n C_n B̄_n Ā_n^l``, ``Ā = exp(ΔA)``, ``B̄ =
        (ΔA)^{-1} (exp(ΔA) - 1) ΔB`` (zero-order hold)."""
        dt, A, B, C, _ = self._ssm()
        dtA = dt[:, None] * A  # [H, N/2]
        B_bar = (torch.exp(dtA) - 1.0) / A * B  # [H, N/2]
        W = C * B_bar  # [channels, H, N/2]
        return 2 * _vandermonde(W, dtA, L).real

    @torch.no_grad()
    def setup_c_tilde(self, length):
        """Turn the output matrix C into C̃ = C (I - Ā^L), L = ``length``.

        The authors' ``_setup_C``, called by the first :meth:`kernel`. In
        distributed training the ranks first agree on the largest length.
        """
        if self.mode != "nplr":
            return
        if int(self.c_length) != 0:
            raise RuntimeError(
                f"C̃ is already set up for L = {int(self.c_length)}"
            )
        length = _agree_on_length(int(length), self.c_length, self.training)
        with torch.autocast(self.log_dt.device.type, enabled=False):
            dt, Lam, _, C, P = self._ssm()
            A_bar = self._bar_A_real(dt, Lam, P)
            C_r = self._c_to_real(C)  # [channels, H, N]
            C_r = C_r - _row_times_power(C_r, A_bar, length)
            self.C.copy_(torch.view_as_real(self._c_from_real(C_r)))
        self.c_length.fill_(length)

    def output_matrix(self):
        """The SSM's output matrix C ``[channels, H, N/2]`` (complex,
        differentiable): the parameter for S4D, ``C̃ (I - Ā^L)^{-1}`` with L
        = ``c_length`` for NPLR (the parameter while L = 0)."""
        dt, Lam, _, C, P = self._ssm()
        L = int(self.c_length) if self.mode == "nplr" else 0
        if L == 0:
            return C
        A_bar = self._bar_A_real(dt, Lam, P)
        A_L = torch.linalg.matrix_power(A_bar, L)  # [H, N, N]
        eye = torch.eye(A_L.shape[-1], dtype=A_L.dtype, device=dt.device)
        # y (I - Ā^L) = C̃_r for each row y [channels, H, 1, N]
        y = torch.linalg.solve(
            eye - A_L, self._c_to_real(C).unsqueeze(-2), left=False
        )
        return self._c_from_real(y.squeeze(-2))

    def _kernel_nplr(self, L, M):
        """Kernel of the bilinear DPLR SSM (S4, Algorithm 1).

        ``K̂(ω) = C̃ (I - Ā ω)^{-1} B̄`` of the length-M kernel (M =
        ``c_length``, doubled as the authors do until M >= L) at the roots
        of unity ``ω_l = exp(-2πi l / M)``, so ``K = iFFT(K̂)[:L]``. With the
        bilinear transform ``(I - Āω)^{-1} B̄ = 2 R(ω)^{-1} ΔB``, ``R(ω) =
        2(1-ω) - (1+ω) Δ(Λ - P P*)``, inverted by Woodbury (Cauchy sums).
        """
        dt, Lam, B, C_t, P = self._ssm()
        if M < L:
            # the authors' doubling C̃ <- C̃ (I + Ā^M), M <- 2M, in place
            # under no_grad in theirs; here a constant factor (same kernel
            # and gradients, weights unchanged)
            with torch.no_grad():
                A_bar = self._bar_A_real(dt, Lam, P)
                A_M = torch.linalg.matrix_power(A_bar, M)
                n = A_M.shape[-1]
                eye = torch.eye(n, dtype=A_M.dtype, device=dt.device)
                factor = eye.expand_as(A_M)
                while M < L:
                    factor = factor + torch.matmul(factor, A_M)
                    A_M = torch.matmul(A_M, A_M)
                    M *= 2
            y = torch.einsum("chn,hnm->chm", self._c_to_real(C_t), factor)
            C_t = self._c_from_real(y)
        # roots of unity for the rfft bins
        freqs = torch.arange(M // 2 + 1, device=dt.device, dtype=dt.dtype)
        omega = torch.polar(torch.ones_like(freqs), -2 * math.pi * freqs / M)
        a = 2 * (1 - omega)  # [F]
        s = 1 + omega  # [F]
        # the four Woodbury numerators over the conjugate-completed state
        dtLam = dt[:, None] * Lam  # [H, N/2]
        dtB = dt[:, None] * B  # [H, N/2]
        dtP = dt[:, None] * P  # [H, N/2]
        Pc = P.conj()
        v = torch.cat(
            [C_t * dtB, C_t * dtP, (Pc * dtB)[None], (Pc * dtP)[None]]
        )  # [2 * channels + 2, H, N/2]
        k_hat = _dplr_response(
            torch.cat([v, v.conj()], dim=-1),  # [2 * channels + 2, H, N]
            torch.cat([dtLam, dtLam.conj()], dim=-1),  # [H, N]
            a,
            s,
        )  # [channels, H, F]
        return torch.fft.irfft(k_hat, n=M)[..., :L]  # [channels, H, L]

    def forward(self, x, kernel=None):
        """The layer on a whole sequence ``[batch, d_model, time]``;
        ``kernel``: an optional precomputed ``self.kernel(L)``, L >= time."""
        L = int(x.shape[-1])
        with torch.autocast(x.device.type, enabled=False):
            if kernel is None:
                kernel = self.kernel(L)
            elif (
                kernel.dim() != (3 if self.bidirectional else 2)
                or kernel.shape[-2] != self.d_model
                or kernel.shape[-1] < L
            ):
                raise ValueError(
                    f"kernel of shape {tuple(kernel.shape)} does not fit "
                    f"this layer and an input of length {L} (expected "
                    f"the shape of self.kernel({L}))"
                )
            ctype = _real_dtype(self.D.dtype)
            kernel = kernel[..., :L].to(ctype)
            u = x.to(ctype)
            y = fft_conv(u, kernel) + self.D.to(ctype)[:, None] * u
        y = y.to(x.dtype)
        y = self.dropout(self.activation(y))
        return F.glu(self.output_linear(y), dim=1)

    def _discrete_recurrence(self):
        """(Ā, B̄, C) on the kept half state: Ā ``[H, N/2]`` (S4D,
        diagonal) or ``[H, N/2, N]`` (NPLR: the first half of the rows, on
        the completed state), B̄ and C ``[H, N/2]``."""
        dt, A, B, _, P = self._ssm()
        C = self.output_matrix()[0]
        if self.mode == "s4d":
            dtA = dt[:, None] * A
            A_bar = torch.exp(dtA)
            B_bar = (A_bar - 1.0) / A * B
            return A_bar, B_bar, C
        A_bar, B_bar = self._bilinear(dt, A, B, P)
        N2 = A.shape[-1]
        return A_bar[:, :N2, :], B_bar[:, :N2], C

    def _recording_recurrence_grad(self):
        """Autograd records the recurrence parameters' gradients (no cache)."""
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in self._recurrence_params()
        )

    def _recurrence_params(self):
        params = [self.log_dt, self.log_A_real, self.A_imag, self.B, self.C]
        if self.mode == "nplr":
            params += [self.P, self.c_length]
        return params

    def _cached(self, name, build):
        """``build()``, cached under ``name`` while the parameters keep their
        versions and no gradient is recorded (one solve per stream)."""
        if self._recording_recurrence_grad():
            return build()
        params = self._recurrence_params()
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        caches = self.__dict__.setdefault("_recurrence_cache", {})
        entry = caches.get(name)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = (key, build())
            caches[name] = entry
        return entry[1]

    def _real_diagonal_form(self):
        """``z_k = lam z_{k-1} + b u_k``, ``y_k = Re(Σ c_m z_{k,m}) + D u_k``
        in Ā's eigenbasis V, float64 (cond(V) ~3e7 at the HiPPO init, N =
        16): ``(lam_re, lam_im, b_re, b_im, c, cond)``, ``[H, M]`` (M = N/2
        for S4D, N for NPLR), ``c = [Re c, -Im c]`` ``[H, 2M]``, cond(V)."""
        dt, A, B, _, P = self._ssm()
        C = self.output_matrix()[0]
        cdt = torch.complex128
        dt, A, B, C = dt.double(), A.to(cdt), B.to(cdt), C.to(cdt)
        if self.mode == "s4d":
            lam = torch.exp(dt[:, None] * A)
            b, c, cond = (lam - 1.0) / A * B, 2 * C, 1.0
        else:
            A_bar, B_bar = self._bilinear(dt, A, B, P.to(cdt))
            lam, V = torch.linalg.eig(A_bar)
            cond = float(torch.linalg.cond(V.detach()).abs().max())
            b = torch.linalg.solve(V, B_bar.unsqueeze(-1)).squeeze(-1)
            c_full = torch.cat([C, C.conj()], dim=-1)  # [H, N]
            c = torch.matmul(c_full.unsqueeze(-2), V).squeeze(-2)
        c = torch.cat([c.real, -c.imag], dim=-1)
        return lam.real, lam.imag, b.real, b.imag, c, cond

    def stream_form(self):
        """The diagonal form for :meth:`forward_stream` (of
        :meth:`_real_diagonal_form`), or None where the dense recurrence must
        run: under autograd, or when ``cond(V) eps(float64) >= eps(dtype)``."""
        if self._recording_recurrence_grad():
            return None
        *form, cond = self._cached("diagonal", self._real_diagonal_form)
        limit = torch.finfo(self.D.dtype).eps / torch.finfo(torch.float64).eps
        if not cond < limit:  # also refuses a nan condition number
            return None
        return tuple(form)

    def _diagonal_ssm_recurrence(self, u, state, form):
        """:meth:`_ssm_recurrence` in the eigenbasis (``form``: from
        :meth:`stream_form`): four real float64 multiply-adds per frame (CPU
        complex kernels are slow); ``state`` ``[batch, 2, H, M]`` (None: 0).
        """
        lam_re, lam_im, b_re, b_im, c = form
        if state is None:
            shape = (u.shape[0], 2, *lam_re.shape)
            state = lam_re.new_zeros(shape)
        n = u.shape[-1]
        if n == 0:
            return u.new_zeros(u.shape), state
        with torch.autocast(u.device.type, enabled=False):
            ud = u.to(torch.float64)
            # frames first, state index last in every map: CPU element-wise
            # kernels are slow on broadcasts with a tiny innermost dimension
            ut = ud.transpose(-1, -2).unsqueeze(-1)  # [batch, time, H, 1]
            bu_re, bu_im = ut * b_re, ut * b_im  # [batch, time, H, M]
            z_re, z_im = state.unbind(1)
            zs = []
            for k in range(n):
                # z <- lam z + b u_k, (a + ib)(x + iy) = ax - by + i(bx + ay)
                new_re = torch.addcmul(bu_re[:, k], lam_re, z_re)
                new_re = torch.addcmul(new_re, lam_im, z_im, value=-1)
                new_im = torch.addcmul(bu_im[:, k], lam_im, z_re)
                z_im = torch.addcmul(new_im, lam_re, z_im)
                z_re = new_re
                zs.append(torch.cat([z_re, z_im], dim=-1))
            y = (torch.stack(zs, dim=1) * c).sum(dim=-1)  # [batch, time, H]
            y = y.transpose(-1, -2) + self.D.to(torch.float64)[:, None] * ud
        return y.to(u.dtype), torch.stack([z_re, z_im], dim=1)

    def default_state(self, batch_size):
        """Zero complex state for :meth:`step`, ``[batch, H, N/2]``."""
        B = torch.view_as_complex(self.B)
        return B.new_zeros(batch_size, self.d_model, self.d_state // 2)

    def step(self, u, state):
        """One step ``x_k = Ā x_{k-1} + B̄ u_k`` of a causal layer: frame
        ``u`` ``[batch, d_model]`` and the state (from :meth:`default_state`
        or the previous step) -> output frame and new state.

        Example
        -------
        >>> layer = S4(4, d_state=4).eval()
        >>> x = torch.randn(1, 4, 3)
        >>> state = layer.default_state(1)
        >>> ys = []
        >>> for t in range(3):
        ...     y, state = layer.step(x[:, :, t], state)
        ...     ys.append(y)
        >>> torch.allclose(torch.stack(ys, -1), layer(x), atol=1e-5)
        True
        """
        if self.bidirectional:
            raise RuntimeError("step() needs a causal (bidirectional=False) S4")
        y, state = self._ssm_recurrence(u.unsqueeze(-1), state)
        y = self.dropout(self.activation(y[..., 0]))
        w = self.output_linear.weight[:, :, 0]
        return F.glu(F.linear(y, w, self.output_linear.bias), dim=-1), state

    def _ssm_recurrence(self, u, state):
        """``y_k = C x_k + D u_k``, ``x_k = Ā x_{k-1} + B̄ u_k`` over the
        frames of ``u`` ``[batch, d_model, time]``; ``y`` and the last state."""
        with torch.autocast(u.device.type, enabled=False):
            A_bar, B_bar, C = self._cached("dense", self._discrete_recurrence)
            ctype = _real_dtype(self.D.dtype)
            uc = u.to(ctype)
            bu = B_bar.unsqueeze(-1) * uc.unsqueeze(-2)  # [B, H, N/2, time]
            states = []
            for k in range(uc.shape[-1]):
                if self.mode == "s4d":
                    state = A_bar * state + bu[..., k]
                else:
                    full = torch.cat([state, state.conj()], dim=-1)
                    state = torch.einsum("hnm,bhm->bhn", A_bar, full)
                    state = state + bu[..., k]
                states.append(state)
            if states:
                xs = torch.stack(states, dim=-1)  # [B, H, N/2, time]
                y = 2 * torch.einsum("hn,bhnt->bht", C, xs).real
            else:
                y = uc.new_zeros(uc.shape)
            y = y + self.D.to(ctype)[:, None] * uc
        return y.to(u.dtype), state

    def forward_stream(self, x, state=None, form=None):
        """A causal layer on the next frames of a stream.

        Consecutive chunks ``x`` ``[batch, d_model, time]`` (any length)
        give :meth:`forward`'s output on the whole sequence; returns ``y``
        and the state for the next call (``state``: None at the start;
        opaque, not :meth:`step`'s). ``form``: :meth:`stream_form` fetched
        by the caller (then tensor operations only, for ``torch.compile``).

        Example
        -------
        >>> layer = S4(4, d_state=4).eval()
        >>> x = torch.randn(2, 4, 9)
        >>> y1, state = layer.forward_stream(x[..., :5])
        >>> y2, state = layer.forward_stream(x[..., 5:], state)
        >>> torch.allclose(torch.cat([y1, y2], -1), layer(x), atol=1e-5)
        True
        """
        if self.bidirectional:
            raise RuntimeError(
                "streaming needs a causal (bidirectional=False) S4"
            )
        if form is None:
            form = self.stream_form()
        if form is not None:
            y, state = self._diagonal_ssm_recurrence(x, state, form)
        else:
            if state is None:
                state = self.default_state(x.shape[0])
            y, state = self._ssm_recurrence(x, state)
        if y.shape[-1] == 0:
            return x.new_zeros(x.shape), state
        y = self.dropout(self.activation(y))
        # the 1x1 convolution as a matrix product (cheaper on few frames)
        lin = self.output_linear
        y = linear_frames(y, lin.weight[:, :, 0], lin.bias)
        return F.glu(y, dim=1), state

    def extra_repr(self):
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, "
            f"mode={self.mode!r}, bidirectional={self.bidirectional}"
        )


def _split_params(params):
    """(ssm, other) parameters (of a module, parameters or ``(name, p)``
    pairs) by the ``_ssm_param`` marker, which a module's :class:`S4` layers
    set again first (a bare parameter's deepcopy drops it); no duplicates."""
    if isinstance(params, nn.Module):
        for mod in params.modules():
            if isinstance(mod, S4):
                mod._mark_ssm_parameters()
        params = params.parameters()
    ssm, other, seen = [], [], set()
    for item in params:
        if isinstance(item, dict):
            raise TypeError("pass a module or an iterable of parameters")
        p = item[1] if isinstance(item, tuple) else item
        if id(p) in seen:
            continue
        seen.add(id(p))
        (ssm if getattr(p, "_ssm_param", False) else other).append(p)
    return ssm, other


def ssm_parameter_groups(module, lr, ssm_lr=1e-3, weight_decay=0.0):
    """Optimizer parameter groups: the SSM parameters (marked
    ``_ssm_param`` by :class:`S4`: ``log_dt``, ``log_A_real``, ``A_imag``,
    ``B``, ``P``) at ``ssm_lr`` without weight decay, the others at ``lr``
    with ``weight_decay``; empty groups left out.

    ``module``: a module, or parameters / ``(name, parameter)`` pairs.
    """
    ssm, other = _split_params(module)
    groups = []
    if ssm:
        groups.append({"params": ssm, "lr": ssm_lr, "weight_decay": 0.0})
    if other or not ssm:
        groups.append({"params": other, "lr": lr, "weight_decay": weight_decay})
    return groups


def ssm_aware_optimizer(
    params,
    lr,
    ssm_lr=1e-3,
    weight_decay=0.0,
    optimizer=torch.optim.AdamW,
    **optimizer_kwargs,
):
    """An optimizer over :func:`ssm_parameter_groups`, usable as
    SpeechBrain's ``opt_class`` (called with ``modules.parameters()``: the
    split uses the ``_ssm_param`` marker). A scheduler that sets one rate
    for all groups overwrites ``ssm_lr``.

    Arguments
    ---------
    params : iterable or torch.nn.Module
        Parameters (or a module) to optimise.
    lr, ssm_lr, weight_decay : float
        As in :func:`ssm_parameter_groups`.
    optimizer : type
        Optimizer class; ``**optimizer_kwargs`` are its extra arguments.

    Example
    -------
    >>> model = S4(4, d_state=4)
    >>> opt = ssm_aware_optimizer(model.parameters(), lr=1e-2, ssm_lr=1e-3)
    >>> [g["lr"] for g in opt.param_groups]
    [0.001, 0.01]
    """
    groups = ssm_parameter_groups(
        params, lr=lr, ssm_lr=ssm_lr, weight_decay=weight_decay
    )
    return optimizer(groups, lr=lr, **optimizer_kwargs)

"""Frequency transforms of the ``ssd2gan`` method (JP7464138B2; ``docs/methods/ssd2gan.md``): the orthonormal
2-D DCT-II, the orthonormal 2-D DFT in a real representation, the transform F that feeds Df (:func:`freq`), and
the radial frequency of their coefficients (:func:`frequency_radius`, :func:`high_freq_mask`).

No Ray and no MLflow here; unit-tested in ``tests/test_ssd2gan_losses.py``.

Frequency transform F (spec §2.1, §3, §8.2 tests 1–5; :func:`freq`)
    ``"dct2"`` (default, the patent's experiments): orthonormal 2-D DCT-II over the last two dims,
        X = C_H · x · C_Wᵀ,  C_N[k, m] = s_k cos(π (2m + 1) k / (2N)),  s_0 = √(1/N), s_k = √(2/N) (k ≥ 1)
        (:func:`dct2`; the inverse is x = C_Hᵀ · X · C_W, :func:`idct2`). Same as
        ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``. Implemented as two matmuls with a cached
        orthonormal DCT matrix (:func:`dct_matrix`): differentiable, batched, CPU and GPU. Shape-preserving
        and a bijection with ‖F(x)‖ = ‖x‖ (Parseval).
    ``"dft2"``: the orthonormal 2-D DFT  F(u, v) = (HW)^{-1/2} Σ_{m,n} x[m, n] e^{−2πi(um/H + vn/W)}
        (``torch.fft.fft2(norm="ortho")``), no fftshift (DC at index [0, 0]), presented to Df as a REAL
        tensor in one of the documented representations (:func:`dft2`, spec §3/§9.5 [IMPL-CHOICE]):
          * ``"reim"`` (default): real and imaginary parts concatenated on the channel axis (dim −3):
            (..., C, H, W) → (..., 2C, H, W), channels [Re c_0 … Re c_{C−1}, Im c_0 … Im c_{C−1}];
            a 2-D input (H, W) is treated as one channel → (2, H, W). Injective and norm-preserving
            (Σ Re² + Im² = Σ x²), so the bijection argument of spec §2.2 holds; redundant (Hermitian symmetry).
          * ``"hartley"``: Re F − Im F, the orthonormal discrete Hartley transform
            H(u, v) = (HW)^{-1/2} Σ x[m, n] cas(2π(um/H + vn/W)), cas θ = cos θ + sin θ. Real, shape-preserving,
            orthonormal and its own inverse (a bijection with no redundancy).
          * ``"magnitude"``: |F|, shape-preserving. NOT invertible (loses the phase; breaks the bijection
            argument of spec §2.2); offered for ablations only.
        :func:`idft2` inverts ``"reim"`` and ``"hartley"``.
    All transforms run in at least float32 with autocast disabled (float64 stays float64); integer inputs
    are converted to float32.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

FREQ_KINDS = ("dct2", "dft2")
DFT_MODES = ("reim", "hartley", "magnitude")
INVERTIBLE_DFT_MODES = ("reim", "hartley")


# Argument checks shared by every ssd2gan math module. They live here, in the module the others build on,
# so that losses, baselines and metrics import downwards only (never each other).
def _allowed(name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: unknown value {value!r}; allowed values: {', '.join(allowed)}")


def _float_tensor(x, name: str) -> Tensor:
    """x as a real floating tensor of at least float32 (float64 stays float64)."""
    x = torch.as_tensor(x)
    if x.is_complex():
        raise ValueError(f"{name}: must be a real tensor, got dtype {x.dtype}")
    if x.dtype != torch.float64:
        x = x.float()
    return x


def _check_2d(x: Tensor, name: str) -> None:
    if x.dim() < 2:
        raise ValueError(f"{name}: needs at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{name}: H and W must be >= 1, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- DCT-II (orthonormal)

@functools.lru_cache(maxsize=64)
def _dct_matrix_cached(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    k = np.arange(n, dtype=np.float64)[:, None]
    m = np.arange(n, dtype=np.float64)[None, :]
    c = np.cos(np.pi * (2.0 * m + 1.0) * k / (2.0 * n)) * math.sqrt(2.0 / n)
    c[0, :] = math.sqrt(1.0 / n)
    return torch.from_numpy(c).to(device=device, dtype=dtype)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Orthonormal DCT-II matrix C_N (N × N): C[k, m] = s_k cos(π(2m+1)k/(2N)), s_0 = √(1/N), s_k = √(2/N).

    C Cᵀ = I. Built in float64 and cached per (N, dtype, device); the returned tensor is shared, do not
    modify it in place."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: the DCT size must be an integer >= 1, got {n!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _dct_matrix_cached(int(n), dtype, device)


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II over the last two dims (spec §3 default F; §8.2 test 1).

    X = C_H · x · C_Wᵀ for x of shape (..., H, W); equals ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``.
    Shape-preserving, differentiable, any leading (batch/channel) dims."""
    x = _float_tensor(x, "x")
    _check_2d(x, "x")
    with torch.autocast(device_type=x.device.type, enabled=False):
        ch = dct_matrix(x.shape[-2], x.dtype, x.device)
        cw = dct_matrix(x.shape[-1], x.dtype, x.device)
        return torch.matmul(torch.matmul(ch, x), cw.transpose(0, 1))


def idct2(x: Tensor) -> Tensor:
    """Inverse of :func:`dct2` (orthonormal DCT-III): x = C_Hᵀ · X · C_W; equals
    ``scipy.fft.idctn(X, axes=(-2, -1), norm="ortho")``."""
    x = _float_tensor(x, "x")
    _check_2d(x, "x")
    with torch.autocast(device_type=x.device.type, enabled=False):
        ch = dct_matrix(x.shape[-2], x.dtype, x.device)
        cw = dct_matrix(x.shape[-1], x.dtype, x.device)
        return torch.matmul(torch.matmul(ch.transpose(0, 1), x), cw)


# --------------------------------------------------------------------------- DFT with a real representation

def dft2(x: Tensor, mode: str = "reim") -> Tensor:
    """Orthonormal 2-D DFT of the last two dims in a real representation (spec §3, §9.5 [IMPL-CHOICE]).

    ``mode="reim"``: (..., C, H, W) → (..., 2C, H, W) = cat([Re F, Im F], dim=−3); a 2-D (H, W) input → (2, H, W).
    ``mode="hartley"``: Re F − Im F (the orthonormal discrete Hartley transform), shape-preserving.
    ``mode="magnitude"``: |F|, shape-preserving, not invertible.
    No fftshift: the DC term is at index [0, 0]."""
    _allowed("mode", mode, DFT_MODES)
    x = _float_tensor(x, "x")
    _check_2d(x, "x")
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = torch.fft.fft2(x, norm="ortho")
        if mode == "hartley":
            return z.real - z.imag
        if mode == "magnitude":
            return z.abs()
        if x.dim() == 2:
            return torch.stack([z.real, z.imag], dim=0)
        return torch.cat([z.real, z.imag], dim=-3)


def idft2(y: Tensor, mode: str = "reim") -> Tensor:
    """Inverse of :func:`dft2` for the invertible representations ("reim", "hartley"): the real image x.

    "reim": (..., 2C, H, W) → (..., C, H, W) (real part of the inverse DFT of Re + i·Im; the (2, H, W)
    representation of an (H, W) image gives (1, H, W)). "hartley": the Hartley transform is its own inverse."""
    if mode == "magnitude":
        raise ValueError("mode: 'magnitude' is not invertible (the phase is lost); "
                         f"allowed values: {', '.join(INVERTIBLE_DFT_MODES)}")
    _allowed("mode", mode, INVERTIBLE_DFT_MODES)
    y = _float_tensor(y, "y")
    _check_2d(y, "y")
    with torch.autocast(device_type=y.device.type, enabled=False):
        if mode == "hartley":
            z = torch.fft.fft2(y, norm="ortho")
            return z.real - z.imag
        if y.dim() < 3 or y.shape[-3] % 2:
            raise ValueError(f"y: a 'reim' representation needs an even channel axis (dim -3) holding "
                             f"[Re, Im], got shape {tuple(y.shape)}")
        c = y.shape[-3] // 2
        z = torch.complex(y[..., :c, :, :], y[..., c:, :, :])
        return torch.fft.ifft2(z, norm="ortho").real


def freq(x: Tensor, kind: str = "dct2", dft_mode: str = "reim") -> Tensor:
    """The frequency transform F of the method (spec §2.1 F, §8.1 ``freq(x, kind)``): ``"dct2"`` →
    :func:`dct2` (default, shape-preserving); ``"dft2"`` → :func:`dft2` with ``dft_mode``."""
    _allowed("kind", kind, FREQ_KINDS)
    if kind == "dct2":
        return dct2(x)
    return dft2(x, dft_mode)


def freq_channels(channels: int, kind: str = "dct2", dft_mode: str = "reim") -> int:
    """Channel count of F's output for a C-channel image: 2C for ``dft2``/"reim", C otherwise."""
    _allowed("kind", kind, FREQ_KINDS)
    if kind == "dft2":
        _allowed("dft_mode", dft_mode, DFT_MODES)
    if not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels: must be an integer >= 1, got {channels!r}")
    return 2 * int(channels) if (kind == "dft2" and dft_mode == "reim") else int(channels)


# --------------------------------------------------------------------------- radial frequency of the coefficients

def frequency_radius(h: int, w: int, kind: str = "dft2") -> np.ndarray:
    """Radial frequency ρ(u, v) in units of the Nyquist frequency (0.5 cycles/pixel), shape (H, W), in the
    layout of :func:`~trainers.ssd2gan.metrics.average_power_spectrum`. dft2: ρ = √(f_u² + f_v²)/0.5 with
    f = fftfreq(N); dct2: ρ = √((k/H)² + (l/W)²)."""
    _allowed("kind", kind, FREQ_KINDS)
    if h < 1 or w < 1:
        raise ValueError(f"h, w: must be >= 1, got {h}, {w}")
    if kind == "dft2":
        fu, fv = np.fft.fftfreq(h)[:, None] / 0.5, np.fft.fftfreq(w)[None, :] / 0.5
    else:
        fu, fv = (np.arange(h) / h)[:, None], (np.arange(w) / w)[None, :]
    return np.sqrt(fu ** 2 + fv ** 2)


def high_freq_mask(h: int, w: int, kind: str = "dft2", high_cut: float = 0.5) -> np.ndarray:
    """Boolean (H, W) mask of the high-frequency band ρ ≥ high_cut (default: above half Nyquist)."""
    if not (0.0 < float(high_cut) <= math.sqrt(2.0)):
        raise ValueError(f"high_cut: must lie in (0, sqrt(2)] (units of the Nyquist frequency), got {high_cut!r}")
    return frequency_radius(h, w, kind) >= float(high_cut)

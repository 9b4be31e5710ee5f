"""Quality metrics of the ``ssd2gan`` method (JP7464138B2; ``docs/methods/ssd2gan.md``): the Fréchet distance
between Gaussians fitted to two feature sets, and the spectral error between average power spectra.

No Ray and no MLflow here; unit-tested in ``tests/test_ssd2gan_losses.py``.

Metrics (spec §7, §8.1; :func:`frechet_distance`, :func:`spectral_error`)
    Fréchet distance of Gaussians fitted to two feature sets (FID when the features are Inception's):
        FD = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}),  covariances unbiased (ddof = 1, as np.cov),
        Tr (Σ1 Σ2)^{1/2} = Σ_i √λ_i(Σ1^{1/2} Σ2 Σ1^{1/2}) = the nuclear norm (sum of singular values) of
        Σ1^{1/2} Σ2^{1/2}, with the PSD square roots from symmetric eigendecompositions (tiny negative
        eigenvalues from round-off clipped to 0); float64 throughout; the result is clipped at 0.
    Spectral error between average power spectra (:func:`average_power_spectrum`):
        P̄ = mean over samples and channels of the power |F(x)|² (``kind="dft2"``, default, orthonormal DFT;
        or coefficient² of the orthonormal DCT with ``kind="dct2"``);
        err_band = mean_{(u,v) ∈ band} | ln(P̄_real(u,v) + eps) − ln(P̄_fake(u,v) + eps) |  (natural log)
        "total" = all frequencies; "high" = the high band  ρ(u, v) ≥ high_cut (default 0.5), where ρ is the
        radial frequency in units of the Nyquist frequency
        (:func:`~trainers.ssd2gan.transforms.frequency_radius`):
          dft2: ρ = √(f_u² + f_v²) / 0.5 with f = fftfreq(N) cycles/pixel (so ρ = 1 at the axis Nyquist);
          dct2: ρ = √((k/H)² + (l/W)²) (DCT index k is k/(2N) cycles/pixel).
        I.e. the high band is everything above half the Nyquist frequency radially.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trainers.ssd2gan.transforms import FREQ_KINDS, _allowed, _check_2d, _float_tensor, dct2, high_freq_mask


# --------------------------------------------------------------------------- metrics: Fréchet distance

def _as_f64_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains non-finite values")
    return a


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of an (N, D) feature set: the mean and the unbiased covariance (ddof = 1, as ``np.cov``)."""
    f = _as_f64_numpy(features, "features")
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"features: need shape (N, D) with N >= 2 samples, got {f.shape}")
    mu = f.mean(axis=0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (FID formula, Heusel et al. 2017 [EXT]):
    ‖μ1 − μ2‖² + Tr Σ1 + Tr Σ2 − 2 ‖Σ1^{1/2} Σ2^{1/2}‖_* (nuclear norm = Tr (Σ1 Σ2)^{1/2}), in float64,
    clipped at 0. Symmetric in its two arguments."""
    m1, m2 = _as_f64_numpy(mu1, "mu1"), _as_f64_numpy(mu2, "mu2")
    s1, s2 = _as_f64_numpy(sigma1, "sigma1"), _as_f64_numpy(sigma2, "sigma2")
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"mu1, mu2: need equal shapes (D,), got {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name}: needs shape ({d}, {d}), got {s.shape}")
    tr_sqrt = float(np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum())
    diff = m1 - m2
    fd = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_sqrt
    return max(fd, 0.0)


def frechet_distance(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted (:func:`gaussian_stats`) to two (N, D) feature sets
    (numpy arrays or tensors; N may differ). With Inception pool features this is the FID of spec §7."""
    mu1, s1 = gaussian_stats(features1)
    mu2, s2 = gaussian_stats(features2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"features1, features2: need the same feature dim D, got {mu1.shape[0]} and {mu2.shape[0]}")
    return frechet_distance_from_stats(mu1, s1, mu2, s2)


# --------------------------------------------------------------------------- metrics: spectral error

def average_power_spectrum(x: Tensor, kind: str = "dft2") -> Tensor:
    """P̄(u, v): mean over every leading dim (samples, channels) of the power of F(x) over the last two dims;
    "dft2": |fft2(x, norm="ortho")|² (no fftshift, DC at [0, 0]); "dct2": dct2(x)². Shape (H, W)."""
    _allowed("kind", kind, FREQ_KINDS)
    x = _float_tensor(x, "x")
    _check_2d(x, "x")
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        if kind == "dct2":
            p = dct2(x).pow(2)
        else:
            z = torch.fft.fft2(x, norm="ortho")
            p = z.real.pow(2) + z.imag.pow(2)
        return p.reshape(-1, x.shape[-2], x.shape[-1]).mean(dim=0)


def spectral_error_from_spectra(p_real, p_fake, kind: str = "dft2", high_cut: float = 0.5,
                                eps: float = 1e-10) -> dict[str, float]:
    """{"total", "high"}: mean |ln(P̄_real + eps) − ln(P̄_fake + eps)| over all frequencies / over the
    high band (:func:`high_freq_mask`) of two (H, W) average power spectra (accumulate them over batches
    with :func:`average_power_spectrum`). "high" is NaN if the band is empty (tiny images)."""
    pr, pf = _as_f64_numpy(p_real, "p_real"), _as_f64_numpy(p_fake, "p_fake")
    if pr.ndim != 2 or pr.shape != pf.shape:
        raise ValueError(f"p_real, p_fake: need equal (H, W) shapes, got {pr.shape} and {pf.shape}")
    if (pr < 0).any() or (pf < 0).any():
        raise ValueError("p_real, p_fake: power spectra must be non-negative")
    if not eps > 0:
        raise ValueError(f"eps: must be > 0, got {eps!r}")
    d = np.abs(np.log(pr + eps) - np.log(pf + eps))
    mask = high_freq_mask(pr.shape[0], pr.shape[1], kind, high_cut)
    return {"total": float(d.mean()), "high": float(d[mask].mean()) if mask.any() else float("nan")}


def spectral_error(real: Tensor, fake: Tensor, kind: str = "dft2", high_cut: float = 0.5,
                   eps: float = 1e-10) -> dict[str, float]:
    """Spectral error between the average power spectra of real and generated samples (..., H, W)
    (spec §7.3 outcome 4, Figs. 2/7): see :func:`spectral_error_from_spectra`."""
    real = _float_tensor(real, "real")
    fake = _float_tensor(fake, "fake")
    _check_2d(real, "real")
    _check_2d(fake, "fake")
    if real.shape[-2:] != fake.shape[-2:]:
        raise ValueError(f"real, fake: need the same (H, W), got {tuple(real.shape)} and {tuple(fake.shape)}")
    return spectral_error_from_spectra(average_power_spectrum(real, kind), average_power_spectrum(fake, kind),
                                       kind, high_cut, eps)

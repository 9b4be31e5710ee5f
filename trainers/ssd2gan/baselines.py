"""Baseline regularisers of the ``ssd2gan`` method (JP7464138B2; ``docs/methods/ssd2gan.md``): Durall et
al.'s spectral loss ("CVPR20") and the frequency-domain MSE ("FreqMSE"), each added to the generator's loss.

No Ray and no MLflow here; unit-tested in ``tests/test_ssd2gan_losses.py``.

Baselines (spec §3, §7.2; :func:`durall_spectral_loss`, :func:`freq_mse_loss`)
    "CVPR20" (Durall et al. 2020 [EXT]): per image, the channel mean g; P = |DFT_ortho(g)|², fftshift;
        the 1-D azimuthal power spectrum S[k] = mean of P over the pixels whose distance from the centre
        (H//2, W//2) satisfies floor(r) = k, k = 0 … floor(r_max) (:func:`azimuthal_power_spectrum`);
        s = log(S + eps), min–max normalised to [0, 1] per image (:func:`normalized_azimuthal_spectrum`);
        loss = BCE(s_fake_i, mean_j s_real_j), averaged over fake images and bins (added to G's loss).
    "FreqMSE" (spec §3 "treat as unspecified"; [EXT] F-Match reading): the MSE over coefficients between a
        batch statistic of DCT2(fake) and of DCT2(real); ``stat="mean"`` (default) the batch means of the
        coefficients (note: by linearity and orthonormality this EQUALS the MSE between the spatial mean
        images), ``"abs"`` the batch mean of |coefficient|, ``"power"`` the batch mean of coefficient².
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from trainers.ssd2gan.transforms import _allowed, _check_2d, _float_tensor, dct2

FREQMSE_STATS = ("mean", "abs", "power")
SPECTRUM_NORMS = ("minmax", "none")


@functools.lru_cache(maxsize=32)
def _ring_bins(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    u = np.arange(h)[:, None] - h // 2
    v = np.arange(w)[None, :] - w // 2
    r = np.sqrt(u.astype(np.float64) ** 2 + v.astype(np.float64) ** 2)
    bins = np.floor(r).astype(np.int64)
    counts = np.bincount(bins.ravel())
    return bins, counts


@functools.lru_cache(maxsize=32)
def _ring_matrix(h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    bins, counts = _ring_bins(h, w)
    a = np.zeros((h * w, counts.size), dtype=np.float64)
    a[np.arange(h * w), bins.ravel()] = 1.0
    a /= np.maximum(counts, 1)[None, :]
    return torch.from_numpy(a).to(device=device, dtype=dtype)


def azimuthal_power_spectrum(x: Tensor) -> Tensor:
    """1-D azimuthally averaged power spectrum over the last two dims (Durall et al. 2020 [EXT]; spec §3).

    P = |fft2(x, norm="ortho")|², fftshifted so that DC sits at (H//2, W//2); S[k] = mean of P over the
    pixels with floor(√((u − H//2)² + (v − W//2)²)) = k, k = 0 … floor(r_max). Shape (..., H, W) → (..., R).
    Differentiable (a fixed averaging matrix)."""
    x = _float_tensor(x, "x")
    _check_2d(x, "x")
    h, w = x.shape[-2], x.shape[-1]
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = torch.fft.fft2(x, norm="ortho")
        p = torch.fft.fftshift(z.real.pow(2) + z.imag.pow(2), dim=(-2, -1))
        return torch.matmul(p.reshape(*p.shape[:-2], h * w), _ring_matrix(h, w, x.dtype, x.device))


def normalized_azimuthal_spectrum(x: Tensor, normalize: str = "minmax", eps: float = 1e-8) -> Tensor:
    """Durall's normalised 1-D spectrum of each image: s = log(S + eps) with S from
    :func:`azimuthal_power_spectrum`, then min–max scaled to [0, 1] along the radius (``"minmax"``,
    default; a flat spectrum gives 0) or left as the log power (``"none"``)."""
    _allowed("normalize", normalize, SPECTRUM_NORMS)
    s = torch.log(azimuthal_power_spectrum(x) + eps)
    if normalize == "none":
        return s
    lo = s.amin(dim=-1, keepdim=True)
    hi = s.amax(dim=-1, keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-12)


def durall_spectral_loss(real: Tensor, fake: Tensor, eps: float = 1e-8, bce_eps: float = 1e-6) -> Tensor:
    """"CVPR20" baseline regulariser (spec §3/§7.2; Durall et al. 2020 [EXT]) for (B, C, H, W) batches.

    Channel mean → :func:`normalized_azimuthal_spectrum` (min–max of the log power) per image; the target
    is the batch mean of the real spectra (no gradient); loss = mean over fake images and radius bins of
    BCE(s_fake, target) = −[t log s + (1 − t) log(1 − s)], s clamped to [bce_eps, 1 − bce_eps]. Add
    λ·loss to the generator's loss."""
    real = _float_tensor(real, "real")
    fake = _float_tensor(fake, "fake")
    for name, t in (("real", real), ("fake", fake)):
        if t.dim() != 4:
            raise ValueError(f"{name}: needs shape (B, C, H, W), got {tuple(t.shape)}")
    if real.shape[-2:] != fake.shape[-2:]:
        raise ValueError(f"real, fake: need the same (H, W), got {tuple(real.shape)} and {tuple(fake.shape)}")
    target = normalized_azimuthal_spectrum(real.detach().mean(dim=1), eps=eps).mean(dim=0)
    s = normalized_azimuthal_spectrum(fake.mean(dim=1), eps=eps).clamp(bce_eps, 1.0 - bce_eps)
    t = target.to(s.dtype).expand_as(s)
    return -(t * torch.log(s) + (1.0 - t) * torch.log1p(-s)).mean()


def freq_mse_loss(real: Tensor, fake: Tensor, stat: str = "mean") -> Tensor:
    """"FreqMSE" baseline (spec §3/§7.2: 2-D DCT + MSE; exact form unspecified, [EXT] F-Match reading).

    mean over (C, H, W) of (stat_b DCT2(fake) − stat_b DCT2(real))², stat over the batch (dim 0):
    "mean" (default) the coefficients' batch mean (≡ MSE of the mean images, by orthonormality),
    "abs" the batch mean of |coefficient|, "power" the batch mean of coefficient²."""
    _allowed("stat", stat, FREQMSE_STATS)
    real = _float_tensor(real, "real")
    fake = _float_tensor(fake, "fake")
    for name, t in (("real", real), ("fake", fake)):
        if t.dim() < 3:
            raise ValueError(f"{name}: needs shape (B, ..., H, W) with a batch dim, got {tuple(t.shape)}")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real, fake: need the same per-sample shape, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")

    def stat_of(t: Tensor) -> Tensor:
        c = dct2(t)
        if stat == "abs":
            c = c.abs()
        elif stat == "power":
            c = c.pow(2)
        return c.mean(dim=0)

    return (stat_of(fake) - stat_of(real.detach())).pow(2).mean()

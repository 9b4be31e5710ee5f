"""The figures ``shift_explainer`` (JP7517093B2) reports: image proxies of a cell (ink, hue), the fidelity of
a generated grid and black-box shift detection on the classifier's outputs. Pure PyTorch / numpy / scipy, no
Ray (``tests/test_shift_explainer_math.py``).

Image proxies (spec §8.3 test 11; :func:`ink`, :func:`hue`), images in [0, 1], (N, C, H, W), C ∈ {1, 3}
    ink pixel: max over channels > threshold. ink(x) = fraction of ink pixels (stroke-thickness proxy).
    hue(x) = circular mean of the HSV hue (in turns, [0, 1)) of the ink pixels, each weighted by its chroma
        max − min over RGB (a grey pixel has no hue; for a uniformly coloured stroke the weights do not matter).
        NaN when an image has no ink pixel with non-zero chroma. Grayscale (C = 1): zeros.

Fidelity (spec §8.3 tests 9–11; :func:`grid_fidelity`, :func:`latent_invariance`) and black-box shift
detection on classifier outputs (:func:`shift_test`, per-class Kolmogorov–Smirnov with Bonferroni) — see the
functions.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.stats
import torch
from torch import Tensor


# --------------------------------------------------------------------------- image proxies

def _images(images, name: str = "images") -> Tensor:
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: need shape (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    return x.double() if x.dtype == torch.float64 else x.float()


def ink(images, threshold: float = 0.5) -> Tensor:
    """Stroke-thickness proxy: per image, the fraction of pixels whose max over channels is > threshold.
    images (N, C, H, W) in [0, 1], C ∈ {1, 3}; returns (N,) in [0, 1]."""
    x = _images(images)
    return (x.amax(dim=1) > float(threshold)).to(x.dtype).mean(dim=(1, 2))


def rgb_hue(images) -> tuple[Tensor, Tensor]:
    """Per-pixel HSV hue (turns, [0, 1)) and chroma (max − min) of RGB images (N, 3, H, W) → two (N, H, W)
    tensors. Same convention as ``matplotlib.colors.rgb_to_hsv`` (hue 0 where the chroma is 0)."""
    x = _images(images)
    if x.shape[1] != 3:
        raise ValueError(f"images: rgb_hue needs 3 channels, got shape {tuple(x.shape)}")
    r, g, b = x.unbind(1)
    mx, mn = x.amax(dim=1), x.amin(dim=1)
    c = mx - mn
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(mx == r, torch.remainder((g - b) / safe, 6.0), torch.zeros_like(c))
    h = torch.where((mx == g) & (mx != r), (b - r) / safe + 2.0, h)
    h = torch.where((mx == b) & (mx != r) & (mx != g), (r - g) / safe + 4.0, h)
    h = torch.where(c > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(c))
    return h, c


def hue(images, threshold: float = 0.5) -> Tensor:
    """Colour proxy: per image, the chroma-weighted circular mean of the HSV hue of its ink pixels (max over
    channels > threshold), in turns, [0, 1) (red 0, green 1/3, blue 2/3). (N,). NaN for an image with no ink
    pixel of non-zero chroma. Grayscale images (C = 1) have no hue: zeros."""
    x = _images(images)
    if x.shape[1] == 1:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    h, c = rgb_hue(x)
    w = c * (x.amax(dim=1) > float(threshold)).to(x.dtype)
    ang = 2.0 * math.pi * h
    s, co = (w * torch.sin(ang)).sum(dim=(1, 2)), (w * torch.cos(ang)).sum(dim=(1, 2))
    out = torch.remainder(torch.atan2(s, co) / (2.0 * math.pi), 1.0)
    out = torch.where(out >= 1.0, torch.zeros_like(out), out)  # remainder can round up to exactly 1
    return torch.where(w.sum(dim=(1, 2)) > 0, out, torch.full_like(out, math.nan))


# --------------------------------------------------------------------------- fidelity (spec §8.3 tests 9-11)

def _grid_array(a, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"{name}: need an (R, Cc) array with R >= 2, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name}: need shape {shape} like realised_loss, got {a.shape}")
    return a


def _nanmean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _column_spearman(x: np.ndarray, m: np.ndarray) -> float:
    """Mean over the columns of m of Spearman ρ(x, m[:, j]); columns that are constant or non-finite (ρ
    undefined) are skipped; NaN if x is constant or no column is usable."""
    if np.ptp(x) == 0:
        return math.nan
    vals = []
    for j in range(m.shape[1]):
        col = m[:, j]
        if not np.isfinite(col).all() or np.ptp(col) == 0:
            continue
        vals.append(float(scipy.stats.spearmanr(x, col).statistic))
    return _nanmean(vals)


def circular_distance(a, b) -> np.ndarray:
    """Distance between hues in turns on the circle: min(|a − b| mod 1, 1 − |a − b| mod 1) ∈ [0, 0.5];
    NaN where either is NaN."""
    d = np.mod(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)), 1.0)
    return np.minimum(d, 1.0 - d)


def grid_fidelity(realised_loss, grid_l, ink_vals, hue_vals) -> dict[str, float]:
    """Conditioning-fidelity and semantic metrics of a generated grid (spec §8.3 tests 9 and 11).

    realised_loss, ink_vals, hue_vals: (R, Cc) arrays — the classifier loss ℓ(f(x̂_ij), y), the ink fraction
    and the hue of every cell (row i = loss index, column j = feature index); grid_l: the (R,) conditioning
    losses L_i. Returns floats (NaN where undefined):
      loss_axis_spearman            mean_j Spearman ρ(grid_l, realised_loss[:, j])  (constant columns skipped)
      feature_axis_loss_spread      mean_i std_j realised_loss[i, j]    (std with ddof = 0)
      loss_axis_loss_spread         mean_j std_i realised_loss[i, j]
      thickness_loss_axis_spearman  mean_j Spearman ρ(grid_l, ink[:, j])
      thickness_change_loss_axis    mean_j (ink[R−1, j] − ink[0, j])
      thickness_change_feature_axis mean_i (ink[i, Cc−1] − ink[i, 0])
      hue_change_feature_axis       mean_i circular_distance(hue[i, Cc−1], hue[i, 0])   (NaN entries skipped)
      hue_change_loss_axis          mean_j circular_distance(hue[R−1, j], hue[0, j])"""
    rl = _grid_array(realised_loss, "realised_loss")
    gl = np.asarray(grid_l.detach().cpu() if isinstance(grid_l, Tensor) else grid_l, dtype=np.float64)
    if gl.shape != (rl.shape[0],):
        raise ValueError(f"grid_l: need shape ({rl.shape[0]},) (one loss per row), got {gl.shape}")
    if not np.isfinite(gl).all():
        raise ValueError("grid_l: the conditioning losses must be finite")
    ik = _grid_array(ink_vals, "ink_vals", rl.shape)
    hu = _grid_array(hue_vals, "hue_vals", rl.shape)
    return {
        "loss_axis_spearman": _column_spearman(gl, rl),
        "feature_axis_loss_spread": _nanmean(rl.std(axis=1)),
        "loss_axis_loss_spread": _nanmean(rl.std(axis=0)),
        "thickness_loss_axis_spearman": _column_spearman(gl, ik),
        "thickness_change_loss_axis": _nanmean(ik[-1, :] - ik[0, :]),
        "thickness_change_feature_axis": _nanmean(ik[:, -1] - ik[:, 0]),
        "hue_change_feature_axis": _nanmean(circular_distance(hu[:, -1], hu[:, 0])),
        "hue_change_loss_axis": _nanmean(circular_distance(hu[-1, :], hu[0, :])),
    }


def latent_invariance(encode: Callable[[Tensor], Tensor], decode: Callable[[Tensor, Tensor], Tensor], z, l_a, l_b,
                      z1, z2) -> float:
    """Latent invariance (spec §8.3 test 10): mean_n ‖E(G(z_n, l_a)) − E(G(z_n, l_b))‖₂ / ‖z1 − z2‖₂ over the
    rows of z (n, d). l_a, l_b: scalars or (n,) losses (raw, as ``decode`` takes them). Small = Z does not
    encode L. Runs under ``torch.no_grad()``. ValueError if z1 == z2."""
    z = torch.as_tensor(z)
    if z.dim() != 2 or z.shape[0] < 1:
        raise ValueError(f"z: need shape (n, d) with n >= 1, got {tuple(z.shape)}")
    z1, z2 = torch.as_tensor(z1), torch.as_tensor(z2)
    if z1.reshape(-1).shape != (z.shape[1],) or z2.reshape(-1).shape != (z.shape[1],):
        raise ValueError(f"z1, z2: need {z.shape[1]} entries each (the d of z), got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    ref = float(torch.linalg.vector_norm((z1.reshape(-1) - z2.reshape(-1)).double()))
    if not ref > 0:
        raise ValueError("z1, z2: must differ (the reference distance ||z1 - z2|| is 0)")

    def _l(v, name):
        t = torch.as_tensor(v, dtype=z.dtype, device=z.device)
        if t.numel() == 1:
            return t.reshape(()).expand(z.shape[0])
        if t.shape != (z.shape[0],):
            raise ValueError(f"{name}: need a scalar or shape ({z.shape[0]},), got {tuple(t.shape)}")
        return t

    la, lb = _l(l_a, "l_a"), _l(l_b, "l_b")
    with torch.no_grad():
        ea, eb = encode(decode(z, la)), encode(decode(z, lb))
        d = torch.linalg.vector_norm((ea - eb).double().reshape(z.shape[0], -1), dim=1)
    return float(d.mean()) / ref


# --------------------------------------------------------------------------- shift detection

def _probs(p, name: str) -> np.ndarray:
    a = np.asarray(p.detach().cpu() if isinstance(p, Tensor) else p, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: need softmax probabilities of shape (N, C) with N, C >= 1, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: all probabilities must be finite")
    return a


def shift_test(p1, p2) -> dict[str, float]:
    """Black-box shift detection on classifier outputs ("BBSD"-style, [EXTERNAL]; not in the patent): softmax
    probabilities p1 (N1, C) on domain 1 and p2 (N2, C) on domain 2.

    Per class c, the two-sample Kolmogorov–Smirnov test of p1[:, c] vs p2[:, c] (``scipy.stats.ks_2samp``,
    two-sided, default method); returns
      pvalue                min(1, C · min_c p_c)  (Bonferroni over the C tests)
      pvalue_min            min_c p_c  (uncorrected)
      ks_stat_max           max_c D_c
      ks_confidence_pvalue  KS p-value of the max-softmax confidence max_c p[:, c] alone
      ks_confidence_stat    its statistic."""
    a, b = _probs(p1, "p1"), _probs(p2, "p2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"p1, p2: need the same number of classes, got {a.shape[1]} and {b.shape[1]}")
    n_cls = a.shape[1]
    res = [scipy.stats.ks_2samp(a[:, c], b[:, c]) for c in range(n_cls)]
    pv = np.array([float(r.pvalue) for r in res])
    st = np.array([float(r.statistic) for r in res])
    conf = scipy.stats.ks_2samp(a.max(axis=1), b.max(axis=1))
    return {
        "pvalue": float(min(1.0, n_cls * pv.min())),
        "pvalue_min": float(pv.min()),
        "ks_stat_max": float(st.max()),
        "ks_confidence_pvalue": float(conf.pvalue),
        "ks_confidence_stat": float(conf.statistic),
    }

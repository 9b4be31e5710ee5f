"""The explanation grid of ``shift_explainer`` (JP7517093B2): interpolation between the two selected samples
(Eq. 6) and the decoded feature × loss grid (Eq. 7). Pure PyTorch, no Ray (``tests/test_shift_explainer_math.py``).

Interpolation (spec §2.6, Eq. 6; §8.3 tests 1, 3, 4; :func:`interpolate`, :func:`interpolate_joint`)
    K intermediate points, K + 2 points in all:  t_k = k / (K + 1),  k = 0 … K + 1,
        Z_k = (1 − t_k)·Z(1) + t_k·Z(2)   (component-wise),   L_k = (1 − t_k)·L(1) + t_k·L(2).
    The endpoints are EXACT (row 0 is Z(1) bit for bit, row K + 1 is Z(2)). Different counts on the two axes
    (K_Z ≠ K_L) = two calls with different k, taking Z from one and L from the other.
    Joint variant: interpolate the (d + 1)-vector [Z; L]; with the same t it gives the same numbers.

Generation (spec §2.7, Eq. 7; §8.2; :func:`generate_grid`, :func:`generate_diagonal`)
    Grid: cell [i, j] = G(Z_j, L_i), i = loss index (rows, top = L(1)), j = feature index (columns, left = Z(1));
    [0, 0] = x(1) and [R − 1, C − 1] = x(2) are the real inputs, not generated: R·C − 2 cells are decoded in ONE
    batched call (23 for K = 3). Diagonal: x(1), G(Z_1, L_1) … G(Z_K, L_K), x(2).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

LAYOUTS = ("grid", "diagonal")


# --------------------------------------------------------------------------- interpolation (Eq. 6)

def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: the number of intermediate points must be an integer >= 0, got {k!r}; "
                         "allowed: an integer >= 0")
    return int(k)


def _result_dtype(*xs) -> torch.dtype:
    """Floating tensors keep their dtype (promoted together); anything else is float64."""
    dt = None
    for x in xs:
        if isinstance(x, Tensor) and x.is_floating_point():
            dt = x.dtype if dt is None else torch.promote_types(dt, x.dtype)
    return torch.float64 if dt is None else dt


def _device(*xs) -> torch.device:
    for x in xs:
        if isinstance(x, Tensor):
            return x.device
    return torch.device("cpu")


def _vector(x, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    try:
        t = torch.as_tensor(x if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be a 1-D array of numbers, got {x!r}") from e
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name}: must be a 1-D vector of shape (d,) with d >= 1, got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: all entries must be finite, got {t.tolist()}")
    return t


def _scalar(x, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(x, bool):
        raise ValueError(f"{name}: must be a real number, got {x!r}")
    try:
        t = torch.as_tensor(x if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be a real number, got {x!r}") from e
    if t.numel() != 1:
        raise ValueError(f"{name}: must be a scalar (a float or a 0-d / 1-element tensor), "
                         f"got shape {tuple(t.shape)}")
    t = t.reshape(()).to(device=device, dtype=dtype)
    if not bool(torch.isfinite(t)):
        raise ValueError(f"{name}: must be finite, got {float(t)}")
    return t


def _lerp_rows(a: Tensor, b: Tensor, k: int) -> Tensor:
    """(k + 2, d): row m = (1 − t_m)·a + t_m·b, t_m = m / (k + 1); rows 0 and k + 1 are a and b exactly."""
    t = (torch.arange(k + 2, dtype=torch.float64, device=a.device) / (k + 1)).to(a.dtype)[:, None]
    out = (1 - t) * a[None, :] + t * b[None, :]
    out[0] = a
    out[-1] = b
    return out


def _endpoints(z1, z2, l1, l2, k) -> tuple[int, Tensor, Tensor, Tensor, Tensor]:
    """The validated (k, z1, z2, l1, l2) of both interpolations, in one dtype and on one device."""
    k = _check_k(k)
    dt, dev = _result_dtype(z1, z2, l1, l2), _device(z1, z2, l1, l2)
    a, b = _vector(z1, "z1", dt, dev), _vector(z2, "z2", dt, dev)
    if a.shape != b.shape:
        raise ValueError(f"z1, z2: need the same dimension d, got {tuple(a.shape)} and {tuple(b.shape)}")
    la, lb = _scalar(l1, "l1", dt, dev), _scalar(l2, "l2", dt, dev)
    return k, a, b, la, lb


def interpolate(z1, z2, l1, l2, k: int) -> tuple[Tensor, Tensor]:
    """Linear interpolation of features and losses (spec Eq. 6, S106; claims 2 and 3).

    z1, z2: feature vectors of shape (d,) (tensors or array-likes; 1-D required), l1, l2: scalar losses
    (floats or 0-d / 1-element tensors), k: the number K of intermediate points, an integer >= 0.
    Returns (Z, L) of shapes (K + 2, d) and (K + 2,) with t_k = k / (K + 1) evenly spaced:
    Z[k] = (1 − t_k)·z1 + t_k·z2, L[k] = (1 − t_k)·l1 + t_k·l2; Z[0] == z1, Z[K + 1] == z2 (bitwise; the same
    for L). dtype: that of the floating tensor inputs (float32 stays float32), else float64; device of the
    first tensor input. Differentiable. ValueError for non-finite values, wrong shapes or a bad k."""
    k, a, b, la, lb = _endpoints(z1, z2, l1, l2, k)
    return _lerp_rows(a, b, k), _lerp_rows(la[None], lb[None], k)[:, 0]


def interpolate_joint(z1, z2, l1, l2, k: int) -> tuple[Tensor, Tensor]:
    """Joint-space variant (spec §2.6, claim 3): interpolate the (d + 1)-vectors [z1; l1] → [z2; l2] and split
    the result into (Z (K + 2, d), L (K + 2,)). Same arguments, dtypes and checks as :func:`interpolate`; it
    yields the same values (the pairs (Z_k, L_k) of the diagonal)."""
    k, a, b, la, lb = _endpoints(z1, z2, l1, l2, k)
    v = _lerp_rows(torch.cat([a, la[None]]), torch.cat([b, lb[None]]), k)
    return v[:, :-1], v[:, -1]


# --------------------------------------------------------------------------- generation (Eq. 7)

@dataclass
class Grid:
    """The generated matrix (spec §8.2).

    images: (R, Cc, C, H, W); rows = loss index i (vertical, top = L(1)), columns = feature index j
        (horizontal, left = Z(1)); for ``layout="diagonal"`` R = 1 and column k holds item k.
    is_real: (R, Cc) bool, True exactly at the two real cells ([0, 0] = x(1), [R − 1, Cc − 1] = x(2)).
    z: (Cc, d) the feature of each column; l: the loss of each row (R,) — for the diagonal, (K + 2,) the loss
        of each item. layout: "grid" or "diagonal"."""
    images: Tensor
    is_real: Tensor
    z: Tensor
    l: Tensor
    layout: str

    @property
    def n_generated(self) -> int:
        return int((~self.is_real).sum())


def _check_gen_inputs(x1, x2, Z, L) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, x2 = torch.as_tensor(x1), torch.as_tensor(x2)
    if x1.dim() != 3 or x1.shape != x2.shape:
        raise ValueError(f"x1, x2: need two single images of the same shape (C, H, W), got {tuple(x1.shape)} "
                         f"and {tuple(x2.shape)}")
    Z, L = torch.as_tensor(Z), torch.as_tensor(L)
    if Z.dim() != 2 or Z.shape[0] < 2:
        raise ValueError(f"Z: need shape (n_z, d) with n_z >= 2 (both endpoints), got {tuple(Z.shape)}")
    if L.dim() != 1 or L.shape[0] < 2:
        raise ValueError(f"L: need shape (n_l,) with n_l >= 2 (both endpoints), got {tuple(L.shape)}")
    return x1, x2, Z, L


def _decode_checked(decode: Callable[[Tensor, Tensor], Tensor], z: Tensor, l: Tensor,
                    image_shape: torch.Size) -> Tensor:
    out = decode(z, l)
    if not isinstance(out, Tensor) or tuple(out.shape) != (z.shape[0], *image_shape):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"decode: must return a tensor of shape ({z.shape[0]}, {', '.join(map(str, image_shape))})"
                         f" for {z.shape[0]} (z, l) rows, got {got}")
    return out


def generate_grid(decode: Callable[[Tensor, Tensor], Tensor], x1, x2, Z, L) -> Grid:
    """Feature × loss grid (spec §2.7 Eq. 7, S107, Fig. 9): cell [i, j] = decode(Z[j], L[i]) for every loss
    index i (R = len(L) rows, top = L(1)) and feature index j (Cc = len(Z) columns, left = Z(1)), except the
    real cells [0, 0] = x1 and [R − 1, Cc − 1] = x2 (the inputs themselves, cast to the decoder's dtype and
    device). The counts may differ (K_Z ≠ K_L): the real corners stay [0, 0] and [R − 1, Cc − 1].

    ``decode(z (n, d), l (n,)) → (n, C, H, W)`` is called ONCE, under ``torch.no_grad()``, on the R·Cc − 2
    generated cells in row-major order (23 rows for K = 3). x1, x2: (C, H, W). Z: (Cc, d), L: (R,), each with
    at least the two endpoints. The returned images carry no autograd graph (x1, x2 are detached)."""
    x1, x2, Z, L = _check_gen_inputs(x1, x2, Z, L)
    n_r, n_c = L.shape[0], Z.shape[0]
    ii, jj = torch.meshgrid(torch.arange(n_r), torch.arange(n_c), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    keep = ~(((ii == 0) & (jj == 0)) | ((ii == n_r - 1) & (jj == n_c - 1)))
    gi, gj = ii[keep], jj[keep]
    with torch.no_grad():
        out = _decode_checked(decode, Z[gj.to(Z.device)], L[gi.to(L.device)], x1.shape)
        images = torch.empty((n_r, n_c, *x1.shape), dtype=out.dtype, device=out.device)
        images[gi.to(out.device), gj.to(out.device)] = out
        images[0, 0] = x1.detach().to(device=out.device, dtype=out.dtype)
        images[n_r - 1, n_c - 1] = x2.detach().to(device=out.device, dtype=out.dtype)
    is_real = torch.zeros(n_r, n_c, dtype=torch.bool)
    is_real[0, 0] = is_real[n_r - 1, n_c - 1] = True
    return Grid(images=images, is_real=is_real, z=Z, l=L, layout="grid")


def generate_diagonal(decode: Callable[[Tensor, Tensor], Tensor], x1, x2, Z, L) -> Grid:
    """Diagonal / joint-space sequence (spec §2.7, claim 3): x1, decode(Z[k], L[k]) for k = 1 … K, x2 — one
    row, images (1, K + 2, C, H, W), is_real (1, K + 2) True at both ends. Needs len(Z) == len(L) = K + 2 >= 2.
    ``decode`` is called once on the K inner pairs (not at all when K = 0), under ``torch.no_grad()``."""
    x1, x2, Z, L = _check_gen_inputs(x1, x2, Z, L)
    if Z.shape[0] != L.shape[0]:
        raise ValueError(f"Z, L: the diagonal layout needs as many features as losses, got {Z.shape[0]} and "
                         f"{L.shape[0]}")
    n = Z.shape[0]
    x1r, x2r = x1.detach()[None], x2.detach()[None]
    with torch.no_grad():
        if n > 2:
            out = _decode_checked(decode, Z[1:-1], L[1:-1], x1.shape)
            dt, dev = out.dtype, out.device
            items = torch.cat([x1r.to(device=dev, dtype=dt), out, x2r.to(device=dev, dtype=dt)])
        else:
            items = torch.cat([x1r, x2r.to(device=x1.device, dtype=x1.dtype)])
    is_real = torch.zeros(1, n, dtype=torch.bool)
    is_real[0, 0] = is_real[0, -1] = True
    return Grid(images=items[None], is_real=is_real, z=Z, l=L, layout="diagonal")

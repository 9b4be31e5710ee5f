"""The losses of the ``shift_explainer`` method (JP7517093B2;
``docs/methods/shift_explainer.md``), pure PyTorch.

No Ray and no MLflow here: Eq. 2, 3, 9, 10, 11 and the optional Z–L independence term, unit-tested on their
own (``tests/test_shift_explainer_math.py``; interpolation and the grid: :mod:`.grid`, selection:
:mod:`.selection`, the reported figures: :mod:`.metrics`). Every formula of the spec is [RECONSTRUCTED] from
prose (the patent has no equations); the choices made where the text is silent are marked [IMPL CHOICE].

Per-sample loss ℓ (spec §2.2, Eq. 2; §9.2; :func:`per_sample_loss`)
    ``"ce"``: −log softmax(f(x))_y  (≥ 0, unbounded);  ``"one_minus_p"``: 1 − softmax(f(x))_y ∈ [0, 1]
    (the bounded reading of the worked example's 0.1 / 0.9). Both are small when f classifies x correctly.

Generative-model losses (spec §2.3, §2.8, §2.9, §2.10)
    Reconstruction dist (Eq. 3, [IMPL CHOICE]): ``"mse"`` / ``"l1"`` / ``"bce"``, the MEAN over all elements
        (:func:`recon_loss`).
    VAE (Eq. 10, [EXTERNAL]): KL(q(z|x) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²) per sample, averaged
        over the batch (the returned ``kl``, in nats per sample). The returned ``total`` puts it on the
        per-element scale of ``recon``: total = recon + β · kl / P, P = C·H·W elements per sample
        (:func:`vae_loss`). ``recon`` is exactly :func:`recon_loss`, so AE and VAE runs compare directly.
    Conditional BiGAN (Eq. 9, [EXTERNAL] non-saturating BCE-with-logits form): D on logits s,
        L_D = −mean log σ(s_real) − mean log(1 − σ(s_fake))            (real pair (x, E(x)) → 1,
        L_EG = −mean log(1 − σ(s_real)) − mean log σ(s_fake)            generated (G(z, L), z) → 0; flipped)
        with z ∼ N(0, I) (:func:`latent_prior`) and L = L(x) of a real minibatch sample [IMPL CHOICE, §2.8].
    Style transformer, one CycleGAN direction (Eq. 11): L_cyc = mean |x2 − B(A(x2))| (L1, as CycleGAN);
        L_D1 = −mean log σ(D1(x1)) − mean log(1 − σ(D1(A(x2)))); L_A = −mean log σ(D1(A(x2))) (non-saturating).
    All logs are evaluated stably: log σ(s) = −softplus(−s), log(1 − σ(s)) = −softplus(s).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_KINDS = ("ce", "one_minus_p")
RECON_KINDS = ("mse", "l1", "bce")
BCE_EPS = 1e-6


def _allowed(name: str, value, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: unknown value {value!r}; allowed values: {', '.join(allowed)}")


def _logits(x, name: str) -> Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    if x.numel() == 0:
        raise ValueError(f"{name}: empty logits tensor (shape {tuple(x.shape)}); need at least one sample")
    return x if x.dtype == torch.float64 else x.float()


def _bce_real(s: Tensor) -> Tensor:
    """−mean log σ(s): BCE-with-logits against label 1."""
    return F.softplus(-s).mean()


def _bce_fake(s: Tensor) -> Tensor:
    """−mean log(1 − σ(s)): BCE-with-logits against label 0."""
    return F.softplus(s).mean()


# --------------------------------------------------------------------------- per-sample classifier loss (Eq. 2)

def per_sample_loss(logits, y, kind: str = "ce") -> Tensor:
    """Per-sample loss L = ℓ(f(x), y) (spec Eq. 2) from logits (N, C) and int labels y (N,) in [0, C − 1].

    ``kind="ce"``: cross entropy −log softmax(logits)_y (reduction none, ≥ 0);
    ``kind="one_minus_p"``: 1 − softmax(logits)_y ∈ [0, 1]. Returns (N,), float32 (float64 for float64
    logits), computed with autocast off. ValueError for bad shapes, non-integer or out-of-range labels."""
    _allowed("kind", kind, LOSS_KINDS)
    s = torch.as_tensor(logits)
    if s.dim() != 2 or s.shape[0] < 1 or s.shape[1] < 1:
        raise ValueError(f"logits: need shape (N, C) with N, C >= 1, got {tuple(s.shape)}")
    s = s.double() if s.dtype == torch.float64 else s.float()
    y = torch.as_tensor(y, device=s.device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y: labels must be integers, got dtype {y.dtype}")
    if y.shape != (s.shape[0],):
        raise ValueError(f"y: need shape ({s.shape[0]},) matching logits, got {tuple(y.shape)}")
    y = y.long()
    n_cls = s.shape[1]
    if bool(((y < 0) | (y >= n_cls)).any()):
        raise ValueError(f"y: labels must lie in [0, {n_cls - 1}] (C = {n_cls} classes), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    with torch.autocast(device_type=s.device.type, enabled=False):
        logp = torch.log_softmax(s, dim=1).gather(1, y[:, None])[:, 0]
        if kind == "ce":
            return -logp
        return -torch.expm1(logp)  # 1 − p, accurate for p near 1


# --------------------------------------------------------------------------- reconstruction / VAE (Eq. 3, 10)

def _pair(x, x_hat) -> tuple[Tensor, Tensor]:
    x, x_hat = torch.as_tensor(x), torch.as_tensor(x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"x, x_hat: need the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.numel() == 0:
        raise ValueError("x: empty tensor; need at least one element")
    dt = torch.float64 if torch.float64 in (x.dtype, x_hat.dtype) else torch.float32
    return x.to(dt), x_hat.to(dt)


def recon_loss(x, x_hat, kind: str = "mse") -> Tensor:
    """Reconstruction error dist(x, x̂) of Eq. 3 [IMPL CHOICE], the MEAN over all elements (batch included):
    ``"mse"``: mean (x − x̂)²; ``"l1"``: mean |x − x̂|; ``"bce"``: mean −[x log x̂ + (1 − x) log(1 − x̂)] with
    x ∈ [0, 1] (ValueError otherwise) and x̂ probabilities clamped to [1e-6, 1 − 1e-6]. Autocast off."""
    _allowed("kind", kind, RECON_KINDS)
    x, x_hat = _pair(x, x_hat)
    with torch.autocast(device_type=x.device.type, enabled=False):
        if kind == "mse":
            return (x - x_hat).pow(2).mean()
        if kind == "l1":
            return (x - x_hat).abs().mean()
        if bool(((x < 0) | (x > 1)).any()):
            raise ValueError(f"x: kind='bce' needs targets in [0, 1], got values in "
                             f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        p = x_hat.clamp(BCE_EPS, 1.0 - BCE_EPS)
        return -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).mean()


def vae_loss(x, x_hat, mu, logvar, beta: float = 1.0, kind: str = "mse") -> tuple[Tensor, Tensor, Tensor]:
    """Conditional-VAE loss (spec Eq. 10, [EXTERNAL]) → (total, recon, kl).

    recon = :func:`recon_loss` (x, x̂, kind) (per-element mean, the same number an AE run reports);
    kl = mean over the batch of Σ_j ½(μ_j² + exp(logvar_j) − 1 − logvar_j) (nats per sample);
    total = recon + beta · kl / P with P = C·H·W = x[0].numel() elements per sample — the KL is divided by P
    so that it is on the per-element scale of recon. mu, logvar: (N, d); beta >= 0."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(beta)) or beta < 0:
        raise ValueError(f"beta: the KL weight must be a finite number >= 0, got {beta!r}")
    recon = recon_loss(x, x_hat, kind)
    mu, logvar = torch.as_tensor(mu), torch.as_tensor(logvar)
    x = torch.as_tensor(x)
    if mu.dim() != 2 or mu.shape != logvar.shape or mu.shape[0] != x.shape[0]:
        raise ValueError(f"mu, logvar: need equal shapes (N, d) with N = {x.shape[0]} (the batch of x), got "
                         f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
    with torch.autocast(device_type=mu.device.type, enabled=False):
        mu = mu.to(recon.dtype)
        logvar = logvar.to(recon.dtype)
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)).mean()
        per_sample = x[0].numel()
        return recon + float(beta) * kl / per_sample, recon, kl


# --------------------------------------------------------------------------- conditional BiGAN (Eq. 9)

def bigan_d_loss(d_real, d_fake) -> Tensor:
    """Discriminator loss of the L-conditioned BiGAN (spec §2.8, Eq. 9), BCE with logits:
    −mean log σ(D(x, E(x) | L)) − mean log(1 − σ(D(G(z, L), z | L))). d_real, d_fake: logits."""
    r, f = _logits(d_real, "d_real"), _logits(d_fake, "d_fake")
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _bce_real(r) + _bce_fake(f)


def bigan_eg_loss(d_real, d_fake) -> Tensor:
    """Encoder + generator loss of the BiGAN (labels flipped, non-saturating):
    −mean log(1 − σ(D(x, E(x) | L))) − mean log σ(D(G(z, L), z | L)). E gets its gradient through d_real,
    G through d_fake."""
    r, f = _logits(d_real, "d_real"), _logits(d_fake, "d_fake")
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _bce_fake(r) + _bce_real(f)


def latent_prior(n: int, d: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """z ∼ N(0, I), shape (n, d), float32 (the BiGAN prior p(z), [IMPL CHOICE] spec §2.8)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n: the number of samples must be an integer >= 0, got {n!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d: the latent dimension must be an integer >= 1, got {d!r}")
    return torch.randn(int(n), int(d), generator=generator, device=device)


# --------------------------------------------------------------------------- style transformer (Eq. 11)

def cycle_loss(x2, x2_rec) -> Tensor:
    """Cycle-consistency error of Eq. 11: mean |x2 − B(A(x2))| over all elements (L1, as CycleGAN)."""
    a, b = _pair(x2, x2_rec)
    return (a - b).abs().mean()


def style_d_loss(d_real1, d_fake1) -> Tensor:
    """D1's loss (Eq. 11): −mean log σ(D1(x1)) − mean log(1 − σ(D1(A(x2)))) from logits."""
    r, f = _logits(d_real1, "d_real1"), _logits(d_fake1, "d_fake1")
    with torch.autocast(device_type=r.device.type, enabled=False):
        return _bce_real(r) + _bce_fake(f)


def style_g_loss(d_fake1) -> Tensor:
    """A's adversarial loss (non-saturating, [IMPL CHOICE] spec §9.10): −mean log σ(D1(A(x2)))."""
    f = _logits(d_fake1, "d_fake1")
    with torch.autocast(device_type=f.device.type, enabled=False):
        return _bce_real(f)


# ---------------------------------------------------------------------------------------------
# Independence of Z and L (optional; NOT in the patent — spec §9.4 flags that nothing stops Z from also
# encoding L). Normalised HSIC with Gaussian kernels (bandwidth: the median pairwise distance).
# ---------------------------------------------------------------------------------------------

def _rbf_centered(a: Tensor) -> Tensor:
    a = a.reshape(len(a), -1).float()
    d2 = torch.cdist(a, a).pow(2)
    off = d2[~torch.eye(len(a), dtype=torch.bool, device=a.device)]
    bw = off.detach().median().clamp_min(1e-12)
    k = torch.exp(-d2 / bw)
    n = len(a)
    h = torch.eye(n, device=a.device) - 1.0 / n
    return h @ k @ h


def hsic_dependence(z, l) -> Tensor:
    """Normalised HSIC between the rows of ``z`` (N, d) and ``l`` (N,) or (N, k), N >= 4:
    ⟨K̃_z, K̃_l⟩ / (‖K̃_z‖ ‖K̃_l‖) with K̃ = H K H the centred Gaussian Gram matrices (bandwidth = median squared
    pairwise distance, not differentiated). In [0, 1]; about 0 when Z and L are independent, larger the more
    Z tells about L; invariant to rescaling either argument, so an encoder cannot lower it by shrinking Z.
    Differentiable in ``z``."""
    z = torch.as_tensor(z)
    l = torch.as_tensor(l, device=z.device)
    if z.dim() != 2 or len(l) != len(z) or len(z) < 4:
        raise ValueError(f"z, l: need z (N, d) and l (N,) with the same N >= 4, got {tuple(z.shape)} and "
                         f"{tuple(l.shape)}")
    kz, kl = _rbf_centered(z), _rbf_centered(l)
    return (kz * kl).sum() / (kz.norm() * kl.norm()).clamp_min(1e-12)

"""Pure-PyTorch regularizers of the ``mixture_sparsity`` method (JP7085158B2).

See ``docs/methods/mixture_sparsity.md``.

No Ray here: these functions are used by the training loop on every worker and are unit-tested on their own.

Groups and group parameters (spec §2.0, §2.3; :func:`group_norms`)
    W^l ∈ R^{N_l × N_{l−1}} (nn.Linear weight, (out, in)); a Conv2d weight (out, in, kh, kw) is treated the
    same way with its kernel taps folded into the group. Row group i = all incoming weights of output unit /
    output channel i; column group j = all outgoing weights of input unit / input channel j:
        rows: w_g = ||W[i, ...]||_2        cols: w_g = ||W[:, j, ...]||_2

Proposed regularizer (spec §2.3 (a)–(c), [RECONSTRUCTED]; :func:`mixture_penalty`)
    R(w) = − Σ_g log Σ_j α_j p_j(w_g | μ_j, σ_j)      computed as  − Σ_g logsumexp_j (log α_j + log p_j(w_g))
    gaussian:  log N(x | μ, σ)   = −½ ((x − μ)/σ)² − log σ − ½ log 2π
    laplace:   log Lap(x | μ, b) = −|x − μ| / b − log 2b
    A mixture of different families (the Gaussian + Laplace mixture (b), the arbitrary-F mixture (c)) is
    given as one family name per component.

Baselines in the same code path (spec §2.2)
    R_L2    = Σ_l ||W^l||_F²   (no factor ½)                                  (:func:`l2_penalty`)
    R_group = Σ_g ||w_g||_2    (no sqrt(group size) factor)                   (:func:`group_lasso_penalty`)
    :func:`regularizer` ("mixture" | "group_lasso" | "l2" | "none") is the one entry point of a training loop.

Deletion threshold (spec §4 τ, Fig. 11; :func:`mixture_threshold`, :func:`pruned_mask`)
    τ = the norm between the "delete" component d (smallest mean) and the nearest "keep" component k where the
    weighted densities are equal: log α_d + log p_d(τ) = log α_k + log p_k(τ), found by bisection. For two
    Gaussians with one σ: τ = (μ_d + μ_k)/2 + σ² ln(α_d/α_k)/(μ_k − μ_d). Groups with w_g < τ are deleted.

Choices made where the patent is ambiguous or silent ([RECONSTRUCTED]/[IMPL CHOICE] in the spec)
    * Form: the negative log of the mixture likelihood summed over all groups of all regularized layers.
    * σ_j: ``sigma_is="scale"`` (default) = standard deviation of a Gaussian component and scale b of a
      Laplace component (the spec's tests); ``sigma_is="variance"`` = the variance of the component
      (σ² for a Gaussian, 2b² for a Laplace, so b = sqrt(v/2)).
    * Mixture weights: α_j ≥ 0 and Σ α_j = 1 (tolerance 1e-6) are enforced; a zero weight is allowed.
    * Gaussian + Laplace (spec §2.3 (b)): Reading A (one mixture inside one log, Σα + Σβ = 1) by default,
      Reading B (two separate −log terms, each normalised) on request (:func:`gauss_laplace_penalty`).
    * Norm type: L2. Norm at an all-zero group: ``eps > 0`` (default 1e-8) uses the smooth
      sqrt(Σ v² + eps²) — the zero group has norm eps and gradient exactly 0, every other norm is biased by
      less than eps; ``eps = 0`` gives the exact norm with the subgradient 0 at v = 0. Both are finite.
    * Laplace at x = μ: the subgradient of |x − μ| is taken as 0 (torch's convention).
    * Numerics: log densities are combined with logsumexp, so the penalty stays finite when every density
      underflows (tiny σ, huge norms); it is finite as long as ((x − μ)/σ)² fits in the dtype. Computed in at
      least float32 with autocast disabled; float64 inputs stay float64.
    * The regularizer acts on weights only, never on biases (spec §2.0).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

FAMILIES = ("gaussian", "laplace")
GROUP_DIMS = ("rows", "cols")
SIGMA_IS = ("scale", "variance")
REGULARIZER_KINDS = ("mixture", "group_lasso", "l2", "none")
GAUSS_LAPLACE_READINGS = ("A", "B")
WEIGHT_SUM_TOL = 1e-6

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

Groups = Sequence[tuple[Tensor, str]]


# --------------------------------------------------------------------------- group parameters

def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _autocast_off(device: torch.device):
    """A region in full precision; entering torch.autocast costs more than the small ops it would guard, so it
    is entered only when autocast is on."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _logsumexp(t: Tensor) -> Tensor:
    """log Σ exp over the last dim, shifted by the (detached) max as torch.logsumexp does, in fewer ops: its
    guards against infinite maxima are not needed here (some α_j > 0 and every log density is finite), and
    on small tensors its extra ops cost more than the math."""
    mx = t.detach().amax(dim=-1, keepdim=True)
    return (t - mx).exp().sum(dim=-1).log() + mx.squeeze(-1)


def _group_squares(weight: Tensor, dim: str) -> Tensor:
    """Σ v² of every row or column group (at least float32, outside autocast)."""
    if dim not in GROUP_DIMS:
        raise ValueError(f"group_norms: unknown dim={dim!r}; allowed values: {', '.join(GROUP_DIMS)}")
    if weight.dim() < 2:
        raise ValueError(f"group_norms: weight must have ndim >= 2 ((out, in) or (out, in, kh, kw)), "
                         f"got shape {tuple(weight.shape)}")
    with _autocast_off(weight.device):
        w = _upcast(weight)
        keep = 0 if dim == "rows" else 1
        return (w * w).sum(dim=tuple(i for i in range(w.dim()) if i != keep))


def _norms_from_squares(sq: Tensor, eps: float) -> Tensor:
    if not eps >= 0:
        raise ValueError(f"group_norms: eps must be >= 0, got {eps}")
    if eps > 0:
        return torch.sqrt(sq + eps * eps)
    positive = sq > 0
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(sq))


def group_norms(weight: Tensor, dim: str = "rows", eps: float = 1e-8) -> Tensor:
    """L2 norm of every row or column group of a Linear (out, in) or Conv (out, in, kh, kw) weight.

    ``dim="rows"``: one norm per output unit / output channel (shape (out,)); ``dim="cols"``: one norm per
    input unit / input channel (shape (in,)). ``eps > 0``: sqrt(Σ v² + eps²) (smooth, zero gradient at an
    all-zero group); ``eps = 0``: the exact norm with subgradient 0 at v = 0."""
    return _norms_from_squares(_group_squares(weight, dim), eps)


def all_group_norms(groups: Groups, eps: float = 1e-8) -> Tensor:
    """Concatenated :func:`group_norms` of a list of (weight tensor, "rows"|"cols") groups."""
    groups = list(groups)
    if not groups:
        raise ValueError("all_group_norms: groups is empty; pass at least one (weight, 'rows'|'cols') pair")
    sq = [_group_squares(w, d) for w, d in groups]
    if len(sq) > 1 and len({t.dtype for t in sq}) > 1:
        sq = [t.to(torch.float64) for t in sq]
    return _norms_from_squares(torch.cat(sq) if len(sq) > 1 else sq[0], eps)


# --------------------------------------------------------------------------- mixture penalty

def _families(family: str | Sequence[str], m: int) -> list[str]:
    if isinstance(family, str):
        names = [family] * m
    else:
        names = list(family)
        if len(names) != m:
            raise ValueError(f"family: a per-component list needs one entry per component, got {len(names)} "
                             f"families for {m} components")
    for name in names:
        if name not in FAMILIES:
            raise ValueError(f"family: unknown family {name!r}; allowed values: {', '.join(FAMILIES)} "
                             "(one name for all components, or a list with one name per component)")
    return names


def _check_mixture(weights, means, stds, family, sigma_is: str) -> tuple[list[float], list[float],
                                                                          list[float], list[str]]:
    """Validated python-float copies of the hyperparameters (spec §2.3 (iv): α ≥ 0, Σα = 1)."""
    if sigma_is not in SIGMA_IS:
        raise ValueError(f"sigma_is: unknown value {sigma_is!r}; allowed values: {', '.join(SIGMA_IS)}")
    a = [float(x) for x in torch.as_tensor(weights, dtype=torch.float64).flatten()]
    mu = [float(x) for x in torch.as_tensor(means, dtype=torch.float64).flatten()]
    s = [float(x) for x in torch.as_tensor(stds, dtype=torch.float64).flatten()]
    if not (len(a) == len(mu) == len(s)):
        raise ValueError(f"weights, means, stds must have equal lengths (one entry per component), got "
                         f"{len(a)}, {len(mu)}, {len(s)}")
    if len(a) == 0:
        raise ValueError("weights: the mixture needs at least one component")
    if any(not math.isfinite(x) or x < 0 for x in a):
        raise ValueError(f"weights: mixture weights must be finite and non-negative, got {a}")
    if abs(sum(a) - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"weights: mixture weights must sum to 1 (tolerance {WEIGHT_SUM_TOL}), got sum {sum(a)!r}")
    if any(not math.isfinite(x) for x in mu):
        raise ValueError(f"means: component means must be finite, got {mu}")
    if any(not math.isfinite(x) or x <= 0 for x in s):
        raise ValueError(f"stds: component scales must be finite and > 0, got {s}")
    return a, mu, s, _families(family, len(a))


def _scale(s: float, fam: str, sigma_is: str) -> float:
    """Scale parameter of the density: Gaussian std σ, Laplace b (from a variance if sigma_is='variance')."""
    if sigma_is == "scale":
        return s
    return math.sqrt(s) if fam == "gaussian" else math.sqrt(s / 2.0)


class Mixture:
    """A validated mixture prior (weights α_j, means μ_j, scales, one family per component).

    Built once per training run, so a step pays no validation and no python-to-tensor conversion: the
    constant vectors are made once per (dtype, device) and reused."""

    def __init__(self, weights, means, stds, family: str | Sequence[str] = "gaussian", sigma_is: str = "scale"):
        self._set(*_check_mixture(weights, means, stds, family, sigma_is), sigma_is)

    def _set(self, a: list[float], mu: list[float], s: list[float], fams: list[str], sigma_is: str) -> None:
        self.a, self.mu, self.s, self.fams, self.sigma_is = a, mu, s, fams, sigma_is
        self.scales = [_scale(sj, fam, sigma_is) for sj, fam in zip(s, fams)]
        self._consts: dict = {}

    def pair(self, d: int, k: int) -> "Mixture":
        """Components d and k alone, weights as they are (not renormalised): for comparing α_d p_d with α_k p_k."""
        out = object.__new__(Mixture)
        out._set([self.a[d], self.a[k]], [self.mu[d], self.mu[k]], [self.s[d], self.s[k]],
                 [self.fams[d], self.fams[k]], self.sigma_is)
        return out

    def _vectors(self, dtype, device) -> dict:
        key = (dtype, device)
        if key not in self._consts:
            def t(v):
                return torch.tensor(v, dtype=dtype, device=device)
            log_a = [math.log(aj) if aj > 0 else -math.inf for aj in self.a]
            self._consts[key] = {
                "mu": t(self.mu), "inv_scale": t([1.0 / b for b in self.scales]),
                "gauss_c": t([la - math.log(b) - _HALF_LOG_2PI for la, b in zip(log_a, self.scales)]),
                "lap_c": t([la - math.log(2.0 * b) for la, b in zip(log_a, self.scales)]),
                "is_gauss": torch.tensor([f == "gaussian" for f in self.fams], device=device)}
        return self._consts[key]

    def log_terms(self, norms: Tensor) -> Tensor:
        """(G, m) matrix of log α_j + log p_j(w_g), all components in one broadcast, outside autocast.

        gaussian: (log α − log σ − ½ log 2π) − ½ ((x − μ)/σ)²;  laplace: (log α − log 2b) − |x − μ|/b.
        A mixture of families selects per column. Few, fused ops (addcmul): a step's penalty costs its op
        count, not its arithmetic."""
        x = _as_norms(norms)
        v = self._vectors(x.dtype, x.device)
        with _autocast_off(x.device):
            d = x.unsqueeze(-1) - v["mu"]
            out = None
            if "gaussian" in self.fams:
                z = d * v["inv_scale"]
                out = torch.addcmul(v["gauss_c"], z, z, value=-0.5)
            if "laplace" in self.fams:
                lap = torch.addcmul(v["lap_c"], d.abs(), v["inv_scale"], value=-1.0)
                out = lap if out is None else torch.where(v["is_gauss"], out, lap)
            return out

    def penalty(self, norms: Tensor) -> Tensor:
        """R = − Σ_g log Σ_j α_j p_j(w_g) (logsumexp over the components)."""
        return -_logsumexp(self.log_terms(norms)).sum()


def _as_norms(norms: Tensor) -> Tensor:
    if not isinstance(norms, Tensor):
        norms = torch.as_tensor(norms)
    if not torch.is_floating_point(norms):
        norms = norms.to(torch.float32)
    return _upcast(norms if norms.dim() == 1 else norms.flatten())


def mixture_log_likelihood(norms: Tensor, weights, means, stds, family: str | Sequence[str] = "gaussian",
                           sigma_is: str = "scale") -> Tensor:
    """Per-group log Σ_j α_j p_j(w_g | μ_j, σ_j), shape (G,) (logsumexp over components)."""
    return _logsumexp(Mixture(weights, means, stds, family, sigma_is).log_terms(norms))


def mixture_penalty(norms: Tensor, weights, means, stds, family: str | Sequence[str] = "gaussian",
                    sigma_is: str = "scale") -> Tensor:
    """R = − Σ_g log Σ_j α_j p_j(w_g | μ_j, σ_j) (spec §2.3 (a)/(b) Reading A/(c)).

    ``norms``: group parameters (any shape, flattened). ``weights``/``means``/``stds``: one entry per
    component (α_j ≥ 0, Σ α_j = 1; σ_j > 0). ``family``: "gaussian" or "laplace" for all components, or a
    list with one of them per component (e.g. ["gaussian", "laplace"] = the Gaussian + Laplace mixture).
    ``sigma_is``: "scale" (Gaussian std / Laplace b) or "variance". Differentiable w.r.t. ``norms``."""
    return Mixture(weights, means, stds, family, sigma_is).penalty(norms)


def responsibilities(norms: Tensor, weights, means, stds, family: str | Sequence[str] = "gaussian",
                     sigma_is: str = "scale") -> Tensor:
    """γ_j(w_g) = α_j p_j(w_g) / Σ_j' α_j' p_j'(w_g), shape (G, m): which component "owns" each group."""
    return torch.softmax(Mixture(weights, means, stds, family, sigma_is).log_terms(norms), dim=-1)


def gauss_laplace_penalty(norms: Tensor, gauss_weights, gauss_means, gauss_stds, laplace_weights,
                          laplace_means, laplace_scales, reading: str = "A", sigma_is: str = "scale") -> Tensor:
    """Gaussian mixture + Laplace mixture (spec §2.3 (b)).

    Reading A (default): − Σ_g log{Σ_j α_j N(w_g|μ_j,σ_j) + Σ_k β_k Lap(w_g|μ'_k,b_k)} with Σα + Σβ = 1.
    Reading B: − Σ_g log Σ_j α_j N(...) − Σ_g log Σ_k β_k Lap(...), with Σα = 1 and Σβ = 1 separately."""
    if reading not in GAUSS_LAPLACE_READINGS:
        raise ValueError(f"reading: unknown value {reading!r}; allowed values: {', '.join(GAUSS_LAPLACE_READINGS)}")
    def as_list(v) -> list[float]:
        return [float(x) for x in torch.as_tensor(v, dtype=torch.float64).flatten()]
    ga, gm, gs = as_list(gauss_weights), as_list(gauss_means), as_list(gauss_stds)
    la, lm, ls = as_list(laplace_weights), as_list(laplace_means), as_list(laplace_scales)
    if reading == "A":
        fams = ["gaussian"] * len(ga) + ["laplace"] * len(la)
        return mixture_penalty(norms, ga + la, gm + lm, gs + ls, fams, sigma_is)
    return (mixture_penalty(norms, ga, gm, gs, "gaussian", sigma_is)
            + mixture_penalty(norms, la, lm, ls, "laplace", sigma_is))


# --------------------------------------------------------------------------- baselines and the entry point

def l2_penalty(weights: Sequence[Tensor]) -> Tensor:
    """R_L2 = Σ ||W||_F² over the given weight tensors (spec §2.2; no factor ½). Each tensor object is counted
    once even if it is listed twice (e.g. grouped by rows and by columns)."""
    seen: set[int] = set()
    terms = []
    for w in weights:
        if id(w) in seen:
            continue
        seen.add(id(w))
        with _autocast_off(w.device):
            terms.append(_upcast(w).pow(2).sum())
    if not terms:
        raise ValueError("l2_penalty: weights is empty; pass at least one weight tensor")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in terms) else torch.float32
    return torch.stack([t.to(dtype) for t in terms]).sum()


def group_lasso_penalty(norms: Tensor) -> Tensor:
    """R_group = Σ_g w_g, the sum of the group norms (spec §2.2; no sqrt(group size) factor)."""
    return _as_norms(norms).sum()


class Regularizer:
    """R(w) of one kind, its hyperparameters validated once; ``reg(groups)`` is the R of one training step
    (the loss is E(w) + λ·R(w)). A training loop builds one per run, so a step pays only for the math.

    ``kind``:
      * "mixture": :func:`mixture_penalty` over the norms of all groups (needs weights, means, stds);
      * "group_lasso": Σ of all group norms;
      * "l2": Σ ||W||_F² over the distinct weight tensors (the dims are ignored);
      * "none": a zero scalar (prior art 1, L = E)."""

    def __init__(self, kind: str, weights=None, means=None, stds=None, family: str | Sequence[str] = "gaussian",
                 sigma_is: str = "scale", eps: float = 1e-8):
        if kind not in REGULARIZER_KINDS:
            raise ValueError(f"regularizer: unknown kind={kind!r}; allowed values: {', '.join(REGULARIZER_KINDS)}")
        if not eps >= 0:
            raise ValueError(f"group_norms: eps must be >= 0, got {eps}")
        self.kind, self.eps, self.mixture = kind, eps, None
        if kind == "mixture":
            if weights is None or means is None or stds is None:
                raise ValueError("regularizer: kind='mixture' needs weights, means and stds")
            self.mixture = Mixture(weights, means, stds, family, sigma_is)

    def __call__(self, groups: Groups) -> Tensor:
        """``groups``: list of (weight tensor, "rows"|"cols")."""
        groups = list(groups)
        for item in groups:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Tensor)):
                raise ValueError("regularizer: groups must be a list of (weight tensor, 'rows'|'cols') pairs")
            if item[1] not in GROUP_DIMS:
                raise ValueError(f"regularizer: unknown group dim {item[1]!r}; allowed values: "
                                 f"{', '.join(GROUP_DIMS)}")
        if self.kind == "none":
            device = groups[0][0].device if groups else None
            return torch.zeros((), dtype=torch.float32, device=device)
        if not groups:
            raise ValueError(f"regularizer: kind={self.kind!r} needs at least one (weight, 'rows'|'cols') group")
        if self.kind == "l2":
            return l2_penalty([w for w, _ in groups])
        norms = all_group_norms(groups, self.eps)
        if self.kind == "group_lasso":
            return group_lasso_penalty(norms)
        return self.mixture.penalty(norms)


def regularizer(kind: str, groups: Groups, weights=None, means=None, stds=None,
                family: str | Sequence[str] = "gaussian", sigma_is: str = "scale", eps: float = 1e-8) -> Tensor:
    """One-off R(w): ``Regularizer(kind, weights, means, stds, family, sigma_is, eps)(groups)``."""
    return Regularizer(kind, weights, means, stds, family, sigma_is, eps)(groups)


# --------------------------------------------------------------------------- deletion threshold

def mixture_threshold(weights, means, stds, family: str | Sequence[str] = "gaussian", sigma_is: str = "scale",
                      delete_component: int | None = None, keep_component: int | None = None,
                      tol: float = 1e-12) -> float:
    """Default deletion threshold τ: where α_d p_d(τ) = α_k p_k(τ) between the "delete" component d and the
    "keep" component k (found by bisection on the float64 log-density difference).

    Defaults: d = the component with the smallest mean (the first if tied); k = the component with the
    smallest mean strictly above μ_d (the first if tied). The root is searched in [μ_d, μ_k], extended to the
    right if the delete component still dominates at μ_k. ValueError if there is no keep component, if the
    delete component does not dominate at its own mean, or if it dominates everywhere to the right."""
    mix = Mixture(weights, means, stds, family, sigma_is)
    a, mu, m = mix.a, mix.mu, len(mix.a)
    for name, idx in (("delete_component", delete_component), ("keep_component", keep_component)):
        if idx is not None and not 0 <= idx < m:
            raise ValueError(f"{name}: must be a component index in [0, {m - 1}], got {idx}")
    d = delete_component if delete_component is not None else min(range(m), key=lambda j: mu[j])
    if keep_component is None:
        above = [j for j in range(m) if mu[j] > mu[d]]
        if not above:
            raise ValueError(f"mixture_threshold: no component has a mean above the delete component's mean "
                             f"{mu[d]}; a keep component with a larger mean is needed (means={mu})")
        k = min(above, key=lambda j: mu[j])
    else:
        k = keep_component
        if mu[k] <= mu[d]:
            raise ValueError(f"keep_component: its mean must exceed the delete component's mean, "
                             f"got means {mu[k]} (keep) and {mu[d]} (delete)")
    if a[d] == 0 or a[k] == 0:
        raise ValueError(f"weights: the delete and keep components need positive weights, got {a[d]} and {a[k]}")

    pair = mix.pair(d, k)

    def diff(x: float) -> float:
        t = pair.log_terms(torch.tensor([x], dtype=torch.float64))[0]
        return float(t[0] - t[1])

    lo, hi = mu[d], mu[k]
    if not diff(lo) > 0:
        raise ValueError(f"mixture_threshold: the delete component {d} does not dominate even at its own mean "
                         f"{mu[d]}, so no group would be deleted; increase its weight or decrease its scale")
    width = hi - lo
    while diff(hi) >= 0:
        lo, hi = hi, hi + width
        width *= 2.0
        if width > 1e12 * (1.0 + abs(mu[k])):
            raise ValueError(f"mixture_threshold: the delete component {d} dominates everywhere above its mean; "
                             "every group would be deleted; decrease its weight or scale")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if diff(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= tol * max(1.0, abs(lo)):
            break
    return 0.5 * (lo + hi)


def pruned_mask(norms: Tensor, threshold: float) -> Tensor:
    """Boolean mask of the groups to delete: w_g < τ (spec §5 POST). True = delete."""
    return torch.as_tensor(norms) < threshold

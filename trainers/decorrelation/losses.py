"""Pure-PyTorch losses of the ``decorrelation`` method (JP7566705B2; ``docs/methods/decorrelation.md``).

No Ray here: these functions are used by ``loop.py`` on every worker and are unit-tested on their own.

Feature array (spec §2.1, §2.2)
    A tapped layer output X is turned into F ∈ R^{B×C} (rows = samples, columns = channels) by
    :func:`reduce_features`: ``gap`` F_{b,c} = mean_{spatial} X_{b,c,...}, ``gmp`` = max over the spatial
    positions, ``flatten`` = every (channel, position) becomes a column. The correlation is always taken
    along the SAMPLE (batch) axis (spec §2.2 [AMBIG] resolved as the claims say), never over spatial
    positions inside one image (that would be a style-transfer Gram matrix).

Inter-channel correlation (spec §2.3, [RECON] Pearson)
    mean_i = (1/B) Σ_b F_{b,i},  var_i = (1/B) Σ_b (F_{b,i} − mean_i)^2      (population variance)
    Z_{b,i} = (F_{b,i} − mean_i) / sqrt(var_i + ε)
    R = (1/B) Zᵀ Z,  r_ij = R_ij                                              (:func:`correlation_matrix`)

Correlation loss, the patent's "first loss" (spec §2.4, [RECON] eq. (1a)/(1b))
    (1a) L_corr^abs(F) = Σ_{i≠j} |r_ij|          ``reduction="abs"``
    (1b) L_corr^sq (F) = Σ_{i≠j} r_ij^2 = ||R − I||_F^2 (up to the ε-shrunk diagonal)   ``reduction="sq"``
    optionally divided by C(C−1) (``normalize=True``: the mean over ordered pairs).   (:func:`correlation_loss`)
    L3 = L_corr(F_U) (unlabelled features), L4 = L_corr(F_S) (labelled features).

Combined objective (spec §2.6, §5; :func:`decorrelation_terms`)
    A: λ2·L2 + λ3·L3        B: λ2·L2 + λ3·L3 + λ4·L4        C: λ2·L2 + λ4·L4
    generic (claim 1): λ2·L2 + λ3·L_corr(cat_batch(F_S, F_U))
    supervised (baseline): λ2·L2             decov (baseline, Cogswell et al. 2016): λ2·L2 + w·Σ DeCov
    With several layers, one L_corr per layer and the per-layer terms are SUMMED (spec §3.7 [IMPL]).

Choices made where the patent is ambiguous or silent ([AMBIG]/[IMPL] in the spec)
    * Pairs: ORDERED pairs i ≠ j (each unordered pair counts twice); "abs" and "sq" are both offered.
    * Normalisation: none by default in :func:`correlation_loss`; ``normalize=True`` divides by C(C−1)
      (the trainer's default, so λ is comparable across feature widths).
    * Standard deviation: POPULATION (divide by B), as in spec §2.3's matrix form.
    * ε: the denominator is sqrt(var + ε), NOT std + ε (spec §5's pseudo-code), so that the backward pass
      stays finite for a constant channel (d std / d var is infinite at var = 0). A constant channel gets
      z = 0, i.e. r_ij = 0 with every other channel, and R_ii = var/(var+ε) ≤ 1. ε (1e-8) is negligible
      unless a channel's variance is itself ~1e-8, where the loss stops being exactly scale invariant.
    * Precision: computed in at least float32 (bf16/fp16 inputs are upcast, autocast is disabled
      inside); float64 inputs stay float64.
    * B ≥ 2 is required (a correlation over one sample is undefined); a ValueError names the batch size.
    * "Backpropagate separately" (spec §2.6 [AMBIG]) = separate backward passes accumulating before one
      step, which equals the unit-weight sum; this module returns the weighted sum and the individual
      terms, so either is possible.
    * Terms that are not part of a variant's objective (or whose weight is exactly 0) are still reported,
      DETACHED, as diagnostics computed on the given features (NaN if such a diagnostic batch has < 2
      samples, zero if no features are given), and they are never added to the total, so λ3 = λ4 = 0
      gives a total bit-identical to λ2·L2.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

FEATURE_REDUCTIONS = ("gap", "gmp", "flatten")
AGGREGATIONS = ("sq", "abs")
VARIANTS = ("A", "B", "C", "generic", "supervised", "decov")


def reduce_features(x: Tensor, how: str = "gap") -> Tensor:
    """Layer output (B, C, *spatial) -> feature array (B, C) (spec §2.2).

    2-D input is returned unchanged. ``gap``: mean over all spatial dims; ``gmp``: max over them;
    ``flatten``: ``x.flatten(1)`` (every channel×position is a column)."""
    if how not in FEATURE_REDUCTIONS:
        raise ValueError(f"reduce_features: unknown how={how!r}; allowed values: {', '.join(FEATURE_REDUCTIONS)}")
    if x.dim() < 2:
        raise ValueError(f"reduce_features: need a (B, C, ...) tensor with ndim >= 2, got shape {tuple(x.shape)}")
    if x.dim() == 2:
        return x
    if how == "gap":
        return x.flatten(2).mean(dim=2)
    if how == "gmp":
        return x.flatten(2).amax(dim=2)
    return x.flatten(1)


def _as_float(features: Tensor) -> Tensor:
    # float64 stays float64; everything else (bf16, fp16, ints) is computed in float32
    return features if features.dtype == torch.float64 else features.float()


def _check_2d(features: Tensor, who: str) -> None:
    if features.dim() != 2:
        raise ValueError(f"{who}: features must be a (B, C) array, got shape {tuple(features.shape)} "
                         "(use reduce_features first)")


def correlation_matrix(features: Tensor, eps: float = 1e-8) -> Tensor:
    """(C, C) Pearson correlation of the columns of ``features`` (B, C) along the batch axis (spec §2.3).

    z = (f − mean) / sqrt(var + eps) with the population variance, R = zᵀz / B. Needs B >= 2."""
    _check_2d(features, "correlation_matrix")
    b = features.shape[0]
    if b < 2:
        raise ValueError(f"correlation_matrix: needs at least 2 samples along the batch axis, got batch size {b}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = _as_float(features)
        centred = f - f.mean(dim=0, keepdim=True)
        var = centred.pow(2).mean(dim=0, keepdim=True)
        z = centred / torch.sqrt(var + eps)
        return z.T @ z / b


def _off_diagonal(r: Tensor) -> Tensor:
    eye = torch.eye(r.shape[0], dtype=torch.bool, device=r.device)
    return r.masked_fill(eye, 0.0)


def correlation_loss(features: Tensor, reduction: str = "sq", normalize: bool = False,
                     eps: float = 1e-8) -> Tensor:
    """L_corr (spec eq. (1a)/(1b)): Σ over ORDERED pairs i ≠ j of r_ij² (``sq``) or |r_ij| (``abs``).

    ``normalize=True`` divides by C(C−1) (mean over ordered pairs). C == 1 gives 0 (with a graph)."""
    if reduction not in AGGREGATIONS:
        raise ValueError(f"correlation_loss: unknown reduction={reduction!r}; allowed values: "
                         f"{', '.join(repr(a) for a in AGGREGATIONS)}")
    r = correlation_matrix(features, eps)
    off = _off_diagonal(r)
    with torch.autocast(device_type=r.device.type, enabled=False):
        loss = off.pow(2).sum() if reduction == "sq" else off.abs().sum()
        c = r.shape[0]
        if normalize and c > 1:
            loss = loss / (c * (c - 1))
    return loss


def mean_abs_correlation(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Diagnostic: mean |r_ij| over ordered pairs i ≠ j (0 when C == 1)."""
    return correlation_loss(features, "abs", normalize=True, eps=eps)


def decov_loss(features: Tensor) -> Tensor:
    """DeCov baseline (Cogswell et al., 2016): 0.5·(||Cov||_F² − ||diag(Cov)||²), Cov over the batch
    axis with the population normalisation (1/B); computed in at least float32."""
    _check_2d(features, "decov_loss")
    b = features.shape[0]
    if b < 1:
        raise ValueError(f"decov_loss: needs at least 1 sample, got batch size {b}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = _as_float(features)
        centred = f - f.mean(dim=0, keepdim=True)
        cov = centred.T @ centred / b
        return 0.5 * (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum())


def _sum(terms: list[Tensor]) -> Tensor:
    return functools.reduce(operator.add, terms)


def _is_zero(weight) -> bool:
    return isinstance(weight, (int, float)) and weight == 0


def decorrelation_terms(variant: str, task_loss: Tensor, feats_labelled: Sequence[Tensor],
                        feats_unlabelled: Sequence[Tensor], lambda2, lambda3, lambda4,
                        reduction: str = "sq", normalize: bool = True,
                        decov_weight: float = 0.0) -> dict[str, Tensor]:
    """The objective of one step for a variant (spec §2.6, §5).

    Returns ``loss`` (backpropagate this), ``task_loss`` (L2), ``corr_loss_labelled`` (L4 = Σ_layers
    L_corr(F_S)), ``corr_loss_unlabelled`` (L3 = Σ_layers L_corr(F_U); for ``generic`` the mixed-batch
    term), and ``decov_loss`` for the ``decov`` variant. Terms in the objective keep their graph; the others
    are detached diagnostics (zero when no features are given). Weights that are exactly 0 are skipped,
    so the total is then bit-identical to λ2·L2."""
    if variant not in VARIANTS:
        raise ValueError(f"decorrelation_terms: unknown variant={variant!r}; allowed values: {', '.join(VARIANTS)}")
    if reduction not in AGGREGATIONS:
        raise ValueError(f"decorrelation_terms: unknown reduction={reduction!r}; allowed values: "
                         f"{', '.join(repr(a) for a in AGGREGATIONS)}")
    fs, fu = list(feats_labelled), list(feats_unlabelled)
    zero = torch.zeros((), dtype=task_loss.dtype, device=task_loss.device)

    def corr(feats: list[Tensor]) -> Tensor:
        return _sum([correlation_loss(f, reduction, normalize) for f in feats])

    def diagnostic(feats: list[Tensor]) -> Tensor:
        if not feats:
            return zero.clone()
        if any(f.shape[0] < 2 for f in feats):
            return torch.full((), float("nan"), dtype=zero.dtype, device=zero.device)
        with torch.no_grad():
            return corr([f.detach() for f in feats])

    def need(feats: list[Tensor], name: str) -> None:
        if not feats:
            raise ValueError(f"decorrelation_terms: variant {variant!r} needs at least one {name} feature array")

    total = lambda2 * task_loss
    out: dict[str, Tensor] = {"task_loss": task_loss}

    if variant in ("A", "B"):
        need(fu, "unlabelled")
        out["corr_loss_unlabelled"] = diagnostic(fu) if _is_zero(lambda3) else corr(fu)
        if not _is_zero(lambda3):
            total = total + lambda3 * out["corr_loss_unlabelled"]
    if variant in ("B", "C"):
        need(fs, "labelled")
        out["corr_loss_labelled"] = diagnostic(fs) if _is_zero(lambda4) else corr(fs)
        if not _is_zero(lambda4):
            total = total + lambda4 * out["corr_loss_labelled"]
    if variant == "generic":
        need(fs, "labelled")
        if len(fs) != len(fu):
            raise ValueError(f"decorrelation_terms: variant 'generic' pairs labelled and unlabelled layers, "
                             f"got {len(fs)} labelled and {len(fu)} unlabelled feature arrays")
        for a, b in zip(fs, fu):
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
                raise ValueError(f"decorrelation_terms: variant 'generic' concatenates along the batch axis; "
                                 f"shapes {tuple(a.shape)} and {tuple(b.shape)} do not match in C")
        mixed = [torch.cat([a, b.to(a.dtype)], dim=0) for a, b in zip(fs, fu)]
        out["corr_loss_unlabelled"] = diagnostic(mixed) if _is_zero(lambda3) else corr(mixed)
        if not _is_zero(lambda3):
            total = total + lambda3 * out["corr_loss_unlabelled"]
    if variant == "decov":
        dec = [decov_loss(f) for f in fs + fu]
        dec_sum = _sum(dec) if dec else zero.clone()
        if _is_zero(decov_weight):
            out["decov_loss"] = dec_sum.detach()
        else:
            out["decov_loss"] = dec_sum
            if dec:
                total = total + decov_weight * dec_sum

    out.setdefault("corr_loss_labelled", diagnostic(fs))
    out.setdefault("corr_loss_unlabelled", diagnostic(fu))
    out["loss"] = total
    return out

"""Zeroing and ownership of ``continual`` (R1–R4): which free weights a task zeroes, keeps and owns, and its mask.

In this patent "initialization" (初期化) means setting a weight to exactly 0. Rule numbers are those of the
implementation spec the method was built from; ``docs/methods/continual.md`` describes the method. No Ray, no MLflow.

Zeroing (R1, R2; :func:`zero_count`, :func:`select_zeroed`, :func:`plan_allocation`)
    k_l = ROUND(r_l · |F_l|) with ROUND ∈ {"round" (half up, default: R1's round()), "floor" (spec §7's derived
    numbers), "ceil"}, computed exactly from the decimal repr of r (no float error at .5 / integer products).
    Per weight (default): the k_l free weights of smallest |w| are zeroed; ties → lower flat index first.
    Per filter (§3 item 2 [AMBIG]): the unit is one output channel (``filter_unit="out_channel"``, C_in·kh·kw weights,
    a Linear row; default) or one kh×kw kernel of an (out, in) pair (``"kernel"``; a single weight of a Linear);
    k_l = ROUND(r_l · #free units), units ranked by L1 norm (default) or L2 norm, ties → lower unit index. The free
    mask must not split a unit (true when the same granularity is used from task 1 on).

Ownership and masks (R3, R4; :func:`update_ownership`, :func:`task_mask`)
    N^(t) = F^(t) \\ Z^(t);  A^(t) = A^(t−1) ∪ N^(t);  Reading A (default): M^(t) = A^(t−1) ∪ N^(t) = A^(t);
    Reading B: M^(t) = M^(s*) ∪ N^(t). In both readings A^(t) = ∪_{s≤t} M^(s) (:func:`owned_from_masks`).
    The masks are stored at 1 bit per weight by :mod:`trainers.continual.packing`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn

from trainers.continual.groups import Masks, named_weights
from trainers.continual.rates import _choice, _rate_value

ROUNDING = ("round", "floor", "ceil")
GRANULARITIES = ("weight", "filter")
FILTER_UNITS = ("out_channel", "kernel")
FILTER_NORMS = ("l1", "l2")
READINGS = ("A", "B")


# --------------------------------------------------------------------------- zeroing (R1, R2)

def zero_count(rate: float, n_free: int, rounding: str = "round") -> int:
    """k = ROUND(rate · n_free) (R1), exact: the rate is taken at its shortest decimal repr (0.95 → 19/20)."""
    _choice("rounding", rounding, ROUNDING)
    r = _rate_value("rate", rate)
    if not (isinstance(n_free, (int, np.integer)) and n_free >= 0):
        raise ValueError(f"n_free: must be an integer >= 0, got {n_free!r}")
    x = Fraction(repr(r)) * int(n_free)
    if rounding == "floor":
        return math.floor(x)
    if rounding == "ceil":
        return math.ceil(x)
    return math.floor(x + Fraction(1, 2))


def _units(shape: torch.Size, granularity: str, filter_unit: str) -> int:
    """Number of zeroing units of a weight of this shape (rows of the (units, -1) view)."""
    if granularity == "weight" or len(shape) < 2:
        return int(math.prod(shape))
    return int(shape[0]) if filter_unit == "out_channel" else int(shape[0] * shape[1])


def select_zeroed(weight: Tensor, free: Tensor | None, rate: float, granularity: str = "weight",
                  filter_unit: str = "out_channel", filter_norm: str = "l1", rounding: str = "round") -> Tensor:
    """Z_l (R2): bool mask (weight's shape) of the ROUND(rate·|free|) free weights/units closest to 0.

    ``free``: bool mask of the free pool F_l (None = every weight free, task 1). Weights outside ``free`` are never
    selected. See the module docstring for the granularities and tie-breaks."""
    _choice("granularity", granularity, GRANULARITIES)
    _choice("filter_unit", filter_unit, FILTER_UNITS)
    _choice("filter_norm", filter_norm, FILTER_NORMS)
    w = weight.detach()
    if free is None:
        free = torch.ones_like(w, dtype=torch.bool)
    free = free.to(device=w.device, dtype=torch.bool)
    if free.shape != w.shape:
        raise ValueError(f"free: mask shape {tuple(free.shape)} differs from the weight shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("weight: contains NaN or inf; cannot rank weights by magnitude")
    n_units = _units(w.shape, granularity, filter_unit)
    wu = w.reshape(n_units, -1)
    fu = free.reshape(n_units, -1)
    unit_free = fu.all(dim=1)
    if wu.shape[1] > 1 and bool((fu.any(dim=1) & ~unit_free).any()):
        raise ValueError(f"free: the free pool splits a {filter_unit!r} unit (part free, part owned); per-filter "
                         "zeroing needs whole units free or owned (use the same granularity from task 1 on)")
    scores = wu.abs().sum(dim=1) if filter_norm == "l1" or wu.shape[1] == 1 else wu.pow(2).sum(dim=1).sqrt()
    idx_free = unit_free.nonzero().squeeze(1)
    k = zero_count(rate, int(idx_free.numel()), rounding)
    free_scores = scores[idx_free]
    if free_scores.dtype not in (torch.float32, torch.float64):
        free_scores = free_scores.float()  # |w| of a half/bfloat16 weight is exact in float32
    order = torch.sort(free_scores, stable=True).indices[:k]
    z_units = torch.zeros(n_units, dtype=torch.bool, device=w.device)
    z_units[idx_free[order]] = True
    return z_units[:, None].expand_as(wu).reshape(w.shape).clone()


@dataclass
class Allocation:
    """One task's zeroing result per layer: F^(t) (free), Z^(t) (zeroed), N^(t) = F \\ Z (new), and the rates."""
    free: dict[str, Tensor]
    zeroed: dict[str, Tensor]
    new: dict[str, Tensor]
    rates: dict[str, float]

    def counts(self) -> dict[str, dict[str, int]]:
        """{"free"|"zeroed"|"new": {layer: count}} (weights, for the per-task log of spec §8.2)."""
        return {k: {n: int(m.sum()) for n, m in getattr(self, k).items()} for k in ("free", "zeroed", "new")}


def plan_allocation(weights: Masks, owned: Masks | None, rates: Mapping[str, float], granularity: str = "weight",
                    filter_unit: str = "out_channel", filter_norm: str = "l1", rounding: str = "round") -> Allocation:
    """S30/S80 without touching the weights: F = ¬A^(t−1), Z = :func:`select_zeroed`, N = F \\ Z for every layer
    of ``weights`` (name → tensor; ``owned`` None = task 1, nothing owned). Apply with :func:`apply_zeroing_`."""
    missing = [n for n in weights if n not in rates]
    if missing:
        raise ValueError(f"rates: no rate for layers {missing}")
    free, zeroed, new = {}, {}, {}
    for n, w in weights.items():
        f = torch.ones_like(w, dtype=torch.bool) if owned is None else ~owned[n].to(w.device, torch.bool)
        z = select_zeroed(w, f, rates[n], granularity, filter_unit, filter_norm, rounding)
        free[n], zeroed[n], new[n] = f, z, f & ~z
    return Allocation(free, zeroed, new, {n: float(rates[n]) for n in weights})


def apply_zeroing_(model_or_weights: nn.Module | Masks, zeroed: Masks) -> None:
    """W[Z] = +0.0 in place (S30/S80)."""
    weights = (named_weights(model_or_weights, zeroed) if isinstance(model_or_weights, nn.Module)
               else model_or_weights)
    with torch.no_grad():
        for n, z in zeroed.items():
            w = weights[n]
            w.masked_fill_(z.to(w.device, torch.bool), 0.0)


# --------------------------------------------------------------------------- ownership and masks (R3, R4)

def empty_ownership(weights: Masks) -> dict[str, Tensor]:
    """A^(0) = ∅: all-False masks shaped like ``weights``."""
    return {n: torch.zeros(w.shape, dtype=torch.bool, device=w.device) for n, w in weights.items()}


def free_pool(owned: Masks) -> dict[str, Tensor]:
    """F^(t) = ¬A^(t−1)."""
    return {n: ~a for n, a in owned.items()}


def update_ownership(owned: Masks, new: Masks) -> dict[str, Tensor]:
    """A^(t) = A^(t−1) ∪ N^(t) (R3); ValueError if N^(t) overlaps A^(t−1)."""
    out = {}
    for n, a in owned.items():
        nw = new[n].to(a.device, torch.bool)
        if bool((a & nw).any()):
            raise ValueError(f"new: layer {n!r} assigns weights that an earlier task already owns")
        out[n] = a | nw
    return out


def task_mask(owned_prev: Masks, new: Masks, reading: str = "A", source_mask: Masks | None = None) -> dict[str, Tensor]:
    """M^(t) (R4). Reading A: A^(t−1) ∪ N^(t). Reading B: M^(s*) ∪ N^(t) (``source_mask`` = M^(s*); task 1 has no
    source and both readings give N^(1))."""
    _choice("reading", reading, READINGS)
    if reading == "A" or source_mask is None:
        if reading == "B" and any(bool(a.any()) for a in owned_prev.values()):
            raise ValueError("source_mask: Reading B needs the source task's mask M^(s*) for t >= 2")
        return {n: owned_prev[n] | new[n].to(owned_prev[n].device) for n in owned_prev}
    return {n: source_mask[n].to(owned_prev[n].device, torch.bool) | new[n].to(owned_prev[n].device)
            for n in owned_prev}


def mask_from_nonzero(weights: Masks) -> dict[str, Tensor]:
    """The alternative encoding of R4: bit = 1 iff the weight ≠ 0 (at mask-creation time)."""
    return {n: w.detach() != 0 for n, w in weights.items()}


def owned_from_masks(masks: Iterable[Masks]) -> dict[str, Tensor]:
    """A^(t) = ∪_{s ≤ t} M^(s) (both readings)."""
    out: dict[str, Tensor] | None = None
    for m in masks:
        out = {n: v.clone() for n, v in m.items()} if out is None else {n: out[n] | m[n] for n in out}
    if out is None:
        raise ValueError("masks: no task mask given")
    return out

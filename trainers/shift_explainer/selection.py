"""S104 of ``shift_explainer`` (JP7517093B2): which domain-1 and domain-2 samples the grid explains (Eq. 4).
Pure numpy, no Ray (``tests/test_shift_explainer_math.py``): :func:`select_pair` on two loss arrays, and
:func:`select`, the same over the pools with the settings of the ``method`` section.

Selection (spec §2.4, Eq. 4; §8.3 test 5; :func:`select_pair`)
    ``"extreme"`` (Mode A): x(1) = argmin_{D1} L, x(2) = argmax_{D2} L.
    ``"threshold"`` (Mode B): x(1) uniform in {L ≤ τ1} (``strict``: L < τ1, claim 5's English wording),
        x(2) uniform in {L ≥ τ2}; ``strict`` applies to τ1 only (the ambiguity of spec §9.6 is about D1).
    ``same_class`` [IMPL CHOICE, spec §9.5]: the pair must share a class label (the worked example uses "A"
        twice). Ties are broken by the lowest index (as numpy's argmin / argmax).
"""
from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np

from trainers.shift_explainer.losses import _allowed

SELECTION_MODES = ("extreme", "threshold")


# --------------------------------------------------------------------------- selection (Eq. 4)

def _sig3(v: float, rounding) -> str:
    """v to 3 significant digits, rounded in the given direction (so a bound quoted to the user is valid)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:.3g}"
    d = Decimal(repr(float(v)))
    q = d.quantize(Decimal(1).scaleb(d.adjusted() - 2), rounding=rounding)
    return f"{float(q):.3g}"


def _pool(loss, y, which: int, need_y: bool) -> tuple[np.ndarray, np.ndarray | None]:
    name = f"loss{which}"
    try:
        a = np.asarray(loss, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be a 1-D array of losses") from e
    if a.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D array of per-sample losses, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: the domain-{which} pool is empty; need at least one sample")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: all losses must be finite ({int((~np.isfinite(a)).sum())} are not)")
    if y is None:
        if need_y:
            raise ValueError(f"y{which}: labels are required when same_class=True; allowed: an array of "
                             f"{a.size} integer labels, or same_class=False")
        return a, None
    lab = np.asarray(y)
    if lab.shape != a.shape:
        raise ValueError(f"y{which}: need shape {a.shape} matching loss{which}, got {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"y{which}: labels must be integers, got dtype {lab.dtype}")
    return a, lab.astype(np.int64)


def _span(a: np.ndarray) -> str:
    return f"[{float(a.min()):.3g}, {float(a.max()):.3g}]"


def _threshold(v, name: str) -> float:
    if v is None:
        raise ValueError(f"{name}: required in threshold selection mode (mode='threshold'); allowed: a finite "
                         "number (a loss value)")
    if isinstance(v, bool):
        raise ValueError(f"{name}: must be a finite number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be a finite number, got {v!r}") from e
    if not math.isfinite(f):
        raise ValueError(f"{name}: must be a finite number, got {v!r}")
    return f


def select_pair(loss1, loss2, y1, y2, *, mode: str = "extreme", tau1: float | None = None,
                tau2: float | None = None, strict: bool = False, same_class: bool = True,
                seed: int = 0) -> tuple[int, int]:
    """Select the visualisation targets (spec §2.4, Eq. 4, S104; claim 5): (i1, i2) = indices into pool 1
    (domain 1, ``loss1``/``y1``) and pool 2 (domain 2, ``loss2``/``y2``).

    ``mode="extreme"`` (Mode A): i1 = argmin loss1, i2 = argmax loss2. With ``same_class`` (default): i2 =
        the largest-loss domain-2 sample whose class occurs in pool 1 (the global argmax when it does), then
        i1 = argmin of loss1 over the pool-1 samples of that class. Ties → lowest index.
    ``mode="threshold"`` (Mode B): candidates C1 = {loss1 ≤ tau1} (``strict``: loss1 < tau1),
        C2 = {loss2 ≥ tau2}; i2 uniform in C2 (restricted to classes present in C1 when ``same_class``), then
        i1 uniform in C1 ∩ {y1 = y2[i2]} (``np.random.default_rng(seed)``; deterministic given the seed).
        tau1 and tau2 are required; errors name them as ``method.tau1`` / ``method.tau2`` and quote the
        observed loss range (3 significant digits) and a threshold that would select something.
    y1, y2: integer labels (may be None when same_class=False). ValueError for empty pools, shape mismatches,
    non-finite losses, and selections that come out empty."""
    _allowed("mode", mode, SELECTION_MODES)
    a1, lab1 = _pool(loss1, y1, 1, same_class)
    a2, lab2 = _pool(loss2, y2, 2, same_class)
    use_cls = bool(same_class)

    if mode == "extreme":
        if not use_cls:
            return int(np.argmin(a1)), int(np.argmax(a2))
        present = set(lab1.tolist())
        for i2 in np.argsort(-a2, kind="stable"):
            c = int(lab2[i2])
            if c in present:
                idx = np.flatnonzero(lab1 == c)
                return int(idx[np.argmin(a1[idx])]), int(i2)
        raise ValueError(f"same_class: the two pools share no class (domain-1 classes "
                         f"{sorted(present)}, domain-2 classes {sorted(set(lab2.tolist()))}); allowed: pools "
                         "that share a class, or same_class=False")

    t1, t2 = _threshold(tau1, "method.tau1"), _threshold(tau2, "method.tau2")
    c1 = np.flatnonzero(a1 < t1 if strict else a1 <= t1)
    c2 = np.flatnonzero(a2 >= t2)
    if c1.size == 0:
        op = ">" if strict else ">="
        raise ValueError(f"method.tau1: {t1:.3g} selects no domain-1 sample (domain-1 losses span {_span(a1)}"
                         f"{', strict comparison loss < tau1' if strict else ''}); allowed: a value {op} "
                         f"{_sig3(float(a1.min()), ROUND_CEILING)}")
    if c2.size == 0:
        raise ValueError(f"method.tau2: {t2:.3g} selects no domain-2 sample (domain-2 losses span {_span(a2)}); "
                         f"allowed: a value <= {_sig3(float(a2.max()), ROUND_FLOOR)}")
    rng = np.random.default_rng(seed)
    if use_cls:
        cls1 = set(lab1[c1].tolist())
        c2 = c2[np.isin(lab2[c2], sorted(cls1))]
        if c2.size == 0:
            cls2 = sorted(set(lab2[np.flatnonzero(a2 >= t2)].tolist()))
            raise ValueError(f"method.tau1, method.tau2: with same_class=True the candidates share no class "
                             f"(method.tau1 = {t1:.3g} selects domain-1 classes {sorted(cls1)}, method.tau2 = "
                             f"{t2:.3g} selects domain-2 classes {cls2}); allowed: thresholds whose candidate "
                             "sets share a class (raise method.tau1 or lower method.tau2), or same_class=False")
    i2 = int(rng.choice(c2))
    if use_cls:
        c1 = c1[lab1[c1] == lab2[i2]]
    i1 = int(rng.choice(c1))
    return i1, i2


def select(m, pool: dict) -> dict:
    """S104 over the pools (``pool["d1"]`` / ``pool["d2"]``: x, y, loss): indices and the two samples."""
    tau1, tau2 = m.tau1, m.tau2
    if m.selection == "threshold" and m.tau_unit == "quantile":
        tau1, tau2 = float(np.quantile(pool["d1"]["loss"], tau1)), float(np.quantile(pool["d2"]["loss"], tau2))
    i1, i2 = select_pair(pool["d1"]["loss"], pool["d2"]["loss"], pool["d1"]["y"], pool["d2"]["y"],
                         mode=m.selection, tau1=tau1, tau2=tau2, strict=m.strict, same_class=m.same_class,
                         seed=m.pair_seed)
    return {"i1": int(i1), "i2": int(i2),
            "x1": pool["d1"]["x"][i1], "y1": int(pool["d1"]["y"][i1]), "l1": float(pool["d1"]["loss"][i1]),
            "x2": pool["d2"]["x"][i2], "y2": int(pool["d2"]["y"][i2]), "l2": float(pool["d2"]["loss"][i2])}

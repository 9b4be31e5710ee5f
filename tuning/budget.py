"""Budget calibration: retrain until the method's prior itself deletes the requested share.

A pruning budget can always be met after the fact by moving the threshold (``budget_search=
threshold``), but a network that was not trained for that sparsity loses accuracy when its larger
groups go. Calibration instead turns the method's own knob (:class:`trainers.common.config.Knob`:
the mixture's "delete" weight α_0, or λ of a baseline), which the spec says steers the share the
prior deletes monotonically, bisecting over full trainings until the share deleted at the natural
threshold is within the tolerance of the budget. Every training prunes exactly the budget, so the
chosen run's pruned model hits it, and was trained towards it.

MLflow: one parent run (``kind=budget_calibration``) with one child run per training; the parent
gets the target, the achieved share, the calibrated knob value and the chosen run's id.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipelines import tracking
from pipelines.run import RunResult, preflight, train, unique_run_name
from trainers import get_method
from trainers.common.config import BaseRunConfig, ConfigError, Knob, build_config


@dataclass
class Bisection:
    best_u: float
    best_value: float
    evaluations: list[tuple[float, float]] = field(default_factory=list)
    converged: bool = False


def bisect_knob(f: Callable[[float], float], target: float, lo: float, hi: float, start: float,
                tolerance: float, max_evals: int) -> Bisection:
    """Find u in [lo, hi] with |f(u) − target| <= tolerance for a (weakly, noisily) increasing f.

    Starts at ``start`` (the user's own value) and keeps a bracket [lo, hi] that must hold the
    target. Once both ends have been measured, the next point is the linear interpolation between
    them (regula falsi), kept at least 10% of the bracket away from either end so the bracket
    always shrinks; before that, the midpoint. Returns the evaluation closest to the target in any
    case (``converged`` says whether it is within the tolerance)."""
    if not lo < hi:
        raise ValueError(f"bisect_knob: empty range [{lo}, {hi}]")
    if max_evals < 1:
        raise ValueError(f"bisect_knob: max_evals = {max_evals}; allowed: >= 1")
    evals: list[tuple[float, float]] = []
    f_lo: float | None = None
    f_hi: float | None = None
    u = min(max(start, lo), hi)
    for _ in range(max_evals):
        v = float(f(u))
        evals.append((u, v))
        if abs(v - target) <= tolerance:
            break
        if v < target:
            lo, f_lo = u, v
        else:
            hi, f_hi = u, v
        if f_lo is not None and f_hi is not None and f_hi > f_lo:
            u = lo + (target - f_lo) * (hi - lo) / (f_hi - f_lo)
            u = min(max(u, lo + 0.1 * (hi - lo)), hi - 0.1 * (hi - lo))
        else:
            u = (lo + hi) / 2
    best_u, best_v = min(evals, key=lambda e: abs(e[1] - target))
    return Bisection(best_u, best_v, evals, abs(best_v - target) <= tolerance)


def calibrate(method: str, cfg: BaseRunConfig, *, run_name: str | None = None, tags: dict | None = None,
              description: str | None = None) -> RunResult:
    """Run the bisection of ``cfg.budget_knob()``; return the chosen training's result (its metrics
    extended with ``budget_*`` figures and ``calibration_parent_run_id``). ``run_name``, ``tags``, ``description``:
    the user's, on the parent run (whose name prefixes the trainings') and, tags, on every training."""
    knob: Knob | None = cfg.budget_knob()
    if knob is None:
        raise ConfigError(f"{method}: this config asks for no budget calibration")
    spec = get_method(method)
    bundle = preflight(spec, cfg)
    base = cfg.model_dump(mode="json")
    name = run_name or unique_run_name(f"calibrate-{method}")
    experiment = tracking.experiment_name(cfg, method)
    parent = tracking.start_run(experiment, name, base, {**(tags or {}), "method": method, "kind": "budget_calibration",
                                                        "knob": knob.name, "calibration": name},
                                description=description)
    results: dict[float, RunResult] = {}

    def one(u: float) -> float:
        run_cfg = build_config(spec.config_cls, base, knob.overrides(u))
        i = len(results)
        res = train(method, run_cfg, run_name=f"{name}-{i}", parent_run_id=parent, bundle=bundle,
                    extra_tags={**(tags or {}), "calibration": name, "calibration_step": str(i)})
        results[u] = res
        got = res.metrics.get(knob.metric)
        if got is None:
            raise RuntimeError(f"{method}: the training reported no {knob.metric!r}; cannot calibrate")
        print(f"[calibrate] run {i}: {knob.name} = {knob.shown(u):.6g} -> {knob.metric} = {got:.4f} "
              f"(target {knob.target} ± {knob.tolerance})", flush=True)
        return got

    try:
        b = bisect_knob(one, knob.target, knob.lo, knob.hi, knob.start, knob.tolerance, knob.max_runs)
    except BaseException as e:  # noqa: BLE001 - the parent run must not be left RUNNING
        tracking.end_run(parent, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                         {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        raise
    chosen = results[b.best_u]
    figures = {"budget_target": knob.target, "budget_natural_achieved": b.best_value,
               "budget_calibration_runs": float(len(b.evaluations)), "budget_converged": float(b.converged),
               "budget_knob_value": knob.shown(b.best_u)}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    for k, v in figures.items():
        client.log_metric(parent, k, v)
    for k in ("pruned_fraction", "params_removed_fraction", "acc_after_prune", "val_acc"):
        if k in chosen.metrics:
            client.log_metric(parent, k, float(chosen.metrics[k]))
    for i, (u, v) in enumerate(b.evaluations):
        client.log_metric(parent, "calibration_knob", knob.shown(u), step=i)
        client.log_metric(parent, "calibration_natural_fraction", v, step=i)
    tracking.end_run(parent, "FINISHED", {"chosen_run_id": chosen.run_id, "knob_value": f"{knob.shown(b.best_u):.6g}",
                                          "converged": str(b.converged).lower()})
    chosen.metrics.update(figures)
    chosen.metrics["calibration_parent_run_id"] = parent
    return chosen

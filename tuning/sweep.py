"""``trainlab sweep``: Ray Tune over a method's search space, one MLflow parent run per sweep.

Each trial is a per-trial driver function that launches its own ``TorchTrainer`` (Ray Train V2)
with ``TuneReportCallback``, so Tune sees every epoch's metrics (ASHA can stop it early). Each trial
logs to its own MLflow child run (``mlflow.parentRunId`` = the sweep's run); the best trial's
config and metric are logged on the parent.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from pipelines import tracking
from pipelines.run import preflight, storage_root, train, unique_run_name
from trainers import get_method
from trainers.common.config import BaseRunConfig, ConfigError, build_config, dotted_to_nested, flatten
from tuning.spaces import load_space, to_tune

# The per-trial driver only launches a TorchTrainer and waits: it takes no CPU (the trial's workers
# and Ray Data's spare CPU are what preflight counts). Ray refuses a trial with no resource at all,
# so it reserves the memory of one small Python process instead.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}


@dataclass
class SweepResult:
    method: str
    parent_run_id: str
    experiment: str
    best_config: dict
    best_metric: float
    metric: str
    mode: str
    num_trials: int
    num_terminated_early: int
    trials: list[dict]


def _trial(trial_params: dict, *, method: str, base: dict, parent_run_id: str, sweep_name: str,
           env: dict[str, str]) -> None:
    """Per-trial driver (a Tune function trainable): one TorchTrainer run reporting to Tune.

    It runs in a Ray actor whose environment and working directory are not the CLI's, so the
    tracking URI and storage root resolved by the sweep's driver are passed in explicitly."""
    import os

    from ray import tune

    os.environ.update(env)
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = get_method(method)
    cfg = build_config(spec.config_cls, base, dotted_to_nested(trial_params))
    ctx = tune.get_context()
    run_name = f"{sweep_name}-{ctx.get_trial_id()}"
    train(method, cfg, run_name=run_name, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()],
          extra_tags={"sweep": sweep_name, "trial_id": ctx.get_trial_id()})


def sweep(method: str, base_cfg: BaseRunConfig, *, num_samples: int = 8, scheduler: str = "asha",
          search: str = "random", max_concurrent: int = 2, space_file: str | None = None,
          grace_period: int | None = None) -> SweepResult:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = get_method(method)
    if num_samples < 1 or num_samples > 10_000:
        raise ConfigError(f"--num-samples: {num_samples} out of range; allowed: 1..10000")
    if max_concurrent < 1:
        raise ConfigError(f"--max-concurrent: {max_concurrent} out of range; allowed: >= 1")
    if scheduler not in ("asha", "fifo"):
        raise ConfigError(f"--scheduler: {scheduler!r}; allowed: asha, fifo")
    if search not in ("random", "optuna"):
        raise ConfigError(f"--search: {search!r}; allowed: random, optuna")
    epochs = base_cfg.train.epochs
    # ASHA compares trials first at grace_period epochs; too early and it keeps only the fastest
    # starters (high lr), not the best finishers. Default: a third of the budget.
    grace_period = max(1, epochs // 3) if grace_period is None else grace_period
    if not 1 <= grace_period <= epochs:
        raise ConfigError(f"--grace-period: {grace_period}; allowed: 1..{epochs} (train.epochs)")
    base = base_cfg.model_dump(mode="json")
    space = to_tune(load_space(space_file) if space_file else spec.search_space, spec.config_cls, base)
    preflight(spec, base_cfg, concurrent=max_concurrent)

    sweep_name = unique_run_name(f"sweep-{method}")
    experiment = base_cfg.tracking.experiment or f"trainlab/{method}"
    parent = tracking.start_run(experiment, sweep_name, base, {
        "method": method, "sweep": sweep_name, "kind": "sweep", "scheduler": scheduler, "search": search,
        "metric": spec.metric, "mode": spec.mode})
    # max_t = epochs + 1: a trial that reaches its last epoch is not stopped by ASHA at its final
    # report (which would kill it before its plots and model are logged); it ends by itself.
    sched = (ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1, grace_period=grace_period,
                           reduction_factor=2)
             if scheduler == "asha" else FIFOScheduler())
    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=base_cfg.seed)
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(), "TRAINLAB_STORAGE": storage_root()}
    trainable = tune.with_parameters(_trial, method=method, base=base, parent_run_id=parent, sweep_name=sweep_name,
                                     env=env)
    tuner = tune.Tuner(
        tune.with_resources(trainable, TRIAL_DRIVER_RESOURCES),
        param_space=space,
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=num_samples,
                                    scheduler=sched, search_alg=search_alg, max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage_root(), verbose=1),
    )
    try:
        grid = tuner.fit()
    except BaseException as e:  # noqa: BLE001
        tracking.end_run(parent, "FAILED", {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        raise
    trials = []
    for r in grid:
        val = (r.metrics or {}).get(spec.metric)
        trials.append({"trial_id": (r.metrics or {}).get("trial_id"),
                       "params": {k: v for k, v in (r.config or {}).items()},
                       spec.metric: val, "epochs": (r.metrics or {}).get("training_iteration"),
                       "error": str(r.error)[:300] if r.error else None})
    _close_children(parent, sweep_name, trials, epochs)
    ok = [t for t in trials if t[spec.metric] is not None and not (isinstance(t[spec.metric], float) and math.isnan(t[spec.metric]))]
    if not ok:
        tracking.end_run(parent, "FAILED", {"error": "no trial reported " + spec.metric})
        errs = "; ".join(t["error"] for t in trials if t["error"])[:1000]
        raise RuntimeError(f"sweep {sweep_name}: no trial finished ({errs})")
    best = (max if spec.mode == "max" else min)(ok, key=lambda t: t[spec.metric])
    best_cfg = build_config(spec.config_cls, base, dotted_to_nested(best["params"])).model_dump(mode="json")
    early = sum(1 for t in ok if (t["epochs"] or 0) < epochs)
    _log_parent(parent, spec, best, best_cfg, trials, early)
    return SweepResult(method, parent, experiment, best_cfg, best[spec.metric], spec.metric, spec.mode,
                       len(trials), early, trials)


def _close_children(parent: str, sweep_name: str, trials: list[dict], epochs: int) -> None:
    """A trial that ASHA stops is killed with its actor, before its driver can end its MLflow run:
    Tune's verdict is final: a trial without an error is FINISHED (``tune_early_stopped=true`` when
    it ran fewer epochs), one with an error FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_run(parent).info.experiment_id
    by_trial = {t["trial_id"]: t for t in trials if t.get("trial_id")}
    children = client.search_runs([exp], filter_string=f"tags.sweep = '{sweep_name}'")
    for run in children:
        if run.info.run_id == parent or run.info.status == "FINISHED":
            continue  # (a stopped trial's driver may also have marked its run KILLED/FAILED on the way out)
        t = by_trial.get(run.data.tags.get("trial_id"), {})
        if t.get("error"):
            tracking.end_run(run.info.run_id, "FAILED", {"error": t["error"]})
        else:
            tracking.end_run(run.info.run_id, "FINISHED",
                             {"tune_early_stopped": str((t.get("epochs") or 0) < epochs).lower()})


def _log_parent(parent: str, spec, best: dict, best_cfg: dict, trials: list[dict], early: int) -> None:
    import tempfile
    from pathlib import Path

    import yaml
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    client.log_metric(parent, f"best_{spec.metric}", float(best[spec.metric]))
    client.log_metric(parent, "num_trials", len(trials))
    client.log_metric(parent, "num_terminated_early", early)
    for k, v in best["params"].items():
        client.log_param(parent, f"best.{k}", str(v)[:6000])
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "best_config.yaml").write_text(yaml.safe_dump(best_cfg, sort_keys=False))
        (Path(d) / "trials.yaml").write_text(yaml.safe_dump(trials, sort_keys=False))
        client.log_artifact(parent, str(Path(d) / "best_config.yaml"))
        client.log_artifact(parent, str(Path(d) / "trials.yaml"))
    tracking.end_run(parent, "FINISHED")

"""``trainlab sweep``: Ray Tune over a method's search space, one MLflow parent run per sweep.

Each trial is a Tune function trainable. A single-CPU-worker trial runs the method's training loop in its own
process (Ray Train's local mode; it reports each epoch to Tune itself); a multi-worker or GPU trial is a
per-trial driver that launches its own ``TorchTrainer`` (Ray Train V2) with ``TuneReportCallback``. Either way
Tune sees every epoch's metrics (ASHA can stop it early) and keeps the trial's checkpoints. Each trial
logs to its own MLflow child run (``mlflow.parentRunId`` = the sweep's run); the best trial's
config and metric are logged on the parent.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from pipelines import tracking
from pipelines.run import preflight, runs_in_trial, storage_root, train, unique_run_name
from trainers import get_method
from trainers.common.config import BaseRunConfig, ConfigError, build_config, dotted_to_nested
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
    ranked_run_ids: list[str] = field(default_factory=list)  # the trials' MLflow child runs, best first

    @property
    def best_run_id(self) -> str | None:
        return self.ranked_run_ids[0] if self.ranked_run_ids else None


def _trial(trial_params: dict, *, method: str, base: dict, parent_run_id: str, sweep_name: str,
           env: dict[str, str], tags: dict[str, str] | None = None) -> None:
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
    _supersede_earlier_attempts(parent_run_id, sweep_name, ctx.get_trial_id())
    train(method, cfg, run_name=run_name, parent_run_id=parent_run_id,
          callbacks=None if runs_in_trial(cfg) else [TuneReportCallback()], in_trial=True,
          extra_tags={**(tags or {}), "sweep": sweep_name, "trial_id": ctx.get_trial_id()})


def _supersede_earlier_attempts(parent_run_id: str, sweep_name: str, trial_id: str) -> None:
    """A trial that starts again (``--resume`` after an interrupted driver, or a Tune retry) had an MLflow child
    run already, possibly even FINISHED if the driver stopped before Tune recorded the trial's end. Tune's view
    is what counts: the earlier run is closed as KILLED and tagged ``superseded_by_resume``, so each trial has
    one live child run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_run(parent_run_id).info.experiment_id
    for run in client.search_runs([exp], filter_string=f"tags.sweep = '{sweep_name}' and tags.trial_id = '{trial_id}'"):
        client.set_tag(run.info.run_id, "superseded_by_resume", "true")
        if run.info.status != "KILLED":
            tracking.end_run(run.info.run_id, "KILLED")


def make_scheduler(scheduler: str, reports: int, grace_period: int | None = None, what: str = "train.epochs"):
    """FIFO, or ASHA whose every milestone lies before a trial's last report.

    A trial reports ``reports`` results (one per epoch; continual: one per task). ASHA compares trials at
    milestones grace_period·2^k ≤ max_t. A trial it stops at its *last* report is killed before its plots
    and model reach MLflow, so max_t = reports − 1 and reaching max_t does not stop a trial
    (stop_last_trials=False). Default grace period: a third of the budget (earlier, ASHA keeps only the
    fastest starters, e.g. high lr, not the best finishers)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if scheduler not in ("asha", "fifo"):
        raise ConfigError(f"--scheduler: {scheduler!r}; allowed: asha, fifo")
    if scheduler == "fifo":
        return FIFOScheduler()
    if reports < 2:
        raise ConfigError(f"--scheduler asha: a trial reports {reports} result(s) ({what}), so ASHA has nothing to "
                          f"compare before its end; allowed: --scheduler fifo, or 2 or more {what}")
    last_rung = reports - 1
    grace_period = max(1, reports // 3) if grace_period is None else grace_period
    if not 1 <= grace_period <= last_rung:
        raise ConfigError(f"--grace-period: {grace_period}; allowed: 1..{last_rung} (ASHA's first comparison must "
                          f"come before the last of the {reports} {what})")
    return ASHAScheduler(time_attr="training_iteration", max_t=last_rung, grace_period=grace_period,
                         reduction_factor=2, stop_last_trials=False)


def sweep(method: str, base_cfg: BaseRunConfig, *, num_samples: int = 8, scheduler: str = "asha",
          search: str = "random", max_concurrent: int = 2, space_file: str | None = None,
          grace_period: int | None = None, name: str | None = None, tags: dict[str, str] | None = None,
          description: str | None = None) -> SweepResult:
    """``name``: the sweep's name (its MLflow parent run and its Tune directory; default sweep-<method>-<time>-<id>);
    ``tags``: the user's MLflow tags, on the parent and every trial's run; ``description``: the parent run's."""
    from ray import tune

    spec = get_method(method)
    if num_samples < 1 or num_samples > 10_000:
        raise ConfigError(f"--num-samples: {num_samples} out of range; allowed: 1..10000")
    if max_concurrent < 1:
        raise ConfigError(f"--max-concurrent: {max_concurrent} out of range; allowed: >= 1")
    if scheduler not in ("asha", "fifo"):
        raise ConfigError(f"--scheduler: {scheduler!r}; allowed: asha, fifo")
    if search not in ("random", "optuna"):
        raise ConfigError(f"--search: {search!r}; allowed: random, optuna")
    base = base_cfg.model_dump(mode="json")
    space = to_tune(load_space(space_file) if space_file else spec.search_space, spec.config_cls, base)
    bundle = preflight(spec, base_cfg, concurrent=max_concurrent, for_sweep=True)
    reports = spec.reports(base_cfg, bundle) if spec.reports else base_cfg.train.epochs
    sched = make_scheduler(scheduler, reports, grace_period,
                           "tasks (data.num_tasks)" if spec.reports else "train.epochs")
    sweep_name = name or unique_run_name(f"sweep-{method}")
    experiment = tracking.experiment_name(base_cfg, method)
    base["tracking"]["experiment"] = experiment  # the trials' runs join the parent's experiment, whatever their env
    parent = tracking.start_run(experiment, sweep_name, base, {
        **(tags or {}), "method": method, "sweep": sweep_name, "kind": "sweep", "scheduler": scheduler, "search": search,
        "metric": spec.metric, "mode": spec.mode}, description=description)
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=base_cfg.seed)
    else:  # seeded like Optuna: the same seed samples the same trials (and two schedulers compare like with like).
        # Its own max_concurrent: Tune's max_concurrent_trials does not limit a generator passed in (every trial
        # would start at once and leave Ray Data no CPU).
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=base_cfg.seed, max_concurrent=max_concurrent)
    meta = {"method": method, "sweep_name": sweep_name, "parent_run_id": parent, "experiment": experiment,
            "base": base, "num_samples": num_samples, "max_concurrent": max_concurrent, "reports": reports,
            "env": {"MLFLOW_TRACKING_URI": tracking.tracking_uri(), "TRAINLAB_STORAGE": storage_root()},
            "user_tags": dict(tags or {})}
    path = f"{storage_root().rstrip('/')}/{sweep_name}"
    _write_meta(path, meta)
    tuner = tune.Tuner(
        _trainable(meta),
        param_space=space,
        # Trials that train in their own process reuse it for the next trial (Tune's reuse_actors): a new actor costs
        # a process and its imports (torch, MLflow, the method), seconds per trial on a small machine.
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=num_samples,
                                    scheduler=sched, search_alg=search_alg,
                                    max_concurrent_trials=max_concurrent if search == "optuna" else None,
                                    reuse_actors=runs_in_trial(base_cfg)),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage_root(), verbose=1),
    )
    return _fit(tuner, meta, path)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep's driver was interrupted (Ctrl-C / SIGINT); Tune saved its state and it can be resumed.
    A KeyboardInterrupt, so no generic error handler reports it as a failure."""


META_FILE = "trainlab_sweep.json"


def trial_resources(base_cfg: BaseRunConfig) -> dict:
    """What Tune reserves for one trial: a trial that trains in its own process holds its worker's CPUs; one
    that launches a TorchTrainer only waits on it (its workers reserve their own)."""
    if runs_in_trial(base_cfg):
        return {"CPU": base_cfg.scaling.cpus_per_worker}
    return dict(TRIAL_DRIVER_RESOURCES)


def _trainable(meta: dict):
    from ray import tune

    spec = get_method(meta["method"])
    return tune.with_resources(
        tune.with_parameters(_trial, method=meta["method"], base=meta["base"], parent_run_id=meta["parent_run_id"],
                             sweep_name=meta["sweep_name"], env=meta["env"], tags=meta.get("user_tags") or {}),
        trial_resources(build_config(spec.config_cls, meta["base"])))


def _write_meta(path: str, meta: dict) -> None:
    """What ``--resume`` needs beyond Tune's own state: the MLflow parent run and the validated base config."""
    import json

    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{META_FILE}") as f:
        f.write(json.dumps(meta, indent=2).encode())


def _read_meta(path: str) -> dict | None:
    import json

    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    if fs.get_file_info(f"{root}/{META_FILE}").type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{root}/{META_FILE}") as f:
        return json.loads(f.read().decode())


def resume(method: str, where: str) -> SweepResult:
    """``trainlab sweep METHOD --resume DIR|NAME``: finish an interrupted sweep. Trials that ended (finished,
    early-stopped or errored) are kept as they are; only unfinished and not-yet-started trials run, into the
    same MLflow parent run. ``where`` is the sweep's directory, or its name under the storage root."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    path = where if ("/" in where or where.startswith(".")) else f"{storage_root().rstrip('/')}/{where}"
    if "://" not in path:
        from pathlib import Path

        path = str(Path(path).resolve())
    meta = _read_meta(path)
    if meta is None:
        raise ConfigError(f"--resume: {where} is not a trainlab sweep directory (no {META_FILE} in {path}); "
                          "give the directory `trainlab sweep` printed when it was interrupted")
    if meta["method"] != method:
        raise ConfigError(f"--resume: {where} is a sweep of {meta['method']!r}, not {method!r}; "
                          f"run `trainlab sweep {meta['method']} --resume {where}`")
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"--resume: {path} has no Ray Tune experiment state to resume")
    spec = get_method(method)
    base_cfg = build_config(spec.config_cls, meta["base"])
    preflight(spec, base_cfg, concurrent=meta["max_concurrent"], for_sweep=True)
    os.environ.update({k: v for k, v in meta["env"].items() if k == "MLFLOW_TRACKING_URI"})
    client = MlflowClient(tracking.tracking_uri())
    parent = meta["parent_run_id"]
    client.update_run(parent, status="RUNNING")
    client.set_tag(parent, "resumed", str(int(client.get_run(parent).data.tags.get("resumed", "0")) + 1))
    tuner = tune.Tuner.restore(path, trainable=_trainable(meta), resume_unfinished=True, resume_errored=False,
                               restart_errored=False)
    return _fit(tuner, meta, path)


def _fit(tuner, meta: dict, path: str) -> SweepResult:
    spec = get_method(meta["method"])
    parent, sweep_name = meta["parent_run_id"], meta["sweep_name"]
    epochs = meta.get("reports", meta["base"]["train"]["epochs"])  # results a whole trial reports
    try:
        grid = tuner.fit()
    except BaseException as e:  # noqa: BLE001
        tracking.end_run(parent, "FAILED", {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        raise
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if unfinished > 0 or len(grid) < meta["num_samples"]:
        hint = f"trainlab sweep {meta['method']} --resume {path}"
        tracking.end_run(parent, "KILLED", {"resume_with": hint})
        raise SweepInterrupted(
            f"sweep {sweep_name} interrupted: {grid.num_terminated + grid.num_errors} of {meta['num_samples']} "
            f"trials ended, the rest did not; Tune saved its state. Finish it with: {hint}")
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
    best_cfg = build_config(spec.config_cls, meta["base"], dotted_to_nested(best["params"])).model_dump(mode="json")
    early = sum(1 for t in ok if (t["epochs"] or 0) < epochs)
    _log_parent(parent, spec, best, best_cfg, trials, early)
    return SweepResult(meta["method"], parent, meta["experiment"], best_cfg, best[spec.metric], spec.metric,
                       spec.mode, len(trials), early, trials,
                       _ranked_runs(parent, sweep_name, sorted(ok, key=lambda t: t[spec.metric],
                                                               reverse=spec.mode == "max")))


def _ranked_runs(parent: str, sweep_name: str, ranked: list[dict]) -> list[str]:
    """The MLflow child runs of ``ranked`` trials, in that order (a resumed trial's latest attempt), in one query."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_run(parent).info.experiment_id
    by_trial: dict[str, str] = {}
    for r in client.search_runs([exp], filter_string=f"tags.sweep = '{sweep_name}'",
                                order_by=["attributes.start_time ASC"], max_results=50_000):
        if r.info.run_id != parent and r.data.tags.get("trial_id") and not r.data.tags.get("superseded_by_resume"):
            by_trial[r.data.tags["trial_id"]] = r.info.run_id
    return [by_trial[t["trial_id"]] for t in ranked if t.get("trial_id") in by_trial]


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
        if run.info.run_id == parent or run.info.status == "FINISHED" or run.data.tags.get("superseded_by_resume"):
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

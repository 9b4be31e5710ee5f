"""The path of one run: validated config -> Ray Datasets -> TorchTrainer -> MLflow run -> summary.

Everything that can be wrong with a request (config values, data files, resources, the tracking
store) is checked here, on the driver, before a single Ray Train worker starts.
"""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.cluster import ResourceRequest, check_resources, init_ray
from trainers import MethodSpec, get_method
from trainers.common.config import BaseRunConfig, ConfigError, build_config, parse_set_args, read_yaml
from trainers.common.facts import Prepared, RunFacts
from trainers.common.paths import storage_root  # noqa: F401 - re-exported: sweeps and tests read it here


@dataclass
class RunResult:
    method: str
    run_name: str
    run_id: str
    experiment: str
    tracking_uri: str
    metrics: dict[str, Any]
    checkpoint: str | None
    storage_path: str
    config: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)  # startup.* seconds, see startup_timing


def startup_timing(marks: dict[str, float], metrics: dict) -> dict[str, float]:
    """Where a run's wall time went, in seconds, from the driver's marks (unix times) and the chief worker's last
    report (when its loop started and when it reported): ``startup.preflight_s`` (Ray connect, data, checks),
    ``startup.prepare_s`` (the method's driver-side work), ``startup.mlflow_run_s``, ``startup.trainer_s``
    (building the trainer), ``startup.workers_s`` (fit() until the worker's loop starts: controller, worker
    group, process group, dataset shards), ``startup.loop_s`` (the loop until its last report),
    ``startup.after_last_report_s`` (final evaluation, plots, model logging, teardown) and
    ``startup.overhead_s`` = everything but the loop."""
    if "worker_started_unix" not in metrics or "reported_unix" not in metrics:
        return {}
    w0, w1 = float(metrics.pop("worker_started_unix")), float(metrics.pop("reported_unix"))
    t = {"startup.preflight_s": marks["preflight"] - marks["start"],
         "startup.prepare_s": marks["prepare"] - marks["preflight"],
         "startup.mlflow_run_s": marks["mlflow_run"] - marks["prepare"],
         "startup.trainer_s": marks["trainer"] - marks["mlflow_run"],
         "startup.workers_s": w0 - marks["trainer"],
         "startup.loop_s": w1 - w0,
         "startup.after_last_report_s": marks["fit"] - w1}
    t["startup.overhead_s"] = marks["fit"] - marks["start"] - t["startup.loop_s"]
    return t


def load_config(method: str, config_file: str | None = None, sets: list[str] | None = None,
                quick: bool = False, overrides: dict | None = None) -> BaseRunConfig:
    """defaults < --quick < --config FILE < --set key=value < explicit flags (``overrides``)."""
    spec = get_method(method)
    return build_config(spec.config_cls, spec.quick if quick else None,
                        read_yaml(config_file) if config_file else None, parse_set_args(sets), overrides)


RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


def check_run_name(name: str) -> str:
    """A user's ``--run-name``: it names the MLflow run and the run's storage folder, so a path component."""
    import re

    if not re.fullmatch(RUN_NAME, name):
        raise ConfigError(f"--run-name: {name!r}; allowed: 1-128 characters of letters, digits, '.', '_', '-', "
                          "starting with a letter or digit (it names the run's storage folder)")
    return name


def parse_tags(items: list[str] | None) -> dict[str, str]:
    """``--tag key=value`` (repeatable) -> tags; the keys MLflow and trainlab set themselves are refused."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--tag: {item!r}; allowed: key=value")
        if key.startswith("mlflow.") or key in RESERVED_TAGS:
            raise ConfigError(f"--tag: {key!r} is set by trainlab or MLflow; allowed: any other key "
                              f"(not mlflow.*, {', '.join(sorted(RESERVED_TAGS))})")
        out[key] = value
    return out


RESERVED_TAGS = frozenset({"method", "variant", "dataset", "git_sha", "kind", "sweep", "stop_reason"})


def unique_run_name(method: str) -> str:
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def resource_request(cfg: BaseRunConfig, for_sweep: bool = False) -> ResourceRequest:
    s = cfg.scaling
    # local mode: the driver trains (its own CPU and GPU, not the cluster's); Ray Data still needs its CPUs. In a
    # sweep, a trial trains in its own process on the cluster and reserves its worker's CPUs (trial_resources).
    if s.local and not for_sweep:
        return ResourceRequest(0, s.cpus_per_worker, False, s.data_cpus)
    return ResourceRequest(s.world_size, s.cpus_per_worker, s.use_gpu, s.data_cpus)


def preflight(spec: MethodSpec, cfg: BaseRunConfig, concurrent: int = 1, for_sweep: bool = False):
    """All checks that need no worker: resources, tracking store, data. Returns the DataBundle."""
    resources = init_ray()
    if for_sweep and cfg.scaling.local and cfg.scaling.use_gpu:
        raise ConfigError("scaling.use_gpu: a sweep's trials train on the cluster, so GPU trials need workers; "
                          "allowed: --num-workers >= 1 with --gpu (or no --gpu with --num-workers 0)")
    check_resources(resource_request(cfg, for_sweep), concurrent=concurrent, resources=resources)
    if cfg.scaling.local and cfg.scaling.use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("scaling.use_gpu: local mode (scaling.num_workers=0) trains in this process, and this "
                              "machine has no CUDA GPU; allowed: use_gpu=false, or num_workers >= 1 on a GPU cluster")
    tracking.check_tracking(tracking.tracking_uri())
    bundle = spec.build_data(cfg)
    if spec.check is not None:
        try:
            spec.check(cfg, bundle)
        except (ValueError, KeyError) as e:
            raise ConfigError(str(e)) from None
    n = bundle.sizes[spec.train_split]
    if cfg.train.batch_size > n:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the {spec.train_split} "
                          f"split ({n} rows); allowed: 2..{n}")
    w = cfg.scaling.world_size
    if n // w < cfg.train.batch_size // w:
        raise ConfigError(f"scaling.num_workers: {cfg.scaling.num_workers} workers leave fewer rows per worker "
                          f"than one per-worker batch; allowed: num_workers <= {max(1, n // cfg.train.batch_size)}")
    return bundle


def _fit_logged(fit, run_id: str, marks: dict[str, float], in_trial: bool = False):
    """``fit()`` (a TorchTrainer's, or an in-trial loop's: both return ``.metrics`` and ``.checkpoint``), with the
    MLflow run closed if it raises; returns the result, its metrics and the start-up timing (logged to the run).

    In a sweep trial, Tune stops a trial (ASHA, or the sweep being interrupted) with ``sys.exit`` in the trial's
    thread, possibly after the sweep's driver has already closed the trial's run with Tune's verdict
    (``tuning.sweep._close_children``: FINISHED, ``tune_early_stopped``): that verdict is final, so a stopped trial
    leaves its run's status alone instead of overwriting it with KILLED. (A trial stopped because the sweep was
    interrupted stays RUNNING until ``trainlab sweep --resume`` supersedes it.)"""
    marks["trainer"] = time.time()
    try:
        result = fit()
    except SystemExit:
        if not in_trial:
            tracking.end_run(run_id, "KILLED", {"error": "SystemExit"})
        raise
    except BaseException as e:  # noqa: BLE001 - the MLflow run must not be left RUNNING
        tracking.end_run(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                         {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        raise
    marks["fit"] = time.time()
    metrics = dict(result.metrics or {})
    timing = startup_timing(marks, metrics)
    if timing:
        tracking.log_metrics(run_id, timing)
    return result, metrics, timing


def _train_in_process(spec, method, cfg, cfg_dict, run_facts, bundle, marks, run_name, run_id, experiment, uri,
                      run_dir: str | None) -> RunResult:
    """The loop in this process (``trainers.common.worker.TrialSession``), no controller or worker actors: in a
    Tune trial (``run_dir`` None: results and checkpoints go to Tune) or in local mode (``scaling.num_workers=0``:
    checkpoints under ``run_dir``, where a rerun of the run name finds them)."""
    from trainers.common.facts import LocalCheckpoints
    from trainers.common.worker import TrialSession

    in_trial = run_dir is None
    run_facts = run_facts.in_process("tune") if in_trial else run_facts.in_process(
        "local", LocalCheckpoints(run_dir, cfg.train.checkpoints_to_keep,
                                  tuple(spec.checkpoint_score) if spec.checkpoint_score else None))
    session, metrics, timing = _fit_logged(
        lambda: TrialSession(bundle.datasets).run(spec.train_loop, {"cfg": cfg_dict, "run": run_facts}), run_id, marks,
        in_trial=in_trial)
    ckpt = session.checkpoint.path if session.checkpoint else None
    storage = run_dir if run_dir is not None else (str(Path(ckpt).parent) if ckpt else "")
    tracking.end_run(run_id, "FINISHED", {"checkpoint": ckpt or "", "ray_storage": storage})
    return RunResult(method, run_name, run_id, experiment, uri, metrics, ckpt, storage, cfg_dict, timing)


def _scaling_config(s):
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                         resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})})


def run_job(loop, cfg: BaseRunConfig, facts: RunFacts, datasets: dict, name_prefix: str):
    """An auxiliary training job that a method's ``prepare`` asks for (``DriverContext.run_job``; e.g.
    shift_explainer's classifier), with the run's scaling: in this process in local mode (also inside a sweep
    trial's own process), else one TorchTrainer. Keeps one checkpoint under the storage root; returns it."""
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from trainers.common.facts import LocalCheckpoints
    from trainers.common.worker import TrialSession, dataset_config

    s = cfg.scaling
    name = unique_run_name(name_prefix)
    config = {"cfg": cfg.model_dump(mode="json"), "run": facts}
    if s.local:
        config["run"] = facts.in_process("local", LocalCheckpoints(f"{storage_root()}/{name}", 1))
        return TrialSession(datasets).run(loop, config).checkpoint
    trainer = TorchTrainer(
        loop, train_loop_config=config, scaling_config=_scaling_config(s),
        run_config=RunConfig(name=name, storage_path=storage_root(), checkpoint_config=CheckpointConfig(num_to_keep=1)),
        datasets=datasets,
        dataset_config=dataset_config(datasets, facts.cache_in_memory, s.num_workers))
    return trainer.fit().checkpoint


def driver_context():
    from trainers.common.context import DriverContext

    return DriverContext(storage_root=storage_root(), tracking_uri=tracking.tracking_uri(), run_job=run_job)


def runs_in_trial(cfg: BaseRunConfig) -> bool:
    """Whether a sweep trial of ``cfg`` runs its training loop in the trial's own process (see ``train``)."""
    return cfg.scaling.num_workers <= 1 and not cfg.scaling.use_gpu


def _train_controller_env() -> None:
    """Ray Train V2 settings that its controller and workers read from the driver's environment (a user's own
    setting wins). The controller polls its workers every 2 s by default, so each run's start and end wait
    up to 2 s for the next poll; 0.5 s costs one small actor call per worker per poll. The preemption watcher
    is one more actor process per run (seconds of start-up on a small machine) that reacts to a node being
    drained; with one node in the cluster the workers share the driver's node, whose loss ends the run anyway."""
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) == 1:
            os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"


def train(method: str, cfg: BaseRunConfig, *, run_name: str | None = None, parent_run_id: str | None = None,
          callbacks: list | None = None, bundle=None, extra_tags: dict | None = None,
          in_trial: bool = False, description: str | None = None) -> RunResult:
    """Run one TorchTrainer job for ``method`` and log it to MLflow. Raises on failure (run marked FAILED).

    ``in_trial``: called by a Tune trial with a single CPU worker. The loop then runs in the trial's own process
    and reports to Tune itself (``trainers.common.worker.TrialSession``): no controller, worker group, sync or
    dataset-manager actors per trial, which on a small cluster cost more than a short trial's training; Tune
    keeps the checkpoints and restarts the trial. Multi-worker and GPU trials launch a TorchTrainer as a
    ``run`` does."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from trainers.common.worker import dataset_config

    spec = get_method(method)
    marks = {"start": time.time()}
    if bundle is None:
        bundle = preflight(spec, cfg)
    marks["preflight"] = time.time()
    _train_controller_env()  # before prepare, which may run a TorchTrainer of its own
    data = bundle  # what the user's data is (MLflow's lineage), before a method derives its training sets from it
    prepared = Prepared()
    if spec.prepare is not None:  # driver-side precomputation, before the MLflow run exists
        try:
            prepared = spec.prepare(cfg, bundle, driver_context())
        except (ValueError, KeyError) as e:
            raise ConfigError(str(e)) from None
        if prepared.datasets is not None:  # the method trains on datasets it derived (e.g. batch-inference columns)
            bundle = dataclasses.replace(bundle, datasets=prepared.datasets, sizes=prepared.sizes or bundle.sizes)
    run_name = run_name or unique_run_name(method)
    experiment = tracking.experiment_name(cfg, method)
    uri = tracking.tracking_uri()
    cfg_dict = cfg.model_dump(mode="json")
    variant = getattr(cfg.method, spec.variant_field, "") if spec.variant_field else ""
    tags = {"method": method, "variant": str(variant), "dataset": bundle.name, **(extra_tags or {})}
    marks["prepare"] = time.time()
    run_id = tracking.start_run(experiment, run_name, cfg_dict, tags, parent_run_id=parent_run_id,
                                description=description)
    try:
        tracking.log_inputs(run_id, data)
    except Exception as e:  # noqa: BLE001 - lineage is metadata: a store that refuses it must not stop the run
        import logging

        logging.getLogger("trainlab").warning("MLflow dataset lineage not logged (%s: %s)", type(e).__name__, e)
    marks["mlflow_run"] = time.time()

    storage = storage_root()
    stop_file = str(Path(storage) / run_name / "STOP") if "://" not in storage else None
    run_facts = RunFacts.for_data(cfg, bundle, spec.train_split, run_name=run_name, mlflow_run_id=run_id,
                                  tracking_uri=uri, mlflow_pending_dir=tracking.pending_dir(), stop_file=stop_file,
                                  prepared=prepared.facts)
    s = cfg.scaling
    if (in_trial and runs_in_trial(cfg)) or s.local:
        return _train_in_process(spec, method, cfg, cfg_dict, run_facts, bundle, marks, run_name, run_id, experiment,
                                 uri, None if in_trial else f"{storage}/{run_name}")
    trainer = TorchTrainer(
        spec.train_loop,
        train_loop_config={"cfg": cfg_dict, "run": run_facts},
        scaling_config=_scaling_config(s),
        run_config=RunConfig(
            name=run_name, storage_path=storage, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_to_keep,
                **({"checkpoint_score_attribute": spec.checkpoint_score[0],
                    "checkpoint_score_order": spec.checkpoint_score[1]} if spec.checkpoint_score else {}))),
        datasets=bundle.datasets,
        dataset_config=dataset_config(bundle.datasets, run_facts.cache_in_memory, s.num_workers),
    )
    result, metrics, timing = _fit_logged(trainer.fit, run_id, marks, in_trial=in_trial)
    ckpt = result.checkpoint.path if result.checkpoint else None
    tracking.end_run(run_id, "FINISHED", {"checkpoint": ckpt or "", "ray_storage": f"{storage}/{run_name}"})
    return RunResult(method, run_name, run_id, experiment, uri, metrics, ckpt, f"{storage}/{run_name}", cfg_dict,
                     timing)

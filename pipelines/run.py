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


def storage_root() -> str:
    """Where Ray Train/Tune keep checkpoints: ``TRAINLAB_STORAGE`` (cloud/NFS on a cluster) or ./trainlab_runs."""
    root = os.environ.get("TRAINLAB_STORAGE")
    if root:
        return root
    return str((Path.cwd() / "trainlab_runs").resolve())


def load_config(method: str, config_file: str | None = None, sets: list[str] | None = None,
                quick: bool = False, overrides: dict | None = None) -> BaseRunConfig:
    """defaults < --quick < --config FILE < --set key=value < explicit flags (``overrides``)."""
    spec = get_method(method)
    return build_config(spec.config_cls, spec.quick if quick else None,
                        read_yaml(config_file) if config_file else None, parse_set_args(sets), overrides)


def unique_run_name(method: str) -> str:
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def resource_request(cfg: BaseRunConfig) -> ResourceRequest:
    s = cfg.scaling
    return ResourceRequest(s.num_workers, s.cpus_per_worker, s.use_gpu, s.data_cpus)


def preflight(spec: MethodSpec, cfg: BaseRunConfig, concurrent: int = 1):
    """All checks that need no worker: resources, tracking store, data. Returns the DataBundle."""
    resources = init_ray()
    check_resources(resource_request(cfg), concurrent=concurrent, resources=resources)
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
    if n // cfg.scaling.num_workers < cfg.train.batch_size // cfg.scaling.num_workers:
        raise ConfigError(f"scaling.num_workers: {cfg.scaling.num_workers} workers leave fewer rows per worker "
                          f"than one per-worker batch; allowed: num_workers <= {max(1, n // cfg.train.batch_size)}")
    return bundle


def train(method: str, cfg: BaseRunConfig, *, run_name: str | None = None, parent_run_id: str | None = None,
          callbacks: list | None = None, bundle=None, extra_tags: dict | None = None) -> RunResult:
    """Run one TorchTrainer job for ``method`` and log it to MLflow. Raises on failure (run marked FAILED)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = get_method(method)
    if bundle is None:
        bundle = preflight(spec, cfg)
    prepared = None
    if spec.prepare is not None:  # driver-side precomputation, before the MLflow run exists
        try:
            prepared = spec.prepare(cfg, bundle)
        except (ValueError, KeyError) as e:
            raise ConfigError(str(e)) from None
        if "datasets" in prepared:  # the method trains on datasets it derived (e.g. with batch-inference columns)
            bundle = dataclasses.replace(bundle, datasets=prepared.pop("datasets"),
                                         sizes=prepared.pop("sizes", bundle.sizes))
    run_name = run_name or unique_run_name(method)
    experiment = cfg.tracking.experiment or f"trainlab/{method}"
    uri = tracking.tracking_uri()
    cfg_dict = cfg.model_dump(mode="json")
    variant = getattr(cfg.method, spec.variant_field, "") if spec.variant_field else ""
    tags = {"method": method, "variant": str(variant), "dataset": bundle.name, **(extra_tags or {})}
    run_id = tracking.start_run(experiment, run_name, cfg_dict, tags, parent_run_id=parent_run_id)

    storage = storage_root()
    stop_file = str(Path(storage) / run_name / "STOP") if "://" not in storage else None
    run_facts = {
        "mlflow_run_id": run_id, "tracking_uri": uri, "run_name": run_name,
        "steps_per_epoch": max(1, bundle.sizes[spec.train_split] // cfg.train.batch_size),
        "input_shape": list(bundle.input_shape), "num_classes": bundle.num_classes,
        "sizes": bundle.sizes, "stop_file": stop_file,
        "cache_in_memory": getattr(getattr(cfg, "data", None), "cache_in_memory", True),
        "prepared": prepared,
        "mlflow_pending_dir": tracking.pending_dir(),
        "driver_niceness": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None,
    }
    s = cfg.scaling
    trainer = TorchTrainer(
        spec.train_loop,
        train_loop_config={"cfg": cfg_dict, "run": run_facts},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}),
        run_config=RunConfig(
            name=run_name, storage_path=storage, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_to_keep,
                **({"checkpoint_score_attribute": spec.checkpoint_score[0],
                    "checkpoint_score_order": spec.checkpoint_score[1]} if spec.checkpoint_score else {}))),
        datasets=bundle.datasets,
    )
    try:
        result = trainer.fit()
    except BaseException as e:  # noqa: BLE001 - the MLflow run must not be left RUNNING
        tracking.end_run(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                         {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        raise
    ckpt = result.checkpoint.path if result.checkpoint else None
    tracking.end_run(run_id, "FINISHED", {"checkpoint": ckpt or "", "ray_storage": f"{storage}/{run_name}"})
    return RunResult(method, run_name, run_id, experiment, uri, dict(result.metrics or {}), ckpt,
                     f"{storage}/{run_name}", cfg_dict)

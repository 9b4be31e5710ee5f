"""What the driver lends a method's driver-side hook (``MethodSpec.prepare``): its services, typed and passed in,
so that a method never imports the driver, tracking, CLI or tuning modules (checked by import-linter)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class DriverContext:
    """``storage_root``: where runs keep checkpoints (a path or URI). ``tracking_uri``: the MLflow store of the
    run. ``run_job(loop, cfg, facts, datasets, name)``: an auxiliary training job of the method's own (e.g.
    shift_explainer's classifier) with the run's scaling — in this process in local mode, else one Ray Train
    job — that returns the job's last ``ray.train.Checkpoint``."""

    storage_root: str
    tracking_uri: str
    run_job: Callable[[Callable[[dict], None], Any, dict, dict, str], Any]

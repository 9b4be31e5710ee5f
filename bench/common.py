"""Helpers shared by the benchmark scripts: machine facts, confidence intervals, writing results."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    import ray
    import torch

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        sha = "unknown"
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0],
            "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "ray": ray.__version__, "git_sha": sha,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return float(a.mean()), float(half)


def isolated_store(prefix: str) -> str:
    """A fresh temp dir for one benchmark run: its own MLflow sqlite store and Ray Train storage, made the
    working directory, so a benchmark never writes into the user's ./mlflow.db or ./trainlab_runs."""
    import tempfile

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    store = tempfile.mkdtemp(prefix=prefix)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    os.environ["TRAINLAB_STORAGE"] = f"{store}/runs"
    os.chdir(store)
    return store


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {RESULTS / (name + '.json')} and {RESULTS / (name + '.md')}")

"""Shared fixtures: one local Ray instance per test session, and an isolated MLflow store."""
from __future__ import annotations

import os

import pytest

# Tests must never reach the network, and Ray must not print usage stats prompts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Logical CPUs of the test cluster: more than the 2 real cores, so that 2-worker runs and
# 2-trial sweeps (each with spare CPUs for Ray Data) can be scheduled on a laptop-class machine.
TEST_CLUSTER_CPUS = 8


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    import ray

    from pipelines.cluster import init_ray

    init_ray(num_cpus=TEST_CLUSTER_CPUS)
    yield ray
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow sqlite store and Ray Train storage."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TRAINLAB_STORAGE", str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast, and stays fast on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mlflow_client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def mlflow_runs(experiment: str):
    c = mlflow_client()
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    return c.search_runs([exp.experiment_id])


def mlflow_artifacts(run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in mlflow_client().list_artifacts(run_id, path):
        out.extend(mlflow_artifacts(run_id, f.path) if f.is_dir else [f.path])
    return out

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

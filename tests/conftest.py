"""Shared fixtures: one local Ray instance per test session, and an isolated MLflow store."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# Tests must never reach the network, and Ray must not print usage stats prompts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

# Hermetic: the suite reads and writes nothing of the user's (no ~/.ray token, no ~/.cache/trainlab, no MLflow
# store of theirs). Everything lives in one session temp dir, set here at import, before any Ray or MLflow
# import and so inherited by every subprocess, `ray start` (its workers and job drivers) and job submission.
SESSION_TMP = Path(tempfile.mkdtemp(prefix="trainlab-tests-"))
# The session's head runs with Ray's token authentication, as a shared cluster should: every driver, job
# submission and state-API call must carry the token, which is the session's own.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_AUTH_TOKEN", None)          # it would win over the file
(SESSION_TMP / "auth_token").write_text(secrets.token_hex(32))
os.environ["RAY_AUTH_TOKEN_PATH"] = str(SESSION_TMP / "auth_token")
os.environ["TRAINLAB_CACHE"] = str(SESSION_TMP / "cache")
os.environ["MPLCONFIGDIR"] = str(SESSION_TMP / "matplotlib")
# defaults for tests that do not take `workdir` (which points both at the test's own tmp_path)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{SESSION_TMP / 'mlflow.db'}"
os.environ["TRAINLAB_STORAGE"] = str(SESSION_TMP / "runs")
for _k in ("RAY_ADDRESS", "MLFLOW_EXPERIMENT_NAME", "TRAINLAB_MLFLOW_PENDING"):
    os.environ.pop(_k, None)

# What the suite must leave untouched in the user's home; checked when the session ends.
USER_PATHS = [Path.home() / p for p in (".ray", ".cache/trainlab", ".config/trainlab", "mlruns")]


def _snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for root in paths:
        for p in ([root, *root.rglob("*")] if root.is_dir() else [root] if root.exists() else []):
            st = p.stat()
            out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


def pytest_sessionstart(session):
    session.config._user_paths_before = _snapshot(USER_PATHS)


def pytest_sessionfinish(session, exitstatus):
    after = _snapshot(USER_PATHS)
    before = getattr(session.config, "_user_paths_before", {})
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    shutil.rmtree(SESSION_TMP, ignore_errors=True)
    if changed:
        print(f"\nhermeticity: the suite changed the user's files: {changed[:10]}", file=sys.stderr)
        session.exitstatus = 1
# Logical CPUs of the test cluster: more than the 2 real cores, so that 2-worker runs and
# 2-trial sweeps (each with spare CPUs for Ray Data) can be scheduled on a laptop-class machine.
TEST_CLUSTER_CPUS = 8


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on loopback: sqlite backend, proxied artifact directory."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / "mlflow.db").exists():
            empty_mlflow_db(self.root / "mlflow.db")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(240):
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        """Down at once, as in an outage: SIGKILL to the server and its uvicorn worker (a graceful stop waits
        ~5 s for connections to drain; sqlite's journal keeps the store consistent either way)."""
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)
            self.proc = None


class RayHead:
    """A real Ray head node, as a user starts one (``ray start --head``), bound to loopback only:
    GCS, dashboard (job submission, state API) and client server on free 127.0.0.1 ports."""

    def __init__(self, num_cpus: int):
        self.num_cpus = num_cpus
        self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.ray = os.path.join(os.path.dirname(sys.executable), "ray")

    def start(self) -> "RayHead":
        cmd = [self.ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
               "--ray-client-server-port", str(self.client_port), "--num-cpus", str(self.num_cpus),
               "--include-dashboard", "true", "--disable-usage-stats"]
        # the head's job drivers and workers run this interpreter's environment (PATH: its `python`)
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        from ray.job_submission import JobSubmissionClient

        last = None
        for _ in range(120):  # the dashboard's job API comes up a little after `ray start` returns
            try:  # the client sends the session's auth token (RAY_AUTH_TOKEN_PATH)
                JobSubmissionClient(self.dashboard_url).list_jobs()
                return self
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray dashboard did not come up at {self.dashboard_url}: {last}")

    def stop(self) -> None:
        subprocess.run([self.ray, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def ray_head():
    head = RayHead(TEST_CLUSTER_CPUS).start()
    yield head
    head.stop()


@pytest.fixture(scope="session")
def ray_session(ray_head):
    """The test process is one more driver on the session's head; subprocesses join it with
    ``RAY_ADDRESS`` (``ray_session.get_runtime_context().gcs_address``)."""
    import ray

    from pipelines.cluster import init_ray

    init_ray(address=ray_head.address)
    yield ray
    ray.shutdown()


def empty_mlflow_db(path: Path) -> Path:
    """A new, empty MLflow sqlite store at ``path``: a copy of one made (migrated) once per session, since
    MLflow's schema migrations take seconds for every new database."""
    template = SESSION_TMP / "mlflow-template.db"
    if not template.exists():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{SESSION_TMP / 'mlflow-making.db'}", str(SESSION_TMP / "unused"))
        store.engine.dispose()
        os.replace(SESSION_TMP / "mlflow-making.db", template)
    shutil.copyfile(template, path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow sqlite store and Ray Train storage."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{empty_mlflow_db(tmp_path / 'mlflow.db')}")
    monkeypatch.setenv("TRAINLAB_STORAGE", str(tmp_path / "runs"))
    monkeypatch.setenv("TRAINLAB_CACHE", str(tmp_path / "cache"))
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

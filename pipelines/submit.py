"""``trainlab submit``: run a ``trainlab run|sweep`` command as a Ray job on a cluster's head node.

The request is validated here first (method, config file, ``--set`` values), so a typo fails on the
user's machine in a second, not on the cluster. Then the working directory is packaged as the job's
``runtime_env`` (Ray uploads it, honouring ``.gitignore``/``.rayignore`` plus the excludes below), the
entrypoint ``python -m pipelines.cli run|sweep ...`` is submitted through the dashboard's job API, its
logs are streamed, and the job id and final status are returned.

Only the non-secret trainlab/MLflow settings travel with the job (``FORWARDED_ENV``). Credentials do
not: a job's ``runtime_env`` is readable by anyone who can read the dashboard, so tracking-server and
cloud credentials belong in the cluster nodes' environment (``cluster.yaml``), and a ``--env`` that
carries one is refused.
"""
from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from pipelines.tracking import SECRET_ENV, redact

# Settings that say where results go; forwarded from the submitting shell when set.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TRAINLAB_STORAGE", "TRAINLAB_DATA_PROGRESS",
                 "TRAINLAB_MLFLOW_PENDING")
# Never uploaded with the working directory (environments, local stores, run outputs).
EXCLUDES = [".venv", "venv", ".git", "__pycache__", "*.pyc", "trainlab_runs", "mlruns", "mlartifacts", "mlflow.db",
            "bench/results", ".pytest_cache", ".hypothesis"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(ValueError):
    """The submission request is invalid or the cluster cannot be reached; nothing was submitted."""


@dataclass
class SubmitResult:
    job_id: str
    status: str  # SUCCEEDED | FAILED | STOPPED, or the last seen status with wait=False
    address: str


def check_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise SubmitError("--address: missing; give the Ray dashboard URL, e.g. http://127.0.0.1:8265 "
                          "(`ray dashboard cluster.yaml` tunnels a cluster's dashboard there), or set "
                          "RAY_API_SERVER_ADDRESS")
    u = urlsplit(address)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SubmitError(f"--address: {address!r} is not a dashboard URL; allowed: http(s)://HOST:PORT, "
                          "e.g. http://127.0.0.1:8265 (ray:// client addresses are not used for jobs)")
    if u.password or u.username:
        raise SubmitError("--address: credentials in the URL would be logged; use Ray's token auth "
                          "(RAY_AUTH_TOKEN / ~/.ray/auth_token) instead")
    return address.rstrip("/")


def job_env(extra: list[str] | None = None) -> dict[str, str]:
    """The job's environment variables: the forwarded settings plus ``--env KEY=VALUE``, never a secret."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise SubmitError(f"--env: {item!r} is not KEY=VALUE")
        if key in SECRET_ENV or any(w in key.upper() for w in ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL")):
            raise SubmitError(f"--env: {key} looks like a credential; a job's runtime_env is readable from the "
                              "dashboard, so set it in the cluster nodes' environment (cluster.yaml) instead")
        env[key] = value
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if urlsplit(uri).password:
        raise SubmitError("MLFLOW_TRACKING_URI: has a password in it; use MLFLOW_TRACKING_USERNAME/"
                          "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) on the cluster's nodes")
    return env


def _use_token_auth_if_available() -> None:
    """Ray's clients send the cluster token only in token mode; turn it on when a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), unless the user chose a mode."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
            or (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    _use_token_auth_if_available()
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - ConnectionError, or RuntimeError for a refused token
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ("the dashboard wants Ray's auth token: set RAY_AUTH_TOKEN (from `ray get-auth-token` on the head)"
                if "uthenticat" in msg else
                "is the head up and the dashboard reachable? For a cluster, `ray dashboard cluster.yaml` "
                "tunnels it to http://127.0.0.1:8265")
        raise SubmitError(f"--address: cannot use the Ray job API at {address} ({redact(msg)}); {hint}") from None


AGENT_WAIT_S = 60.0  # how long a submission waits for the head's job agent to become available


def entrypoint(args: list[str]) -> str:
    return shlex.join(["python", "-m", "pipelines.cli", *args])


def submit(address: str, args: list[str], working_dir: str, env: dict[str, str], *, wait: bool = True,
           echo: Callable[[str], None] = print, poll_s: float = 1.0, timeout_s: float | None = None) -> SubmitResult:
    """Submit ``trainlab <args>`` as a job; with ``wait``, stream its logs until it ends."""
    c = client(address)
    runtime_env = {"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES, "env_vars": env}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = c.submit_job(entrypoint=entrypoint(args), runtime_env=runtime_env,
                                  metadata={"trainlab": " ".join(args[:2])})
            break
        except Exception as e:  # noqa: BLE001 - e.g. the working dir is over Ray's upload limit
            # The head answers 500 "No available agent to submit job, please try again later" while its
            # dashboard agent (re)registers, e.g. just after a node starts or when the agent is busy: transient.
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise SubmitError(f"submission to {address} refused: {redact(str(e))}") from None
    echo(f"submitted job {job_id} to {address}")
    if not wait:
        return SubmitResult(job_id, str(c.get_job_status(job_id)).split(".")[-1], address)
    shown, t0 = 0, time.monotonic()
    while True:
        status = str(c.get_job_status(job_id)).split(".")[-1]
        logs = c.get_job_logs(job_id)
        if len(logs) > shown:
            echo(redact(logs[shown:].rstrip("\n")))
            shown = len(logs)
        if status in TERMINAL:
            return SubmitResult(job_id, status, address)
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            return SubmitResult(job_id, status, address)
        time.sleep(poll_s)

"""MLflow logging that never loses a value and never stops training.

A tracking server can blip in the middle of a long run. :class:`RunLogger` sends each call with a
short timeout and a few retries; when the server stays unreachable it *parks* the call in a
local journal (``<pending_dir>/<run_id>/journal.jsonl``; artifacts are copied next to it) and
training goes on. ``trainlab sync-mlflow <pending_dir>`` (:func:`replay`) sends the parked calls
once the server is back, in their original order, and removes what it delivered.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# MLflow's own HTTP retries default to 7 with exponential backoff (minutes per call); a worker
# waiting that long blocks training. These bound one call to seconds; the journal does the rest.
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class RunLogger:
    def __init__(self, uri: str, run_id: str, pending_dir: str | Path, retries: int = 3, backoff_s: float = 0.5):
        from mlflow.tracking import MlflowClient

        for k, v in _HTTP_ENV.items():
            os.environ.setdefault(k, v)
        self.uri, self.run_id, self.retries, self.backoff_s = uri, run_id, retries, backoff_s
        self.client = MlflowClient(uri)
        self.dir = Path(pending_dir) / run_id
        self.parked = 0

    # -- the calls a training loop makes -----------------------------------------------------
    def log_metrics(self, rows: list[tuple[str, float, int, int]]) -> None:
        """rows of (key, value, timestamp ms, step); sent in batches of 1000 (MLflow's limit)."""
        for i in range(0, len(rows), 1000):
            self._call("log_batch", {"metrics": rows[i:i + 1000]})

    def set_tag(self, key: str, value: str) -> None:
        self._call("set_tag", {"key": key, "value": str(value)})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", {"local_path": str(path), "artifact_path": artifact_path})

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", {"local_dir": str(local_dir), "artifact_path": artifact_path})

    # -- machinery ------------------------------------------------------------------------------
    def _call(self, op: str, kw: dict[str, Any]) -> None:
        for attempt in range(self.retries):
            try:
                _send(self.client, self.run_id, op, kw)
                return
            except Exception as e:  # noqa: BLE001 - any transport/server error: retry, then park
                err = e
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff_s * 2 ** attempt)
        self._park(op, kw, err)

    def _park(self, op: str, kw: dict[str, Any], err: Exception) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        kw = dict(kw)
        for key in ("local_path", "local_dir"):  # the file may be a temporary: keep a copy
            if key in kw:
                src = Path(kw[key])
                dst = self.dir / "files" / uuid.uuid4().hex / src.name
                dst.parent.mkdir(parents=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
                kw[key] = str(dst)
        with open(self.dir / "journal.jsonl", "a") as f:
            f.write(json.dumps({"uri": self.uri, "run_id": self.run_id, "op": op, "kw": kw}) + "\n")
        if self.parked == 0:
            log.warning("MLflow at %s unreachable (%s: %s); training continues and calls are kept in %s — "
                        "run `trainlab sync-mlflow %s` when the server is back", self.uri, type(err).__name__,
                        str(err)[:200], self.dir / "journal.jsonl", self.dir.parent)
        self.parked += 1


def _send(client, run_id: str, op: str, kw: dict[str, Any]) -> None:
    if op == "log_batch":
        from mlflow.entities import Metric

        client.log_batch(run_id, metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in kw["metrics"]])
    elif op == "set_tag":
        client.set_tag(run_id, kw["key"], kw["value"])
    elif op == "set_terminated":
        client.set_terminated(run_id, status=kw["status"])
    elif op == "log_artifact":
        client.log_artifact(run_id, kw["local_path"], kw.get("artifact_path"))
    elif op == "log_artifacts":
        client.log_artifacts(run_id, kw["local_dir"], kw.get("artifact_path"))
    else:
        raise ValueError(f"unknown journal op {op!r}")


def park_call(uri: str, run_id: str, pending_dir: str | Path, op: str, kw: dict[str, Any]) -> None:
    """Park one call directly (the driver uses it when closing a run fails)."""
    RunLogger(uri, run_id, pending_dir, retries=0)._park(op, kw, RuntimeError("unreachable"))


def replay(pending_dir: str | Path, uri: str | None = None) -> tuple[int, int]:
    """Send every parked call under ``pending_dir`` (optionally to another ``uri``), in order.
    Returns (sent, still parked). A journal is removed once all its calls went through."""
    from mlflow.tracking import MlflowClient

    for k, v in _HTTP_ENV.items():
        os.environ.setdefault(k, v)
    sent = left = 0
    root = Path(pending_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory of parked MLflow calls")
    for journal in sorted(root.glob("*/journal.jsonl")):
        entries = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
        remaining = []
        for i, e in enumerate(entries):
            try:
                _send(MlflowClient(uri or e["uri"]), e["run_id"], e["op"], e["kw"])
                sent += 1
            except Exception as err:  # noqa: BLE001 - keep this and everything after it, in order
                log.warning("sync-mlflow: %s for run %s failed (%s); kept", e["op"], e["run_id"], err)
                remaining = entries[i:]
                break
        if remaining:
            journal.write_text("".join(json.dumps(e) + "\n" for e in remaining))
            left += len(remaining)
        else:
            shutil.rmtree(journal.parent)
    return sent, left

"""Operations, with real processes on the session's real Ray head (``ray start --head`` on loopback):

* ``trainlab submit`` sends a quick run through the head's job API; it logs to a real ``mlflow server``,
  and the run is read back through that server's API;
* a Ray Train worker SIGKILLed mid-run: the run restores from its last checkpoint and completes, its
  counters continue, and continual's masks and ownership are bitwise those of an uninterrupted run;
* a sweep whose driver gets SIGINT: ``trainlab sweep --resume`` runs only the trials that had not ended;
* credentials: never in a URI, a job's runtime env, MLflow params/tags or a log line.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MlflowServer, mlflow_client

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-do-not-log-41"


def _env(ray_session, **kw) -> dict:
    return dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, **kw)


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} at {uri}"
    return c, c.search_runs([exp.experiment_id])


# ------------------------------------------------------------------------------------------ submit

def test_submit_runs_a_job_on_a_real_head_that_logs_to_a_real_mlflow_server(ray_session, ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        env = dict(os.environ, MLFLOW_TRACKING_URI=server.uri, TRAINLAB_STORAGE=str(tmp_path / "runs"),
                   MLFLOW_TRACKING_PASSWORD=SECRET)  # a credential in the submitter's shell: must not travel
        env.pop("RAY_ADDRESS", None)
        r = subprocess.run(["trainlab", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO),
                            "run", "decorrelation", "--quick", "--seed", "5"],
                           capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-4000:]
        job_id = re.search(r"submitted job (\S+) to http://127\.0\.0\.1:\d+", r.stdout).group(1)
        assert f"job {job_id}: SUCCEEDED" in r.stdout
        assert "[decorrelation] epoch 3/3" in r.stdout  # the job's log lines were streamed back
        assert SECRET not in out

        info = JobSubmissionClient(ray_head.dashboard_url).get_job_info(job_id)
        assert str(info.status).endswith("SUCCEEDED")
        assert info.entrypoint == "python -m pipelines.cli run decorrelation --quick --seed 5"
        renv = info.runtime_env
        assert renv["working_dir"].startswith("gcs://")  # the working dir was packaged and uploaded
        assert renv["env_vars"]["MLFLOW_TRACKING_URI"] == server.uri
        assert SECRET not in repr(renv) and "MLFLOW_TRACKING_PASSWORD" not in renv["env_vars"]

        client, runs = _runs(server.uri, "trainlab/decorrelation")  # read back through the server's REST API
        (run,) = runs
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == "5" and run.data.tags["method"] == "decorrelation"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "target_acc")] == [1, 2, 3]
        arts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "config.yaml" in arts  # artifacts went through the server's proxied artifact store
        assert (tmp_path / "mlflow" / "artifacts").is_dir()
        assert SECRET not in repr(run.data.params) + repr(run.data.tags)
    finally:
        server.stop()


def test_submit_refuses_bad_requests_before_anything_is_submitted(ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    before = len(JobSubmissionClient(ray_head.dashboard_url).list_jobs())
    cases = [
        (["run", "decorrelation", "--set", "method.lambda3=-1"], "method.lambda3"),
        (["run", "nosuch"], "unknown method 'nosuch'"),
        (["train", "decorrelation"], "must be `run ...` or `sweep ...`"),
        (["--env", "MLFLOW_TRACKING_TOKEN=x", "run", "decorrelation"], "looks like a credential"),
    ]
    for args, fragment in cases:
        r = subprocess.run(["trainlab", "submit", "--address", ray_head.dashboard_url, *args],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 2 and fragment in r.stderr, (args, r.stderr)
    r = subprocess.run(["trainlab", "submit", "--address", "http://127.0.0.1:9", "run", "decorrelation"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "cannot use the Ray job API at http://127.0.0.1:9" in r.stderr
    assert len(JobSubmissionClient(ray_head.dashboard_url).list_jobs()) == before


# ------------------------------------------------------------------------------------ worker SIGKILL

def _final_state(storage: Path, epoch: int) -> dict:
    for p in sorted(storage.glob("*/checkpoint_*/state.pt")):
        s = torch.load(p, map_location="cpu", weights_only=False)
        if int(s["epoch"]) == epoch:
            return s
    raise AssertionError(f"no checkpoint of epoch {epoch} under {storage}")


def _assert_bitwise_equal(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):  # packed mask bits
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_bitwise_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


def _registered_checkpoints(storage: Path) -> int:
    """Checkpoints Ray Train has registered (its controller's snapshot), not just files on disk: a worker
    killed between writing its checkpoint and the controller registering it restarts from the one before."""
    import json

    n = 0
    for p in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            n += len(json.loads(p.read_text()).get("checkpoint_results", []))
        except (ValueError, OSError):
            pass  # being written
    return n


def _train_workers() -> list[int]:
    from ray.util.state import list_actors

    return [a.pid for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])]


def test_a_sigkilled_worker_restores_from_its_checkpoint_with_bitwise_equal_continual_masks(ray_session, workdir):
    """Two continual runs with one seed: one uninterrupted, one whose Ray Train worker is SIGKILLed
    right after its first task's checkpoint. FailureConfig restarts the worker group, the loop restores
    from that checkpoint, and the result is bitwise the same: masks, ownership and weights."""
    args = ["trainlab", "run", "continual", "--quick", "--seed", "7", "--set", "train.max_failures=1"]
    ref = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=workdir,
                         env=_env(ray_session, TRAINLAB_STORAGE=str(workdir / "ref")))
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    killed_storage = workdir / "killed"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
                            env=_env(ray_session, TRAINLAB_STORAGE=str(killed_storage)))
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        if _registered_checkpoints(killed_storage):
            pids = _train_workers()
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=600)
    assert killed is not None, "the run ended before its worker could be killed:\n" + out[-3000:]
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"restored from checkpoint \S+: continuing after step [12] ", out), out[-3000:]

    c = mlflow_client()
    runs = c.search_runs([c.get_experiment_by_name("trainlab/continual").experiment_id],
                         order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    run = runs[1]
    restored = c.get_metric_history(run.info.run_id, "restored_from_epoch")
    assert len(restored) == 1 and restored[0].value >= 1  # one restart, from a checkpoint of task >= 1
    steps = sorted({m.step for m in c.get_metric_history(run.info.run_id, "avg_acc")})
    assert steps == [1, 2, 3]  # the task counter continued: every task once, none skipped
    assert run.data.metrics["avg_acc"] == runs[0].data.metrics["avg_acc"]

    a, b = _final_state(workdir / "ref", 3), _final_state(killed_storage, 3)
    _assert_bitwise_equal(a["continual"], b["continual"], "continual")  # masks, ownership, per-task state
    _assert_bitwise_equal(a["model"], b["model"], "model")
    assert a["matrix"] == b["matrix"]


# --------------------------------------------------------------------------------------- sweep resume

def test_an_interrupted_sweep_resumes_only_its_unfinished_trials(ray_session, workdir):
    args = ["trainlab", "sweep", "decorrelation", "--quick", "--num-samples", "3", "--max-concurrent", "1",
            "--scheduler", "fifo", "--set", "train.epochs=1"]
    env = _env(ray_session)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir, env=env)
    c = mlflow_client()

    def children():
        exp = c.get_experiment_by_name("trainlab/decorrelation")
        if exp is None:
            return []
        return [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("kind") != "sweep"]

    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if len(children()) >= 2:  # the 2nd trial has started, so Tune has seen the 1st end (max_concurrent 1)
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    hint = re.search(r"Finish it with: (trainlab sweep decorrelation --resume \S+)", out)
    assert hint, out[-3000:]
    from ray.tune import ExperimentAnalysis

    sweep_dir = hint.group(1).split()[-1]
    ended = {t.trial_id for t in ExperimentAnalysis(sweep_dir).trials if t.status == "TERMINATED"}
    assert 1 <= len(ended) < 3  # Tune's view: what had ended when the driver stopped (its MLflow run may lead it)
    done_before = {r.data.tags["trial_id"]: r.info.run_id for r in children() if r.data.tags["trial_id"] in ended}
    assert set(done_before) == ended and all(c.get_run(r).info.status == "FINISHED" for r in done_before.values())
    (parent,) = [r for r in c.search_runs([c.get_experiment_by_name("trainlab/decorrelation").experiment_id])
                 if r.data.tags.get("kind") == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["resume_with"] == hint.group(1)

    r = subprocess.run(hint.group(1).split(), capture_output=True, text=True, timeout=600, cwd=workdir, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "3 trials" in r.stdout

    final = children()
    live = [x for x in final if x.data.tags.get("superseded_by_resume") != "true"]
    by_trial: dict[str, list] = {}
    for x in live:
        by_trial.setdefault(x.data.tags["trial_id"], []).append(x)
    assert len(by_trial) == 3 and all(len(v) == 1 for v in by_trial.values())  # each trial once
    assert all(x.info.status == "FINISHED" for x in live)
    for tid, rid in done_before.items():  # trials that had ended were not run again
        assert by_trial[tid][0].info.run_id == rid
    parent = c.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["resumed"] == "1"
    assert parent.data.metrics["num_trials"] == 3 and "best_target_val_acc" in parent.data.metrics


def test_resume_of_something_that_is_not_a_sweep_is_one_clear_error(workdir):
    r = subprocess.run(["trainlab", "sweep", "decorrelation", "--resume", str(workdir)], capture_output=True,
                       text=True, timeout=120, cwd=workdir)
    assert r.returncode == 2 and "is not a trainlab sweep directory" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ secrets

def test_credentials_never_reach_a_uri_a_message_or_the_job_env(monkeypatch):
    from pipelines.submit import SubmitError, job_env
    from pipelines.tracking import TrackingError, check_tracking, redact

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    assert redact(f"http://bob:{SECRET}@host:5000 said {SECRET}") == "http://***@host:5000 said ***"
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_USERNAME") as e:
        check_tracking(f"http://bob:{SECRET}@127.0.0.1:5000")
    assert SECRET not in str(e.value)
    for k in ("MLFLOW_EXPERIMENT_NAME", "TRAINLAB_STORAGE", "TRAINLAB_DATA_PROGRESS", "TRAINLAB_MLFLOW_PENDING"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert job_env(["FOO=1"]) == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "FOO": "1"}
    for bad in ("AWS_SECRET_ACCESS_KEY=x", "MY_API_TOKEN=y", "DB_PASSWORD=z"):
        with pytest.raises(SubmitError, match="looks like a credential"):
            job_env([bad])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://u:{SECRET}@mlflow.example")
    with pytest.raises(SubmitError, match="MLFLOW_TRACKING_PASSWORD") as e:
        job_env([])
    assert SECRET not in str(e.value)

"""A real ``mlflow server`` on loopback goes down mid-run: logging parks the calls in a local
journal instead of failing, and ``trainlab sync-mlflow`` delivers them once the server is back."""
from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from conftest import MlflowServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server for the module (each start costs seconds); tests stop and restart it, and leave it up."""
    s = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield s
    s.stop()


def test_calls_made_while_the_server_is_down_are_parked_and_synced_later(server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.cli import app
    from trainers.common.run_logger import RunLogger

    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    pending = tmp_path / "pending"
    rl = RunLogger(server.uri, run_id, pending, retries=2, backoff_s=0.1)
    rl.log_metrics([("loss", 1.0, 0, 1)])                       # server up: delivered
    assert not pending.exists()

    server.stop()
    t = time.time()
    rl.log_metrics([("loss", 0.5, 0, 2), ("loss", 0.25, 0, 3)])  # server down: parked, quickly
    rl.set_tag("stage", "during-outage")
    art = tmp_path / "plot.txt"
    art.write_text("curve")
    rl.log_artifact(art, "plots")
    art.unlink()                                                # the temp file is gone; the journal kept a copy
    assert time.time() - t < 60 and rl.parked == 3
    assert (pending / run_id / "journal.jsonl").read_text().count("\n") == 3

    server.start()
    res = CliRunner().invoke(app, ["sync-mlflow", str(pending)])
    assert res.exit_code == 0 and "sent 3" in res.output, res.output
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert hist == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert client.get_run(run_id).data.tags["stage"] == "during-outage"
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/plot.txt"]
    assert not (pending / run_id).exists()                      # delivered journals are removed


def test_sync_keeps_what_it_cannot_deliver(tmp_path):
    from trainers.common.run_logger import RunLogger, replay

    down = f"http://127.0.0.1:{free_port()}"                   # nothing listens there
    rl = RunLogger(down, "r1", tmp_path, retries=1)
    rl.set_tag("a", "1")
    rl.set_tag("b", "2")
    assert replay(tmp_path) == (0, 2)
    assert (tmp_path / "r1" / "journal.jsonl").read_text().count("\n") == 2


@pytest.mark.e2e
def test_a_tracking_server_down_at_start_is_one_clear_error_before_any_worker(server, ray_session, tmp_path,
                                                                                monkeypatch):
    """The real server is stopped before `trainlab run`: exit 2 within seconds naming MLFLOW_TRACKING_URI,
    no Ray Train run started (nothing under the storage root), and once the server is back the same command
    finds no half-made run in it."""
    from mlflow.tracking import MlflowClient

    from pipelines.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("TRAINLAB_STORAGE", str(tmp_path / "runs"))
    server.stop()
    t = time.time()
    res = CliRunner().invoke(app, ["run", "decorrelation", "--quick"])
    assert res.exit_code == 2, res.output
    assert "MLFLOW_TRACKING_URI" in res.output and "unreachable" in res.output, res.output
    assert time.time() - t < 30
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    server.start()
    assert MlflowClient(server.uri).get_experiment_by_name("trainlab/decorrelation") is None

"""End to end through the real CLI, real local Ray (the session's instance) and a real MLflow
sqlite store: a quick run read back from MLflow, a nested sweep, and bad input failing fast."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

from conftest import mlflow_artifacts, mlflow_client, mlflow_runs

pytestmark = pytest.mark.e2e


def _client():
    return mlflow_client()


def _runs(experiment="trainlab/decorrelation"):
    return mlflow_runs(experiment)


_artifacts = mlflow_artifacts


def test_console_script_is_installed_and_helps():
    for args in (["--help"], ["methods"], ["run", "--help"], ["sweep", "--help"], ["demo", "--help"]):
        r = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["trainlab", "methods"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "decorrelation" in r.stdout and "JP7566705B2" in r.stdout


def test_quick_run_logs_everything_to_mlflow(ray_session, workdir):
    """`trainlab run decorrelation --quick`, as a separate process on the session's Ray cluster, with the user's run
    metadata and `--json`: stdout is one JSON object and nothing else; $MLFLOW_EXPERIMENT_NAME wins over the config."""
    import json

    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address,
               MLFLOW_EXPERIMENT_NAME="team/e2e-quick")
    r = subprocess.run(["trainlab", "run", "decorrelation", "--quick", "--seed", "3", "--json",
                        "--run-name", "quick-e2e.1", "--tag", "team=vision", "--tag", "ticket=ML-7",
                        "--description", "the e2e quick run", "--set", "tracking.experiment=not-this-one",
                        "--set", "tracking.system_metrics_interval_s=1", "--register", "e2e-quick-model"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=workdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)  # the whole of stdout: one object
    assert r.stdout.count("\n") == 1 and "[decorrelation] epoch 3/3" in r.stderr
    assert out["run_name"] == "quick-e2e.1" and out["experiment"] == "team/e2e-quick"
    assert 0.0 <= out["metrics"]["target_acc"] <= 1.0 and out["checkpoint"]
    assert _client().get_experiment_by_name("not-this-one") is None
    (run,) = _runs("team/e2e-quick")
    assert run.info.run_id == out["run_id"] and run.info.run_name == "quick-e2e.1"
    # --register: a new version of the registered model, linked to the run, tagged with its metric
    assert out["registered"]["name"] == "e2e-quick-model" and out["registered"]["version"] == 1
    version = _client().get_model_version("e2e-quick-model", "1")
    assert version.run_id == run.info.run_id and float(version.tags["target_val_acc"]) == pytest.approx(
        out["metrics"]["target_val_acc"])
    assert run.data.tags["registered_model"] == "e2e-quick-model:1"
    assert run.data.tags["team"] == "vision" and run.data.tags["ticket"] == "ML-7"
    assert run.data.tags["mlflow.note.content"] == "the e2e quick run"
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    # system metrics (MLflow's monitor on the worker): the System metrics tab is not empty
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
    # dataset lineage: one dataset per split, in its context, with its rows and schema
    inputs = {i.dataset.name.rsplit("/", 1)[1]: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"source_train", "source_val", "target_train", "target_val", "target_test"}
    context = {k: {t.key: t.value for t in i.tags}["mlflow.data.context"] for k, i in inputs.items()}
    assert context == {"source_train": "training", "target_train": "training", "source_val": "validation",
                       "target_val": "validation", "target_test": "test"}
    assert all(json.loads(i.dataset.profile)["num_rows"] > 0 for i in inputs.values())
    assert "x" in inputs["source_train"].dataset.schema and inputs["source_train"].dataset.digest
    # the terminal summary a person gets without --json, rendered from the same result
    from rich.console import Console

    from pipelines import cli
    from pipelines.run import RunResult
    from trainers import get_method

    res = RunResult(out["method"], out["run_name"], out["run_id"], out["experiment"], out["tracking_uri"],
                    out["metrics"], out["checkpoint"], out["storage_path"])
    console, cli.console = cli.console, Console(record=True, width=200)
    try:
        cli._run_summary(res, get_method("decorrelation"))
        shown = cli.console.export_text()
    finally:
        cli.console = console
    assert "MLflow run id" in shown and out["run_id"] in shown and "target_acc" in shown
    assert run.info.status == "FINISHED"
    assert run.data.params["method.variant"] == "A" and run.data.params["seed"] == "3"
    assert run.data.tags["method"] == "decorrelation" and run.data.tags["variant"] == "A"
    assert "digits" in run.data.tags["dataset"] and run.data.tags["git_sha"]
    for k in ("train_loss", "task_loss", "corr_loss_labelled", "corr_loss_unlabelled", "source_acc",
              "target_acc", "mean_abs_corr_target"):
        assert k in run.data.metrics, k
    assert 0.0 <= run.data.metrics["target_acc"] <= 1.0
    assert run.data.metrics["source_acc"] > 0.3  # 3 quick epochs learn the digits well above chance (0.1)
    history = _client().get_metric_history(run.info.run_id, "target_acc")
    assert [m.step for m in history] == [1, 2, 3]
    arts = _artifacts(run.info.run_id)
    for a in ("config.yaml", "plots/loss_curves.png", "plots/target_feature_correlation.png"):
        assert a in arts, arts
    # the trained model is an MLflow model that loads and predicts
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert any(m.source_run_id == run.info.run_id for m in models)
    model = mlflow.pytorch.load_model(f"models:/{models[0].model_id}")
    import torch

    out = model(torch.zeros(3, 1, 16, 16))
    assert out.shape == (3, 10) and np.isfinite(out.detach().numpy()).all()


def test_sweep_creates_parent_and_nested_child_runs(ray_session, workdir):
    res = CliRunner().invoke(app, ["sweep", "decorrelation", "--quick", "--num-samples", "3",
                                   "--max-concurrent", "2", "--scheduler", "asha", "--set", "train.epochs=2",
                                   "--register", "e2e-sweep-best", "--json", "--run-name", "e2e-sweep",
                                   "--tag", "team=vision", "--description", "a tiny sweep"])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.stdout)  # --json: one object, nothing else on stdout
    assert out["num_trials"] == 3 and out["registered"]["name"] == "e2e-sweep-best"
    runs = _runs()
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "e2e-sweep" and parent.data.tags["mlflow.note.content"] == "a tiny sweep"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert len({c.info.run_name for c in children}) == 3          # unique run names
    assert all(c.info.status == "FINISHED" for c in children), [  # ASHA-stopped trials are closed too
        (c.info.status, c.data.tags.get("tune_early_stopped"), c.data.tags.get("error")) for c in children]
    assert all(c.data.tags.get("sweep") == parent.data.tags["sweep"] for c in children)
    assert all(r.data.tags.get("team") == "vision" for r in [parent, *children])  # --tag on every run
    # every trial trained on the same data: MLflow shows the same datasets (digests) on every child
    digests = {tuple(sorted((i.dataset.name, i.dataset.digest) for i in c.inputs.dataset_inputs)) for c in children}
    assert len(digests) == 1 and len(next(iter(digests))) == 5
    best = max(c.data.metrics["target_val_acc"] for c in children)
    assert parent.data.metrics["best_target_val_acc"] == pytest.approx(best)
    # --register: the best trial that logged a model (ASHA-stopped trials log none), alias champion
    champion = _client().get_model_version_by_alias("e2e-sweep-best", "champion")
    ran = [c for c in children if c.data.tags.get("tune_early_stopped") != "true"]
    assert champion.run_id == max(ran, key=lambda c: c.data.metrics["target_val_acc"]).info.run_id
    assert parent.info.status == "FINISHED"
    assert "best_config.yaml" in _artifacts(parent.info.run_id)
    full = [c for c in children if c.data.tags.get("tune_early_stopped") != "true"]
    assert full and all("plots/loss_curves.png" in _artifacts(c.info.run_id) for c in full)
    assert any(k.startswith("best.") for k in parent.data.params)


@pytest.mark.parametrize("reports,grace,milestones", [(2, None, [1]), (3, None, [1, 2]), (4, 1, [1, 2]),
                                                      (12, None, [4, 8]), (9, 2, [2, 4, 8]), (6, 5, [5])])
def test_asha_never_stops_a_trial_at_its_last_report(reports, grace, milestones):
    """A trial ASHA stops at its last report is killed before its plots and model are logged, so every ASHA
    milestone lies before it, and reaching max_t is not a stop. The old max_t = epochs + 1 put a milestone
    on epoch 2 of a 2-epoch sweep: a finished-looking child run without plots."""
    from ray.tune.schedulers import TrialScheduler

    from tuning.sweep import make_scheduler

    sched = make_scheduler("asha", reports, grace)
    (bracket,) = sched._brackets          # Ray's AsyncHyperBand keeps its rungs as (milestone, recorded)
    assert sorted(m for m, _ in bracket._rungs) == milestones
    assert max(milestones) < reports

    class T:  # the scheduler only reads trial_id
        def __init__(self, i):
            self.trial_id = f"t{i}"

    sched.set_search_properties("acc", "max")
    # trials that are worse at every step than all before them: only a milestone may stop them
    stopped = 0
    for i in range(6):
        trial = T(i)
        sched.on_trial_add(None, trial)
        for it in range(1, reports + 1):
            action = sched.on_trial_result(None, trial, {"training_iteration": it, "acc": 1.0 - i / 10})
            if it == reports:
                assert action == TrialScheduler.CONTINUE
            if action == TrialScheduler.STOP:
                assert it in milestones
                stopped += 1
                break
    assert stopped >= 3   # ASHA does stop the worse trials, at milestones


@pytest.mark.parametrize("args,fragment", [
    (["run", "decorrelation", "--num-workers", "16"], "num_workers: 16 worker(s)"),
    (["run", "decorrelation", "--num-workers", "64"], "a multiple of 64"),
    (["run", "decorrelation", "--gpu"], "--gpu: the Ray cluster has no GPU"),
    (["run", "nosuch"], "unknown method 'nosuch'"),
    (["run", "decorrelation", "--set", "method.variant=Z"], "method.variant"),
    (["run", "decorrelation", "--set", "method.layers_unlabelled=[conv9]"], "no layer named 'conv9'"),
    (["run", "decorrelation", "--set", "train.batch_size=4096"], "larger than the source_train split"),
    (["run", "decorrelation", "--set", "data.source=/nonexistent/data.parquet"], "does not exist"),
    (["sweep", "decorrelation", "--max-concurrent", "8", "--num-workers", "2"], "concurrent trial"),
    (["sweep", "decorrelation", "--scheduler", "pbt"], "--scheduler"),
    (["sweep", "decorrelation", "--grace-period", "50"], "--grace-period: 50; allowed: 1..11"),
    (["sweep", "decorrelation", "--grace-period", "12"], "--grace-period: 12; allowed: 1..11"),
    (["sweep", "decorrelation", "--set", "train.epochs=1"], "--scheduler asha: a trial reports 1 result(s)"),
    (["sweep", "decorrelation", "--num-samples", "0"], "--num-samples: 0 out of range; allowed: 1..10000"),
    (["sweep", "decorrelation", "--search", "bayes"], "--search: 'bayes'; allowed: random, optuna"),
    (["sweep", "decorrelation", "--space", "nospace.yaml"], "--space nospace.yaml: file not found"),
    (["run", "decorrelation", "--seed", "-1"], "seed"),
    (["run", "decorrelation", "--cpus-per-worker", "0"], "scaling.cpus_per_worker"),
    (["run", "decorrelation", "--cpus-per-worker", "64"], "CPU"),
    (["run", "decorrelation", "--set", "scaling.data_cpus=100"], "CPU"),
    (["run", "decorrelation", "--set", "train.lr=0"], "train.lr: Input should be greater than 0"),
    (["run", "decorrelation", "--set", "train.epochs=0"], "train.epochs"),
    (["run", "decorrelation", "--set", "nosuch.key=1"], "nosuch: unknown key"),
    (["run", "decorrelation", "--set", "train.lr=[1"], "--set train.lr: value '[1' is not valid YAML"),
    (["run", "decorrelation", "--set", "train.lr"], "expected key=value"),
    (["run", "decorrelation", "--config", "missing.yaml"], "--config missing.yaml: file not found"),
    (["run", "decorrelation", "--set", "data.source=garbage.parquet"], "garbage.parquet"),
    (["run", "mixture_sparsity", "--set", "method.weights=[0.5, 0.6]"], "method.weights: [0.5, 0.6] must be >= 0 and sum to 1"),
    (["run", "mixture_sparsity", "--set", "method.stds=[0.5, 0]"], "method.stds"),
    (["run", "mixture_sparsity", "--set", "method.groups=[fc9:rows]"], "unknown layer 'fc9'"),
    (["run", "mixture_sparsity", "--set", "method.budget=1.5"], "method.budget"),
    (["run", "mixture_sparsity", "--set", "method.budget=0.5", "--set", "method.regularizer=none"],
     "method.budget_search: calibrate needs a regulariser"),
    (["run", "mixture_sparsity", "--set", "model.name=cnn", "--set", "method.groups=[conv0:rows]"], "image_hw"),
    (["run", "ssd2gan", "--set", "method.alpha=1.5"], "method.alpha"),
    (["run", "ssd2gan", "--set", "method.lambda_c=-1"], "method.lambda_c"),
    (["run", "ssd2gan", "--set", "method.transform=wavelet"], "method.transform"),
    (["run", "ssd2gan", "--set", "method.dft_mode=magnitude"], "method.dft_mode"),
    (["run", "ssd2gan", "--set", "data.source=noimages"], "noimages"),
    (["run", "ssd2gan", "--num-workers", "3"], "a multiple of 3"),
])
def test_bad_input_fails_fast_with_one_clear_message(ray_session, workdir, args, fragment):
    (workdir / "garbage.parquet").write_bytes(b"this is not parquet")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert fragment in res.output, res.output
    assert "Traceback" not in res.output
    # nothing was started: no MLflow run was created in any experiment
    c = _client()
    assert not c.search_runs([e.experiment_id for e in c.search_experiments()])


@pytest.mark.parametrize("sets,stop_reason,recommends,epochs", [
    (["method.completion_threshold=5.0"], "completion_threshold", False, 1),      # L2≈2.3, L3<1 at epoch 1
    (["method.completion_threshold=1e-6", "method.plateau_patience=1"], "max_epochs", True, 2),
])
def test_completion_threshold_and_recommendations(ray_session, workdir, sets, stop_reason, recommends, epochs):
    """S108: stop when the losses reach the threshold; otherwise recommend more data / new parameters."""
    from pipelines.run import load_config, train

    cfg = load_config("decorrelation", quick=True, sets=sets + ["train.epochs=2", "tracking.log_model=false",
                                                                "scaling.num_workers=0"])  # local mode
    res = train("decorrelation", cfg)
    run = _client().get_run(res.run_id)
    assert run.data.tags["stop_reason"] == stop_reason
    assert ("recommend increasing the amount of training data" in run.data.tags.get("recommendation", "")) == recommends
    assert len(_client().get_metric_history(res.run_id, "train_loss")) == epochs


def test_user_stop_file_ends_the_run_after_the_current_epoch(ray_session, workdir):
    """The patent's end button: ``touch <storage>/<run name>/STOP``."""
    from pipelines.run import load_config, storage_root, train

    cfg = load_config("decorrelation", quick=True, sets=["train.epochs=3", "tracking.log_model=false",
                                                         "scaling.num_workers=0"])  # local mode
    stop = workdir / "runs" / "stopped-run" / "STOP"
    stop.parent.mkdir(parents=True)
    stop.touch()
    assert storage_root() == str(workdir / "runs")
    res = train("decorrelation", cfg, run_name="stopped-run")
    run = _client().get_run(res.run_id)
    assert run.data.tags["stop_reason"] == "user_stop" and run.info.status == "FINISHED"
    assert [m.step for m in _client().get_metric_history(res.run_id, "train_loss")] == [1]


def test_a_second_local_ray_instance_is_refused_with_how_to_share(ray_session, workdir):
    """With the session's Ray running and no RAY_ADDRESS, a second trainlab process must not start its own
    instance (two break Ray Train V2): one clear line, exit 2, in seconds, and no MLflow run."""
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    r = subprocess.run(["trainlab", "run", "decorrelation", "--quick"], capture_output=True, text=True, timeout=120,
                       env=env, cwd=workdir)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "a local Ray instance is already running" in r.stderr and "RAY_ADDRESS=auto" in r.stderr, r.stderr
    assert time.perf_counter() - t0 < 60
    assert not (workdir / "mlflow.db").exists() or not _client().search_experiments(filter_string="name LIKE 'trainlab/%'")


@pytest.mark.parametrize("token_env,fragment", [
    ({"RAY_AUTH_TOKEN_PATH": "/nonexistent/auth_token"}, "ray get-auth-token --generate"),
    ({"RAY_AUTH_TOKEN": "0" * 64}, "refused this process's auth token"),
])
def test_a_missing_or_wrong_ray_token_is_one_line_saying_what_to_do(ray_session, workdir, token_env, fragment):
    """The session's head runs with token auth: a driver without its token gets one line (exit 2), no traceback,
    and no MLflow run. HOME is an empty dir, so no ~/.ray/auth_token can stand in for the missing one."""
    home = workdir / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    env.update(token_env, HOME=str(home), RAY_ADDRESS=ray_session.get_runtime_context().gcs_address,
               RAY_AUTH_MODE="token")
    t = time.monotonic()
    r = subprocess.run(["trainlab", "run", "decorrelation", "--quick"], capture_output=True, text=True, timeout=120,
                       env=env, cwd=workdir)
    took = time.monotonic() - t
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and fragment in err[0], r.stderr[-3000:]
    if "RAY_AUTH_TOKEN" in token_env:  # said by the handshake before ray.init (which retries ~20 s), not after it
        assert err[0].startswith("error: RAY_AUTH_TOKEN: the cluster at") and took < 15, (took, err[0])
    assert "Traceback" not in r.stderr and not list(home.iterdir())
    assert not _client().search_experiments(filter_string="name LIKE 'trainlab/%'")

"""``trainlab``: the command line. Every command has ``--help``; every bad input is one clear line."""
from __future__ import annotations

from pathlib import Path

import contextlib
import logging
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train patent-derived methods on Ray Train / Tune / Data, tracked in MLflow.",
                  epilog="Exit codes: 0 done; 1 training failed (the MLflow run is marked FAILED); 2 bad input "
                         "(one line naming the field, file or flag, before any worker starts); 130 interrupted "
                         "(a sweep prints how to --resume it).")
console = Console()
err_console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    from pipelines.tracking import redact

    msg = redact(msg)
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _user_errors():
    from pipelines.cluster import ClusterAuthError, ResourceError
    from pipelines.data import DataValidationError
    from pipelines.tracking import TrackingError
    from trainers import UnknownMethodError
    from trainers.common.config import ConfigError

    return (ClusterAuthError, ConfigError, DataValidationError, ResourceError, TrackingError, UnknownMethodError, ValueError)


@contextlib.contextmanager
def _reported_errors():
    """Bad input -> one line, exit 2; a failure inside Ray -> its message, exit 1 (no locals dump)."""
    try:
        yield
    except _user_errors() as e:
        _fail(str(e))
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001
        _fail(f"training failed ({type(e).__name__}); the MLflow run is marked FAILED:\n{e}", code=1)


def _overrides(num_workers: Optional[int], gpu: bool, seed: Optional[int], cpus_per_worker: Optional[float]) -> dict:
    o: dict = {}
    if num_workers is not None:
        o.setdefault("scaling", {})["num_workers"] = num_workers
    if gpu:
        o.setdefault("scaling", {})["use_gpu"] = True
    if cpus_per_worker is not None:
        o.setdefault("scaling", {})["cpus_per_worker"] = cpus_per_worker
    if seed is not None:
        o["seed"] = seed
    return o


@contextlib.contextmanager
def _stdout_for_json(enabled: bool):
    """With ``--json``: while the command works, everything written to file descriptor 1 (progress lines, Ray's and
    its workers' logs, which Ray copies to the driver's stdout) goes to stderr, so stdout carries only the one JSON
    object printed at the end (``emit``)."""
    if not enabled:
        yield None
        return
    import json

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    out: dict = {}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Python-level writes too (where sys.stdout is not fd 1)
            yield out
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if out:
        sys.stdout.write(json.dumps(out, default=str) + "\n")
        sys.stdout.flush()


def _result_json(res) -> dict:
    """The machine-readable summary of a run (``--json``)."""
    return {"method": res.method, "run_id": res.run_id, "run_name": res.run_name, "experiment": res.experiment,
            "tracking_uri": res.tracking_uri, "metrics": {k: v for k, v in res.metrics.items()
                                                          if isinstance(v, (int, float, str))},
            "checkpoint": res.checkpoint, "storage_path": res.storage_path}


@app.command("methods")
def methods_cmd(as_json: bool = typer.Option(False, "--json", help="print one JSON object and nothing else")) -> None:
    """List the registered methods, one line each."""
    from trainers import method_summaries

    if as_json:
        import json

        print(json.dumps({"methods": [{"key": k, "patent": p, "summary": line}
                                      for k, (p, line) in method_summaries().items()]}))
        return
    t = Table(title="trainlab methods")
    for c in ("method", "patent", "idea"):
        t.add_column(c)
    for key, (patent, line) in method_summaries().items():
        t.add_row(key, patent, line)
    console.print(t)


def _run_summary(res, spec) -> None:
    t = Table(title=f"trainlab run {res.method} — finished")
    t.add_column("what")
    t.add_column("value", overflow="fold")
    for k in spec.summary_metrics + ("epoch",):
        if k in res.metrics:
            v = res.metrics[k]
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    if "calibration_parent_run_id" in res.metrics:
        t.add_row("calibration parent run", res.metrics["calibration_parent_run_id"])
    t.add_row("MLflow run id", res.run_id)
    t.add_row("MLflow run name", res.run_name)
    t.add_row("experiment", res.experiment)
    t.add_row("tracking URI", res.tracking_uri)
    t.add_row("checkpoint", res.checkpoint or "-")
    tm = getattr(res, "timing", None) or {}
    if tm:  # where the wall time went: the loop vs the rest (MLflow: startup.*)
        t.add_row("time", f"loop {tm['startup.loop_s']:.1f} s + start-up/teardown {tm['startup.overhead_s']:.1f} s "
                          f"(workers {tm['startup.workers_s']:.1f} s, after last report "
                          f"{tm['startup.after_last_report_s']:.1f} s)")
    console.print(t)
    from pipelines.tracking import ui_hint

    console.print(f"look at it: [bold]{ui_hint()}[/]", highlight=False, soft_wrap=True)


@app.command("run")
def run_cmd(
    method: str = typer.Argument(..., help="method key (see `trainlab methods`)"),
    config: Optional[str] = typer.Option(None, "--config", help="YAML file with config sections"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override: dotted.key=value (repeatable)"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Ray Train workers; 0 = local mode (the loop runs in this process: no worker actors, no restarts)"),
    gpu: bool = typer.Option(False, "--gpu", help="one GPU per worker"),
    quick: bool = typer.Option(False, "--quick", help="tiny config, well under a minute on 2 CPU cores"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (0..2^31-1)"),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="CPUs per worker (> 0)"),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved config and exit"),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="the MLflow run's name and its storage folder "
                                           "(default: <method>-<time>-<id>)"),
    tag: Optional[list[str]] = typer.Option(None, "--tag", help="MLflow tag key=value on the run (repeatable)"),
    description: Optional[str] = typer.Option(None, "--description", help="the run's description in the MLflow UI"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (run id, experiment, tracking URI, "
                                 "metrics, checkpoint) and nothing else on stdout; progress goes to stderr"),
    register: Optional[str] = typer.Option(None, "--register", help="register the run's model as a new version "
                                           "of this MLflow registered model (tagged with its metric, linked to the run)"),
    describe: bool = typer.Option(False, "--describe", help="list every config field (type, default, allowed "
                                  "values, description) and exit; with --quick/--config/--set: their values"),
) -> None:
    """Train one method: config -> Ray Datasets -> TorchTrainer -> MLflow run -> summary.

    The MLflow experiment is $MLFLOW_EXPERIMENT_NAME if set, else tracking.experiment, else trainlab/<method>."""
    from pipelines.run import check_run_name, load_config, parse_tags, train
    from trainers import get_method

    with _reported_errors():
        spec = get_method(method)
        cfg = load_config(method, config, set_, quick, _overrides(num_workers, gpu, seed, cpus_per_worker))
        tags = parse_tags(tag)
        if run_name is not None:
            check_run_name(run_name)
        if register is not None:
            from pipelines.tracking import check_registered_name

            check_registered_name(register, cfg.tracking.log_model)
        if describe:
            _describe(spec, cfg, as_json)
            return
        if print_config:
            import yaml

            console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False)
            return
        with _stdout_for_json(as_json) as out:
            if cfg.budget_knob() is not None:  # a pruning budget to calibrate: several trainings, one parent run
                from tuning.budget import calibrate

                res = calibrate(method, cfg, run_name=run_name, tags=tags, description=description)
            else:
                res = train(method, cfg, run_name=run_name, extra_tags=tags, description=description)
            registered = None
            if register is not None:
                from pipelines.tracking import register_run_model

                registered = register_run_model(res.run_id, register, (spec.metric, res.metrics.get(spec.metric)))
            if out is not None:
                out.update(_result_json(res), registered=registered)
    if not as_json:
        _run_summary(res, spec)
        if registered:
            console.print(f"registered: {registered['name']} version {registered['version']} "
                          f"(models:/{registered['name']}/{registered['version']})", highlight=False, soft_wrap=True)


@app.command("sweep")
def sweep_cmd(
    method: str = typer.Argument(..., help="method key (see `trainlab methods`)"),
    num_samples: int = typer.Option(8, "--num-samples", help="trials (1..10000)"),
    scheduler: str = typer.Option("asha", "--scheduler", help="asha (early stopping) | fifo"),
    grace_period: Optional[int] = typer.Option(None, "--grace-period",
                                               help="ASHA: epochs before a trial can be stopped (default epochs/3)"),
    search: str = typer.Option("random", "--search", help="random | optuna (TPE)"),
    max_concurrent: int = typer.Option(1, "--max-concurrent", help="trials at once (>= 1)"),
    space: Optional[str] = typer.Option(None, "--space", help="YAML search space (default: the method's)"),
    config: Optional[str] = typer.Option(None, "--config", help="YAML base config"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="base override dotted.key=value"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Ray Train workers per trial (0 or 1: the trial trains in its own process)"),
    gpu: bool = typer.Option(False, "--gpu", help="one GPU per worker"),
    quick: bool = typer.Option(False, "--quick", help="tiny base config"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed"),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="CPUs per worker (> 0)"),
    best_config: Optional[str] = typer.Option(None, "--best-config",
                                              help="write the best trial's full config here (YAML for run --config)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="finish an interrupted sweep: its directory (or name "
                                                                "under the storage root); its saved settings apply"),
    register: Optional[str] = typer.Option(None, "--register", help="register the best trial's model as a new version "
                                           "of this MLflow registered model and point its alias 'champion' at it"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (parent run id, experiment, best "
                                 "metric and config, trials, registered version) and nothing else on stdout"),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="the sweep's name: its MLflow parent run and "
                                           "its Tune directory (default sweep-<method>-<time>-<id>)"),
    tag: Optional[list[str]] = typer.Option(None, "--tag", help="MLflow tag key=value on the parent and every "
                                            "trial's run (repeatable)"),
    description: Optional[str] = typer.Option(None, "--description", help="the parent run's description"),
) -> None:
    """Sweep a method's hyperparameters with Ray Tune; one MLflow parent run, one child run per trial.

    Ctrl-C stops the sweep cleanly (Tune saves its state) and prints the `--resume` command that runs
    only the trials that had not ended."""
    from pipelines.run import check_run_name, load_config, parse_tags
    from pipelines.tracking import ui_hint, tracking_uri
    from tuning.sweep import SweepInterrupted, resume as resume_sweep, sweep

    try:
        with _reported_errors(), _stdout_for_json(as_json) as out:
            if resume:
                if register is not None:
                    from pipelines.tracking import check_registered_name

                    check_registered_name(register)
                res = resume_sweep(method, resume)
            else:
                cfg = load_config(method, config, set_, quick, _overrides(num_workers, gpu, seed, cpus_per_worker))
                tags = parse_tags(tag)
                if run_name is not None:
                    check_run_name(run_name)
                if register is not None:
                    from pipelines.tracking import check_registered_name

                    check_registered_name(register, cfg.tracking.log_model)
                res = sweep(method, cfg, num_samples=num_samples, scheduler=scheduler, search=search,
                            max_concurrent=max_concurrent, space_file=space, grace_period=grace_period,
                            name=run_name, tags=tags, description=description)
            registered = None
            if register is not None:
                registered = _register_best(res, register)
            if best_config:
                import yaml

                Path(best_config).write_text(yaml.safe_dump(res.best_config, sort_keys=False))
            if out is not None:
                out.update(method=res.method, parent_run_id=res.parent_run_id, experiment=res.experiment,
                           tracking_uri=tracking_uri(), metric=res.metric, mode=res.mode, best_metric=res.best_metric,
                           best_run_id=res.best_run_id, best_config=res.best_config, num_trials=res.num_trials,
                           num_terminated_early=res.num_terminated_early, trials=res.trials, registered=registered)
    except SweepInterrupted as e:
        err_console.print(str(e), highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if as_json:
        return
    t = Table(title=f"trainlab sweep {method} — {res.num_trials} trials ({res.num_terminated_early} stopped early)")
    t.add_column("trial")
    t.add_column(res.metric)
    t.add_column("epochs")
    t.add_column("params", overflow="fold")
    for i, tr in enumerate(sorted(res.trials, key=lambda x: -(x[res.metric] or -1e9) if res.mode == "max" else (x[res.metric] or 1e9))):
        v = tr[res.metric]
        t.add_row(str(i), f"{v:.4f}" if v is not None else "error", str(tr["epochs"]),
                  ", ".join(f"{k}={v}" for k, v in tr["params"].items()))
    console.print(t)
    if best_config:
        console.print(f"best config written to {best_config} (trainlab run {method} --config {best_config})",
                      highlight=False, soft_wrap=True)
    console.print(f"best {res.metric} = {res.best_metric:.4f}; parent MLflow run {res.parent_run_id} "
                  f"in experiment {res.experiment} at {tracking_uri()}", highlight=False, soft_wrap=True)
    if registered:
        console.print(f"registered the best trial's model: {registered['name']} version {registered['version']}, "
                      f"alias champion (models:/{registered['name']}@champion)", highlight=False, soft_wrap=True)
    console.print(f"look at it: [bold]{ui_hint()}[/]", highlight=False, soft_wrap=True)


def _describe(spec, cfg, as_json: bool) -> None:
    """``run METHOD --describe``: the typed config's fields, from its schema."""
    from trainers.common.config import describe_fields

    rows = describe_fields(spec.config_cls, cfg)
    if as_json:
        import json

        print(json.dumps({"method": spec.key, "fields": rows}, default=str))
        return
    t = Table(title=f"trainlab run {spec.key}: config fields (--set FIELD=VALUE)")
    t.add_column("field", no_wrap=True)
    for c in ("type", "default", "allowed", "description"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["field"], r["type"], str(r["default"]), r["allowed"], r["description"])
    console.print(t)


def _register_best(res, name: str) -> dict:
    """The best trial that logged a model (a trial ASHA stopped early logs none) -> a new version, alias champion."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import TrackingError, register_run_model, tracking_uri

    client = MlflowClient(tracking_uri())
    for run_id in res.ranked_run_ids:
        try:
            value = client.get_run(run_id).data.metrics.get(res.metric)
            return register_run_model(run_id, name, (res.metric, value), alias="champion")
        except TrackingError:
            continue  # this trial logged no model: the next best
    raise TrackingError(f"--register {name}: no trial of the sweep logged a model (tracking.log_model=false?)")


@app.command("demo")
def demo_cmd(
    methods: Optional[list[str]] = typer.Option(None, "--method", help="only these methods (default: all)"),
) -> None:
    """Run every registered method's --quick config on the embedded data and say where to look."""
    from pipelines.run import load_config, train
    from trainers import get_method, method_keys

    for key in methods or method_keys():
        console.rule(f"demo: {key}")
        with _reported_errors():
            spec = get_method(key)
            res = train(key, load_config(key, quick=True))
        _run_summary(res, spec)
    console.print("demo done. Compare runs in the MLflow UI (command above), then try "
                  "`trainlab sweep decorrelation --quick --num-samples 4`.", highlight=False, soft_wrap=True)


@app.command("predict")
def predict_cmd(
    method: str = typer.Argument(..., help="method key; the methods whose spec offers predict (see --help)"),
    checkpoint: str = typer.Option(..., "--checkpoint", help="checkpoint directory of the run (or its state.pt)"),
    task: Optional[str] = typer.Option(None, "--task", help="for methods with tasks (continual): the task to infer "
                                                            "with (1-based index or task name)"),
    input_: str = typer.Option(..., "--input", help=".npy file: (N, C, H, W) float inputs (or one input)"),
    output: Optional[str] = typer.Option(None, "--output", help="write the predicted labels here (.npy)"),
) -> None:
    """Predict with a trained run, by the method's own predict hook (continual: the shared weights masked with the
    task's mask, W ⊙ M^(task))."""
    from trainers import get_method, methods_with

    with _reported_errors():
        spec = get_method(method)
        if spec.predict is None:
            raise ValueError(f"predict: method {method!r} has no predict path; allowed: {', '.join(methods_with('predict'))}")
        import numpy as np

        if not Path(input_).is_file():
            raise ValueError(f"--input {input_}: file not found (expected a .npy array)")
        try:
            x = np.load(input_, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--input {input_}: not a .npy array ({e})") from None
        labels = spec.predict(checkpoint, task, x)
        if output:
            np.save(output, labels)
    t = Table(title=f"trainlab predict {method}" + (f" — task {task}" if task is not None else "")
              + f", {len(labels)} inputs")
    t.add_column("label")
    t.add_column("count")
    for v, c in zip(*np.unique(labels, return_counts=True)):
        t.add_row(str(int(v)), str(int(c)))
    console.print(t)
    if output:
        console.print(f"labels written to {output}", highlight=False, soft_wrap=True)
    else:
        console.print(" ".join(map(str, labels.tolist())), highlight=False, soft_wrap=True)


@app.command("explain")
def explain_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", help="final checkpoint directory of a run whose method "
                                                             "explains (shift_explainer; the 'checkpoint' row of its summary)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="method.* override, e.g. method.k=5, "
                                                                "method.layout=diagonal, method.selection=threshold"),
    output: Optional[str] = typer.Option(None, "--output", help="PNG path (default: next to the checkpoint)"),
    method: Optional[str] = typer.Option(None, "--method", help="the method (default: the one method whose spec "
                                                                "offers explain)"),
) -> None:
    """Redraw a trained run's explanation from its checkpoint in seconds, no Ray (shift_explainer: S104–S108)."""
    from trainers import get_method, methods_with

    with _reported_errors():
        offered = methods_with("explain")
        if method is None and len(offered) != 1:
            raise ValueError(f"--method: needed when several methods explain; allowed: {', '.join(offered)}")
        key = method or offered[0]
        spec = get_method(key)
        if spec.explain is None:
            raise ValueError(f"--method {key}: has no explain path; allowed: {', '.join(offered)}")
        path, figures = spec.explain(checkpoint, set_, output)
    t = Table(title=f"trainlab explain {key}")
    t.add_column("what")
    t.add_column("value", overflow="fold")
    for k, v in figures.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(t)
    console.print(f"explanation grid written to {path}", highlight=False, soft_wrap=True)


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit_cmd(
    ctx: typer.Context,
    address: Optional[str] = typer.Option(None, "--address", help="Ray dashboard URL, e.g. http://127.0.0.1:8265 "
                                                                  "(default: RAY_API_SERVER_ADDRESS)"),
    working_dir: str = typer.Option(".", "--working-dir", help="directory uploaded with the job (config/data files)"),
    env: Optional[list[str]] = typer.Option(None, "--env", help="KEY=VALUE for the job (no credentials; repeatable)"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="stream the job's logs until it ends"),
) -> None:
    """Submit `trainlab run|sweep ...` to a Ray cluster as a job: `trainlab submit --address URL run decorrelation --quick`.

    The command is validated here first; the working directory is uploaded; MLFLOW_TRACKING_URI and
    TRAINLAB_STORAGE travel with the job, credentials never do. Prints the job id and the final status
    (exit 0 only when the job SUCCEEDED)."""
    from pipelines import submit as sub

    args = list(ctx.args)
    with _reported_errors():
        addr = sub.check_address(address)
        _validate_submitted(args, working_dir)
        job_env = sub.job_env(env)
    try:
        with _reported_errors():
            res = sub.submit(addr, args, working_dir, job_env, wait=wait,
                             echo=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
    except KeyboardInterrupt:
        console.print("stopped following the job; it keeps running (`ray job logs -f ID`, `ray job stop ID` with "
                      f"RAY_API_SERVER_ADDRESS={addr})", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    console.print(f"job {res.job_id}: {res.status}", highlight=False)
    if wait and res.status != "SUCCEEDED":
        raise typer.Exit(1)


def _validate_submitted(args: list[str], working_dir: str) -> None:
    """Parse the submitted `run|sweep` command exactly as the cluster will, and build its config, so a bad
    request fails here (paths relative to ``working_dir``, as on the cluster)."""
    from pipelines.run import load_config

    if not args or args[0] not in ("run", "sweep"):
        raise ValueError(f"submit: the command to submit must be `run ...` or `sweep ...`, got {' '.join(args) or 'nothing'}"
                         "; e.g. trainlab submit --address http://127.0.0.1:8265 run decorrelation --quick")
    wd = Path(working_dir)
    if not wd.is_dir():
        raise ValueError(f"--working-dir: {working_dir} is not a directory")
    if "--help" in args:
        raise ValueError(f"submit: `--help` is for this machine: trainlab {args[0]} --help")
    cmd = typer.main.get_command(app).commands[args[0]]
    try:
        p = cmd.make_context(args[0], list(args[1:])).params
    except typer.exceptions.TyperException as e:  # typer's (vendored) click usage errors
        raise ValueError(f"submit: `{' '.join(args)}`: {e.format_message()}") from None
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        load_config(p["method"], p["config"], p["set_"], p["quick"],
                    _overrides(p["num_workers"], p["gpu"], p["seed"], p["cpus_per_worker"]))
        if args[0] == "sweep" and p.get("space"):
            from tuning.spaces import load_space

            load_space(p["space"])
    finally:
        os.chdir(cwd)


@app.command("sync-mlflow")
def sync_mlflow_cmd(
    pending: Optional[str] = typer.Argument(None, help="directory of parked calls (default: ./trainlab_runs/"
                                                      "mlflow_pending, see TRAINLAB_MLFLOW_PENDING)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="send to this server instead"),
) -> None:
    """Send the MLflow calls a run kept locally while the tracking server was unreachable."""
    from pipelines.tracking import pending_dir
    from trainers.common.run_logger import replay

    path = pending or pending_dir()
    if not Path(path).is_dir():
        console.print(f"nothing to sync: {path} does not exist", highlight=False)
        return
    sent, left = replay(path, tracking_uri)
    console.print(f"sent {sent} parked MLflow call(s) from {path}; {left} still parked", highlight=False)
    if left:
        raise typer.Exit(1)


def _exit_now(code: int) -> None:
    """End the process the way Python's own shutdown begins (wait for non-daemon threads, run the atexit handlers:
    MLflow's, Ray's disconnect), then skip the rest: tearing down the interpreter's modules after a run (torch,
    Ray's core worker, pyarrow) took 2.5 s of every command on a 2-core machine, after its last line."""
    import atexit
    import threading

    try:
        threading._shutdown()  # what Py_FinalizeEx runs first: concurrent.futures' exit hooks, then joins
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(prog_name="trainlab")
        code = 0
    except SystemExit as e:  # typer/click end every command with sys.exit(code)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    _exit_now(code)


if __name__ == "__main__":
    main()

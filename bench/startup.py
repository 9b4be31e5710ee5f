"""Start-up of one run, and of sweep trials: where a run's wall time goes besides training (issue 15).

One process per run, as a user runs it: ``trainlab run decorrelation --quick`` as a subprocess, timed from
outside (wall) and read back from MLflow (the loop's own time, ``time_s`` of the last epoch, which every
version logs; this version also logs its ``startup.*`` phases, see ``pipelines.run.startup_timing``).

* ``cold``: no cluster; the run starts its own local Ray instance (``ray.init``) and stops it.
* ``warm``: against an already running head (``ray start --head``; ``RAY_ADDRESS``), as on a cluster.

Variants: ``after`` (this commit, the default path: one Ray Train worker), ``local`` (this commit with
``--num-workers 0``: Ray Train's local mode, the loop in the ``trainlab`` process) and, with ``--before REV``,
``before`` (that commit's default path).

``--before REV`` runs the same commands on another commit (a git worktree on ``PYTHONPATH``, for the driver and
for the head's workers) in the same run, alternating before/after run by run (ABBA), so that the ratios
compare like with like on a shared machine. Each head is started for one variant and stopped before the
next (never two Ray instances at once).

    python bench/startup.py --repeats 3 --before 453e579        # about 15 min on 2 cores
    python bench/run_all.py --only startup --before-rev 453e579  # the same, as a section of run_all
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from common import machine_info, mean_ci, write  # noqa: E402

RUN = ["run", "decorrelation", "--quick"]


def _trainlab() -> str:
    return str(Path(sys.executable).with_name("trainlab"))


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _env(root: Path, code: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", TRAINLAB_STORAGE=str(root / "runs"),
               TRAINLAB_CACHE=str(root / "cache"), RAY_USAGE_STATS_ENABLED="0")
    # one token for the bench's heads and runs (token auth on, as on a cluster), never the user's ~/.ray one
    token = root.parent / "auth_token"
    if not token.exists():
        import secrets

        token.write_text(secrets.token_hex(32))
    env.pop("RAY_AUTH_TOKEN", None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    if code is not None:
        env["PYTHONPATH"] = str(code) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _mlflow_db(root: Path) -> None:
    """A migrated store, so that no run pays MLflow's one-off schema creation (a user's first run does)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")).engine.dispose()


def _read_run(root: Path) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("trainlab/decorrelation")
    run = c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    m = run.data.metrics
    return {"loop_s": m.get("startup.loop_s", m.get("time_s")),
            "phases": {k.split(".", 1)[1]: v for k, v in m.items() if k.startswith("startup.")}}


def one_run(root: Path, code: Path | None, address: str | None, extra: tuple[str, ...] = ()) -> dict:
    env = _env(root, code)
    if address:
        env["RAY_ADDRESS"] = address
    t0 = time.perf_counter()
    r = subprocess.run([_trainlab(), *RUN, *extra], env=env, cwd=root, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"trainlab {' '.join(RUN)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    got = _read_run(root)
    return {"wall_s": wall, "loop_s": got["loop_s"], "overhead_s": wall - got["loop_s"], "phases": got["phases"]}


def _floor_loop(config: dict) -> None:
    Path(config["mark"]).write_text(repr(time.time()))


def floor_child(store: str) -> None:
    """Ray Train alone, in this process: a TorchTrainer with one CPU worker and a loop that only notes the time,
    no data and no MLflow, with the controller settings ``trainlab run`` uses. Prints its timing as JSON."""
    import json

    t0 = time.time()
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.run import _train_controller_env

    ray.init(log_to_driver=False)  # RAY_ADDRESS when set (warm), else a local instance (cold)
    t_init = time.time()
    _train_controller_env()
    mark = Path(store) / "loop_started"
    t_fit = time.time()
    TorchTrainer(_floor_loop, train_loop_config={"mark": str(mark)},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name="floor", storage_path=store)).fit()
    t_end = time.time()
    t_loop = float(mark.read_text())
    print(json.dumps({"imports_init_s": t_init - t0, "fit_to_loop_s": t_loop - t_fit,
                      "loop_to_return_s": t_end - t_loop, "fit_s": t_end - t_fit}), flush=True)


def floor_run(root: Path, address: str | None) -> dict:
    import json

    env = _env(root, None)
    if address:
        env["RAY_ADDRESS"] = address
    store = root / "floor"
    store.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, __file__, "--floor-child", str(store)], env=env, cwd=root,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"the bare TorchTrainer failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


class Head:
    """``ray start --head`` on loopback for one variant (its workers import that variant's code)."""

    def __init__(self, root: Path, code: Path | None):
        self.root, self.code = root, code
        self.env = _env(root, code)

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        r = subprocess.run([_ray(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", str(max(4, os.cpu_count() or 2)), "--dashboard-host", "127.0.0.1",
                            "--disable-usage-stats"], env=self.env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"ray start --head failed:\n{r.stderr[-2000:]}")
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        subprocess.run([_ray(), "stop", "--force"], env=self.env, capture_output=True, timeout=300)


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)
    return where


def startup_section(repeats: int = 3, before: str | None = None, modes=("cold", "warm")) -> dict:
    """Alternating after/before runs (ABBA per repeat) in each mode; ratios after/before of the overhead."""
    tmp = Path(tempfile.mkdtemp(prefix="trainlab-startup-"))
    variants: dict[str, Path | None] = {"after": None, "local": None}
    extra = {"local": ("--num-workers", "0")}
    if before:
        variants["before"] = _worktree(before, tmp / "before-code")
    roots = {}
    for v in variants:
        roots[v] = tmp / v
        roots[v].mkdir()
        _mlflow_db(roots[v])
    out: dict = {"command": "trainlab " + " ".join(RUN), "repeats": repeats, "before": before, "modes": {}}
    try:
        for mode in modes:
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            floor: list[dict] = []
            for i in range(repeats):
                order = list(variants) if i % 2 == 0 else list(reversed(variants))
                for v in order:
                    x = extra.get(v, ())
                    if mode == "cold":
                        res = one_run(roots[v], variants[v], None, x)
                        if v == "after":
                            floor.append(floor_run(roots[v], None))
                    else:
                        with Head(roots[v], variants[v]) as address:
                            one_run(roots[v], variants[v], address, x)  # the head's first run warms its caches
                            res = one_run(roots[v], variants[v], address, x)
                            if v == "after":
                                floor.append(floor_run(roots[v], address))
                    runs[v].append(res)
                    print(f"[startup] {mode} {v} #{i + 1}: wall {res['wall_s']:.1f} s, loop {res['loop_s']:.1f} s, "
                          f"overhead {res['overhead_s']:.1f} s", flush=True)
            m: dict = {"runs": runs, "floor_runs": floor,
                       "floor": {k: mean_ci([f[k] for f in floor]) for k in floor[0]} if floor else {}}
            for v, rs in runs.items():
                m[v] = {k: mean_ci([r[k] for r in rs]) for k in ("wall_s", "loop_s", "overhead_s")}
                phases = sorted({p for r in rs for p in r["phases"]})
                m[v]["phases"] = {p: mean_ci([r["phases"][p] for r in rs if p in r["phases"]]) for p in phases}
            if before:
                ratios = [a["overhead_s"] / b["overhead_s"] for a, b in zip(runs["after"], runs["before"])]
                m["overhead_ratio_after_over_before"] = mean_ci(ratios)
                m["overhead_ratio_runs"] = ratios
            local = [a["overhead_s"] / b["overhead_s"] for a, b in zip(runs["local"], runs["after"])]
            m["overhead_ratio_local_over_after"] = mean_ci(local)
            m["overhead_ratio_local_runs"] = local
            out["modes"][mode] = m
    finally:
        if before:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(variants["before"])],
                           capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def render(res: dict) -> str:
    lines = [f"### Start-up of one run: `{res['command']}`", "",
             f"{res['repeats']} runs per variant and mode, alternating (ABBA); mean ± 95% CI half-width (t). "
             "overhead = wall − the loop's own time (its first to its last report).", ""]
    for mode, m in res["modes"].items():
        where = "no cluster: the run starts and stops its own local Ray" if mode == "cold" else \
            "against a running head (RAY_ADDRESS), the head's second run"
        lines += [f"**{mode}** ({where})", "", "| variant | wall s | loop s | overhead s |", "|---|---|---|---|"]
        names = {"before": f"before ({res['before']}), 1 Ray Train worker", "after": "after, 1 Ray Train worker",
                 "local": "after, `--num-workers 0` (local mode)"}
        for v in ("before", "after", "local"):
            if v in m:
                r = m[v]
                lines.append(f"| {names[v]} | "
                             + " | ".join(f"{r[k][0]:.1f} ± {r[k][1]:.1f}" for k in ("wall_s", "loop_s", "overhead_s"))
                             + " |")
        if "overhead_ratio_after_over_before" in m:
            mu, h = m["overhead_ratio_after_over_before"]
            lines += ["", f"overhead after/before: **{mu:.2f} ± {h:.2f}** (paired by repeat: "
                      + ", ".join(f"{x:.2f}" for x in m["overhead_ratio_runs"]) + ")"]
        if "overhead_ratio_local_over_after" in m:
            mu, h = m["overhead_ratio_local_over_after"]
            lines += ["", f"overhead local mode / Ray Train worker: **{mu:.2f} ± {h:.2f}** (paired by repeat: "
                      + ", ".join(f"{x:.2f}" for x in m["overhead_ratio_local_runs"]) + ")"]
        if m.get("floor"):
            f = m["floor"]
            lines += ["", "Ray Train alone (`--floor-child`: a TorchTrainer with one worker and a loop that only notes the "
                      f"time, no data, no MLflow), in {len(m['floor_runs'])} runs: fit() until its loop starts "
                      f"**{f['fit_to_loop_s'][0]:.1f} ± {f['fit_to_loop_s'][1]:.1f} s**, the loop's end until fit() "
                      f"returns {f['loop_to_return_s'][0]:.1f} ± {f['loop_to_return_s'][1]:.1f} s (the process's imports "
                      f"and ray.init before: {f['imports_init_s'][0]:.1f} s)."]
        for v in ("after", "local"):
            ph = m.get(v, {}).get("phases")
            if ph:
                lines += ["", f"{v}, by phase (s): " + ", ".join(f"{k} {p[0]:.1f}" for k, p in ph.items())]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", default=None, help="a git revision to compare with, e.g. 453e579")
    ap.add_argument("--modes", default="cold,warm")
    ap.add_argument("--name", default="startup")
    ap.add_argument("--floor-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_child:
        floor_child(args.floor_child)
        return
    res = startup_section(args.repeats, args.before, tuple(args.modes.split(",")))
    res["machine"] = machine_info()
    write(args.name, res, render(res))


if __name__ == "__main__":
    main()

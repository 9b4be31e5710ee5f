"""Ray Train's local mode (``scaling.num_workers=0``): the loop runs in the driver, and trainlab keeps its
checkpoints under the run's storage itself (``trainers.common.checkpoints``), so a rerun resumes as on workers."""
from __future__ import annotations

import json

import pytest
import torch

from pipelines.run import load_config, resource_request
from trainers.common.checkpoints import PREFIX, SCORE_FILE, RunCheckpoints
from trainers.common.config import ConfigError


def _save(store: RunCheckpoints, tmp_path, step: int, **metrics):
    d = tmp_path / f"local-{step}"
    d.mkdir(exist_ok=True)
    torch.save({"epoch": step, "w": torch.full((2,), float(step))}, d / "state.pt")
    return store.save(d, step, metrics)


def _steps(root) -> list[int]:
    return sorted(int(p.name[len(PREFIX):]) for p in root.iterdir() if p.name.startswith(PREFIX))


def test_the_newest_are_kept_and_the_newest_is_restored(tmp_path):
    root = tmp_path / "runs" / "r1"
    store = RunCheckpoints(str(root), keep=2)
    assert store.latest() is None                                # nothing yet: a fresh start
    for step in (1, 2, 3):
        ckpt = _save(store, tmp_path, step, loss=1.0 / step)
        assert ckpt.path == f"{root}/{PREFIX}{step:06d}"
    assert _steps(root) == [2, 3]
    again = RunCheckpoints(str(root), keep=2)                    # a rerun of the same run name
    with again.latest().as_directory() as d:
        assert torch.load(f"{d}/state.pt", weights_only=False)["epoch"] == 3
    assert json.loads((root / f"{PREFIX}000003" / SCORE_FILE).read_text()) == {"loss": pytest.approx(1 / 3)}


def test_with_a_score_the_best_survives_pruning_and_a_step_is_replaced(tmp_path):
    root = tmp_path / "r2"
    store = RunCheckpoints(str(root), keep=1, score=("fd", "min"))
    for step, fd in ((1, 5.0), (2, 1.0), (3, 4.0), (4, 3.0)):
        _save(store, tmp_path, step, fd=fd)
    assert _steps(root) == [2, 4]                                # the newest, and the lowest fd
    _save(store, tmp_path, 4, fd=0.5)                            # the same step again (a resumed last epoch)
    assert _steps(root) == [4]
    with store.latest().as_directory() as d:
        assert torch.load(f"{d}/state.pt", weights_only=False)["w"].tolist() == [4.0, 4.0]


def test_a_uri_storage_root_works_through_pyarrow(tmp_path):
    store = RunCheckpoints(f"file://{tmp_path}/remote/r3", keep=3)
    _save(store, tmp_path, 7)
    assert _steps(tmp_path / "remote" / "r3") == [7]
    assert store.latest().path.endswith(f"r3/{PREFIX}000007")


def test_local_mode_config_and_what_it_asks_of_the_cluster():
    from pipelines.cluster import check_resources

    cfg = load_config("decorrelation", quick=True, sets=["scaling.num_workers=0", "scaling.use_gpu=true"])
    assert cfg.scaling.local and cfg.scaling.world_size == 1
    req = resource_request(cfg)                      # the driver trains, on its own GPU: only Ray Data's CPUs
    assert req.cpus == cfg.scaling.data_cpus and not req.use_gpu and req.gpus == 0
    check_resources(req, resources={"CPU": 1, "GPU": 0})
    trial = resource_request(cfg, for_sweep=True)    # a sweep trial trains on the cluster: its worker's CPUs too
    assert trial.cpus == cfg.scaling.cpus_per_worker + cfg.scaling.data_cpus and trial.use_gpu
    with pytest.raises(ConfigError, match="scaling.num_workers"):
        load_config("decorrelation", quick=True, sets=["scaling.num_workers=-1"])


def test_sessions_nest_and_give_the_driver_its_threads_back():
    from trainers.common.worker import LocalSession, TrialSession

    outer, inner, seen = TrialSession({"a": 1}), LocalSession({"b": 2}), []
    threads = torch.get_num_threads()

    def inner_loop(_):
        seen.append(TrialSession.current)
        torch.set_num_threads(1)                     # what a Worker does for cpus_per_worker=1

    def outer_loop(_):
        seen.append(TrialSession.current)
        inner.run(inner_loop, {})                    # e.g. shift_explainer's classifier inside a sweep trial
        seen.append(TrialSession.current)

    outer.run(outer_loop, {})
    assert seen == [outer, inner, outer] and TrialSession.current is None
    assert torch.get_num_threads() == threads


def test_local_mode_with_use_gpu_trains_on_this_machines_gpu_or_says_it_has_none(ray_session, workdir):
    """Without CUDA (CI): one line before anything starts. With CUDA: the run trains on it and finishes."""
    from pipelines.run import train

    cfg = load_config("decorrelation", quick=True, sets=["scaling.num_workers=0", "scaling.use_gpu=true",
                                                         "train.epochs=1", "tracking.log_model=false"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="scaling.use_gpu: local mode .* no CUDA GPU"):
            train("decorrelation", cfg)
    else:
        res = train("decorrelation", cfg)
        assert res.checkpoint.endswith("checkpoint_000001") and res.metrics["epoch"] == 1.0

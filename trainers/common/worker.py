"""What every method's ``train_loop_per_worker`` shares: one :class:`Worker` per Ray Train worker.

It owns the plumbing so a method's loop only holds its math:

* the validated config, rank, world size, device, seeding;
* data: each Ray Data shard (``ray.train.get_dataset_shard``) either streamed every epoch or, by
  default for data that fits, pulled once into worker memory and reshuffled locally per epoch
  (seeded), and always yielding exactly ``steps`` batches so every worker takes the same number of
  collective steps;
* collectives: autograd-aware all-gather (global-batch losses), all-reduce of counters;
* checkpoints: restore on (re)start, save every epoch from rank 0, so a restarted run continues
  its epoch counter;
* reporting: ``ray.train.report`` on every rank (a barrier), MLflow metrics/artifacts from rank 0
  only, into the run the driver created.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from trainers.common.models import unwrap
from trainers.common.facts import RunFacts
from trainers.common.run_logger import RunLogger
import torch.distributed as dist

log = logging.getLogger("trainlab")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) over ranks along dim 0, keeping autograd.

    The backward of ``torch.distributed.nn.all_gather`` sums the gradients of every rank's copy,
    so a loss computed on the global batch gets exactly the single-process gradient once DDP has
    averaged the parameter gradients over ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()), dim=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a (non-differentiable) tensor over ranks; identity on a single worker. The result is on
    ``t``'s device; the collective runs where the backend needs it (NCCL: the GPU, gloo: the CPU)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        home = t.device
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = t.detach().to(on, copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t.to(home)
    return t


def is_training_split(name: str) -> bool:
    """The splits a method trains on (``train``, ``*_train``): Ray Train splits these among workers as streams."""
    return name == "train" or name.endswith("_train")


def dataset_config(datasets: dict, cache_in_memory: bool, num_workers: int):
    """Ray Train's data config for one run. Every ``streaming_split`` costs a ``SplitCoordinator`` actor (a
    process that imports Ray Data: seconds of start-up per split per run). One worker has nothing to split
    with: every split reaches it whole (``Dataset.iterator()``, no actor). With the default in-memory cache a
    worker pulls its rows once anyway, so only the training splits are split; evaluation splits reach every
    worker whole, in a preserved order, and each rank keeps its own contiguous part of the rows
    (:class:`ShardLoader`). Streaming runs on several workers split every split as before."""
    from ray.train import DataConfig

    if num_workers <= 1:
        return DataConfig(datasets_to_split=[])
    if not cache_in_memory:
        return DataConfig()
    for name, ds in datasets.items():
        if not is_training_split(name):
            ds.context.execution_options.preserve_order = True  # every rank must see the same row order
    return DataConfig(datasets_to_split=[k for k in datasets if is_training_split(k)])


class ShardLoader:
    """Batches of one Ray Data shard: exactly ``steps`` per epoch, identical count on every rank.

    ``part=(rank, world)``: the shard is a whole (unsplit) dataset and this rank keeps rows
    ``[rank·n/world, (rank+1)·n/world)`` of it (evaluation splits, see :func:`dataset_config`)."""

    def __init__(self, shard, batch_size: int, device: torch.device, cache: bool, seed: int,
                 part: tuple[int, int] | None = None):
        self.shard, self.batch_size, self.device, self.cache, self.seed = shard, batch_size, device, cache, seed
        self.part = part
        self._data: dict[str, torch.Tensor] | None = None

    def _materialise(self) -> dict[str, torch.Tensor]:
        if self._data is None:
            parts: dict[str, list[torch.Tensor]] = {}
            for b in self.shard.iter_torch_batches(batch_size=4096):
                for k, v in b.items():
                    parts.setdefault(k, []).append(v)
            if not parts:
                raise RuntimeError("a worker received an empty data shard; use fewer workers or more data")
            data = {k: torch.cat(v) for k, v in parts.items()}
            if self.part is not None and self.part[1] > 1:
                rank, world = self.part
                n = len(next(iter(data.values())))
                data = {k: v[rank * n // world:(rank + 1) * n // world] for k, v in data.items()}
            self._data = {k: v.to(self.device) for k, v in data.items()}
        return self._data

    def num_rows(self) -> int:
        return len(next(iter(self._materialise().values())))

    def epoch(self, epoch: int, steps: int, shuffle: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        produced = 0
        rnd = 0
        while produced < steps:
            got = 0
            for batch in self._one_pass(epoch, rnd, shuffle):
                yield batch
                produced += 1
                got += 1
                if produced == steps:
                    return
            if got == 0:
                raise RuntimeError(
                    f"a worker's data shard holds fewer rows than one per-worker batch ({self.batch_size}); "
                    "lower train.batch_size or scaling.num_workers")
            rnd += 1

    def _one_pass(self, epoch: int, rnd: int, shuffle: bool):
        if self.cache:
            data = self._materialise()
            n = len(next(iter(data.values())))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + rnd)
            order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
            order = order.to(self.device)
            for i in range(0, n - self.batch_size + 1, self.batch_size):
                idx = order[i:i + self.batch_size]
                yield {k: v[idx] for k, v in data.items()}
        else:
            yield from self.shard.iter_torch_batches(
                batch_size=self.batch_size, drop_last=True, device=self.device,
                local_shuffle_buffer_size=(4 * self.batch_size if shuffle else None),
                local_shuffle_seed=self.seed + epoch * 1009 + rnd if shuffle else None)

    def full(self, batch_size: int = 1024) -> Iterator[dict[str, torch.Tensor]]:
        """Every row of the shard once, in order (evaluation)."""
        if self.cache:
            data = self._materialise()
            n = len(next(iter(data.values())))
            for i in range(0, n, batch_size):
                yield {k: v[i:i + batch_size] for k, v in data.items()}
        else:
            yield from self.shard.iter_torch_batches(batch_size=batch_size, device=self.device)


def match_driver_priority(niceness: int | None) -> None:
    """Ray starts every worker process at niceness 15 (``RAY_worker_niceness``), so on a machine that also runs
    anything at the default priority a training worker loses the CPU to it (``bench/run_all.py`` measured
    steps/s under Ray at 0.7-0.85x the same step in a plain process). Go back to the driver's niceness where the
    OS allows lowering it (root, CAP_SYS_NICE or RLIMIT_NICE); otherwise leave it as Ray set it."""
    if niceness is None or not hasattr(os, "getpriority"):
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > niceness:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:  # not permitted for this user: keep Ray's niceness
        pass


def _quiet_train_reports() -> None:
    """Ray Train logs every report (the whole metrics dict) and every checkpoint at INFO from every
    worker; rank 0's epoch line already says it. ``TRAINLAB_DATA_PROGRESS=1`` keeps them."""
    if os.environ.get("TRAINLAB_DATA_PROGRESS") == "1":
        return
    from ray.train.v2._internal.execution import context, storage

    for name in (context.__file__, storage.__name__):
        logging.getLogger(name).setLevel(logging.WARNING)


class TrialSession:
    """A training loop run in this process instead of on Ray Train workers, with the datasets in and the last
    result and checkpoint out: inside a Tune trial's own process (run facts ``report_to="tune"``: results and
    checkpoints go to Tune), or in local mode (``report_to="local"``, ``scaling.num_workers=0``: the driver
    trains; checkpoints go under the run's storage, see :mod:`trainers.common.checkpoints`). Ray Train's own
    local mode (``ScalingConfig(num_workers=0)``) keeps no checkpoint and refuses ``ray.train.report`` inside a
    Tune trial (where a method may train a helper model, e.g. shift_explainer's classifier), hence this.
    ``current`` is set by :meth:`run` for the loop (and restored after: sessions nest)."""

    current: "TrialSession | None" = None

    def __init__(self, datasets: dict):
        self.datasets = datasets
        self.metrics: dict | None = None
        self.checkpoint = None

    def run(self, train_loop, loop_config: dict) -> "TrialSession":
        # the loop sets its worker's torch thread count (and seeds): in the driver, put the threads back after
        outer, threads, TrialSession.current = TrialSession.current, torch.get_num_threads(), self
        try:
            train_loop(loop_config)
        finally:
            TrialSession.current = outer
            torch.set_num_threads(threads)
        return self


LocalSession = TrialSession  # the same mechanism; the run facts' report_to says where results go


class Worker:
    """Per-worker context handed to each method's loop."""

    def __init__(self, loop_config: dict, config_cls):
        import ray.train
        import ray.train.torch

        _quiet_train_reports()
        self.cfg = config_cls.model_validate(loop_config["cfg"])
        self.run: RunFacts = loop_config["run"]
        match_driver_priority(self.run.driver_niceness)
        # In-trial (a single-CPU-worker sweep trial, see pipelines.run.train): this loop runs in the Tune trial's
        # own process; results and checkpoints go to Tune, restore reads the trial's checkpoint, and the datasets
        # are the trial's own (Ray Train's API is not available inside a Tune function).
        # Local mode (scaling.num_workers=0): this loop runs in the driver (a LocalSession), and its checkpoints are
        # written under the run's storage here (trainers.common.checkpoints). Either way: one process, no DDP.
        self._session: TrialSession | None = TrialSession.current if self.run.report_to in ("tune", "local") else None
        self._trial = self._session if self.run.report_to == "tune" else None
        self._local = None
        if self.run.report_to == "local":
            from trainers.common.checkpoints import RunCheckpoints

            lc = self.run.local_checkpoints
            self._local = RunCheckpoints(lc.dir, lc.keep, list(lc.score) if lc.score else None)
        if self._session is not None:  # local mode uses the driver's GPU only when asked for
            self.rank, self.world_size = 0, 1
            self.device = torch.device("cuda", 0) if self._local is not None and self.cfg.scaling.use_gpu \
                else torch.device("cpu")
        else:
            ctx = ray.train.get_context()
            self.rank = ctx.get_world_rank()
            self.world_size = ctx.get_world_size()
            self.device = ray.train.torch.get_device()
        self.is_chief = self.rank == 0
        threads = max(1, int(self.cfg.scaling.cpus_per_worker))
        torch.set_num_threads(threads)
        seed_everything(self.cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's)
        self.local_batch = self.cfg.train.batch_size // self.world_size
        self.steps_per_epoch: int = self.run.steps_per_epoch
        self._mlflow: RunLogger | None = None
        self._t0 = time.perf_counter()
        self._t0_unix = time.time()  # the driver's start-up accounting (pipelines.run: startup.*)
        if self.is_chief and self.run.mlflow_run_id:
            import mlflow

            mlflow.set_tracking_uri(self.run.tracking_uri)
            self._mlflow = RunLogger(self.run.tracking_uri, self.run.mlflow_run_id,
                                     self.run.mlflow_pending_dir or tempfile.gettempdir())
        self._system = self._system_metrics()

    def _system_metrics(self):
        """MLflow's system metrics monitor (a sampling thread) on the first worker of each node of a run that has
        an MLflow run; on more than one worker its metrics are named by node (``system/<node>/...``)."""
        if not (self.run.mlflow_run_id and self.cfg.tracking.system_metrics):
            return None
        if self._session is None:
            import ray.train

            if ray.train.get_context().get_local_rank() != 0:
                return None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:  # psutil missing: say so once, train anyway
            log.warning("system metrics not logged: MLflow's monitor needs psutil (pip install psutil)")
            return None
        import socket

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop lines are noise here
        node = f"{socket.gethostname()}-rank{self.rank}" if self.world_size > 1 else None
        monitor = SystemMetricsMonitor(self.run.mlflow_run_id, sampling_interval=self.cfg.tracking.system_metrics_interval_s,
                                       node_id=node, tracking_uri=self.run.tracking_uri)
        monitor.start()
        return monitor

    def close(self) -> None:
        """End of this worker's loop: the system metrics monitor logs what it sampled and stops."""
        if self._system is not None:
            try:
                self._system.finish()
            except Exception as e:  # noqa: BLE001 - a store gone at the end must not fail a finished run
                log.warning("system metrics: %s", e)
            self._system = None

    # -- data ---------------------------------------------------------------------------------
    def loader(self, name: str, batch_size: int | None = None) -> ShardLoader:
        import ray.train

        shard = self._session.datasets.get(name) if self._session is not None else ray.train.get_dataset_shard(name)
        if shard is None:
            raise KeyError(f"dataset {name!r} was not passed to the trainer")
        cache = self.run.cache_in_memory
        whole = cache and not is_training_split(name) and self.world_size > 1  # see dataset_config: not split
        return ShardLoader(shard, batch_size or self.local_batch, self.device, cache=cache,
                           seed=self.cfg.seed * 7919 + self.rank, part=(self.rank, self.world_size) if whole else None)

    # -- model --------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        if self._session is not None:  # one process, no DDP
            return model.to(self.device)
        return ray.train.torch.prepare_model(model)

    def autocast(self):
        enabled = self.cfg.train.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # -- checkpoints --------------------------------------------------------------------------
    def restore(self) -> dict | None:
        import ray.train

        if self._trial is not None:
            import ray.tune

            ckpt = ray.tune.get_checkpoint()
        elif self._local is not None:
            ckpt = self._local.latest()
            # a rerun with no epoch left to train still ends with that checkpoint, as Ray Train's does
            self._session.checkpoint = ckpt
        else:
            ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location=self.device, weights_only=False)
        if self.is_chief:
            log.warning("restored from checkpoint %s at epoch %d", ckpt.path, state["epoch"])
            self.say(f"[{self.run.run_name}] restored from checkpoint {ckpt.path}: "
                     f"continuing after step {state['epoch']} (epoch; task for continual)")
            # one point per restart in MLflow: where the run picked up after a worker failure
            self.log_metrics({"restored_from_epoch": float(state["epoch"])}, step=int(state["epoch"]))
        return state

    def say(self, msg: str) -> None:
        """A progress line from rank 0, shown once in the driver's console. (Ray Train patches
        ``print`` to tee into its logger as well, which shows every line twice.)"""
        if self.is_chief:
            import sys

            print(msg, file=sys.__stdout__, flush=True)

    def stop_requested(self) -> bool:
        """The user's stop request (``touch <stop_file>``), agreed on by all ranks."""
        path = self.run.stop_file
        flag = torch.tensor([1.0 if (path and os.path.exists(path)) else 0.0])
        return bool(all_reduce_sum(flag).item() > 0)

    def report(self, epoch: int, metrics: dict[str, float], state: dict[str, Any]) -> None:
        """Log one epoch: MLflow (rank 0), checkpoint (rank 0), ``ray.train.report`` (all ranks)."""
        import ray.train
        from ray.train import Checkpoint

        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["epoch"] = float(epoch)
        metrics["time_s"] = time.perf_counter() - self._t0
        self.log_metrics(metrics, step=epoch)
        # when this worker's loop started and this report was made: the driver's start-up accounting
        result = {**metrics, "worker_started_unix": self._t0_unix, "reported_unix": time.time()}
        if not self.is_chief:
            ray.train.report(result, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save({**state, "epoch": epoch}, Path(d) / "state.pt")
            if self._trial is not None:  # in-trial: Tune persists the checkpoint and sees the result (ASHA may stop)
                import ray.tune

                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))
                self._trial.metrics, self._trial.checkpoint = result, ray.tune.get_checkpoint()
            elif self._local is not None:
                self._session.metrics, self._session.checkpoint = result, self._local.save(d, epoch, metrics)
            else:
                ray.train.report(result, checkpoint=Checkpoint.from_directory(d))

    # -- MLflow (rank 0 only) -------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._mlflow is None:
            return
        ts = int(time.time() * 1000)
        self._mlflow.log_metrics([(k, float(v), ts, step) for k, v in metrics.items() if np.isfinite(v)])

    def log_steps(self, series: dict[str, Any], first_step: int) -> None:
        """Per-step values logged in a few batched calls (not one round trip per step):
        ``series[name][i]`` is logged at step ``first_step + i``."""
        if self._mlflow is None:
            return
        ts = int(time.time() * 1000)
        self._mlflow.log_metrics([(k, float(v), ts, first_step + i) for k, vals in series.items()
                                  for i, v in enumerate(vals) if np.isfinite(v)])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._mlflow is not None:
            for k, v in tags.items():
                self._mlflow.set_tag(k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._mlflow is not None:
            self._mlflow.log_artifact(path, artifact_path)

    def log_figure(self, fig, name: str, artifact_dir: str = "plots") -> None:
        if self._mlflow is not None:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / name
                fig.savefig(p, dpi=110, bbox_inches="tight")
                self.log_artifact(p, artifact_dir)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        """An image at a training step (``mlflow.log_image(key=..., step=...)``): the run page's images, with a step
        slider. ``image``: (H, W) or (H, W, C) floats in [0, 1] or uint8."""
        if self._mlflow is None:
            return
        from mlflow.tracking import MlflowClient

        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        try:
            MlflowClient(self.run.tracking_uri).log_image(self.run.mlflow_run_id, image, key=key, step=int(step))
        except Exception as e:  # noqa: BLE001 - the figure is also an artifact; a store that refuses this is no failure
            log.warning("log_image(%s) failed: %s", key, e)

    def log_pyfunc(self, python_model, artifacts: dict[str, str], signature, name: str = "model") -> None:
        """A model that is not a plain ``nn.Module`` forward (e.g. continual's: the task is a parameter) as an MLflow
        pyfunc model under ``name``; ``artifacts``: files it loads (``load_context``)."""
        if self._mlflow is None or not self.cfg.tracking.log_model:
            return
        _log_pyfunc_impl(self, python_model, artifacts, signature, name)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...],
                  name: str = "model") -> None:
        """The model with ``mlflow.pytorch`` under ``name``. ``example``: its input, two rows of which MLflow
        traces into its default 'pt2' format; a tuple (a forward with several inputs, which 'pt2' signatures
        cannot describe) saves it in the 'pickle' format instead."""
        if self._mlflow is None or not self.cfg.tracking.log_model:
            return
        import mlflow
        import mlflow.pytorch

        model = unwrap(model).cpu().eval()
        # explicit requirements: MLflow's inference re-imports the model in a subprocess (slow)
        kw = {"pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}
        if isinstance(example, tuple):
            kw["serialization_format"] = "pickle"
        else:
            kw["input_example"] = example.cpu().numpy()[:2]
        try:
            with mlflow.start_run(run_id=self.run.mlflow_run_id):
                mlflow.pytorch.log_model(model, name=name, **kw)
        except Exception as e:  # noqa: BLE001 - tracking server down: keep the model as parked artifacts
            log.warning("log_model failed (%s); the model is kept for `trainlab sync-mlflow`", e)
            with tempfile.TemporaryDirectory() as d:
                mlflow.pytorch.save_model(model, f"{d}/{name}", **kw)
                self._mlflow.log_artifacts(f"{d}/{name}", name)


def _log_pyfunc_impl(worker: "Worker", python_model, artifacts: dict[str, str], signature, name: str) -> None:
    import mlflow
    import mlflow.pyfunc

    kw = {"pip_requirements": [f"torch=={torch.__version__.split('+')[0]}", "trainlab"], "signature": signature}
    try:
        with mlflow.start_run(run_id=worker.run.mlflow_run_id):
            mlflow.pyfunc.log_model(name=name, python_model=python_model, artifacts=artifacts, **kw)
    except Exception as e:  # noqa: BLE001 - tracking server down: keep the model as parked artifacts
        log.warning("log_model(%s) failed (%s); the model is kept for `trainlab sync-mlflow`", name, e)
        with tempfile.TemporaryDirectory() as d:
            mlflow.pyfunc.save_model(f"{d}/{name}", python_model=python_model, artifacts=artifacts, **kw)
            worker._mlflow.log_artifacts(f"{d}/{name}", name)


def average_gradients(module: torch.nn.Module) -> None:
    """Average ``module``'s gradients over ranks in one flat all-reduce (identity on one worker).

    For models used along several paths in one step (encode, decode, discriminate), where DDP's
    one-forward-then-backward contract does not hold; with the same initial weights on every rank
    (every worker seeds alike) and the same averaged gradients, the replicas stay identical."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = all_reduce_sum(flat) / dist.get_world_size()
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def make_optimizer(train_cfg, params) -> torch.optim.Optimizer:
    """The optimiser named by ``train.optimizer`` with the configured lr / momentum / weight decay."""
    params = [p for p in params if p.requires_grad]
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum,
                               weight_decay=train_cfg.weight_decay)
    cls = torch.optim.Adam if train_cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def correlation_from_stats(n: torch.Tensor, s: torch.Tensor, ss: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation matrix from all-reduced sufficient statistics (count, Σh, Σhhᵀ) in float64."""
    mean = s / n
    cov = ss / n - torch.outer(mean, mean)
    sd = torch.sqrt(torch.clamp(torch.diagonal(cov), min=0) + eps)
    return cov / torch.outer(sd, sd)

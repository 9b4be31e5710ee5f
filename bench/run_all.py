"""Performance benchmarks, all in ONE run: every figure is a ratio of two things measured side by side in
the same run (alternated window by window, ABBA order, several repeats: median and min..max), because this
machine is shared and noisy.

Sections (issue 8):

* ``ray``     Ray Train overhead: steady-state steps/s of each method's training step under TorchTrainer
              (1 worker) vs the SAME step function (the one the method's loop calls) in a plain PyTorch loop in
              this process, same data, same torch thread count. The two alternate window by window inside ONE
              ``trainer.fit()`` (a file baton passes between the worker and the driver), timed inside the
              worker and reported out; start-up (Ray init, fit -> first step) separately.
* ``method``  Method overhead (pure PyTorch): each method's extra computation vs a plain cross-entropy step on
              the same network (correlation loss at C=256/B=256, masked updates, the mixture penalty, HSIC), and
              the two-discriminator GAN step vs the single-discriminator one.
* ``data``    Ray Data ``iter_torch_batches`` from parquet on disk (raw and through trainlab's reader) and
              trainlab's ShardLoader (cached default, and streaming) vs what the training steps consume.
* ``startup`` Start-up of one run (``bench/startup.py``): ``trainlab run decorrelation --quick`` cold (its own local
              Ray) and against a running head, wall vs the loop's own time, by phase; ``--before-rev REV`` runs the
              same at another commit alternately in the same run (the ratios). Runs first, before this script
              starts its own Ray.
* ``sweep``   ASHA vs FIFO sweeps through ``tuning.sweep.sweep`` (tiny budget): wall time, best metric. 8 trials
              each by default, so the whole run fits 20 minutes; ``--sweep-trials 16`` is the 16-trial figure
              (about 28 min for the two sweeps alone on 2 cores).
* ``scaling`` 1 vs 2 Ray Train workers (DDP, gloo) on this machine, and 1 worker with 2 threads.
* ``gpu``     With CUDA: the ``ray`` section on the GPU (fp32 and ``train.precision=bf16``), GPU utilisation;
              without: recorded as "no GPU available on this machine".
* ``profile`` torch.profiler tables for every ratio that misses its goal (what the extra time is spent on).

    flock /tmp/trainlab-ray.lock python bench/run_all.py            # ~19 min on 2 shared cores
    flock /tmp/trainlab-ray.lock python bench/run_all.py --quick    # ~6 min smoke version
    flock /tmp/trainlab-ray.lock python bench/run_all.py --only sweep --sweep-trials 16 --name performance_16trials
    python bench/run_all.py --only ray,method --rounds 3             # some sections

Writes ``bench/results/performance.{json,md}`` (``--name`` to change the stem).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import isolated_store, machine_info, write  # noqa: E402

METHODS = ("decorrelation", "mixture_sparsity", "ssd2gan", "continual", "shift_explainer")
SECTIONS = ("startup", "ray", "method", "data", "sweep", "scaling", "gpu", "profile")
# the Ray Datasets each method's step draws from (prefixed "<method>.")
STEP_SPLITS = {"decorrelation": ("source_train", "target_train"), "mixture_sparsity": ("source_train",),
               "ssd2gan": ("source_train",), "continual": ("train", "eval"), "shift_explainer": ("gen_train",)}
GOAL_RAY = 0.95          # steps/s under Ray / plain >= 0.95
GOAL_EXTRA = 0.10        # method's extra per-step cost <= 10 %
GOAL_DATA = 5.0          # loader rows/s >= 5x what the step consumes


def stats(values) -> dict:
    a = np.asarray(list(values), dtype=float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "n": int(a.size),
            "values": [float(v) for v in a]}


def fmt(s: dict, d: int = 3) -> str:
    return f"{s['median']:.{d}f} ({s['min']:.{d}f}..{s['max']:.{d}f})"


def method_cfg(method: str, sets=(), overrides: dict | None = None):
    from pipelines.run import load_config

    return load_config(method, None, ["tracking.log_model=false", *sets], overrides=overrides)


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def gpu_util() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        return float(torch.cuda.utilization())
    except Exception:  # noqa: BLE001 - pynvml missing: ask nvidia-smi
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout.split()
            return float(out[0]) if out else None
        except (OSError, ValueError, subprocess.SubprocessError):
            return None


def make_autocast(precision: str, device):
    import torch

    dev = getattr(device, "type", str(device))

    def autocast():   # what Worker.autocast does
        return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=precision == "bf16" and dev == "cuda")
    return autocast


# =============================================================================================
# Batch sources: the worker's ShardLoader (Ray path) or in-memory tensors (plain PyTorch path)
# =============================================================================================

class PlainSource:
    """A plain PyTorch loop's data: whole splits as tensors, batches by a seeded randperm per pass."""

    def __init__(self, tensors: dict[str, dict], device, seed: int = 0):
        self._t = {k: {c: v.to(device) for c, v in cols.items()} for k, cols in tensors.items()}
        self.device, self.seed = device, seed

    def tensors(self, name: str) -> dict:
        return self._t[name]

    def batches(self, name: str, batch_size: int):
        import torch

        data = self._t[name]
        n = len(next(iter(data.values())))
        g = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(n, generator=g).to(self.device)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = order[i:i + batch_size]
                yield {k: v[idx] for k, v in data.items()}


class ShardSource:
    """Inside a Ray Train worker: what the method's loop uses (``Worker.loader`` -> ShardLoader)."""

    def __init__(self, w):
        self.w = w

    def tensors(self, name: str) -> dict:
        from trainers.continual.loop import _shard_tensors

        return _shard_tensors(self.w.loader(name))

    def batches(self, name: str, batch_size: int):
        return self.w.loader(name, batch_size).epoch(1, 10 ** 12)


# =============================================================================================
# One training step per method: the function the method's loop calls, on the method's own models
# =============================================================================================

def build_step(method: str, cfg, src, info: dict, device, prepare, autocast, world: int = 1, kind: str = "method"):
    """(step(), rows consumed per step). ``kind``: "method" = the method's step (what its loop runs);
    other kinds are the plain baselines of the method-overhead section on the same network."""
    import torch
    import torch.nn.functional as F

    from trainers.common.worker import make_optimizer

    torch.manual_seed(cfg.seed)
    m, bsz = cfg.method, cfg.train.batch_size // world
    key = lambda s: f"{method}.{s}"  # noqa: E731
    shape = tuple(info[method]["input_shape"])
    ncls = info[method]["num_classes"]

    def plain_ce(model, opt, x, y):
        loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if method == "decorrelation":
        from trainers.common.models import FeatureTap, build_classifier
        from trainers.decorrelation.loop import USES_UNLABELLED, train_step

        model = build_classifier(cfg.model, shape, ncls)
        tap = FeatureTap(model, m.layers_labelled + m.layers_unlabelled) if kind == "method" else None
        model = prepare(model)
        opt = make_optimizer(cfg.train, model.parameters())
        s = src.batches(key("source_train"), bsz)
        u = src.batches(key("target_train"), bsz) if (USES_UNLABELLED[m.variant] and kind != "ce_labelled") else None

        def step():
            bs = next(s)
            bu = next(u) if u is not None else None
            if kind == "method":
                train_step(model, tap, opt, m, bs["x"], bs["y"], None if bu is None else bu["x"], autocast)
            elif kind == "ce_same_forward":     # the same forward (source + target rows), cross-entropy only
                n = len(bs["y"])
                with autocast():
                    logits = model(torch.cat([bs["x"], bu["x"]]))
                loss = F.cross_entropy(logits[:n].float(), bs["y"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:                              # ce_labelled: a plain supervised step on the source batch
                plain_ce(model, opt, bs["x"], bs["y"])
        return step, bsz * (2 if u is not None else 1)

    if method == "mixture_sparsity":
        from trainers.mixture_sparsity.loop import build_model, method_regularizer, train_step

        model = prepare(build_model(cfg.model, shape, ncls).to(device))
        base = getattr(model, "module", model)
        opt = make_optimizer(cfg.train, model.parameters())
        spec, reg = m.group_spec(), method_regularizer(m)
        it = src.batches(key("source_train"), bsz)

        def step():
            b = next(it)
            if kind == "method":
                train_step(model, base, opt, reg, spec, b["x"], b["y"], m.lam, autocast)
            else:
                plain_ce(model, opt, b["x"], b["y"])
        return step, bsz

    if method == "ssd2gan":
        from trainers.ssd2gan.loop import build_models, make_optimizers, train_step

        g, ds, df = build_models(cfg, int(shape[0]))
        g, ds = prepare(g.to(device)), prepare(ds.to(device))
        df = prepare(df.to(device)) if df is not None else None
        opts = make_optimizers(cfg, g, ds, df)
        it = src.batches(key("source_train"), bsz)
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + 1)

        def step():
            x = next(it)["x"] * 2 - 1
            z = torch.randn(x.shape[0], cfg.model.z_dim, device=device, generator=gen)
            train_step(g, ds, df, opts, x, z, m)
        return step, bsz

    if method == "continual":
        from trainers.continual.allocation import empty_ownership, free_pool, plan_allocation, task_mask
        from trainers.continual.constraints import (FrozenGuard, MaskedOptimizer, forward_masks, trainable_masks,
                                                    update_masks)
        from trainers.continual.groups import layer_groups, named_weights, task1_layer_rates
        from trainers.continual.learner import TaskData, TaskNet, build_model, task_rates, train_step

        net = build_model(cfg.model, shape, ncls)
        model = prepare(TaskNet(net).to(device))
        wrapper = getattr(model, "module", model)
        base = wrapper.net
        inf = info[method]
        data = TaskData(src.tensors(key("train")), src.tensors(key("eval")), inf["task_classes"],
                        {int(k): v for k, v in inf["task_train_rows"].items()}, cfg.train.batch_size, bsz,
                        cfg.seed, 0)
        t = 2 if len(inf["task_classes"]) >= 2 else 1
        if kind == "method" and t == 2:   # task 2's S70 phase, as ContinualLearner.learn sets it up
            groups = layer_groups(base, m.group_overrides)
            weights = named_weights(base, list(groups))
            alloc = plan_allocation(weights, None, task1_layer_rates(groups, m.task1_profile), m.granularity,
                                    m.filter_unit, m.filter_norm, m.rounding)
            mask1 = task_mask(empty_ownership(weights), alloc.new, m.reading, None)
            owned = {n: v.to(device) for n, v in alloc.new.items()}
            free = free_pool(owned)
            rates = task_rates(m, groups, 2, float(inf.get("jsd_12", 0.5)), {n: int(f.sum()) for n, f in free.items()})
            upd = update_masks("S70", free, rates=rates, freeze_full_rate=m.freeze_full_rate)
            src_mask = {n: v.to(device) for n, v in mask1.items()} if m.reading == "B" else None
            wrapper.fmask = forward_masks("S70", m.reading, free=free, source_mask=src_mask)
            guard = FrozenGuard.from_model(base, trainable_masks(base, upd, 2, m.bias_policy, m.norm_policy))
            opt = MaskedOptimizer(make_optimizer(cfg.train, model.parameters()), guard)
        else:                               # plain: every weight trains, no masks
            opt = make_optimizer(cfg.train, model.parameters())
        ncls_t = len(inf["task_classes"][t - 1])

        def batches():
            e = 0
            while True:
                yield from data.batches(t, e)
                e += 1
        it = batches()

        def step():
            x, y = next(it)
            train_step(model, opt, x, y, ncls_t)
        return step, bsz

    if method == "shift_explainer":
        from trainers.shift_explainer.step import build_models, make_optimizers, train_step

        inf = info[method]
        models = build_models(cfg, shape, inf["loss_mean"], inf["loss_std"])
        for mod in models.modules().values():
            mod.to(device)
        opts = make_optimizers(cfg, models)
        it = src.batches(key("gen_train"), bsz)
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + 31)

        def step():
            b = next(it)
            train_step(models, opts, b["x"], b["loss"].float(), b["domain"], m, gen)
        return step, bsz
    raise KeyError(method)


# =============================================================================================
# Data: each method's real data bundle, as Ray Datasets (Ray path) and tensors (plain path)
# =============================================================================================

def _shift_gen_train(cfg, bundle):
    """``gen_train`` as shift_explainer's ``prepare`` makes it (x, y, loss, domain), with the per-sample loss of a
    freshly initialised classifier instead of a trained one (the step's cost does not depend on the values; this
    skips the classifier's TorchTrainer job)."""
    import ray.data
    import torch

    from trainers.shift_explainer.classifier import build_classifier
    from trainers.shift_explainer.losses import per_sample_loss

    torch.manual_seed(cfg.seed)
    f = build_classifier(cfg, bundle.input_shape, bundle.num_classes).eval()
    rows = {"x": [], "y": [], "loss": [], "domain": []}
    for split, dom in (("d1_train", 1), ("d2_train", 2)):
        for b in bundle.datasets[split].iter_batches(batch_size=4096, batch_format="numpy"):
            x, y = np.asarray(b["x"], np.float32), np.asarray(b["y"], np.int64)
            with torch.no_grad():
                loss = per_sample_loss(f(torch.from_numpy(x)).float(), torch.from_numpy(y), cfg.method.loss_fn)
            rows["x"].append(x), rows["y"].append(y), rows["loss"].append(loss.numpy().astype(np.float32))
            rows["domain"].append(np.full(len(y), dom, np.int64))
    cols = {k: np.concatenate(v) for k, v in rows.items()}
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    table = pa.table({"x": ArrowTensorArray.from_numpy(cols["x"]), "y": pa.array(cols["y"]),
                      "loss": pa.array(cols["loss"]), "domain": pa.array(cols["domain"])})
    n = len(cols["y"])
    bounds = np.linspace(0, n, 9).astype(int)
    ds = ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])])
    return ds, {"loss_mean": float(cols["loss"].mean()), "loss_std": float(max(cols["loss"].std(), 1e-6))}


def load_method_data(methods, sets_for) -> tuple[dict, dict, dict]:
    """(Ray Datasets by "<method>.<split>", tensors by the same key, facts per method)."""
    from trainers import get_method

    datasets, tensors, info = {}, {}, {}
    for method in methods:
        spec = get_method(method)
        cfg = method_cfg(method, sets_for(method))
        bundle = spec.build_data(cfg)
        facts = {"input_shape": list(bundle.input_shape), "num_classes": int(bundle.num_classes),
                 "rows": dict(bundle.sizes), "batch_size": cfg.train.batch_size}
        ds = dict(bundle.datasets)
        if method == "shift_explainer":
            ds["gen_train"], extra = _shift_gen_train(cfg, bundle)
            facts.update(extra)
        if method == "continual":
            facts["task_classes"] = [list(c) for c in bundle.task_classes]
            facts["task_train_rows"] = {i: int(bundle.sizes[f"task{i}_train"]) for i in range(1, bundle.num_tasks + 1)}
        for split in STEP_SPLITS[method]:
            k = f"{method}.{split}"
            datasets[k] = ds[split].materialize()
            parts: dict[str, list] = {}
            for b in datasets[k].iter_torch_batches(batch_size=4096):
                for c, v in b.items():
                    parts.setdefault(c, []).append(v)
            import torch

            tensors[k] = {c: torch.cat(v) for c, v in parts.items()}
        info[method] = facts
    return datasets, tensors, info


# =============================================================================================
# Ray overhead: one trainer.fit(); worker and driver alternate windows through a file baton
# =============================================================================================

class Baton:
    """Event e is run by one side after event e-1 was posted: the two sides never run at the same time."""

    def __init__(self, path, alive=None):
        self.d, self.alive = Path(path), alive

    def _p(self, e: int) -> Path:
        return self.d / f"ev{e:05d}.json"

    def wait(self, e: int, timeout: float = 1800) -> dict | None:
        if e < 0:
            return None
        t0 = time.time()
        while not self._p(e).exists():
            if (self.d / "abort").exists():
                raise RuntimeError("the other side of the benchmark aborted: " + (self.d / "abort").read_text())
            if self.alive is not None and not self.alive():
                raise RuntimeError("the other side of the benchmark stopped")
            if time.time() - t0 > timeout:
                raise TimeoutError(f"benchmark event {e} never came")
            time.sleep(0.002)
        return self.read(e)

    def read(self, e: int) -> dict:
        return json.loads(self._p(e).read_text())

    def post(self, e: int, payload: dict) -> None:
        tmp = self.d / f".ev{e:05d}.tmp"
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self._p(e))

    def abort(self, why: str) -> None:
        (self.d / "abort").write_text(why)


def schedule(cases: list[str], rounds: int) -> list[tuple[str, str, object]]:
    ev = []
    for c in cases:
        ev += [("ray", c, "warm"), ("plain", c, "warm")]
    for r in range(rounds):
        for c in cases:
            pair = [("ray", c, r), ("plain", c, r)]
            ev += pair if r % 2 == 0 else pair[::-1]   # ABBA: neither side always goes first
    return ev


def run_events(me: str, sched, baton: Baton, make, device, window_s: float, warm_s: float) -> None:
    """Play ``me``'s events of the schedule; ``make(case)`` -> (step, rows per step)."""
    steps: dict[str, tuple] = {}
    for e, (party, case, r) in enumerate(sched):
        if party != me:
            continue
        baton.wait(e - 1)
        if r == "warm":
            t0 = time.perf_counter()
            step, rows = make(case)
            t1 = time.perf_counter()
            step()
            sync(device)
            t2 = time.perf_counter()
            n = 0
            while True:   # warm-up: at least 3 steps and warm_s seconds
                step()
                n += 1
                sync(device)
                if n >= 3 and time.perf_counter() - t2 >= warm_s:
                    break
            per = (time.perf_counter() - t2) / n
            if me == "ray":
                k = max(3, math.ceil(window_s / per))
            else:   # same window length (steps) as the Ray side
                k = next(baton.read(i)["k"] for i, (p, c, rr) in enumerate(sched) if p == "ray" and c == case
                         and rr == "warm")
            steps[case] = (step, k)
            baton.post(e, {"k": k, "rows_per_step": rows, "build_s": t1 - t0, "first_step_s": t2 - t1,
                           "first_step_done_at": time.time(), "warm_step_s": per})
        else:
            step, k = steps[case]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(k):
                step()
            sync(device)
            dt = time.perf_counter() - t0
            baton.post(e, {"k": k, "seconds": dt, "gpu_util": gpu_util()})


def run_facts():
    """The driver facts a bench worker needs (no MLflow run, no data sizes); the driver's niceness is read below."""
    from trainers.common.facts import RunFacts

    return RunFacts(steps_per_epoch=1, driver_niceness=DRIVER_NICENESS)


DRIVER_NICENESS = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None


def overhead_worker(config: dict) -> None:
    """Ray Train worker of the overhead section: trainlab's Worker plumbing, each method's step."""
    t_enter = time.time()
    from trainers import get_method
    from trainers.common.worker import Worker

    first = config["cases"][0].split("@")[0]
    w = Worker({"cfg": config["cfgs"][config["cases"][0]], "run": run_facts()}, get_method(first).config_cls)
    Path(config["baton"], "worker.json").write_text(json.dumps(
        {"entered_at": t_enter, "worker_ready_at": time.time(), "threads": __import__("torch").get_num_threads(),
         "device": str(w.device), "pid": os.getpid(), "niceness": os.getpriority(os.PRIO_PROCESS, 0)}))
    baton = Baton(config["baton"])
    src = ShardSource(w)
    try:
        def make(case):
            method = case.split("@")[0]
            cfg = get_method(method).config_cls.model_validate(config["cfgs"][case])
            return build_step(method, cfg, src, config["info"], w.device, w.prepare,
                              make_autocast(cfg.train.precision, w.device))
        run_events("ray", [tuple(x) for x in config["schedule"]], baton, make, w.device, config["window_s"],
                   config["warm_s"])
    except BaseException as e:
        baton.abort(f"worker: {type(e).__name__}: {e}")
        raise


def plain_child(bdir: str) -> None:
    """The plain-PyTorch side of the Ray section: its own process (no Ray), the same thread count as the
    worker, the same step functions on in-memory tensors of the same data."""
    import torch

    spec = torch.load(Path(bdir, "plain.pt"), weights_only=False)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    baton = Baton(bdir, alive=lambda: not Path(bdir, "stop").exists())
    from trainers import get_method

    try:
        src = PlainSource(spec["tensors"], device)

        def make(case):
            method, d = spec["cases"][case]
            cfg = get_method(method).config_cls.model_validate(d)
            return build_step(method, cfg, src, spec["info"], device, lambda mod: mod.to(device),
                              make_autocast(cfg.train.precision, device))
        run_events("plain", spec["sched"], baton, make, device, spec["window_s"], spec["warm_s"])
    except BaseException as e:
        baton.abort(f"plain process: {type(e).__name__}: {e}")
        raise


def pyspy_worker(bdir: str, out: dict, args) -> None:
    """py-spy (non-blocking, 20 Hz, GIL-holding samples) on the Ray worker during the timed rounds: which threads
    hold the GIL while the worker trains, and where the training thread spends it."""
    for _ in range(600):
        if Path(bdir, "worker.json").exists():
            break
        time.sleep(0.2)
    else:
        return
    pid = json.loads(Path(bdir, "worker.json").read_text())["pid"]
    raw = Path(bdir, "pyspy.txt")
    dur = max(5, int(len(METHODS) * args.rounds * args.window * 2 * 0.8))
    try:
        subprocess.run(["py-spy", "record", "-p", str(pid), "--nonblocking", "--gil", "--threads", "--rate", "20",
                        "--duration", str(dur), "--format", "raw", "-o", str(raw)], capture_output=True, timeout=dur + 60)
    except (OSError, subprocess.SubprocessError) as e:
        out["error"] = str(e)
        return
    if not raw.exists():
        out["error"] = "py-spy wrote nothing (no permission to attach?)"
        return
    threads, funcs, total = {}, {}, 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        n = int(n)
        frames = stack.split(";")
        total += n
        th = frames[0].split(": ", 1)[-1][:60]
        threads[th] = threads.get(th, 0) + n
        if "TrainingThread" in frames[0]:
            leaf = frames[-1][:90]
            funcs[leaf] = funcs.get(leaf, 0) + n
    out.update(samples=total, duration_s=dur,
               gil_share_by_thread={k: v / total for k, v in sorted(threads.items(), key=lambda kv: -kv[1])[:6]},
               training_thread_top={k: v / total for k, v in sorted(funcs.items(), key=lambda kv: -kv[1])[:8]})


def ray_overhead(args, store: str, datasets, tensors, info, cases: dict[str, object], use_gpu: bool = False) -> dict:
    """``cases``: case name ("<method>" or "<method>@<tag>") -> its config. Returns per-case ratios and start-up."""
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    names = list(cases)
    sched = schedule(names, args.rounds)
    bdir = tempfile.mkdtemp(prefix="baton-", dir=store)
    used = {k for c in names for k in datasets if k.startswith(c.split("@")[0] + ".")}
    device = torch.device("cuda") if use_gpu else torch.device("cpu")
    threads = max(1, int(next(iter(cases.values())).scaling.cpus_per_worker))
    config = {"cases": names, "cfgs": {c: cfg.model_dump(mode="json") for c, cfg in cases.items()},
              "info": info, "schedule": sched, "baton": bdir, "window_s": args.window, "warm_s": args.warm}
    trainer = TorchTrainer(
        overhead_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=f"perf-overhead-{int(time.time())}", storage_path=f"{store}/runs"),
        datasets={k: datasets[k] for k in used})
    import torch as _torch

    _torch.save({"tensors": {k: tensors[k] for k in used}, "info": info, "sched": sched, "threads": threads,
                 "cases": {c: [c.split("@")[0], cfg.model_dump(mode="json")] for c, cfg in cases.items()},
                 "device": str(device), "window_s": args.window, "warm_s": args.warm}, Path(bdir, "plain.pt"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--plain-child", bdir], env=env)
    baton = Baton(bdir)

    def watchdog():   # a plain side that dies must not leave the worker waiting
        if child.wait() != 0 and not Path(bdir, "stop").exists():
            baton.abort(f"plain process exited with {child.returncode}")
    threading.Thread(target=watchdog, daemon=True).start()
    spy: dict = {}
    if shutil.which("py-spy") and not use_gpu:
        threading.Thread(target=pyspy_worker, args=(bdir, spy, args), daemon=True).start()
    t_fit = time.time()
    try:
        trainer.fit()
    finally:
        t_end = time.time()
        Path(bdir, "stop").write_text("done")
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
    ev = [baton.read(i) for i in range(len(sched))]
    wk = json.loads(Path(bdir, "worker.json").read_text())
    out: dict = {"cases": {}, "threads": threads, "device": str(device), "worker": wk, "pyspy": spy,
                 "driver_niceness": DRIVER_NICENESS,
                 "startup": {"fit_to_worker_entered_s": wk["entered_at"] - t_fit,
                             "fit_to_worker_ready_s": wk["worker_ready_at"] - t_fit}}
    last = max(i for i, (p, _, _) in enumerate(sched) if p == "ray")
    out["startup"]["last_event_to_fit_return_s"] = t_end - Path(bdir, f"ev{last:05d}.json").stat().st_mtime
    for c in names:
        per = {"ray": {}, "plain": {}}
        warm = {}
        for (p, cc, r), e in zip(sched, ev):
            if cc != c:
                continue
            if r == "warm":
                warm[p] = e
            else:
                per[p][r] = e["seconds"] / e["k"]
        rows = warm["ray"]["rows_per_step"]
        ratios = [per["plain"][r] / per["ray"][r] for r in range(args.rounds)]   # steps/s ray / steps/s plain
        utils = [e.get("gpu_util") for (p, cc, r), e in zip(sched, ev) if cc == c and r != "warm"]
        out["cases"][c] = {
            "k": warm["ray"]["k"], "rows_per_step": rows,
            "ray_steps_per_s": stats(1 / v for v in per["ray"].values()),
            "plain_steps_per_s": stats(1 / v for v in per["plain"].values()),
            "plain_rows_per_s": stats(rows / v for v in per["plain"].values()),
            "ratio_ray_over_plain": stats(ratios),
            "ray_fit_to_first_step_s": warm["ray"]["first_step_done_at"] - t_fit,
            "ray_build_s": warm["ray"]["build_s"], "ray_first_step_s": warm["ray"]["first_step_s"],
            "plain_build_s": warm["plain"]["build_s"], "plain_first_step_s": warm["plain"]["first_step_s"],
            "gpu_util": stats([u for u in utils if u is not None]) if any(u is not None for u in utils) else None,
        }
    return out


# =============================================================================================
# Method overhead: the method's step vs a plain step on the same network, pure PyTorch
# =============================================================================================

METHOD_PAIRS = [
    # name, method, sets, baseline (method, kind, sets), goal (max extra) or None = ratio only, what
    ("decorrelation: correlation loss (C=256, B=256)", "decorrelation",
     ["model.feature_dim=256", "train.batch_size=256"], ("decorrelation", "ce_same_forward", None), GOAL_EXTRA,
     "variant A step vs cross-entropy over the same forward pass (source + target rows)"),
    ("decorrelation: whole step vs supervised CE (C=256, B=256)", "decorrelation",
     ["model.feature_dim=256", "train.batch_size=256"], ("decorrelation", "ce_labelled", None), None,
     "includes the forward/backward of the unlabelled target batch (twice the rows)"),
    ("continual: masked update (reading A, task 2 S70)", "continual", [], ("continual", "plain", None), GOAL_EXTRA,
     "MaskedOptimizer/FrozenGuard vs a plain optimizer, same TaskNet, same step function"),
    ("continual: masked forward + update (reading B)", "continual", ["method.reading=B"],
     ("continual", "plain", ["method.reading=B"]), GOAL_EXTRA,
     "W ⊙ mask in the forward (functional_call) + masked update vs plain"),
    ("mixture_sparsity: mixture penalty", "mixture_sparsity", [], ("mixture_sparsity", "plain", None), GOAL_EXTRA,
     "E + λ·R (mixture prior on the group norms) vs cross-entropy only"),
    ("mixture_sparsity: mixture penalty at batch 512", "mixture_sparsity", ["train.batch_size=512"],
     ("mixture_sparsity", "plain", None), GOAL_EXTRA, "the same, 8x the rows per step (the penalty's cost is fixed)"),
    ("shift_explainer: Z-L HSIC term (z_independence=0.03)", "shift_explainer", ["method.z_independence=0.03"],
     ("shift_explainer", "method", []), GOAL_EXTRA, "ae step with vs without the optional HSIC penalty"),
    ("shift_explainer: vae vs ae step", "shift_explainer", ["method.model_type=vae"],
     ("shift_explainer", "method", []), None, "ratio only"),
    ("shift_explainer: bigan vs ae step", "shift_explainer", ["method.model_type=bigan"],
     ("shift_explainer", "method", []), None, "ratio only (a discriminator update per step)"),
    ("ssd2gan: Ds + DCT + Df (V3) vs single discriminator (sngan)", "ssd2gan", [],
     ("ssd2gan", "method", ["method.variant=sngan"]), None, "ratio only"),
]


def alternate(fns: dict, rounds: int, window_s: float, warm_s: float, device) -> dict[str, list[float]]:
    """Seconds per step of each function, interleaved STEP BY STEP (A B B A A B ...) so that both see the
    same noise; one value per round (≈ 2·window_s of steps), after a warm-up."""
    names = list(fns)
    for f in fns.values():
        f()
        t0, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - t0 < warm_s:
            f()
            n += 1
    sync(device)
    per = {k: [] for k in names}
    for _ in range(rounds):
        tot, cnt = dict.fromkeys(names, 0.0), 0
        t_round = time.perf_counter()
        while cnt < 4 or time.perf_counter() - t_round < 2 * window_s:
            for name in (names if cnt % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                fns[name]()
                sync(device)
                tot[name] += time.perf_counter() - t0
            cnt += 1
        for name in names:
            per[name].append(tot[name] / cnt)
    return per


def method_overhead(args, tensors, info) -> dict:
    import torch

    torch.set_num_threads(1)
    device = torch.device("cpu")
    src = PlainSource(tensors, device)
    out = {}
    for name, method, sets, (bm, bkind, bsets), goal, what in METHOD_PAIRS:
        cfg = method_cfg(method, sets)
        bcfg = method_cfg(bm, sets if bsets is None else bsets)
        ac = make_autocast("fp32", device)
        meth, _ = build_step(method, cfg, src, info, device, lambda mod: mod, ac)
        base, _ = build_step(bm, bcfg, src, info, device, lambda mod: mod, ac, kind=bkind)
        per = alternate({"base": base, "method": meth}, args.rounds, args.window, args.warm, device)
        ratio = stats(m / b for m, b in zip(per["method"], per["base"]))
        res = {"what": what, "sets": sets, "baseline": f"{bm}:{bkind} {bsets or ''}".strip(),
               "base_ms": stats(1000 * v for v in per["base"]), "method_ms": stats(1000 * v for v in per["method"]),
               "ratio": ratio, "extra": {k: (v - 1 if k in ("median", "min", "max") else v)
                                        for k, v in ratio.items() if k != "values"},
               "goal_max_extra": goal}
        if goal is not None:
            res["pass"] = ratio["median"] - 1 <= goal
        out[name] = res
        print(f"[perf] method: {name}: ratio {fmt(ratio)}", flush=True)
    return out


# =============================================================================================
# Data: Ray Data from parquet, trainlab's reader and ShardLoader, vs what the steps consume
# =============================================================================================

def data_section(args, store: str, consumption: dict[str, float]) -> dict:
    import ray.data
    import torch

    from pipelines.data import embedded_digits_shift, read_parquet, write_parquet
    from trainers.common.worker import ShardLoader

    torch.set_num_threads(1)
    arrays = embedded_digits_shift()
    x, y = arrays["source_train"]
    reps = max(1, args.data_rows // len(x))
    rng = np.random.default_rng(0)
    big = {k: v for k, v in arrays.items()}
    big["source_train"] = (np.concatenate([x + rng.normal(0, 0.01, x.shape).astype(np.float32) for _ in range(reps)]),
                           np.tile(y, reps))
    path = f"{store}/perf_data/digits_x{reps}.parquet"
    write_parquet(big, path)
    n_rows = sum(len(v[0]) for v in big.values())
    size_mb = os.path.getsize(path) / 2 ** 20
    bsz = 64

    def raw():
        ds = ray.data.read_parquet(path, columns=["image", "label"])
        n = 0
        for b in ds.iter_torch_batches(batch_size=bsz):
            n += len(b["label"])
        return n

    bundle = read_parquet(path)
    tl_ds = bundle.datasets["source_train"]

    def trainlab_reader():
        n = 0
        for b in tl_ds.iter_torch_batches(batch_size=bsz):
            n += len(b["y"])
        return n

    cached = ShardLoader(tl_ds.iterator(), bsz, torch.device("cpu"), cache=True, seed=0)
    t0 = time.perf_counter()
    cached._materialise()
    materialise_s = time.perf_counter() - t0
    steps = bundle.sizes["source_train"] // bsz
    ep = iter(range(1, 10 ** 6))

    def shard_cached():
        n = 0
        for b in cached.epoch(next(ep), steps):
            n += len(b["y"])
        return n

    streaming = ShardLoader(tl_ds.iterator(), bsz, torch.device("cpu"), cache=False, seed=0)

    def shard_streaming():
        n = 0
        for b in streaming.epoch(next(ep), steps):
            n += len(b["y"])
        return n

    fns = {"ray_data_read_parquet": raw, "trainlab_read_parquet": trainlab_reader,
           "shardloader_cached": shard_cached, "shardloader_streaming": shard_streaming}
    for f in fns.values():   # warm: first pass (file cache, Ray Data executor)
        f()
    rates = {k: [] for k in fns}
    order = list(fns)
    for r in range(args.data_rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            n = fns[k]()
            rates[k].append(n / (time.perf_counter() - t0))
    out = {"parquet": {"rows": n_rows, "train_rows": bundle.sizes["source_train"], "file_mb": size_mb,
                       "batch_size": bsz, "what": f"embedded digits 16x16, source_train tiled {reps}x (+N(0,0.01))"},
           "shardloader_materialise_s": materialise_s,
           "loaders_rows_per_s": {k: stats(v) for k, v in rates.items()}, "vs_consumption": {}}
    need = max(consumption.values()) if consumption else None
    out["consumption_rows_per_s"] = consumption
    if need:
        for k, v in rates.items():
            ratio = stats(np.asarray(v) / need)
            out["vs_consumption"][k] = {"ratio": ratio, "pass": ratio["median"] >= GOAL_DATA}
    return out


# =============================================================================================
# Sweeps: tuning.sweep.sweep, ASHA vs FIFO
# =============================================================================================

def _trial_startup(parent_run_id: str) -> dict:
    """Mean start-up/teardown and loop seconds of a sweep's trials, from their MLflow child runs (each logs its
    ``startup.*`` timing when its loop returns; a trial ASHA stops never does)."""
    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    c = MlflowClient(tracking.tracking_uri())
    parent = c.get_run(parent_run_id)
    runs = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)
    over = [r.data.metrics["startup.overhead_s"] for r in runs if "startup.overhead_s" in r.data.metrics]
    loop = [r.data.metrics["startup.loop_s"] for r in runs if "startup.loop_s" in r.data.metrics]
    return {"trials_timed": len(over), "trial_overhead_s": float(np.mean(over)) if over else None,
            "trial_loop_s": float(np.mean(loop)) if loop else None}


def sweep_section(args) -> dict:
    import ray

    from pipelines.run import load_config
    from tuning.sweep import sweep

    # The trials' worker and Ray Data CPUs are logical: sweep_concurrent trials share the machine's CPUs
    # (a trial's cost is mostly its start-up, processes and imports, so concurrent trials overlap its waits).
    share = f"{float(ray.cluster_resources().get('CPU', 2)) / (2 * args.sweep_concurrent):g}"
    sets = ["tracking.log_model=false", f"train.epochs={args.sweep_epochs}", f"scaling.cpus_per_worker={share}",
            f"scaling.data_cpus={share}"]
    # The method's default model by default: with --quick's tiny net an epoch costs ~0.1 s, so a trial is all
    # fixed cost and no scheduler can save anything; early stopping is for trials whose epochs cost something.
    quick = args.sweep_config == "quick"
    cfg = load_config("decorrelation", None, sets, quick=quick)
    out = {"method": "decorrelation", "num_samples": args.sweep_trials, "max_concurrent": args.sweep_concurrent,
           "config": ("--quick + " if quick else "defaults + ") + " ".join(sets), "runs": {}}
    for sched in ("asha", "fifo"):
        t0 = time.perf_counter()
        res = sweep("decorrelation", cfg, num_samples=args.sweep_trials, scheduler=sched, search="random",
                    max_concurrent=args.sweep_concurrent)
        wall = time.perf_counter() - t0
        epochs = [t.get("epochs") or 0 for t in res.trials]
        out["runs"][sched] = {"wall_s": wall, "best_metric": res.best_metric, "metric": res.metric,
                              "trials": res.num_trials, "terminated_early": res.num_terminated_early,
                              "epochs_run": int(sum(epochs)),
                              "errors": sum(1 for t in res.trials if t.get("error")),
                              **_trial_startup(res.parent_run_id)}
        print(f"[perf] sweep {sched}: {wall:.0f} s, best {res.metric}={res.best_metric:.4f}, "
              f"{res.num_terminated_early} stopped early", flush=True)
    a, f = out["runs"]["asha"], out["runs"]["fifo"]
    out["wall_ratio_asha_over_fifo"] = a["wall_s"] / f["wall_s"]
    out["best_metric_delta_asha_minus_fifo"] = a["best_metric"] - f["best_metric"]
    return out


# =============================================================================================
# Scaling: 1 vs 2 workers
# =============================================================================================

def scaling_worker(config: dict) -> None:
    import ray.train
    import torch

    from trainers import get_method
    from trainers.common.worker import Worker

    method = config["method"]
    w = Worker({"cfg": config["cfg"], "run": run_facts()}, get_method(method).config_cls)
    cfg = w.cfg
    step, rows = build_step(method, cfg, ShardSource(w), config["info"], w.device, w.prepare,
                            make_autocast(cfg.train.precision, w.device), world=w.world_size)
    for _ in range(config["warm_steps"]):
        step()
    times = []
    for _ in range(config["rounds"]):
        t0 = time.perf_counter()
        for _ in range(config["k"]):
            step()
        times.append((time.perf_counter() - t0) / config["k"])
    if w.is_chief:
        Path(config["out"]).write_text(json.dumps({"sec_per_step": times, "rows_per_step_per_worker": rows,
                                                   "threads": torch.get_num_threads(), "world": w.world_size}))
    ray.train.report({"done": 1.0})


def scaling_section(args, store: str, datasets, info, plain_steps: dict) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    setups = {"1 worker x 1 thread": (1, 1.0, 1), "2 workers x 1 thread (DDP, gloo)": (2, 0.5, 1),
              "1 worker x 2 threads": (1, 1.0, 2)}
    out = {"cases": {}}
    for batch in args.scaling_batches:
        method = "decorrelation"
        label = f"{method} global batch {batch}"
        per = {s: [] for s in setups}
        # k: about window_s of the 1-worker step (from the ray section when it ran, else a guess)
        sps = plain_steps.get(method, 50.0) * 64 / batch
        k = max(5, int(args.window * sps))
        for r in range(args.scaling_rounds):
            for s in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
                nw, cpus, threads = setups[s]
                cfg = method_cfg(method, [f"train.batch_size={batch}", f"scaling.cpus_per_worker={threads}"])
                outp = f"{store}/scaling_{batch}_{nw}_{threads}_{r}.json"
                t0 = time.perf_counter()
                TorchTrainer(scaling_worker, train_loop_config={
                    "method": method, "cfg": cfg.model_dump(mode="json"), "info": info, "k": k,
                    "rounds": args.rounds, "warm_steps": max(3, k // 3), "out": outp},
                    scaling_config=ScalingConfig(num_workers=nw, resources_per_worker={"CPU": cpus}),
                    run_config=RunConfig(name=f"perf-scaling-{int(time.time() * 1000)}", storage_path=f"{store}/runs"),
                    datasets={k_: datasets[k_] for k_ in datasets if k_.startswith(method + ".")}).fit()
                res = json.loads(Path(outp).read_text())
                g = res["rows_per_step_per_worker"] * res["world"]
                per[s] += [g / v for v in res["sec_per_step"]]
                print(f"[perf] scaling {label} {s}: {np.median([g / v for v in res['sec_per_step']]):.0f} rows/s "
                      f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
        base = list(setups)[0]
        out["cases"][label] = {s: {"rows_per_s": stats(v), "ratio_to_1_worker": stats(np.asarray(v) / np.median(per[base]))}
                               for s, v in per.items()}
    return out


# =============================================================================================
# Profiles of the misses
# =============================================================================================

def profile_step(fn, steps: int = 30) -> dict[str, list[float]]:
    """op -> [self CPU ms per step, calls per step] over ``steps`` steps (torch.profiler, after 3 warm steps)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return {e.key: [e.self_cpu_time_total / 1000 / steps, e.count / steps] for e in prof.key_averages()}


def profile_section(results: dict, tensors, info) -> dict:
    """torch.profiler (CPU, 1 thread) of both sides of every method-overhead pair that misses its goal: the ops
    whose self time grew most from the baseline to the method (where the extra time goes)."""
    import torch

    torch.set_num_threads(1)
    device = torch.device("cpu")
    src = PlainSource(tensors, device)
    out = {}
    for name, method, sets, (bm, bkind, bsets), goal, _ in METHOD_PAIRS:
        r = results.get("method", {}).get(name)
        if not r or r.get("pass", True):
            continue
        ac = make_autocast("fp32", device)
        meth, _ = build_step(method, method_cfg(method, sets), src, info, device, lambda mod: mod, ac)
        base, _ = build_step(bm, method_cfg(bm, sets if bsets is None else bsets), src, info, device,
                             lambda mod: mod, ac, kind=bkind)
        pm, pb = profile_step(meth), profile_step(base)
        tm, tb = sum(v[0] for v in pm.values()), sum(v[0] for v in pb.values())
        delta = sorted(((op, pm.get(op, [0, 0])[0] - pb.get(op, [0, 0])[0], pm.get(op, [0, 0])[1],
                         pb.get(op, [0, 0])[1]) for op in set(pm) | set(pb)), key=lambda t: -t[1])
        out[name] = {"method_self_ms": tm, "baseline_self_ms": tb,
                     "ops_method": int(sum(v[1] for v in pm.values())), "ops_baseline": int(sum(v[1] for v in pb.values())),
                     "top_growth": [{"op": op, "extra_ms_per_step": d, "calls_method": cm, "calls_baseline": cb}
                                    for op, d, cm, cb in delta[:10]]}
    return out


# =============================================================================================
# Main
# =============================================================================================

MIXTURE_FIX_CASES = ("mixture_sparsity: mixture penalty", "mixture_sparsity: mixture penalty at batch 512")


def fixes_section(before: dict, after: dict) -> list[dict]:
    """Before/after of each fix: the fixes the ``--before`` run recorded (kept as they were measured), and the
    mixture penalty's per-step cost at the ``--before`` commit vs this run."""
    out = list(before.get("fixes", []))
    b, a = before.get("method", {}), after.get("method", {})
    rows = [{"case": c, "before": b[c]["ratio"], "after": a[c]["ratio"],
             "before_ms": b[c]["method_ms"]["median"] - b[c]["base_ms"]["median"],
             "after_ms": a[c]["method_ms"]["median"] - a[c]["base_ms"]["median"]}
            for c in MIXTURE_FIX_CASES if c in a and c in b]
    if rows:
        out.append({"what": "mixture penalty: prior validated once per run (Regularizer, Mixture), components in one "
                            "broadcast with fused ops (addcmul), a lighter logsumexp, autocast entered only when on",
                    "file": "trainers/mixture_sparsity/losses.py, trainers/mixture_sparsity/loop.py",
                    "kind": "method", "before_commit": before.get("machine", {}).get("git_sha"),
                    "after_commit": after["machine"]["git_sha"], "before_date": before.get("machine", {}).get("date"),
                    "rows": rows})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2-3 minute smoke version (fewer repeats, tiny sweeps)")
    ap.add_argument("--only", default=None, help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument("--rounds", type=int, default=None, help="alternating windows per comparison (default 10, quick 3)")
    ap.add_argument("--window", type=float, default=None, help="seconds per timed window (default 0.5, quick 0.3)")
    ap.add_argument("--warm", type=float, default=None, help="warm-up seconds per step function (default 1.0)")
    ap.add_argument("--sweep-trials", type=int, default=None,
                    help="trials per sweep (default 8, quick 2). 16, the issue's figure, takes about 28 min for the two "
                         "sweeps on 2 cores (bench/results/performance_16trials.md): each trial is a real TorchTrainer "
                         "run, most of it start-up")
    ap.add_argument("--sweep-epochs", type=int, default=None,
                    help="epochs per sweep trial (default 120, about 2 min of training per trial on 2 cores; quick 2): "
                         "ASHA (reduction factor 2, first milestone at a third) saves a share of the training, so "
                         "trials must train long enough against their fixed cost (~3 s) for the share to show")
    ap.add_argument("--sweep-config", choices=("default", "quick"), default="default",
                    help="the trials' config: the method's defaults (default) or --quick's tiny model")
    ap.add_argument("--startup-repeats", type=int, default=None, help="runs per variant and mode (default 3, quick 1)")
    ap.add_argument("--before-rev", default=None,
                    help="git revision for the startup section's before/after (e.g. the last landed main)")
    ap.add_argument("--sweep-concurrent", type=int, default=None,
                    help="trials at once (default 2); each gets CPUs/(2·this) logical CPUs for its worker and as many "
                         "for Ray Data. On 2 cores, 4 at once is slower per trial than 2 (start-ups compete for CPU)")
    ap.add_argument("--name", default="performance", help="results file stem under bench/results/")
    ap.add_argument("--before", default=None,
                    help="performance JSON written by this script at the commit before a fix (its 'ray' section is "
                         "shown next to this run's as the fix's before/after)")
    ap.add_argument("--plain-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only rewrite the markdown from a results JSON this script wrote (no measurement)")
    args = ap.parse_args()
    if args.plain_child:
        plain_child(args.plain_child)
        return
    if args.render:
        R = json.loads(Path(args.render).read_text())
        (Path(args.render).with_suffix(".md")).write_text(render(R, argparse.Namespace(**R["args"])))
        print(f"wrote {Path(args.render).with_suffix('.md')}")
        return
    q = args.quick
    args.rounds = args.rounds or (3 if q else 10)
    args.window = args.window or (0.3 if q else 0.5)
    args.warm = args.warm or (0.3 if q else 1.0)
    args.sweep_trials = args.sweep_trials or (2 if q else 8)
    args.sweep_epochs = args.sweep_epochs or (2 if q else 120)
    args.startup_repeats = args.startup_repeats or (1 if q else 3)
    args.sweep_concurrent = args.sweep_concurrent or 2
    args.data_rows = 10_000 if q else 40_000
    args.data_rounds = 2 if q else 3
    args.scaling_rounds = 1
    args.scaling_batches = [64] if q else [256]   # one batch size: keeps the whole run within 20 minutes
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    bad = only - set(SECTIONS)
    if bad:
        ap.error(f"--only: unknown sections {sorted(bad)}; allowed: {','.join(SECTIONS)}")

    store = isolated_store("trainlab-perf-")
    import torch

    from pipelines.cluster import init_ray

    t_all = time.time()
    results: dict = {"args": vars(args), "argv": sys.argv[1:]}
    timings = {}
    if "startup" in only:  # first: its cold runs start their own local Ray, which must be the only one
        from startup import startup_section

        t0 = time.perf_counter()
        results["startup"] = startup_section(args.startup_repeats, args.before_rev)
        timings["startup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    resources = init_ray()
    results["ray_init_s"] = time.perf_counter() - t0
    results["ray_resources"] = resources
    print(f"[perf] ray.init {results['ray_init_s']:.1f} s; loading data", flush=True)
    datasets, tensors, info = load_method_data(METHODS, lambda m: [])
    results["data_facts"] = info

    if "ray" in only:
        t0 = time.perf_counter()
        results["ray"] = ray_overhead(args, store, datasets, tensors, info, {m: method_cfg(m) for m in METHODS})
        timings["ray"] = time.perf_counter() - t0
        for c, r in results["ray"]["cases"].items():
            r["pass"] = r["ratio_ray_over_plain"]["median"] >= GOAL_RAY
            print(f"[perf] ray: {c}: {fmt(r['ratio_ray_over_plain'])} ({r['plain_steps_per_s']['median']:.0f} "
                  f"steps/s plain)", flush=True)
    if "method" in only:
        t0 = time.perf_counter()
        results["method"] = method_overhead(args, tensors, info)
        timings["method"] = time.perf_counter() - t0
    if "data" in only:
        t0 = time.perf_counter()
        cons = ({m: r["plain_rows_per_s"]["median"] for m, r in results["ray"]["cases"].items()}
                if "ray" in results else {})
        results["data"] = data_section(args, store, cons)
        timings["data"] = time.perf_counter() - t0
        print(f"[perf] data: {json.dumps({k: round(v['median']) for k, v in results['data']['loaders_rows_per_s'].items()})}",
              flush=True)
    if "sweep" in only:
        t0 = time.perf_counter()
        results["sweep"] = sweep_section(args)
        timings["sweep"] = time.perf_counter() - t0
    if "scaling" in only:
        t0 = time.perf_counter()
        plain = ({m: r["plain_steps_per_s"]["median"] for m, r in results["ray"]["cases"].items()}
                 if "ray" in results else {})
        results["scaling"] = scaling_section(args, store, datasets, info, plain)
        timings["scaling"] = time.perf_counter() - t0
    if "gpu" in only:
        if torch.cuda.is_available():
            t0 = time.perf_counter()
            gpu_cases = {}
            for m in METHODS:
                gpu_cases[m] = method_cfg(m, ["scaling.use_gpu=true"])
            for m in ("decorrelation", "mixture_sparsity"):   # the loops that run under Worker.autocast
                gpu_cases[f"{m}@bf16"] = method_cfg(m, ["scaling.use_gpu=true", "train.precision=bf16"])
            results["gpu"] = ray_overhead(args, store, datasets, tensors, info, gpu_cases, use_gpu=True)
            results["gpu"]["device_name"] = torch.cuda.get_device_name(0)
            for m in ("decorrelation", "mixture_sparsity"):
                c = results["gpu"]["cases"]
                c[f"{m}@bf16"]["bf16_over_fp32_plain_steps"] = (c[f"{m}@bf16"]["plain_steps_per_s"]["median"]
                                                                / c[m]["plain_steps_per_s"]["median"])
            timings["gpu"] = time.perf_counter() - t0
        else:
            results["gpu"] = {"available": False, "note": "no GPU available on this machine "
                              "(torch.cuda.is_available() is False); the GPU variants were not run"}
    if "profile" in only and "method" in results:
        t0 = time.perf_counter()
        results["profile"] = profile_section(results, tensors, info)
        timings["profile"] = time.perf_counter() - t0
    results["machine"] = machine_info() | {"torch_threads_default": torch.get_num_threads(),
                                           "device": "cuda" if torch.cuda.is_available() else "cpu"}
    if args.before and "ray" in results:
        try:
            results["fixes"] = fixes_section(json.loads(Path(args.before).read_text()), results)
        except (OSError, ValueError, KeyError) as e:
            results.setdefault("notes", []).append(f"* --before {args.before}: not used ({type(e).__name__}: {e})")
    results["section_seconds"] = timings
    results["total_s"] = time.time() - t_all
    md = render(results, args)
    write(args.name, results, md)
    shutil.rmtree(store, ignore_errors=True)


# =============================================================================================
# The report
# =============================================================================================

MISS_NOTES = {
    "decorrelation: correlation loss (C=256, B=256)":
        "Why: the extra is the correlation matrices themselves — variant A computes R of the unlabelled features "
        "with its gradient and, as a detached diagnostic, R of the labelled ones (each a (B×C)ᵀ(B×C) product, "
        "plus the backward's two), then the gradient flows back through fc1 into the same CNN. It is `aten::mm` "
        "and the elementwise ops of the standardisation in the table, not a Python or data cost; at C=256 the "
        "C² terms are as large as a share of the small CNN's own step. Not changed: the maths is the method.",
    "mixture_sparsity: mixture penalty":
        "Why: the penalty is a fixed number of small ops per step, each costing its dispatch time whatever its "
        "size: the group norms of the fc0/fc1 rows (mul, sum, cat, add, sqrt), the log densities of all components "
        "in one broadcast (sub, mul, addcmul) and the log-sum-exp (amax, sub, exp, sum, log, add), plus as many "
        "backward nodes (see the profile's op counts). That is a fixed ≈0.9 ms per step (the same at batch 512), "
        "about half of a 2×128 sigmoid MLP step on 8×8 digits at batch 64. The fix (see Fixes) took out what was not the maths: the per-step "
        "validation and python→tensor conversion of the prior's parameters, one op chain per component, "
        "torch.logsumexp's infinity guards, three autocast region entries. Tried and not taken: a hand-written "
        "autograd.Function with the closed-form gradient (no faster: 1.64× vs 1.54× in one microbenchmark) and "
        "torch.compile of the penalty (1.56× vs 1.73× eager, for a 24 s compile in every worker process and a C++ "
        "toolchain on every node). The share falls as the network's own step grows (next row).",
    "mixture_sparsity: mixture penalty at batch 512":
        "Why: as above: the same fixed per-step cost of small ops; the share shrinks as the network's own step "
        "grows.",
    "continual: masked forward + update (reading B)":
        "Why: reading B (not the default; reading A passes) computes W ⊙ mask for every masked weight in every "
        "forward (`torch.where`, and its backward) and runs the model through `torch.func.functional_call`, which "
        "re-binds the parameters each call; on a small CNN at batch 32 that is more than 10%. Left as is: the "
        "masked forward is what reading B means.",
    "continual: masked update (reading A, task 2 S70)":
        "Why: FrozenGuard zeroes the frozen gradient entries, snapshots the guarded parameters and writes them "
        "back after the optimizer step (`masked_fill_`, `clone`, `where`, `copy_` per guarded tensor).",
    "shift_explainer: Z-L HSIC term (z_independence=0.03)":
        "Why: the normalised HSIC builds B×B Gram matrices of Z and L and centres them (`mm` on B×B).",
}


def ray_notes(R: dict) -> list[str]:
    ro = R["ray"]
    wk = ro["worker"]
    L = [f"Worker process: niceness {wk.get('niceness')} (this driver and the plain process: "
         f"{ro.get('driver_niceness')}); torch threads {wk.get('threads')} on both sides."]
    spy = ro.get("pyspy") or {}
    if spy.get("samples"):
        g = spy["gil_share_by_thread"]
        L.append(f"py-spy on the worker during the rounds ({spy['samples']} GIL-holding samples at 20 Hz, "
                 "non-blocking): share of samples by thread: " + ", ".join(f"{k} {v:.0%}" for k, v in g.items())
                 + "; training thread's leaf functions: " + ", ".join(f"`{k}` {v:.0%}" for k, v in
                                                                     list(spy["training_thread_top"].items())[:5]) + ".")
    elif spy.get("error"):
        L.append(f"py-spy: {spy['error']}.")
    misses = [c for c, r in ro["cases"].items() if not r["pass"]]
    if misses:
        share = next((v for k, v in (spy.get("gil_share_by_thread") or {}).items() if "TrainingThread" in k), None)
        why = [f"Misses ({', '.join(misses)}): the worker runs the same function on the same tensors"]
        if share is not None:
            why.append(f"py-spy finds its training thread in {share:.0%} of the GIL-holding samples, so Ray's own "
                       "Python threads do not compete for the interpreter during the step")
        if wk.get("niceness") is not None and ro.get("driver_niceness") is not None \
                and wk["niceness"] > ro["driver_niceness"]:
            why.append(f"the worker ran at niceness {wk['niceness']} against {ro['driver_niceness']} for the plain "
                       "process, so on this shared 2-core machine it loses the CPU to anything at the default "
                       "priority (the 'Fixes' section)")
        else:
            why.append("both processes ran at the same niceness, so what is left is the CPU this shared 2-core "
                       "machine gave each process window by window (Ray's raylet/GCS/dashboard and the other "
                       "user's jobs share the two cores); the min..max spread shows that noise, and a miss whose "
                       "range reaches the goal is within it")
        L.append("; ".join(why) + ".")
    return ["", *L, ""]


def _pf(ok) -> str:
    return "—" if ok is None else ("pass" if ok else "**miss**")


def render(R: dict, args) -> str:
    m = R["machine"]
    L = ["# trainlab performance (bench/run_all.py)", "",
         f"{m['date']} · {m['platform']} · {m['cpus']} CPUs · Python {m['python']} · torch {m['torch']} · "
         f"Ray {m['ray']} · git {m['git_sha']} · device {m['device']}"
         + (f" ({m['gpu']})" if m.get("gpu") else "") + f" · total {R['total_s'] / 60:.1f} min",
         "",
         f"Every figure: median (min..max) over {args.rounds} repeats, both sides measured in this same run: Ray "
         f"section = alternating windows of ≈{args.window:g} s (ABBA order); method section = the two steps "
         f"interleaved step by step in rounds of ≈{2 * args.window:g} s. Reproduce: `flock /tmp/trainlab-ray.lock python "
         "bench/run_all.py " + " ".join(R.get("argv", sys.argv[1:])) + "`", ""]
    summary = ["## Summary", "", "| figure | value | goal | |", "|---|---|---|---|"]
    if "ray" in R:
        for c, r in R["ray"]["cases"].items():
            summary.append(f"| Ray Train / plain PyTorch steps/s, {c} | {fmt(r['ratio_ray_over_plain'])} | ≥ {GOAL_RAY} "
                           f"| {_pf(r['pass'])} |")
    if "method" in R:
        for name, r in R["method"].items():
            g = r["goal_max_extra"]
            summary.append(f"| {name}: step time ratio | {fmt(r['ratio'])} | "
                           + (f"≤ {1 + g:.2f} (≤ {g:.0%} extra)" if g is not None else "shown") + f" | {_pf(r.get('pass'))} |")
    if "data" in R and R["data"]["vs_consumption"]:
        for k, v in R["data"]["vs_consumption"].items():
            summary.append(f"| {k} rows/s ÷ fastest step's consumption | {fmt(v['ratio'], 1)} | ≥ {GOAL_DATA:g} | "
                           f"{_pf(v['pass'])} |")
    if "sweep" in R:
        s = R["sweep"]
        ok = s["wall_ratio_asha_over_fifo"] <= 0.6 and s["best_metric_delta_asha_minus_fifo"] >= 0
        summary.append(f"| sweep wall time ASHA / FIFO ({s['num_samples']} trials; best metric ASHA − FIFO "
                       f"{s['best_metric_delta_asha_minus_fifo']:+.4f}) | {s['wall_ratio_asha_over_fifo']:.2f} "
                       f"| ≤ 0.6, best ≥ FIFO's | {_pf(ok)} (one run each) |")
    if "startup" in R:
        for mode, m in R["startup"]["modes"].items():
            goal = 20 if mode == "cold" else 10
            for v, what in (("after", "1 Ray Train worker"), ("local", "local mode, --num-workers 0")):
                if v not in m:
                    continue
                mu, h = m[v]["overhead_s"]
                summary.append(f"| start-up overhead of one quick run, {mode}, {what} (s) | {mu:.1f} ± {h:.1f}"
                               + (f"; after/before {m['overhead_ratio_after_over_before'][0]:.2f}"
                                  if v == "after" and "overhead_ratio_after_over_before" in m else "")
                               + f" | ≤ {goal} | {_pf(mu <= goal)} |")
    if "scaling" in R:
        for label, cs in R["scaling"]["cases"].items():
            for s, v in cs.items():
                if s.startswith("2 workers"):
                    summary.append(f"| {label}: 2 workers / 1 worker rows/s | {fmt(v['ratio_to_1_worker'], 2)} | "
                                   "— (2 cores) | shown |")
    summary.append(f"| GPU | {'see GPU section' if R.get('gpu', {}).get('available', True) and 'gpu' in R else R.get('gpu', {}).get('note', 'not run')} | | |")
    L += summary + [""]

    if "ray" in R:
        ro = R["ray"]
        st = ro["startup"]
        L += ["## Ray Train overhead (1 worker vs plain PyTorch, same step function, same data)", "",
              f"One `TorchTrainer.fit()` (1 worker, {ro['threads']} torch thread(s), device {ro['device']}); the worker "
              "and this process alternate timed windows of the same number of steps through a file baton (they never "
              "run at the same time); the plain loop runs in this process with the same thread count on in-memory "
              "tensors of the same data; the Ray side draws from trainlab's ShardLoader (cached) like the method loops.",
              "", "| method | rows/step | plain steps/s | Ray steps/s | Ray / plain | goal | fit → first step (s) | "
              "plain build + first step (s) |", "|---|---|---|---|---|---|---|---|"]
        for c, r in ro["cases"].items():
            L.append(f"| {c} | {r['rows_per_step']} | {fmt(r['plain_steps_per_s'], 1)} | {fmt(r['ray_steps_per_s'], 1)} | "
                     f"{fmt(r['ratio_ray_over_plain'])} | ≥ {GOAL_RAY} {_pf(r['pass'])} | {r['ray_fit_to_first_step_s']:.1f} | "
                     f"{r['plain_build_s'] + r['plain_first_step_s']:.2f} |")
        L += ["", f"Start-up: `ray.init` {R['ray_init_s']:.1f} s; `fit()` → worker function entered "
              f"{st['fit_to_worker_entered_s']:.1f} s; → trainlab Worker ready {st['fit_to_worker_ready_s']:.1f} s; "
              f"→ first step of the first method {next(iter(ro['cases'].values()))['ray_fit_to_first_step_s']:.1f} s "
              "(later methods' first steps come after the earlier methods' windows, so only the first is start-up); "
              f"last window → `fit()` returns {st['last_event_to_fit_return_s']:.1f} s.", ""]
    if "ray" in R:
        L += ray_notes(R)
    if "method" in R:
        L += ["## Method overhead (pure PyTorch, 1 thread, CPU)", "",
              "| comparison | baseline | baseline ms/step | method ms/step | ratio | goal | what |", "|---|---|---|---|---|---|---|"]
        for name, r in R["method"].items():
            g = r["goal_max_extra"]
            L.append(f"| {name} | {r['baseline']} | {fmt(r['base_ms'], 2)} | {fmt(r['method_ms'], 2)} | {fmt(r['ratio'])} | "
                     + (f"≤ {1 + g:.2f} {_pf(r.get('pass'))}" if g is not None else "shown") + f" | {r['what']} |")
        L.append("")
    if "data" in R:
        d = R["data"]
        L += ["## Data loading", "",
              f"Parquet on disk: {d['parquet']['what']}, {d['parquet']['rows']} rows ({d['parquet']['train_rows']} "
              f"source_train), {d['parquet']['file_mb']:.1f} MB; batch {d['parquet']['batch_size']}; CPU, in this process. "
              f"ShardLoader's one-off materialisation of the split: {d['shardloader_materialise_s']:.2f} s.", "",
              "| loader | rows/s | ÷ fastest step's consumption | goal |", "|---|---|---|---|"]
        for k, v in d["loaders_rows_per_s"].items():
            vc = d["vs_consumption"].get(k)
            L.append(f"| {k} | {fmt(v, 0)} | {fmt(vc['ratio'], 1) if vc else '—'} | ≥ {GOAL_DATA:g} {_pf(vc['pass']) if vc else ''} |")
        if d["consumption_rows_per_s"]:
            L += ["", "Consumption (plain step, rows/s): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                                   d["consumption_rows_per_s"].items()) + "."]
            per = {k: {m: v["median"] / c for m, c in d["consumption_rows_per_s"].items()}
                   for k, v in d["loaders_rows_per_s"].items()}
            if any(not v["pass"] for v in d["vs_consumption"].values()):
                L += ["", "Misses: the ratio is taken against the fastest consumer (the mixture_sparsity MLP step). "
                      "Against each method: " + "; ".join(
                          f"{k} " + ", ".join(f"{m} {r:.1f}x" for m, r in v.items()) for k, v in per.items()) + ". "
                      "Why the streaming paths are slow: they deliver 64-row batches at ~10-20 k rows/s whatever the "
                      "consumer does. A cProfile of one `trainlab_read_parquet` pass in the driver (taken separately "
                      "for this note: 14 k rows, 11.6 k rows/s) puts 59% of the consuming thread's time in "
                      "`_thread.lock.acquire` (waiting for the next batch from Ray Data's batching/format threads) and "
                      "30% in `time.sleep` (waiting for blocks from the streaming executor, whose read and map tasks "
                      "run in Ray workers); trainlab's own code is not in the top entries. So the rate is Ray Data's "
                      "per-batch pipeline cost at batch 64. That is why ShardLoader caches each worker's shard in "
                      "memory by default (`data.cache_in_memory`): after a one-off materialisation it serves batches "
                      "by tensor indexing, far above every step's consumption; streaming (cache off) is only for "
                      "data that does not fit."]
        L.append("")
    if "startup" in R:
        from startup import render as render_startup

        L += ["## Start-up (bench/startup.py)", "", render_startup(R["startup"]), ""]
    if "sweep" in R:
        s = R["sweep"]
        L += ["## Sweeps (tuning/sweep.py, real Ray Tune + Ray Train + MLflow)", "",
              f"{s['method']}, {s['num_samples']} trials, random search, max_concurrent {s['max_concurrent']}, "
              f"config {s['config']}. One sweep each (no repeats: a sweep is minutes).", "",
              "| scheduler | wall (s) | best metric | trials stopped early | epochs run | errors |", "|---|---|---|---|---|---|"]
        for k, v in s["runs"].items():
            L.append(f"| {k} | {v['wall_s']:.0f} | {v['metric']}={v['best_metric']:.4f} | {v['terminated_early']} | "
                     f"{v['epochs_run']} | {v['errors']} |")
        per_trial = s["runs"]["fifo"]["wall_s"] * s["max_concurrent"] / max(1, s["runs"]["fifo"]["trials"])
        L += ["", f"ASHA / FIFO wall time: {s['wall_ratio_asha_over_fifo']:.2f}; best metric ASHA − FIFO: "
              f"{s['best_metric_delta_asha_minus_fifo']:+.4f}. Each FIFO trial took ≈{per_trial:.0f} s of wall time "
              f"at {s['max_concurrent']} concurrent (single-worker trials train in the trial's own process, "
              "no Ray Train controller or worker group per trial; each epoch with evaluation, a checkpoint and "
              "MLflow logging)."
              + (f" Inside each FIFO trial (its MLflow run's startup.* metrics, mean of {f['trials_timed']}): the loop "
                 f"{f['trial_loop_s']:.1f} s, start-up and teardown around it {f['trial_overhead_s']:.1f} s."
                 if (f := s["runs"]["fifo"]).get("trial_overhead_s") is not None else "")
              + (" The issue's 16-trial version: `--sweep-trials 16` (about twice these wall times)."
                 if s["num_samples"] < 16 else ""), ""]
    if "scaling" in R:
        L += ["## Scaling (Ray Train workers on this machine)", "",
              "| case | setup | rows/s | ÷ 1 worker × 1 thread |", "|---|---|---|---|"]
        for label, cs in R["scaling"]["cases"].items():
            for s, v in cs.items():
                L.append(f"| {label} | {s} | {fmt(v['rows_per_s'], 0)} | {fmt(v['ratio_to_1_worker'], 2)} |")
        L.append("")
    if "gpu" in R:
        g = R["gpu"]
        L += ["## GPU", ""]
        if g.get("available") is False:
            L += [g["note"] + ".", ""]
        else:
            L += [f"{g['device_name']}: Ray Train (1 GPU worker) vs plain PyTorch on the same GPU.", "",
                  "| case | plain steps/s | Ray steps/s | Ray / plain | GPU util % | bf16 / fp32 |", "|---|---|---|---|---|---|"]
            for c, r in g["cases"].items():
                L.append(f"| {c} | {fmt(r['plain_steps_per_s'], 1)} | {fmt(r['ray_steps_per_s'], 1)} | "
                         f"{fmt(r['ratio_ray_over_plain'])} | {fmt(r['gpu_util'], 0) if r['gpu_util'] else '—'} | "
                         f"{r.get('bf16_over_fp32_plain_steps', float('nan')):.2f} |")
            L.append("")
    if R.get("profile"):
        L += ["## Profiles of the method-overhead misses (torch.profiler, CPU, 1 thread, self time per step)", ""]
        for name, p in R["profile"].items():
            L += [f"### {name}", "",
                  f"Self time {p['baseline_self_ms']:.2f} → {p['method_self_ms']:.2f} ms/step; aten/autograd op calls "
                  f"{p['ops_baseline']} → {p['ops_method']} per step. Ops that grew most:", "",
                  "| op | extra ms/step | calls/step method | calls/step baseline |", "|---|---|---|---|"]
            for t in p["top_growth"]:
                L.append(f"| `{t['op']}` | {t['extra_ms_per_step']:+.3f} | {t['calls_method']:.0f} | {t['calls_baseline']:.0f} |")
            if name in MISS_NOTES:
                L += ["", MISS_NOTES[name]]
            L.append("")
    if R.get("fixes"):
        L += ["## Fixes (before: the run of this script named by --before, at the commit before the fix; after: this run)", ""]
        for f in R["fixes"]:
            if f.get("kind") == "method":
                L += [f"**{f['what']}** — {f['file']}; before = git {f['before_commit']} ({f['before_date']}), "
                      f"after = git {f['after_commit']}. Figure: time per step with the penalty ÷ the plain "
                      f"cross-entropy step (goal ≤ {1 + GOAL_EXTRA:.2f}), and the penalty's own ms per step.", "",
                      "| case | before | after | penalty ms/step before → after |", "|---|---|---|---|"]
                for r in f["rows"]:
                    L.append(f"| {r['case']} | {fmt(r['before'])} | {fmt(r['after'])} | {r['before_ms']:.2f} → "
                             f"{r['after_ms']:.2f} |")
                L.append("")
                continue
            L += [f"**{f['what']}** — {f['file']}; before = git {f['before_commit']} ({f['before_date']}), after = git "
                  f"{f['after_commit']}. Figure: steps/s under Ray ÷ plain PyTorch (goal ≥ {GOAL_RAY}).", "",
                  "| method | before | after | worker niceness before → after |", "|---|---|---|---|"]
            for r in f["rows"]:
                L.append(f"| {r['case']} | {fmt(r['before'])} | {fmt(r['after'])} | {r['before_worker_niceness']} → "
                         f"{r['after_worker_niceness']} |")
            better = sum(1 for r in f["rows"] if r["after"]["median"] > r["before"]["median"])
            inside = all(r["after"]["min"] <= r["before"]["median"] <= r["after"]["max"] for r in f["rows"])
            L += ["", f"The median improved for {better} of {len(f['rows'])} methods; "
                  + ("every before-median lies inside the after-run's min..max, i.e. in this pair of runs the "
                     "change is not distinguishable from the machine's noise. The niceness gap only costs "
                     "throughput while something at the default priority competes for the cores, which varied "
                     "between (and within) the two runs." if inside else "see the spreads for how far apart they are.")]
            L.append("")
    if R.get("notes"):
        L += ["## Notes", "", *R["notes"], ""]
    L += ["Section times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in R["section_seconds"].items()) + ".", ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()

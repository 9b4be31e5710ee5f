"""The auxiliary classifier f of ``shift_explainer`` (JP7517093B2, S102), driver side and its one training job:
built, trained on domain 1 by a Ray Train job of the run's scaling (:func:`classifier_loop_per_worker`), cached
for reuse (:func:`classifier_cache_path`), or loaded from a file / an MLflow model URI (``method.classifier``),
then frozen; and how it travels (:func:`pack_classifier` / :func:`unpack_classifier`) to the batch-inference
actor, the workers and the final checkpoint.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from trainers.common.context import DriverContext
from trainers.common.facts import RunFacts
from trainers.common.models import unwrap
from trainers.common.runner import LearnerBase, Unit, run_learner
from trainers.common.worker import Worker, all_reduce_sum
from trainers.shift_explainer.config import ShiftExplainerConfig


def build_classifier(cfg: ShiftExplainerConfig, input_shape, num_classes: int) -> torch.nn.Module:
    from trainers.common.models import SmallCNN

    return SmallCNN(input_shape[0], num_classes, cfg.model.classifier_width, cfg.model.classifier_feature_dim,
                    image_hw=(input_shape[1], input_shape[2]))


class ClassifierLearner(LearnerBase):
    """S102 on Ray Train workers (DDP): f trained on domain 1 by cross-entropy (Eq. 1), one epoch per unit of the
    shared runner; rank 0 checkpoints it. A fresh job each time (the run's own checkpoints are the generator's)."""

    name = "shift_explainer"
    resumable = False

    def __init__(self, w: Worker):
        self.w, cfg = w, w.cfg
        self.units = cfg.method.classifier_epochs
        self.model = w.prepare(build_classifier(cfg, w.run.input_shape, w.run.num_classes).to(w.device))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.method.classifier_lr)
        self.train, self.val = w.loader("d1_train"), w.loader("d1_val")

    def state_dict(self) -> dict:
        return {"classifier": unwrap(self.model).state_dict()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["classifier"])

    def learn(self, epoch: int) -> Unit:
        w, model, opt = self.w, self.model, self.opt
        model.train()
        total = torch.zeros(2, dtype=torch.float64, device=w.device)
        for b in self.train.epoch(epoch, w.steps_per_epoch):
            loss = F.cross_entropy(model(b["x"]), b["y"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=w.device)])
        model.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=w.device)
        with torch.no_grad():
            for b in self.val.full():
                counts += torch.stack([(model(b["x"]).argmax(1) == b["y"]).sum().double(),
                                       torch.tensor(float(len(b["y"])), dtype=torch.float64, device=w.device)])
        total, counts = all_reduce_sum(total), all_reduce_sum(counts)
        metrics = {"classifier_train_loss": (total[0] / total[1]).item(),
                   "classifier_val_acc": (counts[0] / counts[1]).item()}
        return Unit(metrics, f"[shift_explainer] classifier epoch {epoch}: loss={metrics['classifier_train_loss']:.3f} "
                             f"acc(domain 1 val)={metrics['classifier_val_acc']:.3f}")


def classifier_loop_per_worker(config: dict) -> None:
    w = Worker(config, ShiftExplainerConfig)
    run_learner(w, ClassifierLearner(w))


def train_classifier(cfg: ShiftExplainerConfig, bundle, ctx: DriverContext) -> torch.nn.Module:
    """One training job (the run's scaling, see ``DriverContext.run_job``) over domain 1; returns the trained,
    frozen f."""
    datasets = {k: bundle.datasets[k] for k in ("d1_train", "d1_val")}
    checkpoint = ctx.run_job(classifier_loop_per_worker, cfg, RunFacts.for_data(cfg, bundle, "d1_train"), datasets,
                             "shift_explainer-classifier")
    return _classifier_from(cfg, bundle, checkpoint)


def _classifier_from(cfg: ShiftExplainerConfig, bundle, checkpoint) -> torch.nn.Module:
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
    model = build_classifier(cfg, bundle.input_shape, bundle.num_classes)
    model.load_state_dict(state["classifier"])
    return model.eval()


CLASSIFIER_CACHE_VERSION = 1


def classifier_cache_path(cfg: ShiftExplainerConfig) -> Path:
    """Where a trained classifier is kept for reuse: every run (and every sweep trial) with the same data,
    seed, classifier settings, batch size and worker count trains the same f, so it is trained once. Keyed by
    those settings (and, for parquet input, the files' sizes and modification times), under the cache root
    (``TRAINLAB_CACHE``); the driver reads and writes it, so the storage root may be remote."""
    import hashlib
    import json

    from trainers.common.paths import cache_root

    files = []
    if cfg.data.source != "colour_thickness" and Path(cfg.data.source).exists():
        from pipelines.data import parquet_files

        files = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in parquet_files(str(cfg.data.source))]
    key = {"v": CLASSIFIER_CACHE_VERSION, "seed": cfg.seed, "data": cfg.data.model_dump(mode="json"), "files": files,
           "model": [cfg.model.classifier_width, cfg.model.classifier_feature_dim],
           "train": [cfg.method.classifier_epochs, cfg.method.classifier_lr, cfg.train.batch_size,
                     cfg.scaling.world_size, cfg.scaling.use_gpu]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_root() / "classifier_cache" / f"{digest}.pt"


def obtain_classifier(cfg: ShiftExplainerConfig, bundle, ctx: DriverContext) -> tuple[torch.nn.Module, str]:
    """S102: (f, where it came from: "trained", "cache:<path>" or the user's reference)."""
    m = cfg.method
    if m.classifier != "train":
        return load_classifier(m.classifier, bundle.input_shape, bundle.num_classes), m.classifier
    path = classifier_cache_path(cfg)
    if path is not None and path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False).eval(), f"cache:{path}"
    f = train_classifier(cfg, bundle, ctx)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(f, tmp)
        os.replace(tmp, path)                      # atomic: concurrent trials never read half a file
    return f, "trained"


def pack_classifier(classifier: torch.nn.Module, source: str, tracking_uri: str | None = None) -> dict:
    """How f travels to the batch-inference actor, the workers and the final checkpoint: its pickled bytes, or,
    for a model that cannot be pickled (an MLflow 'pt2' program), its reference (and the MLflow store it is in),
    loaded again where needed."""
    buf = io.BytesIO()
    try:
        torch.save(classifier, buf)
        return {"bytes": buf.getvalue()}
    except Exception:  # noqa: BLE001 - pickling a traced graph fails in many ways
        return {"ref": source, "tracking_uri": tracking_uri}


def unpack_classifier(packed: dict, input_shape, num_classes: int, device="cpu") -> torch.nn.Module:
    if "bytes" in packed:
        model = torch.load(io.BytesIO(packed["bytes"]), map_location=device, weights_only=False)
        return _inference_mode(model)
    return load_classifier(packed["ref"], input_shape, num_classes, packed.get("tracking_uri")).to(device)


def _inference_mode(model: torch.nn.Module) -> torch.nn.Module:
    try:
        model.eval()
    except NotImplementedError:   # an exported (pt2) program is an inference graph already
        pass
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_classifier(ref: str, input_shape, num_classes: int, tracking_uri: str | None = None) -> torch.nn.Module:
    """A user's classifier: an MLflow model URI (``runs:/``, ``models:/``, ...) or a ``torch.save`` /
    ``torch.jit.save`` file; checked on a dummy batch of the data's shape (a mismatch is one clear error)."""
    if "://" in ref or ref.startswith(("runs:/", "models:/")):
        import mlflow
        import mlflow.pytorch

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        try:
            model = mlflow.pytorch.load_model(ref, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any MLflow failure is a bad reference for the user
            raise ValueError(f"method.classifier: cannot load the MLflow model {ref!r} ({type(e).__name__}: "
                             f"{str(e)[:200]}); allowed: \"train\", a model file, or runs:/<id>/<path>") from None
    else:
        p = Path(ref)
        if not p.is_file():
            raise ValueError(f"method.classifier: {ref!r} is neither \"train\", an existing file nor an MLflow "
                             "model URI (runs:/<id>/<path>, models:/<name>/<version>)")
        try:
            model = torch.jit.load(str(p), map_location="cpu")
        except Exception:  # noqa: BLE001 - not TorchScript: a pickled module
            try:
                model = torch.load(p, map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"method.classifier: {ref}: not a torch.save'd nn.Module or TorchScript file "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"method.classifier: {ref} holds a {type(model).__name__}, not an nn.Module "
                         "(save the module itself: torch.save(model, path))")
    model = _inference_mode(model)
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:  # noqa: BLE001 - a shape mismatch surfaces as any error inside forward
        raise ValueError(f"method.classifier: the model does not accept the data's images of shape "
                         f"{tuple(input_shape)} ({type(e).__name__}: {str(e)[:200]}); allowed: a classifier "
                         "for inputs of exactly that shape (image size mismatch?)") from None
    if out.ndim != 2 or out.shape[1] < num_classes:
        raise ValueError(f"method.classifier: the model outputs shape {tuple(out.shape)} for 2 images; allowed: "
                         f"logits (N, C) with C >= {num_classes} (the data's classes)")
    return model

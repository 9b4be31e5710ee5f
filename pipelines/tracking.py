"""MLflow on the driver: where runs go, the run a training job logs into, and its closing.

Default store: a sqlite file ``mlflow.db`` in the working directory with artifacts under
``./mlartifacts`` (what ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` opens).
``MLFLOW_TRACKING_URI`` overrides it (a tracking server on a cluster). The driver creates the run
and logs params/tags/config; the rank-0 worker logs per-epoch metrics and artifacts into the same
run id; the driver closes it with the final status.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from trainers.common.config import flatten


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or written; raised before any worker starts."""


# Credentials trainlab reads only from the environment; their values never reach a log line or a param.
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
              "RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DATABRICKS_TOKEN",
              "AZURE_STORAGE_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@")


def redact(text: str) -> str:
    """``text`` with secret environment values and URL credentials (``user:pass@``) replaced by ***."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    for k in SECRET_ENV:
        v = os.environ.get(k)
        if v and len(v) >= 4:
            text = text.replace(v, "***")
    return text


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Absolute artifact location for a local store (workers may run in other directories)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return (Path.cwd() / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides (proxied artifacts)


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds when the tracking server is unreachable (before any worker starts)."""
    from urllib.parse import urlsplit

    if urlsplit(uri).password:
        raise TrackingError(f"MLFLOW_TRACKING_URI={redact(uri)}: credentials in the URI end up in logs and tags; "
                            "put them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                            "MLFLOW_TRACKING_TOKEN) and give the URI without them")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status != 200:
                    raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: /health answered HTTP {r.status}")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise TrackingError(
                f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable ({e}); start it or unset "
                "MLFLOW_TRACKING_URI to use the local sqlite store") from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///"):]).parent
        if not parent.exists() or not os.access(parent, os.W_OK):
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri}: directory {parent} is not writable")


def git_sha(full: bool = False) -> str:
    try:
        return subprocess.run(["git", "rev-parse", *([] if full else ["--short"]), "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_name(cfg, method: str) -> str:
    """The run's MLflow experiment: ``MLFLOW_EXPERIMENT_NAME`` (as MLflow's own clients read it), else the config's
    ``tracking.experiment``, else ``trainlab/<method>``."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.tracking.experiment or f"trainlab/{method}"


def standard_tags(description: str | None = None) -> dict[str, str]:
    """The tags MLflow's own clients set on a run (user, source name and type, from MLflow's context registry), the
    commit of trainlab's checkout (MLflow looks for a repository beside the entry script, here the venv's
    ``trainlab`` launcher, and finds none) and the run's description (the UI's "Description", ``mlflow.note.content``)."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = dict(resolve_tags())
    sha = git_sha(full=True)
    if sha != "unknown":
        tags["mlflow.source.git.commit"] = sha
    if description:
        tags["mlflow.note.content"] = description
    return tags


def experiment_id(name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_root())


def start_run(experiment: str, run_name: str, config: dict, tags: dict[str, str],
              parent_run_id: str | None = None, description: str | None = None) -> str:
    """Create the MLflow run for one training job; log params, tags (MLflow's standard ones first, see
    :func:`standard_tags`; the caller's win) and ``config.yaml``."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    all_tags = {**standard_tags(description), "mlflow.runName": run_name, "git_sha": git_sha(), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(experiment), run_name=run_name, tags=all_tags)
    rid = run.info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i:i + 100])
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.yaml"
        p.write_text(yaml.safe_dump(config, sort_keys=False))
        client.log_artifact(rid, str(p))
    return rid


def pending_dir() -> str:
    """Where MLflow calls that could not be delivered are kept (:mod:`trainers.common.run_logger`):
    ``TRAINLAB_MLFLOW_PENDING``, else ``<storage>/mlflow_pending`` for local storage, else
    ``mlflow_pending`` under the cache root (``TRAINLAB_CACHE``)."""
    if os.environ.get("TRAINLAB_MLFLOW_PENDING"):
        return os.environ["TRAINLAB_MLFLOW_PENDING"]
    from trainers.common.paths import storage_root

    root = storage_root()
    if "://" not in root:
        return str(Path(root) / "mlflow_pending")
    from trainers.common.paths import cache_root

    return str(cache_root() / "mlflow_pending")


def end_run(run_id: str, status: str = "FINISHED", tags: dict[str, Any] | None = None) -> None:
    """Tag and close a run; if the server is unreachable, park the calls (nothing is lost)."""
    from trainers.common.run_logger import RunLogger

    rl = RunLogger(tracking_uri(), run_id, pending_dir())
    for k, v in (tags or {}).items():
        rl.set_tag(k, str(v))
    rl._call("set_terminated", {"status": status})


def log_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Log driver-side metrics (at step 0) to a run; parked like every other call if the server is down."""
    import time

    from trainers.common.run_logger import RunLogger

    ts = int(time.time() * 1000)
    RunLogger(tracking_uri(), run_id, pending_dir()).log_metrics([(k, float(v), ts, 0) for k, v in metrics.items()])


def ui_hint() -> str:
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"


def split_context(split: str) -> str:
    """MLflow's dataset context of a split: ``training`` / ``validation`` / ``test`` (``eval``: ``evaluation``)."""
    for suffix, ctx in (("train", "training"), ("val", "validation"), ("test", "test"), ("eval", "evaluation")):
        if split == suffix or split.endswith("_" + suffix):
            return ctx
    return "other"


def log_inputs(run_id: str, bundle) -> None:
    """Dataset lineage (MLflow's "Datasets" on the run page): one dataset per split of ``bundle`` with its name,
    source, digest, schema (from the Ray Dataset's metadata; nothing is read) and row count, in the split's context.
    Two runs on the same data show the same digests."""
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    base = getattr(bundle, "digest", "") or hashlib.sha256(
        f"{bundle.name}:{sorted(bundle.sizes.items())}".encode()).hexdigest()[:20]
    source = getattr(bundle, "source", "") or f"trainlab:{bundle.name}"
    kind = source.split("://", 1)[0] if "://" in source else ("trainlab" if source.startswith("trainlab") else "local")
    inputs = []
    for split, ds in bundle.datasets.items():
        try:
            schema = ds.schema(fetch_if_missing=False)
            cols = [{"name": n, "type": str(t)} for n, t in zip(schema.names, schema.types)] if schema else []
        except Exception:  # noqa: BLE001 - a lazily read split has no schema until read: leave it out
            cols = []
        digest = hashlib.sha256(f"{base}:{split}".encode()).hexdigest()[:16]
        entity = Dataset(name=f"{bundle.name}/{split}", digest=digest, source_type=kind,
                         source=json.dumps({"uri": source, "split": split}),
                         schema=json.dumps({"mlflow_colspec": cols}) if cols else None,
                         profile=json.dumps({"num_rows": int(bundle.sizes.get(split, -1))}))
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, split_context(split))]))
    MlflowClient(tracking_uri()).log_inputs(run_id, datasets=inputs)


REGISTERED_NAME = r"[A-Za-z0-9][A-Za-z0-9._ -]{0,255}"


def check_registered_name(name: str, log_model: bool = True) -> str:
    """``--register NAME``, checked before any training: a name MLflow's registry takes, and a run that logs a model."""
    if not re.fullmatch(REGISTERED_NAME, name):
        raise TrackingError(f"--register: {name!r}; allowed: 1-256 characters of letters, digits, '.', '_', '-', ' ', "
                            "starting with a letter or digit")
    if not log_model:
        raise TrackingError("--register: tracking.log_model is false, so the run would log no model to register; "
                            "allowed: --register with tracking.log_model=true")
    return name


def register_run_model(run_id: str, name: str, metric: tuple[str, float] | None = None,
                       alias: str | None = None) -> dict:
    """Register the model ``run_id`` logged (its ``model``; a run with several, e.g. shift_explainer's generator and
    classifier, registers the first that is not an auxiliary classifier) as a new version of ``name``, tagged with
    its metric and linked to its run; point ``alias`` at it. Returns ``{name, version, alias, model_id}``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'", output_format="list")
    logged = sorted(logged, key=lambda m: (m.name != "model", m.name == "classifier", m.name))
    if not logged:
        raise TrackingError(f"--register {name}: run {run_id} logged no model (a trial stopped early logs none)")
    tags = {"source_run_id": run_id}
    if metric is not None:
        tags[metric[0]] = str(metric[1])
    mv = mlflow.register_model(f"models:/{logged[0].model_id}", name, tags=tags)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    client.set_tag(run_id, "registered_model", f"{name}:{mv.version}")
    return {"name": name, "version": int(mv.version), "alias": alias, "model_id": logged[0].model_id}

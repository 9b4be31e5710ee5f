"""Where trainlab keeps things: the storage root of runs and checkpoints, and one cache root a user can see, move
and delete (what it can rebuild).

``TRAINLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/trainlab``, else ``~/.cache/trainlab``. Under it:
``fd_classifier/`` (ssd2gan's Fréchet-distance feature classifiers), ``classifier_cache/`` (shift_explainer's
trained classifiers f) and ``mlflow_pending/`` (MLflow calls parked while a remote tracking server was down and
storage is not local). Deleting it costs only retraining those small models.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("TRAINLAB_CACHE"):
        return Path(os.environ["TRAINLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "trainlab"


def storage_root() -> str:
    """Where Ray Train/Tune keep checkpoints: ``TRAINLAB_STORAGE`` (cloud/NFS on a cluster) or ./trainlab_runs."""
    root = os.environ.get("TRAINLAB_STORAGE")
    if root:  # absolute (workers and local-mode checkpoints may resolve it elsewhere), no trailing slash
        return root.rstrip("/") if "://" in root else os.path.abspath(root)
    return str((Path.cwd() / "trainlab_runs").resolve())

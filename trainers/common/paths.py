"""Where trainlab keeps what it can rebuild: one cache root a user can see, move and delete.

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

"""A trained ``continual`` run as an MLflow model: ``mlflow.pyfunc.load_model(uri).predict(x, params={"task": "2"})``
returns task 2's global labels (``task``: the 1-based index or the task's name, as a string: MLflow checks a
parameter's type against the signature, and a name is a string), under that task's inference model W ⊙ M^(t) (its masks travel inside the model, in
the run's final state). The task is a parameter of each call, as it is of ``trainlab predict``: one model serves
every learned task."""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class TaskModel(mlflow.pyfunc.PythonModel):
    """``predict(x, params={"task": "<1-based index or task name>"})`` → (N,) int64 global labels; ``x``: (N, C, H, W)
    float32 in the run's input shape (or one input). Without a task: the one-line error of ``trainlab predict``."""

    def load_context(self, context) -> None:
        self.state = context.artifacts["state"]

    def predict(self, context, model_input, params=None):
        from trainers.continual.inference import predict

        task = (params or {}).get("task") or None  # the signature's default "" = no task given
        return predict(self.state, task, np.asarray(model_input, dtype=np.float32))


def signature(example: np.ndarray, labels: np.ndarray):
    """The model's signature: tensor input of the run's shape, labels out, and the ``task`` parameter (a string)."""
    from mlflow.models import infer_signature

    return infer_signature(example, labels, params={"task": ""})

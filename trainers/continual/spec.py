"""The ``continual`` method's entry in the registry (per-task masks with depth- and similarity-set zeroing rates;
``docs/methods/continual.md``).

Import-light: ``PATENT`` and ``SUMMARY`` are read by ``trainlab methods`` without importing torch; :func:`spec`
imports the config, the loop and the data builder when a run needs them.
"""
from __future__ import annotations

from trainers import MethodSpec

PATENT = "JP7600768B2"
SUMMARY = ("continual learning with per-layer zeroing rates set by layer depth and task similarity (JSD); 1-bit "
           "masks per task, no forgetting")


def spec() -> MethodSpec:
    from pipelines.data import build_task_stream
    from trainers.continual.config import ContinualConfig
    from trainers.continual.inference import predict
    from trainers.continual.loop import TaskStream, train_loop_per_worker
    from trainers.continual.prepare import check, prepare

    return MethodSpec(
        key="continual",
        patent=PATENT,
        summary=SUMMARY,
        config_cls=ContinualConfig,
        train_loop=train_loop_per_worker,
        learner=TaskStream,
        check=check,
        prepare=prepare,
        predict=predict,
        build_data=build_task_stream,
        reports=lambda cfg, bundle: bundle.num_tasks,   # one report per task
        train_split="train",
        metric="avg_acc",
        mode="max",
        search_space={
            "train.lr": {"loguniform": [5e-4, 1e-2]},
            "train.epochs": {"choice": [4, 8, 12]},
            "method.finetune_epochs": {"choice": [0, 1, 2]},
            "method.task1_profile": {"choice": ["fig5a", "fig5b"]},
            "method.granularity": {"choice": ["weight", "filter"]},
            # the Fig. 8 JSD thresholds (with Fig. 8's rates) and the rates (a table that gives later tasks more)
            "method.rate_table.thresholds": {"choice": [[0.1, 0.5, 0.9], [0.05, 0.3, 0.7], [0.2, 0.6, 0.95]]},
            "method.rate_table.rates": {"choice": [
                {"conv1": [0, 0, 0, 0], "conv2": [0, 0, 0, 0], "conv3": [0, 0, 0, 0], "conv4": [1.0, 0.9, 0.75, 0.5],
                 "conv5": [0.95, 0.9, 0.75, 0.5], "dense": [0.8, 0.75, 0.75, 0.5]},
                {"conv1": [0, 0, 0, 0], "conv2": [0, 0, 0, 0], "conv3": [0, 0, 0, 0], "conv4": [0.9, 0.75, 0.5, 0.25],
                 "conv5": [0.85, 0.75, 0.5, 0.25], "dense": [0.7, 0.5, 0.5, 0.25]}]},
        },
        quick={"train": {"epochs": 6, "batch_size": 32, "lr": 5e-3},
               "data": {"num_tasks": 3, "image_size": 16},
               "method": {"finetune_epochs": 1}},
        summary_metrics=("avg_acc", "bwt", "acc_task_1", "acc_task_2", "acc_task_3", "acc_task_4", "acc_task_5",
                         "jsd_to_source", "new_weights", "free_weights"),
    )

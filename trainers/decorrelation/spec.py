"""The ``decorrelation`` method's entry in the registry (labelled and unlabelled features decorrelated channel by
channel; ``docs/methods/decorrelation.md``).

Import-light: ``PATENT`` and ``SUMMARY`` are read by ``trainlab methods`` without importing torch; :func:`spec`
imports the config, the loop and the data builder when a run needs them.
"""
from __future__ import annotations

from trainers import MethodSpec

PATENT = "JP7566705B2"
SUMMARY = "penalise inter-channel correlation of features of labelled and unlabelled data"


def spec() -> MethodSpec:
    from pipelines.data import build_domain_shift
    from trainers.decorrelation.config import DecorrelationConfig
    from trainers.decorrelation.loop import DecorrelationLearner, check, train_loop_per_worker

    return MethodSpec(
        key="decorrelation",
        patent=PATENT,
        summary=SUMMARY,
        config_cls=DecorrelationConfig,
        train_loop=train_loop_per_worker,
        learner=DecorrelationLearner,
        check=check,
        build_data=build_domain_shift,
        train_split="source_train",
        metric="target_val_acc",
        mode="max",
        search_space={
            "method.lambda3": {"loguniform": [0.05, 20.0]},
            "method.lambda4": {"loguniform": [0.01, 5.0]},
            "method.aggregation": {"choice": ["sq", "abs"]},
            "method.layers_unlabelled": {"choice": [["fc1"], ["conv2"], ["conv2", "fc1"]]},
            "method.variant": {"choice": ["A", "B"]},
            "train.lr": {"loguniform": [3e-4, 1e-2]},
        },
        quick={"train": {"epochs": 3, "batch_size": 32, "lr": 3e-3}, "model": {"width": 16, "feature_dim": 64}},
        summary_metrics=("source_acc", "target_acc", "target_val_acc", "mean_abs_corr_target",
                         "task_loss", "corr_loss_unlabelled"),
    )

"""The ``mixture_sparsity`` method's entry in the registry (a mixture prior on group norms, then physical pruning;
``docs/methods/mixture_sparsity.md``).

Import-light: ``PATENT`` and ``SUMMARY`` are read by ``trainlab methods`` without importing torch; :func:`spec`
imports the config, the loop and the data builder when a run needs them.
"""
from __future__ import annotations

from trainers import MethodSpec

PATENT = "JP7085158B2"
SUMMARY = "mixture-distribution penalty on row/column norms: controllable, physical structured pruning"


def spec() -> MethodSpec:
    from pipelines.data import build_classification
    from trainers.mixture_sparsity.config import MixtureSparsityConfig
    from trainers.mixture_sparsity.loop import MixtureSparsityLearner, check, train_loop_per_worker

    return MethodSpec(
        key="mixture_sparsity",
        patent=PATENT,
        summary=SUMMARY,
        config_cls=MixtureSparsityConfig,
        train_loop=train_loop_per_worker,
        learner=MixtureSparsityLearner,
        check=check,
        build_data=build_classification,
        train_split="source_train",
        metric="val_acc",
        mode="max",
        search_space={
            "method.lam": {"loguniform": [1e-3, 0.1]},
            "method.weights": {"choice": [[0.3, 0.7], [0.5, 0.5], [0.7, 0.3], [0.9, 0.1]]},
            "method.stds": {"choice": [[0.3, 0.5], [0.5, 0.5], [0.5, 1.0]]},
            "method.means": {"choice": [[0.0, 2.0], [0.0, 2.5], [0.0, 3.0]]},
            "method.family": {"choice": [["gaussian"], ["laplace"], ["laplace", "gaussian"]]},
            "train.lr": {"loguniform": [3e-3, 3e-2]},
        },
        quick={"train": {"epochs": 5, "batch_size": 32, "lr": 1e-2}, "method": {"warmup_epochs": 3}},
        summary_metrics=("val_acc", "test_acc", "pruned_fraction", "params_removed_fraction", "threshold",
                         "params_before", "params_after", "acc_after_prune", "latency_ratio_b64",
                         "natural_pruned_fraction", "budget_target", "budget_natural_achieved", "budget_knob_value",
                         "budget_calibration_runs"),
        variant_field="regularizer",
    )

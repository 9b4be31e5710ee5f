"""The one registry of trainlab methods. The CLI, the sweeps and the tests all read ``METHODS``.

Adding a method = one subpackage (config.py, losses.py, loop.py) and one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class MethodSpec:
    key: str
    patent: str
    summary: str
    config_cls: type                      # pydantic model: trainers.<key>.config
    train_loop: Callable[[dict], None]    # train_loop_per_worker, runs on every Ray Train worker
    build_data: Callable[[Any], Any]      # validated config -> pipelines.data.DataBundle (Ray Datasets)
    train_split: str                      # the split whose size sets the steps per epoch
    metric: str                           # what sweeps optimise ...
    mode: str                             # ... "max" or "min"
    search_space: dict[str, dict]         # dotted key -> {"loguniform": [lo, hi]} | {"choice": [...]} ...
    quick: dict = field(default_factory=dict)       # overrides for --quick (well under a minute)
    summary_metrics: tuple[str, ...] = ()            # shown in the terminal summary table
    variant_field: str | None = "variant"            # method.<field> reported as the MLflow tag
    check: Callable[[Any, Any], None] | None = None  # driver-side (cfg, bundle) checks before workers start
    prepare: Callable[[Any, Any], dict] | None = None  # driver-side (cfg, bundle) -> facts for every worker;
    #                                        a "datasets" (+ "sizes") entry replaces what the trainer trains on
    checkpoint_score: tuple[str, str] | None = None  # (metric, "max"|"min"): keep the best checkpoints by it
    reports: Callable[[Any, Any], int] | None = None  # (cfg, bundle) -> results a whole run reports to Tune
    #                                                  (default: train.epochs, one per epoch)


def _decorrelation() -> MethodSpec:
    from pipelines.data import build_domain_shift
    from trainers.decorrelation.config import DecorrelationConfig
    from trainers.decorrelation.loop import check, train_loop_per_worker

    return MethodSpec(
        key="decorrelation",
        patent=_SUMMARIES["decorrelation"][0],
        summary=_SUMMARIES["decorrelation"][1],
        config_cls=DecorrelationConfig,
        train_loop=train_loop_per_worker,
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


def _mixture_sparsity() -> MethodSpec:
    from pipelines.data import build_classification
    from trainers.mixture_sparsity.config import MixtureSparsityConfig
    from trainers.mixture_sparsity.loop import check, train_loop_per_worker

    return MethodSpec(
        key="mixture_sparsity",
        patent=_SUMMARIES["mixture_sparsity"][0],
        summary=_SUMMARIES["mixture_sparsity"][1],
        config_cls=MixtureSparsityConfig,
        train_loop=train_loop_per_worker,
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


def _ssd2gan() -> MethodSpec:
    from pipelines.data import build_images
    from trainers.ssd2gan.config import Ssd2ganConfig
    from trainers.ssd2gan.loop import check, prepare, train_loop_per_worker

    return MethodSpec(
        key="ssd2gan",
        patent=_SUMMARIES["ssd2gan"][0],
        summary=_SUMMARIES["ssd2gan"][1],
        config_cls=Ssd2ganConfig,
        train_loop=train_loop_per_worker,
        check=check,
        prepare=prepare,
        build_data=build_images,
        train_split="source_train",
        metric="best_fd",
        mode="min",
        search_space={
            "method.alpha": {"uniform": [0.5, 0.95]},
            "method.lambda_c": {"loguniform": [1e-4, 1e-1]},
            "train.lr": {"loguniform": [5e-5, 1e-3]},
            "method.lr_d": {"loguniform": [5e-5, 1e-3]},
            "method.transform": {"choice": ["dct", "dft"]},
            "method.consistency_on": {"choice": ["both", "real", "fake"]},
        },
        quick={"train": {"epochs": 3, "batch_size": 32},
               "model": {"z_dim": 32, "g_width": 16, "d_width": 16},
               "method": {"eval_every": 15, "fd_samples": 256, "grid_size": 4}},
        summary_metrics=("best_fd", "fd", "fd_val", "spectral_error", "spectral_error_high", "loss_g_avg",
                         "loss_ds_avg", "loss_df_avg", "loss_consistency_avg", "step"),
        checkpoint_score=("fd", "min"),
    )


def _continual() -> MethodSpec:
    from pipelines.data import build_task_stream
    from trainers.continual.config import ContinualConfig
    from trainers.continual.loop import check, prepare, train_loop_per_worker

    return MethodSpec(
        key="continual",
        patent=_SUMMARIES["continual"][0],
        summary=_SUMMARIES["continual"][1],
        config_cls=ContinualConfig,
        train_loop=train_loop_per_worker,
        check=check,
        prepare=prepare,
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


def _shift_explainer() -> MethodSpec:
    from pipelines.data import build_shift_pair
    from trainers.shift_explainer.config import ShiftExplainerConfig
    from trainers.shift_explainer.loop import check, prepare, train_loop_per_worker

    return MethodSpec(
        key="shift_explainer",
        patent=_SUMMARIES["shift_explainer"][0],
        summary=_SUMMARIES["shift_explainer"][1],
        config_cls=ShiftExplainerConfig,
        train_loop=train_loop_per_worker,
        check=check,
        prepare=prepare,
        build_data=build_shift_pair,
        train_split="gen_train",
        metric="loss_axis_spearman",
        mode="max",
        search_space={
            "method.latent_dim": {"choice": [2, 4, 8]},
            "method.z_independence": {"choice": [0.0, 0.01, 0.03]},
            "method.k": {"choice": [3, 5]},
            "method.recon_weight": {"loguniform": [0.3, 10.0]},
            "method.model_type": {"choice": ["ae", "vae", "bigan"]},
            "method.selection": {"choice": ["extreme", "threshold"]},
            "method.tau_unit": {"choice": ["quantile"]},     # thresholds as quantiles always select something
            "method.tau1": {"uniform": [0.02, 0.3]},
            "method.tau2": {"uniform": [0.7, 0.98]},
        },
        quick={"train": {"epochs": 4, "batch_size": 64},
               "method": {"classifier_epochs": 4}},
        summary_metrics=("classifier_acc_domain1", "classifier_acc_domain2", "shift_pvalue", "recon_loss",
                         "loss_axis_spearman", "feature_axis_loss_spread", "loss_axis_loss_spread",
                         "thickness_change_loss_axis", "thickness_change_feature_axis", "hue_change_feature_axis",
                         "latent_invariance", "seconds_per_grid", "selected_loss_domain1", "selected_loss_domain2"),
        variant_field="model_type",
    )


_BUILDERS: dict[str, Callable[[], MethodSpec]] = {"decorrelation": _decorrelation,
                                                  "ssd2gan": _ssd2gan,
                                                  "mixture_sparsity": _mixture_sparsity,
                                                  "continual": _continual,
                                                  "shift_explainer": _shift_explainer}
_SUMMARIES = {
    "decorrelation": ("JP7566705B2", "penalise inter-channel correlation of features of labelled and unlabelled data"),
    "ssd2gan": ("JP7464138B2", "GAN with a spatial and a frequency-domain (DCT/DFT) discriminator, "
                               "trade-off α, consistency λc"),
    "mixture_sparsity": ("JP7085158B2", "mixture-distribution penalty on row/column norms: controllable, "
                                        "physical structured pruning"),
    "shift_explainer": ("JP7517093B2", "loss-conditioned generative model: an interpolation grid shows which change "
                                       "causes an accuracy drop under domain shift"),
    "continual": ("JP7600768B2", "continual learning with per-layer zeroing rates set by layer depth and task "
                                 "similarity (JSD); 1-bit masks per task, no forgetting"),
}


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return f"unknown method {self.args[0]!r}; allowed: {', '.join(_BUILDERS)}"


def method_keys() -> list[str]:
    return list(_BUILDERS)


def get_method(key: str) -> MethodSpec:
    if key not in _BUILDERS:
        raise UnknownMethodError(key)
    return _BUILDERS[key]()


def method_summaries() -> dict[str, tuple[str, str]]:
    """key -> (patent, one line), without importing torch (fast ``trainlab methods``)."""
    return dict(_SUMMARIES)

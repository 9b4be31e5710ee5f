"""The ``shift_explainer`` method's entry in the registry (a loss-conditioned generator that explains an accuracy
drop under shift; ``docs/methods/shift_explainer.md``).

Import-light: ``PATENT`` and ``SUMMARY`` are read by ``trainlab methods`` without importing torch; :func:`spec`
imports the config, the driver hooks (check, prepare), the loop, the explanation and the data builder when a run
needs them.
"""
from __future__ import annotations

from trainers import MethodSpec

PATENT = "JP7517093B2"
SUMMARY = ("loss-conditioned generative model: an interpolation grid shows which change causes an accuracy drop "
           "under domain shift")


def spec() -> MethodSpec:
    from pipelines.data import build_shift_pair
    from trainers.shift_explainer.config import ShiftExplainerConfig
    from trainers.shift_explainer.explanation import explain_from_checkpoint
    from trainers.shift_explainer.loop import ExplainerLearner, train_loop_per_worker
    from trainers.shift_explainer.prepare import check, prepare

    return MethodSpec(
        key="shift_explainer",
        patent=PATENT,
        summary=SUMMARY,
        config_cls=ShiftExplainerConfig,
        train_loop=train_loop_per_worker,
        learner=ExplainerLearner,
        check=check,
        prepare=prepare,
        explain=explain_from_checkpoint,
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

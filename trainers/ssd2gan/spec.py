"""The ``ssd2gan`` method's entry in the registry (a GAN judged in the spatial and the frequency domain;
``docs/methods/ssd2gan.md``).

Import-light: ``PATENT`` and ``SUMMARY`` are read by ``trainlab methods`` without importing torch; :func:`spec`
imports the config, the loop and the data builder when a run needs them.
"""
from __future__ import annotations

from trainers import MethodSpec

PATENT = "JP7464138B2"
SUMMARY = "GAN with a spatial and a frequency-domain (DCT/DFT) discriminator, trade-off α, consistency λc"


def spec() -> MethodSpec:
    from pipelines.data import build_images
    from trainers.ssd2gan.config import Ssd2ganConfig
    from trainers.ssd2gan.loop import Ssd2ganLearner, check, prepare, train_loop_per_worker

    return MethodSpec(
        key="ssd2gan",
        patent=PATENT,
        summary=SUMMARY,
        config_cls=Ssd2ganConfig,
        train_loop=train_loop_per_worker,
        learner=Ssd2ganLearner,
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

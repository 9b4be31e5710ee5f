"""``shift_explainer``: a loss-conditioned generative model that interpolates between a correctly classified
pre-shift sample and a misclassified post-shift sample, to show which data change causes the accuracy loss
(JP7517093B2; ``docs/methods/shift_explainer.md``).

Pure-PyTorch math (:mod:`.grid`: interpolation, grid generation; :mod:`.selection`: S104; :mod:`.losses`;
:mod:`.metrics`: image proxies, fidelity, shift test) and the small networks (:mod:`.models`). Import-light: no
Ray, no MLflow.
"""
from trainers.common.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "grid": ["LAYOUTS", "Grid", "generate_diagonal", "generate_grid", "interpolate", "interpolate_joint"],
    "losses": ["BCE_EPS", "LOSS_KINDS", "RECON_KINDS", "bigan_d_loss", "bigan_eg_loss", "cycle_loss", "latent_prior",
               "per_sample_loss", "recon_loss", "style_d_loss", "style_g_loss", "vae_loss"],
    "metrics": ["circular_distance", "grid_fidelity", "hue", "ink", "latent_invariance", "rgb_hue", "shift_test"],
    "selection": ["SELECTION_MODES", "select_pair"],
    "models": ["GENERATOR_KINDS", "Decoder", "DomainDiscriminator", "Encoder", "ImageTranslator", "JointDiscriminator",
               "LossConditionedGenerator", "StyleTransformer"],
})

"""``shift_explainer``: a loss-conditioned generative model that interpolates between a correctly classified
pre-shift sample and a misclassified post-shift sample, to show which data change causes the accuracy loss
(JP7517093B2; spec ``shared/methods/shift_explainer.md``).

Pure-PyTorch math (:mod:`.losses`: interpolation, selection, losses, grid generation, metrics) and the small
networks (:mod:`.models`). Import-light: no Ray, no MLflow.
"""
from trainers.shift_explainer.losses import (BCE_EPS, LAYOUTS, LOSS_KINDS, RECON_KINDS, SELECTION_MODES, Grid,
                                             bigan_d_loss, bigan_eg_loss, circular_distance, cycle_loss,
                                             generate_diagonal, generate_grid, grid_fidelity, hue, ink,
                                             interpolate, interpolate_joint, latent_invariance, latent_prior,
                                             per_sample_loss, recon_loss, rgb_hue, select_pair, shift_test,
                                             style_d_loss, style_g_loss, vae_loss)
from trainers.shift_explainer.models import (GENERATOR_KINDS, Decoder, DomainDiscriminator, Encoder,
                                             ImageTranslator, JointDiscriminator, LossConditionedGenerator,
                                             StyleTransformer)

__all__ = [
    "BCE_EPS", "LAYOUTS", "LOSS_KINDS", "RECON_KINDS", "SELECTION_MODES", "GENERATOR_KINDS",
    "interpolate", "interpolate_joint", "per_sample_loss", "select_pair",
    "recon_loss", "vae_loss", "bigan_d_loss", "bigan_eg_loss", "latent_prior",
    "cycle_loss", "style_d_loss", "style_g_loss",
    "ink", "hue", "rgb_hue", "circular_distance",
    "Grid", "generate_grid", "generate_diagonal", "grid_fidelity", "latent_invariance", "shift_test",
    "Encoder", "Decoder", "LossConditionedGenerator", "JointDiscriminator", "ImageTranslator",
    "StyleTransformer", "DomainDiscriminator",
]

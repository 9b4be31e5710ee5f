"""``ssd2gan``: simultaneous spatial- and frequency-domain discriminators for GANs (JP7464138B2).

Pure-PyTorch math (:mod:`.losses`: transforms, losses, baselines, metrics) and the small networks
(:mod:`.models`); spec ``shared/methods/ssd2gan.md``.
"""
from trainers.ssd2gan.losses import (CONS_NORMS, CONS_ON, CONS_REDUCTIONS, CONS_SPACES, DFT_MODES, FREQ_KINDS,
                                     FREQMSE_STATS, INVERTIBLE_DFT_MODES, LOSS_TYPES, SPECTRUM_NORMS,
                                     average_power_spectrum, azimuthal_power_spectrum, consistency, d_loss,
                                     d_losses, dct2, dct_matrix, dft2, discriminator_losses, ds_total_loss,
                                     durall_spectral_loss, frechet_distance, frechet_distance_from_stats, freq,
                                     freq_channels, freq_mse_loss, frequency_radius, g_loss, g_loss_terms,
                                     gaussian_stats, high_freq_mask, idct2, idft2, log_one_minus_sigmoid,
                                     log_sigmoid, normalized_azimuthal_spectrum, spectral_error,
                                     spectral_error_from_spectra, value_function)
from trainers.ssd2gan.models import (G_NORMS, IMAGE_SIZES, Discriminator, FrequencyDiscriminator, Generator,
                                     ResBlockDown, ResBlockUp, build_models)

__all__ = [
    "CONS_NORMS", "CONS_ON", "CONS_REDUCTIONS", "CONS_SPACES", "DFT_MODES", "FREQ_KINDS", "FREQMSE_STATS",
    "INVERTIBLE_DFT_MODES", "LOSS_TYPES", "SPECTRUM_NORMS",
    "dct_matrix", "dct2", "idct2", "dft2", "idft2", "freq", "freq_channels",
    "log_sigmoid", "log_one_minus_sigmoid", "g_loss_terms", "g_loss", "d_loss", "d_losses", "value_function",
    "consistency", "ds_total_loss", "discriminator_losses",
    "azimuthal_power_spectrum", "normalized_azimuthal_spectrum", "durall_spectral_loss", "freq_mse_loss",
    "gaussian_stats", "frechet_distance", "frechet_distance_from_stats",
    "average_power_spectrum", "frequency_radius", "high_freq_mask", "spectral_error",
    "spectral_error_from_spectra",
    "G_NORMS", "IMAGE_SIZES", "Discriminator", "FrequencyDiscriminator", "Generator", "ResBlockDown",
    "ResBlockUp", "build_models",
]

"""``ssd2gan``: simultaneous spatial- and frequency-domain discriminators for GANs (JP7464138B2).

Pure-PyTorch math (:mod:`.transforms`, :mod:`.losses`, :mod:`.baselines`, :mod:`.metrics`) and the small networks
(:mod:`.models`); ``docs/methods/ssd2gan.md``.
"""
from trainers.common.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "transforms": ["DFT_MODES", "FREQ_KINDS", "INVERTIBLE_DFT_MODES", "dct2", "dct_matrix", "dft2", "freq",
                   "freq_channels", "frequency_radius", "high_freq_mask", "idct2", "idft2"],
    "losses": ["CONS_NORMS", "CONS_ON", "CONS_REDUCTIONS", "CONS_SPACES", "LOSS_TYPES", "consistency", "d_loss",
               "d_losses", "discriminator_losses", "ds_total_loss", "g_loss", "g_loss_terms", "log_one_minus_sigmoid",
               "log_sigmoid", "value_function"],
    "baselines": ["FREQMSE_STATS", "SPECTRUM_NORMS", "azimuthal_power_spectrum", "durall_spectral_loss",
                  "freq_mse_loss", "normalized_azimuthal_spectrum"],
    "metrics": ["average_power_spectrum", "frechet_distance", "frechet_distance_from_stats", "gaussian_stats",
                "spectral_error", "spectral_error_from_spectra"],
    "models": ["G_NORMS", "IMAGE_SIZES", "Discriminator", "FrequencyDiscriminator", "Generator", "ResBlockDown",
               "ResBlockUp", "build_models"],
})

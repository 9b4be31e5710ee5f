"""``decorrelation``: a task loss plus penalties on the inter-channel correlation of intermediate features of
labelled and unlabelled data (JP7566705B2; ``docs/methods/decorrelation.md``).

Pure-PyTorch math in :mod:`.losses`; the reference network is ``trainers.common.models``' small CNN.
"""
from trainers.common.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "losses": ["FEATURE_REDUCTIONS", "AGGREGATIONS", "VARIANTS", "reduce_features", "correlation_matrix",
               "correlation_loss", "mean_abs_correlation", "decov_loss", "decorrelation_terms"],
})

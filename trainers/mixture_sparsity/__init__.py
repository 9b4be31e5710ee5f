"""``mixture_sparsity``: a distribution-prior group regularizer with adjustable model-size reduction (JP7085158B2).

Pure-PyTorch math (:mod:`.losses`), the prunable networks (:mod:`.models`) and physical structured pruning
(:mod:`.pruning`); ``docs/methods/mixture_sparsity.md``.
"""
from trainers.common.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "losses": ["FAMILIES", "GROUP_DIMS", "REGULARIZER_KINDS", "SIGMA_IS", "all_group_norms", "gauss_laplace_penalty",
               "group_lasso_penalty", "group_norms", "l2_penalty", "mixture_log_likelihood", "mixture_penalty",
               "mixture_threshold", "pruned_mask", "regularizer", "responsibilities"],
    "models": ["SigmoidMLP", "SmallPrunableCNN"],
    "pruning": ["count_flops", "count_params", "layer_groups", "masked_model", "prune_model", "threshold_masks"],
})

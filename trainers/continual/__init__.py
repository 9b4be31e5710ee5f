"""``continual``: PackNet-style continual learning with per-layer zeroing rates set by depth and task similarity
(JP7600768B2).

Pure math and state, no Ray / MLflow: zeroing rates (:mod:`.rates`); layers → rate groups (:mod:`.groups`); zeroing,
ownership and task masks (:mod:`.allocation`); 1-bit storage of the masks (:mod:`.packing`); frozen updates and
per-task biases / normalisation (:mod:`.constraints`); the learned-task state and a task's inference model
(:mod:`.state`); JSD, mergeable PDF estimators, source/candidate selection (:mod:`.similarity`); a reference
VGG-style CNN (:mod:`.models`). See ``docs/methods/continual.md``.
"""
from trainers.common.exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "rates": ["DEFAULT_TABLE_RATES", "DEFAULT_THRESHOLDS", "GROUPS", "TASK1_PROFILES", "RateTable",
              "check_table_principles", "profile_is_nondecreasing", "rate_for", "rate_table", "task1_profile",
              "task1_rate"],
    "groups": ["depth_groups", "layer_groups", "layer_rates", "masked_weight_names", "named_weights",
               "task1_layer_rates"],
    "allocation": ["FILTER_NORMS", "FILTER_UNITS", "GRANULARITIES", "READINGS", "ROUNDING", "Allocation",
                   "apply_zeroing_", "empty_ownership", "free_pool", "mask_from_nonzero", "owned_from_masks",
                   "plan_allocation", "select_zeroed", "task_mask", "update_ownership", "zero_count"],
    "packing": ["PackedMask", "pack_mask", "packed_nbytes", "unpack_mask"],
    "constraints": ["BIAS_POLICIES", "NORM_POLICIES", "PHASES", "FrozenGuard", "MaskedOptimizer",
                    "capture_task_state", "forward_masks", "load_task_state", "masked_forward", "norm_modules",
                    "set_norm_eval", "task_state_names", "trainable_masks", "update_masks"],
    "state": ["ContinualState", "apply_task", "effective_weights"],
    "models": ["ContinualCNN"],
    "similarity": ["CANDIDATE_POLICIES", "COMBINE_MODES", "S100_TIES", "SIMILARITY_MEASURES", "Codebook",
                   "candidate_tasks", "choose_candidate", "codebook_codes", "codebook_counts", "combine_counts",
                   "divergence", "fit_codebook", "histogram_counts", "histogram_edges", "jsd", "jsd_from_counts",
                   "kl_divergence", "select_candidate", "select_source", "similarity", "task_rate_scalar"],
    "inference": ["load_checkpoint", "predict"],
})

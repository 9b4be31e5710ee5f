"""``continual``: PackNet-style continual learning with per-layer zeroing rates set by depth and task similarity
(JP7600768B2).

Pure math and state, no Ray / MLflow: rates, zeroing, ownership, 1-bit masks, frozen updates, inference masks
(:mod:`.masks`); JSD, mergeable PDF estimators, source/candidate selection (:mod:`.similarity`); a reference
VGG-style CNN (:mod:`.models`). Spec ``shared/methods/continual.md``.
"""
from trainers.continual.masks import (BIAS_POLICIES, DEFAULT_TABLE_RATES, DEFAULT_THRESHOLDS, FILTER_NORMS,
                                      FILTER_UNITS, GRANULARITIES, GROUPS, NORM_POLICIES, PHASES, READINGS,
                                      ROUNDING, TASK1_PROFILES, Allocation, ContinualState, FrozenGuard,
                                      MaskedOptimizer, PackedMask, RateTable, apply_task, apply_zeroing_,
                                      capture_task_state, check_table_principles, depth_groups, effective_weights,
                                      empty_ownership, forward_masks, free_pool, layer_groups, layer_rates,
                                      load_task_state, mask_from_nonzero, masked_forward, masked_weight_names,
                                      named_weights, norm_modules, owned_from_masks, pack_mask, packed_nbytes,
                                      plan_allocation, profile_is_nondecreasing, rate_for, rate_table,
                                      select_zeroed, set_norm_eval, task1_layer_rates, task1_profile, task1_rate,
                                      task_mask, task_state_names, trainable_masks, unpack_mask, update_masks,
                                      update_ownership, zero_count)
from trainers.continual.models import ContinualCNN
from trainers.continual.similarity import (CANDIDATE_POLICIES, COMBINE_MODES, S100_TIES, SIMILARITY_MEASURES,
                                           Codebook, candidate_tasks, choose_candidate, codebook_codes,
                                           codebook_counts, combine_counts, divergence, fit_codebook,
                                           histogram_counts, histogram_edges, jsd, jsd_from_counts, kl_divergence,
                                           select_candidate, select_source, similarity, task_rate_scalar)

__all__ = [
    # rates and groups
    "GROUPS", "TASK1_PROFILES", "DEFAULT_THRESHOLDS", "DEFAULT_TABLE_RATES", "RateTable", "rate_table", "rate_for",
    "task1_profile", "task1_rate", "profile_is_nondecreasing", "check_table_principles", "depth_groups",
    "masked_weight_names", "layer_groups", "task1_layer_rates", "layer_rates",
    # zeroing, ownership, masks
    "ROUNDING", "GRANULARITIES", "FILTER_UNITS", "FILTER_NORMS", "READINGS", "zero_count", "select_zeroed",
    "Allocation", "plan_allocation", "named_weights", "apply_zeroing_", "empty_ownership", "free_pool",
    "update_ownership", "task_mask", "mask_from_nonzero", "owned_from_masks", "PackedMask", "packed_nbytes",
    "pack_mask", "unpack_mask",
    # training constraints, per-task state, inference
    "PHASES", "BIAS_POLICIES", "NORM_POLICIES", "update_masks", "forward_masks", "masked_forward",
    "trainable_masks", "FrozenGuard", "MaskedOptimizer", "norm_modules", "set_norm_eval", "task_state_names",
    "capture_task_state", "load_task_state", "effective_weights", "apply_task", "ContinualState",
    # similarity
    "SIMILARITY_MEASURES", "CANDIDATE_POLICIES", "COMBINE_MODES", "S100_TIES", "jsd", "kl_divergence", "divergence",
    "jsd_from_counts", "similarity", "histogram_edges", "histogram_counts", "combine_counts", "Codebook",
    "fit_codebook", "codebook_codes", "codebook_counts", "select_source", "task_rate_scalar", "candidate_tasks",
    "select_candidate", "choose_candidate",
    # models
    "ContinualCNN",
]

from trainers.continual.inference import load_checkpoint, predict  # noqa: E402

__all__ += ["predict", "load_checkpoint"]

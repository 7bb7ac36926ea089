"""Analyses of the source works as pure functions over a model, data and attacks."""

from jaxadv.analysis.interpretation_attacks import (
    MapRobustness,
    cam_map_fn,
    map_robustness,
    mean_over_kept,
    top_k_attack,
    top_k_mask,
)

__all__ = ["MapRobustness", "cam_map_fn", "map_robustness", "mean_over_kept", "top_k_attack",
           "top_k_mask"]

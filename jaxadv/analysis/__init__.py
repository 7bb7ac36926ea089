"""Analyses of the source works as pure functions over a model, data and attacks."""

from jaxadv.analysis.interpretation_attacks import (
    MapRobustness,
    cam_map_fn,
    map_manipulation_attack,
    map_robustness,
    mean_over_kept,
    region_mass,
    top_k_attack,
    top_k_mask,
)
from jaxadv.analysis.isa import (
    ISACurve,
    ISAResult,
    MarginDiscrepancy,
    attribution_class_maps,
    cam_class_maps,
    cam_plus_plus_class_maps,
    isa,
    isa_curve,
    margin_discrepancy,
    representation_maps,
)

__all__ = ["ISACurve", "ISAResult", "MapRobustness", "MarginDiscrepancy", "attribution_class_maps",
           "cam_class_maps", "cam_map_fn", "cam_plus_plus_class_maps", "isa", "isa_curve",
           "map_manipulation_attack", "map_robustness", "margin_discrepancy", "mean_over_kept",
           "region_mass", "representation_maps",
           "top_k_attack", "top_k_mask"]

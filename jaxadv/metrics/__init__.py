"""Metrics: robust accuracy, interpretation discrepancy and rank agreement, explanation quality and
robustness, and the interpretability score (methods.md sections 1.3, 1.4, 2.3, 5.3, 5.4).

* robustness: masked (sum, count) accuracies and a streamed, sharded robust-accuracy-vs-eps curve.
* discrepancy: 1-, 2- and all-class map discrepancies (l1, squared l2, raw or range-normalised),
  Boopathy et al.'s label-free D~, representation discrepancy, the margin lower bound.
* rank: Kendall tau-b, Spearman, Pearson, top-k intersection.
* faithfulness: deletion/insertion AUC, completeness error.
* sensitivity: max/avg-sensitivity, local Lipschitz estimate, and their worst case by PGD.
* interpretability_score: IS and IS+/IS- of Xu et al. (2019).
"""

from jaxadv.metrics.discrepancy import (
    class_discrepancies,
    discrepancy,
    label_free_discrepancy,
    map_discrepancy,
    margin_lower_bound,
    representation_discrepancy,
)
from jaxadv.metrics.faithfulness import completeness_error, deletion_auc, insertion_auc
from jaxadv.metrics.interpretability_score import (
    InterpretabilityScores,
    energy_share,
    interpretability_score,
    interpretability_scores,
    saliency_mask,
)
from jaxadv.metrics.rank import (
    average_ranks,
    kendall_tau,
    pearson,
    spearman,
    top_k_intersection,
    top_k_intersection_b,
)
from jaxadv.metrics.robustness import (
    RobustAccuracy,
    accuracy_sum_count,
    make_robust_counts_fn,
    masked_sum_count,
    nested_robust_accuracy,
    pgd_eval_accuracy,
    ratio,
    robust_accuracy_curve,
)
from jaxadv.metrics.sensitivity import (
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
    worst_case_sensitivity,
)

__all__ = [
    "InterpretabilityScores", "RobustAccuracy", "accuracy_sum_count", "average_ranks",
    "avg_sensitivity", "class_discrepancies", "completeness_error", "deletion_auc", "discrepancy",
    "energy_share", "insertion_auc", "interpretability_score", "interpretability_scores",
    "kendall_tau", "label_free_discrepancy", "local_lipschitz_estimate", "make_robust_counts_fn",
    "map_discrepancy", "margin_lower_bound", "masked_sum_count", "max_sensitivity",
    "nested_robust_accuracy", "pearson", "pgd_eval_accuracy", "ratio", "representation_discrepancy",
    "robust_accuracy_curve", "saliency_mask", "spearman", "top_k_intersection",
    "top_k_intersection_b", "worst_case_sensitivity",
]

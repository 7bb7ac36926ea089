"""Metrics: robust accuracy (masked (sum, count) pairs), interpretation discrepancies, ..."""

from jaxadv.metrics.robustness import (  # noqa: F401
    RobustAccuracy,
    accuracy_sum_count,
    make_robust_counts_fn,
    masked_sum_count,
    ratio,
    robust_accuracy_curve,
)

"""The method built on the mechanism: ablation masks and regression (head attribution), baseline
rankings, faithfulness/completeness, cross-fitting, cost counting, the per-image experiment and
the study set-up, and shared statistics."""

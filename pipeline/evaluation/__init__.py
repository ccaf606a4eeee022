"""Evaluation, the only code that reads labels: clustering scores and the importance-
sampled test log-likelihood (metrics.py), the pictures and per-image CSVs (plots.py), the
second level of a hierarchical kind (hierarchy.py), and the `evaluate` section (config.py)."""

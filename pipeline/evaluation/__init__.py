"""Evaluation, the only code that reads labels: clustering scores and the importance-
sampled test log-likelihood (metrics.py), the pictures and per-image CSVs (plots.py), and
the `evaluate` section (config.py)."""

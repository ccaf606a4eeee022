"""Sweeps: Ray Tune over tune.space with ASHA on a label-free held-out metric. space.py
parses the search space, run.py runs the trials, progress.py prints them, report.py
writes the table, best params and plots; config.py is the `tune` section."""

"""Experiments: named presets (params/<name>.yaml) run over seeds and summarised in one
table. The comparison of kinds (compare/dvc.yaml) and the results table
(results/dvc.yaml) are two sets of this one mechanism (config.py, presets.py, table.py)."""

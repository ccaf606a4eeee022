"""Experiments: named presets (params/<name>.yaml, each on the code's defaults or on
other presets through `extends:`) run over the seeds each names, and summarised in one
table beside the archived runs of older code (presets.py, runs.py, index.py, table.py;
experiments/dvc.yaml runs them)."""

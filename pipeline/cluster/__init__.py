"""Running the pipeline on a Ray cluster: job.py is the entrypoint `ray job submit` runs
there; it runs `dvc exp run` and pushes the experiment for `dvc exp pull` to bring back."""

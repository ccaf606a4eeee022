"""Training: the shared epoch step and checkpoint (loop.py), the Ray Train per-worker
loop (worker.py), the driver the train stage calls (driver.py), label-free restarts
(restarts.py) and the `train` section (config.py)."""

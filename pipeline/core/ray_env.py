"""Starting or attaching to Ray, quietly and on loopback by default."""
from __future__ import annotations

import logging
import os

# Set before Ray is imported anywhere in this process, and inherited by every Ray process.
QUIET_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Train V2 tees worker print() into its logger too, which shows every line twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


def init_ray(num_cpus: int | None = None) -> str:
    """Attach to $RAY_ADDRESS if set, else start a private local instance on loopback.

    Ray's local default listens on every interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    makes it use 127.0.0.1 only (see ../shared/notes/ray-dvc.md). address="local" keeps a
    stale `ray start` cluster on this machine from capturing the run. Returns a one-line
    description of where we run.
    """
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    address = os.environ.get("RAY_ADDRESS")
    if not address:  # read when ray is first imported, so set it before that
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return "ray: already initialised in this process"
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True)
        return f"ray: attached to the cluster at {address}"
    # The dashboard process serves the state API that Ray Train's placement-group cleaner
    # polls; without it the cleaner warns every few seconds. It binds 127.0.0.1 here.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level=logging.ERROR, log_to_driver=True, configure_logging=True)
    return f"ray: started a local instance on 127.0.0.1 with {int(ray.cluster_resources()['CPU'])} CPUs"

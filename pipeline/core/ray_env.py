"""Starting or attaching to Ray, quietly and on loopback by default."""
from __future__ import annotations

import logging
import os
import socket
import sys

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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(num_cpus: int | None = None) -> str:
    """Attach to $RAY_ADDRESS if set, else start a private local instance on loopback.

    Ray's local default listens on every interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    makes it use 127.0.0.1 only (see ../shared/notes/ray-dvc.md). address="local" keeps a
    stale `ray start` cluster on this machine from capturing the run. Returns a one-line
    description of where we run.
    """
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if not sys.stdout.isatty():  # worker lines forwarded to a log or a pipe: no ANSI colours
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    address = os.environ.get("RAY_ADDRESS")
    if not address:  # read when ray is first imported, so set it before that
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Train's preemption watcher guards against nodes drained by a cluster; one machine
        # has none to drain, and the watcher's start logs an error line on every run.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Train registers a reported checkpoint at its next poll of the workers: poll
        # sooner, so that an epoch line (and the live logs) follow the epoch closely.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    import ray

    if ray.is_initialized():
        return "ray: already initialised in this process"
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True)
        return f"ray: attached to the cluster at {address}"
    # The dashboard process serves the state API that Ray Train's placement-group cleaner
    # polls; without it the cleaner warns every few seconds. It binds 127.0.0.1 here.
    # The cleaner finds that API by address auto-detection, which fails ("Found multiple
    # active Ray instances") while a second pipeline runs on this machine; naming our own
    # dashboard in the environment the Ray processes inherit at their start addresses it
    # explicitly (and only there: this process's later children must not inherit it).
    port, before = free_port(), os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, logging_level=logging.ERROR, log_to_driver=True,
                 configure_logging=True)
    finally:
        if before is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS")
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = before
    return f"ray: started a local instance on 127.0.0.1 with {int(ray.cluster_resources()['CPU'])} CPUs"

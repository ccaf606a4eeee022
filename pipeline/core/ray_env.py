"""Starting or attaching to Ray, quietly and on loopback by default."""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

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
    # ray.init replaces the process's SIGTERM handler with one that exits at once (and
    # prints a stack dump): keep the caller's, so that SIGTERM stops a stage as Ctrl-C does
    caller = signal.getsignal(signal.SIGTERM)
    try:
        return _init(ray, address, num_cpus)
    finally:
        if callable(caller) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, caller)


def _init(ray, address: str | None, num_cpus: int | None) -> str:
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


# How long the head's GCS may refuse connections before the driver gives up. Ray's own
# client waits 60 s (RAY_gcs_rpc_server_reconnect_timeout_s) and then aborts the process
# from C++ with its own log line, leaving the node's agents behind. A head this process
# started has nobody to restart it, so a few seconds tell; a cluster's head may be
# restarted (GCS fault tolerance), so attached drivers wait most of Ray's minute.
HEAD_GRACE_S = {"local": 3.0, "attached": 45.0}


@contextmanager
def head_watch(what: str, resume: str) -> Iterator[None]:
    """Run the body; if the Ray head dies meanwhile, end this process within seconds:
    kill the Ray processes this process started (a local instance's GCS, raylet,
    dashboard, and the raylet's agents and workers, which outlive it otherwise), print
    `error: <what>: the Ray head died ...; rerun to resume from <resume>` and exit 1.

    The exit is os._exit from a watcher thread: the main thread is blocked inside Ray,
    which would neither return nor raise before its own 60 s timeout.
    """
    import psutil
    import ray

    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    grace = HEAD_GRACE_S["local" if ray._private.worker._global_node.is_head() else "attached"]
    me, done = psutil.Process(), threading.Event()
    ours: dict = {}  # pid -> psutil.Process: the descendants ever seen, since the raylet's
    # children are re-parented when it dies (psutil checks a pid's start time before a kill)

    def alive() -> bool:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    def watch() -> None:
        last_seen = time.monotonic()
        while not done.wait(0.5):
            ours.update((p.pid, p) for p in me.children(recursive=True))
            if alive():
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen >= grace:
                break
        else:
            return
        procs = [p for p in ours.values() if p.is_running()]
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)
        sys.stdout.flush()
        print(f"error: {what}: the Ray head died (its GCS at {host}:{port} refused connections "
              f"for {grace:g} s); rerun to resume from {resume}", file=sys.stderr, flush=True)
        os._exit(1)

    watcher = threading.Thread(target=watch, name="ray-head-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()

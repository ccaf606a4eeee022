"""The torch process group of a run on this machine, kept off the network.

Ray Train's TorchConfig rendezvouses through torch's TCPStore, whose server on rank 0
listens on every interface (`*:port`), even for one worker. A local run (a private Ray
instance on 127.0.0.1) needs no network at all, so here:
- one worker gets no process group (nothing in the loop needs one);
- several workers rendezvous through a FileStore (a file, no socket), and gloo / NCCL
  bind their own connections to the loopback interface (GLOO_SOCKET_IFNAME /
  NCCL_SOCKET_IFNAME, set by `loopback_env`).
A cluster run keeps Ray's own TorchConfig. This leans on Ray's backend hooks
(`_TorchBackend`, `_setup_torch_process_group`): Ray offers no public option to choose the
rendezvous store or its address; tests/test_train_ray.py checks the listening sockets.
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


def loopback_interface() -> str:
    """The name of the interface that holds 127.0.0.1 (lo on Linux, lo0 on macOS)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs):
            return name
    return "lo"


def loopback_env() -> dict:
    """Worker environment that keeps gloo's and NCCL's own sockets on loopback."""
    iface = loopback_interface()
    return {"GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface}


class _LoopbackBackend(_TorchBackend):
    store: str | None = None  # the FileStore's path while a process group is up

    def on_start(self, worker_group, backend_config: "LoopbackTorchConfig") -> None:
        if len(worker_group) == 1:
            return  # no process group: nothing listens
        worker_group.execute(_set_torch_distributed_env_vars)
        # A fresh file each start (a retry after a failure must not meet the old one's
        # counters); torch deletes it only when every rank's store is destroyed, which a
        # Ray worker's exit skips, so on_shutdown removes it.
        self.store = os.path.join(tempfile.gettempdir(), f"moe-vae-pg-{uuid.uuid4().hex}")
        ray.get([worker_group.execute_single_async(
            rank, _setup_torch_process_group, backend=backend_config.backend, world_rank=rank,
            world_size=len(worker_group), init_method=f"file://{self.store}",
            timeout_s=backend_config.timeout_s) for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            if self.store is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.store)
                self.store = None


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """TorchConfig for a run whose workers all share this machine; set `backend`."""

    @property
    def backend_cls(self):
        return _LoopbackBackend

"""A real two-node Ray cluster on one machine: each node in its own network namespace.

Ray rewrites 127.0.0.1 to a routable address in multi-node mode, so the nodes get
10.231.0.1 and 10.231.0.2 on a veth pair that exists only inside two private
namespaces: nothing listens on the machine's own interfaces. Both ends are named
`rayif` so one GLOO_SOCKET_IFNAME serves both nodes (gloo otherwise resolves the
hostname to 127.0.0.1 and fails in connectFullMesh).

Token auth is on, with a fresh token in the cluster's own folder (RAY_AUTH_TOKEN_PATH),
given to every process we start; ~/.ray is never read or written.
Teardown kills by pid only what we started (and their descendants), never `ray stop`.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import psutil

from pipeline.core.ray_env import QUIET_ENV

HEAD_IP, WORKER_IP, IFNAME = "10.231.0.1", "10.231.0.2", "rayif"
VENV_BIN = Path(sys.executable).parent


def unavailable() -> str:
    """Why the two-node cluster cannot run here ('' if it can)."""
    if os.geteuid() != 0:
        return "needs root for `ip netns` (network namespaces)"
    if not shutil.which("ip"):
        return "needs iproute2's `ip` command"
    if not (VENV_BIN / "ray").exists():
        return f"no `ray` CLI next to {sys.executable}"
    return ""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TwoNodeCluster:
    def __init__(self, root: Path):
        tag = f"{os.getpid() % 100000}"
        self.root, self.head_ns, self.worker_ns = root, f"rt{tag}h", f"rt{tag}w"
        self.veth = (f"vh{tag}", f"vw{tag}")
        self.procs: List[subprocess.Popen] = []
        self.token = root / "auth_token"
        self.env = self._env()

    def _env(self) -> Dict[str, str]:
        # A clean environment: the pytest session's RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
        # (loopback-only, no joining nodes) and any RAY_ADDRESS must not leak in.
        keep = {k: v for k, v in os.environ.items()
                if k in ("LANG", "LC_ALL", "TERM", "TMPDIR", "DVC_NO_ANALYTICS")}
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {**keep, **QUIET_ENV, "HOME": str(home), "DVC_NO_ANALYTICS": "1",
                "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
                "GLOO_SOCKET_IFNAME": IFNAME, "OMP_NUM_THREADS": "1"}

    def in_ns(self, ns: str, cmd: List[str]) -> List[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def start(self) -> "TwoNodeCluster":
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)
        ip("netns", "add", self.head_ns)
        ip("netns", "add", self.worker_ns)
        ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for ns, dev, addr in ((self.head_ns, self.veth[0], HEAD_IP), (self.worker_ns, self.veth[1], WORKER_IP)):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "link", "set", dev, "name", IFNAME)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", IFNAME)
            ip("-n", ns, "link", "set", IFNAME, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        common = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=150000000",
                  "--disable-usage-stats", "--block"]
        self._ray_start(self.head_ns, "head", [
            "--head", f"--node-ip-address={HEAD_IP}", "--port=6379",
            "--dashboard-host=127.0.0.1", "--dashboard-port=8265", "--include-dashboard=true",
            f"--temp-dir={self.root / 'ray-head'}", *common])
        self._ray_start(self.worker_ns, "worker", [
            f"--address={HEAD_IP}:6379", f"--node-ip-address={WORKER_IP}",
            f"--temp-dir={self.root / 'ray-worker'}", *common])
        return self

    def _ray_start(self, ns: str, name: str, args: List[str], timeout: float = 90,
                   attempts: int = 2) -> None:
        # A loaded machine can make a joining node's first node-info RPC to the head miss
        # Ray's deadline (seen once in CI-like runs beside other Ray jobs): try it again.
        for _ in range(attempts):
            log = open(self.root / f"{name}.log", "w")
            proc = subprocess.Popen(self.in_ns(ns, [str(VENV_BIN / "ray"), "start", *args]),
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.procs.append(proc)
            deadline = time.time() + timeout
            while proc.poll() is None and time.time() < deadline:
                if "Ray runtime started" in (self.root / f"{name}.log").read_text():
                    return
                time.sleep(0.5)
            if "Ray runtime started" in (self.root / f"{name}.log").read_text():
                return
            if proc.poll() is None:
                proc.kill()
        raise RuntimeError(f"ray start ({name}) failed:\n{(self.root / f'{name}.log').read_text()[-3000:]}")

    def run(self, cmd: List[str], cwd: Path, timeout: float, extra_env: Dict[str, str] = None):
        """Run `cmd` inside the head's namespace, as a client of the cluster."""
        return subprocess.run(self.in_ns(self.head_ns, cmd), cwd=cwd, env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """Kill every process we started and its descendants, by pid; drop the namespaces."""
        ours = []
        for proc in self.procs:
            try:
                ours += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        # Ray workers are children of the raylet, but a process that outlived its parent
        # is re-parented; our own temp dirs in its command line still mark it as ours.
        marker = str(self.root)
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or []) and p not in ours:
                ours.append(p)
        for p in ours:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(ours, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for ns in (self.head_ns, self.worker_ns):  # deleting a namespace also drops its veth end
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)

"""A real multi-node Ray cluster on this machine: a head and N worker nodes, each its own
``ray start`` (its own raylet, resources and temp dir), each on a loopback address of its
own (127.0.0.2, 127.0.0.3, ...), with token authentication, for the tests and benchmarks of
cluster-scale sweeps.

As a script::

    python jobs/cluster/local_cluster.py --workers 2 --gpus-per-worker 2

starts one, prints its addresses and how to submit to it, and stops it on Ctrl-C. As a
module (``sys.path`` holding ``jobs/cluster``)::

    with LocalCluster(workers=2, gpus_per_worker=2) as cluster:
        subprocess.run([..., "mllm4wtal", "sweep", ...],
                       env={**cluster.env, "RAY_ADDRESS": cluster.address})

The head declares no CPU so that trials land on the workers; workers declare fake GPUs
(``--num-gpus``: Ray counts and assigns them, CUDA is not needed). Only the processes this
object started are ever signalled (by PID, or by its own temp dir in their command line):
other Rays on the machine, ``~/.ray`` included, are left alone (HOME is a temp dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import free_port, free_port_range  # noqa: E402  (jobs/cluster/services.py)

BIN = Path(sys.executable).parent  # the venv's bin: ray, mllm4wtal
WORKER_PORTS = 64  # ports of one node's worker processes (16 trials and Ray's own workers)
# the GCS notices a killed node within seconds rather than ~30 s (Ray's defaults)
FAST_HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000",
                     "RAY_health_check_period_ms": "1000",
                     "RAY_health_check_timeout_ms": "2000",
                     "RAY_health_check_failure_threshold": "4"}


# Each node on a loopback address of its own (head 127.0.0.2, worker i 127.0.0.<3+i>: all
# of 127.0.0.0/8 is loopback on Linux), the address its GCS, raylet, workers and agents bind.
# Not 127.0.0.1: Ray replaces that by the machine's external address, except under its
# one-machine switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which a worker node refuses.
HEAD_IP = "127.0.0.2"


def node_ip(index: int) -> str:
    """The loopback address of worker node ``index``."""
    return f"127.0.0.{3 + index}"


# a loaded machine registers a node slowly; Ray's default gives up after 10 s
SLOW_START = {"RAY_raylet_start_wait_time_s": "120"}


class ClusterError(RuntimeError):
    """The local cluster could not start (its logs are named in the message)."""


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (the processes of one temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
    return pids


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (by parent PID, from /proc)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (proc / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
        todo += children.get(pid, [])
    return out


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class LocalCluster:
    """A head and ``workers`` worker nodes started with ``ray start --block`` on loopback.

    ``address`` is the GCS address (``RAY_ADDRESS`` / ``--address`` of a sweep), ``dashboard``
    the job server (``ray job submit --address``), ``env`` the environment of a client (the
    token, HOME, PATH with the venv's bin). Each node is a ``ray start --block`` in a session
    of its own: its raylet and the workers the raylet forks are its descendants.
    """

    def __init__(self, workers: int = 2, cpus_per_node: int = 4, gpus_per_worker: float = 0,
                 head_cpus: int = 0, temp_root: str | Path | None = None,
                 token: str | None = None, dashboard: bool = True) -> None:
        self.workers = int(workers)
        self.cpus_per_node = int(cpus_per_node)
        self.gpus_per_worker = float(gpus_per_worker)
        self.head_cpus = int(head_cpus)
        self.with_dashboard = bool(dashboard)  # `ray job submit` needs it; a sweep does not
        # unix sockets live in the temp dir: keep its path short
        self.root = Path(temp_root) if temp_root else Path(tempfile.mkdtemp(prefix="lc",
                                                                            dir="/tmp"))
        self._own_root = temp_root is None
        self.token = token or secrets.token_hex(32)
        self._taken: set[int] = set()
        self.port = self._port()
        self.dashboard_port = self._port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        self.env: dict[str, str] = {**base, "HOME": str(home),
                                    "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
                                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                                    "RAY_USAGE_STATS_ENABLED": "0"}
        self._nodes: list[subprocess.Popen] = []  # [head, worker 0, worker 1, ...]
        self._logs: list[Path] = []
        self._specs: list[tuple[str, list[str], dict[str, str]]] = []  # to start one again

    # -- ports and commands ------------------------------------------------------------------

    def _port(self) -> int:
        for _ in range(100):
            port = free_port()
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise ClusterError("no free port on 127.0.0.1")

    def _node_flags(self, name: str) -> list[str]:
        """What every node is given: loopback, its temp dir and a port of its own for each
        of Ray's servers."""
        first = free_port_range(WORKER_PORTS, self._taken)
        ports = {flag: self._port() for flag in (
            "node-manager-port", "object-manager-port", "metrics-export-port",
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port")}
        return [f"--temp-dir={self.root / name}",
                *(f"--{flag}={port}" for flag, port in ports.items()),
                f"--min-worker-port={first}", f"--max-worker-port={first + WORKER_PORTS - 1}",
                "--object-store-memory=200000000", "--include-log-monitor=false",
                "--disable-usage-stats", "--block"]

    def _start_node(self, name: str, args: list[str], env: dict[str, str],
                    index: int | None = None) -> None:
        """Start node ``name`` (at ``index``: again, in place of the one that failed)."""
        log = self.root / f"{name}.log"
        with open(log, "a") as out:
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", *args, *self._node_flags(name)], env=env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        if index is None:
            self._nodes.append(proc)
            self._logs.append(log)
            self._specs.append((name, args, env))
        else:
            self._nodes[index] = proc

    # -- life ------------------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> LocalCluster:
        """Start the head, then the workers; returns once every node is alive in the GCS."""
        try:
            self._start_node("h", [
                "--head", f"--node-ip-address={HEAD_IP}", f"--port={self.port}",
                f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                f"--include-dashboard={str(self.with_dashboard).lower()}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self._port()}"],
                {**self.env, **FAST_HEALTH_CHECK, **SLOW_START})
            # the workers wait for the GCS themselves: all nodes start at once
            for i in range(self.workers):
                self._start_node(f"w{i}", [
                    f"--address={self.address}", f"--node-ip-address={node_ip(i)}",
                    f"--num-cpus={self.cpus_per_node}",
                    f"--num-gpus={self.gpus_per_worker:g}"], {**self.env, **SLOW_START})
            self._wait(1 + self.workers, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def alive_nodes(self, wait_for: int = 0, timeout: float = 60.0) -> list[dict]:
        """The nodes alive in the GCS (``node_id``, ``node_ip``, ``is_head``, ``temp_dir``,
        ``resources``), read by a client in the cluster's environment; with ``wait_for``,
        once that many are alive (or ``timeout`` passed)."""
        out = subprocess.run([sys.executable, __file__, "--nodes-of", self.address,
                              "--wait-for", str(wait_for), "--timeout", str(timeout)],
                             env=self.env, capture_output=True, text=True,
                             timeout=timeout + 120)
        if out.returncode != 0:
            raise ClusterError(f"cannot read the nodes of {self.address}: {out.stderr[-2000:]}")
        return list(json.loads(out.stdout))

    def _wait(self, nodes: int, timeout: float) -> None:
        deadline = time.time() + timeout
        retries = 2  # a worker whose registration timed out on a loaded machine
        while time.time() < deadline:
            for i, proc in enumerate(self._nodes):
                if proc.poll() is None:
                    continue
                if i == 0 or retries == 0:
                    raise ClusterError(f"node {i} of the local cluster exited "
                                       f"({proc.returncode}): {self._logs[i].read_text()[-3000:]}")
                retries -= 1
                # what the failed start left, by the node's own temp dir
                signal_all(processes_mentioning(f"{self.root / self._specs[i][0]}/"),
                           signal.SIGKILL)
                self._start_node(*self._specs[i], index=i)
            if len(self.alive_nodes(nodes, timeout=min(10.0, deadline - time.time()))) >= nodes:
                return
        tails = "\n".join(f"{log.name}: ...{log.read_text()[-600:]}" for log in self._logs)
        raise ClusterError(f"{nodes} nodes not alive after {timeout:g} s:\n{tails}")

    def running(self) -> bool:
        """Whether every node's ``ray start`` still runs."""
        return bool(self._nodes) and all(proc.poll() is None for proc in self._nodes)

    def worker_pids(self, index: int) -> list[int]:
        """The processes of worker node ``index``: its ``ray start``, raylet, agents, workers."""
        return descendants(self._nodes[1 + index].pid)

    def raylet_pid(self, index: int) -> int:
        """The PID of worker node ``index``'s raylet."""
        for pid in self.worker_pids(index):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
        raise ClusterError(f"worker node {index} has no raylet")

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker node ``index``: its raylet, then everything else of that node (the
        trial processes too), as a machine that dies would."""
        pids = self.worker_pids(index)
        signal_all([self.raylet_pid(index)], signal.SIGKILL)
        signal_all(pids, signal.SIGKILL)
        self._nodes[1 + index].wait(timeout=30)

    def stop(self) -> None:
        """Stop every process this cluster started (by PID and by its temp dir), workers
        first; ``ray start --block`` ends its node on SIGTERM."""
        for proc in reversed(self._nodes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for proc in self._nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.time()))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for proc in self._nodes for p in descendants(proc.pid)]
            signal_all(pids + processes_mentioning(f"{self.root}/"), sig)
            time.sleep(1)
        for proc in self._nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def print_nodes(address: str, wait_for: int, timeout: float) -> None:
    """Print the alive nodes of the GCS at ``address`` as JSON (``--nodes-of``), once
    ``wait_for`` of them are alive or ``timeout`` passed: one import of Ray for the whole
    wait."""
    import ray._raylet
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    client = ray._raylet.GcsClient(address=address)
    deadline = time.time() + timeout
    while True:
        try:
            infos = list(client.get_all_node_info(
                timeout=5, state_filter=GcsNodeInfo.GcsNodeState.ALIVE).values())
        except Exception:  # the GCS is still starting
            infos = []
        if len(infos) >= wait_for or time.time() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps([{"node_id": n.node_id.hex(), "node_ip": n.node_manager_address,
                       "is_head": n.is_head_node, "temp_dir": n.temp_dir,
                       "resources": dict(n.resources_total)} for n in infos]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start a head and worker nodes of Ray on this "
                                            "machine (loopback, token auth); Ctrl-C stops it.")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=4)
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="fake GPUs each worker declares (Ray counts them; no CUDA needed)")
    p.add_argument("--head-cpus", type=int, default=0)
    p.add_argument("--nodes-of", metavar="GCS_ADDRESS", help=argparse.SUPPRESS)
    p.add_argument("--wait-for", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nodes_of:  # what LocalCluster.alive_nodes runs, in the cluster's environment
        print_nodes(args.nodes_of, args.wait_for, args.timeout)
        return 0
    cluster = LocalCluster(args.workers, args.cpus_per_node, args.gpus_per_worker,
                           args.head_cpus)
    try:
        cluster.start()
    except KeyboardInterrupt:  # start() has stopped what it started
        return 130
    try:
        print(f"cluster up: head + {args.workers} workers "
              f"({args.cpus_per_node} CPUs, {args.gpus_per_worker:g} GPUs each)")
        print(f"  GCS:       {cluster.address}")
        print(f"  dashboard: {cluster.dashboard}")
        print(f"  logs:      {cluster.root}")
        print("in another shell:")
        print(f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={cluster.token}")
        print(f"  RAY_ADDRESS={cluster.address} mllm4wtal sweep search_spaces/quickstart.yaml")
        print(f"  RAY_ADDRESS={cluster.dashboard} jobs/submit_sweep.sh  # ray job submit")
        print("Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while cluster.running():
                time.sleep(1)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's one-machine Ray cluster, as tests run it: its commands (the fenced bash block
of "On a cluster: `ray job submit`"), with free port numbers, in a clean environment, and
the processes it started, found and stopped by PID (never `ray stop`: other Rays run here).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs" / "cluster"))
from services import (  # noqa: E402,F401  (jobs/cluster/services.py; tests import free_port here)
    free_port,
    free_port_range,
)

BIN = Path(sys.executable).parent
SECTION = "### On a cluster: `ray job submit`"
DEFAULT_PORTS = (6379, 8265, 10001, 52365)  # the README's: GCS, dashboard, client, agent
WORKER_PORTS = (10002, 19999)  # the README's worker port range
WORKERS = 200  # ports of the tests' worker range
LOOPBACK = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


def readme_commands() -> list[str]:
    """The commands of the README's cluster block, one string each (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [c.strip() for c in block.replace("\\\n", " ").split("\n") if c.strip()]


def with_ports(commands: list[str]) -> tuple[list[str], dict[int, int]]:
    """``commands`` with the README's port numbers replaced by free ones, nothing else."""
    taken: set[int] = set()
    first = free_port_range(WORKERS, taken)
    ports: dict[int, int] = {}
    for p in DEFAULT_PORTS:  # each its own port, none in the worker range
        while (port := free_port()) in taken:
            pass
        ports[p] = port
        taken.add(port)
    ports |= {WORKER_PORTS[0]: first, WORKER_PORTS[1]: first + WORKERS - 1}
    text = "\n".join(commands)
    for old, new in ports.items():
        pattern = rf"(?<=[=:]){old}\b"
        assert re.search(pattern, text), f"the README's commands name no port {old}"
        text = re.sub(pattern, str(new), text)
    return text.split("\n"), ports


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            out[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def processes_of(home: Path) -> list[int]:
    """Pids of the processes started with HOME=``home``: those whose environment says so
    (the GCS, the raylet, the dashboard, ...) and their descendants (the agents and workers,
    which rename themselves, e.g. ray::DashboardAgent, and may overwrite their environment
    doing so)."""
    needle = f"HOME={home}".encode() + b"\0"
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes():
                    found.add(int(proc.name))
            except OSError:
                pass
    tree = parents()
    grew = True
    while grew:
        children = {pid for pid, parent in tree.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def stop(home: Path) -> None:
    """Stop the processes started with HOME=``home``, by PID."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_of(home):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        while processes_of(home) and time.time() < deadline:
            time.sleep(0.5)


def listening(pids: list[int]) -> list[tuple[str, str]]:
    """``(local address:port, process)`` of every TCP port ``pids`` listen on (``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        found = re.findall(r'\("([^"]+)",pid=(\d+),', line)
        if any(int(pid) in pids for _, pid in found):
            rows.append((line.split()[3], found[0][0]))
    return rows


@contextlib.contextmanager
def clean_env() -> Iterator[tuple[dict[str, str], Path]]:
    """PATH (the venv's bin first), a fresh HOME, and a short private TMPDIR (Ray's temp dir
    goes there, not into the machine's shared /tmp/ray; unix sockets need short paths). Every
    process started with that HOME is stopped at the end."""
    top = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    home, tmp = top / "h", top / "t"
    home.mkdir()
    tmp.mkdir()
    env = {"PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
           "TMPDIR": str(tmp)}
    try:
        yield env, home
    finally:
        stop(home)
        shutil.rmtree(top, ignore_errors=True)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout

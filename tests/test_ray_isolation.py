"""Which Ray a command runs on: a private one unless told (``--address`` / ``$RAY_ADDRESS``),
never a ``ray start`` head that happens to run on the machine; a dead address refused in
seconds, in one line; Ctrl-C and SIGTERM answered while connecting; and the README's
one-machine cluster listening on 127.0.0.1 only (``ss -ltnp``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import check_address, parse_address
from readme_cluster import (
    LOOPBACK,
    ROOT,
    clean_env,
    free_port,
    listening,
    processes_of,
    readme_commands,
    with_ports,
)

MLLM4WTAL = [str(Path(sys.executable).parent / "mllm4wtal")]
TINY_SWEEP = ["search_spaces/quickstart.yaml", *[a for o in TINY for a in ("--set", o)],
              *[a for o in ("trials.num_samples=1", "scheduler.grace_period=2",
                            "scheduler.max_t=4", "searcher.n_startup_trials=1")
                for a in ("--space-set", o)]]
AGENTS = {"ray::DashboardA", "ray::RuntimeEnv"}  # as `ss` shows their names
# a driver on the README's cluster: counts the drivers the cluster has seen, then holds two
# workers busy while the test looks at the ports
DRIVER = """
import sys, time, ray
from ray.util.state import list_jobs
from mllm4wtal.ray_session import start_ray
start_ray(sys.argv[1])
print("DRIVERS", sum(j.type == "DRIVER" for j in list_jobs()), flush=True)
@ray.remote(num_cpus=0)
def hold():
    time.sleep(120)
refs = [hold.remote() for _ in range(2)]
ray.wait(refs, timeout=1)
print("READY", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("address, says", [
    ("http://127.0.0.1:8265", "is a dashboard"), ("auto", "not 'auto'"),
    ("head-node", "is no Ray address"), ("ray://h:x", "is no Ray address")])
def test_address_forms_refused(address, says):
    with pytest.raises(UserError, match=says):
        parse_address(address, f"--address {address}")


def test_dead_address_refused_in_seconds(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    start = time.monotonic()
    out = subprocess.run([*MLLM4WTAL, "sweep", *TINY_SWEEP, "--storage", str(tmp_path / "s")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert out.returncode == 2, out.stdout + out.stderr
    assert elapsed < 30, elapsed
    assert out.stderr.startswith(f"mllm4wtal sweep: error: no Ray cluster answers at "
                                 f"127.0.0.1:{port} (RAY_ADDRESS=127.0.0.1:{port}: ")
    assert out.stderr.count("\n") == 1, out.stderr  # one line, no traceback
    assert not (tmp_path / "s").exists()  # refused before anything was written
    # the flag is checked the same way, in-process
    with pytest.raises(UserError, match=rf"no Ray cluster answers at 127.0.0.1:{port} "
                                        rf"\(--address 127.0.0.1:{port}: "):
        check_address(f"127.0.0.1:{port}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_signals_end_a_connect(tmp_path, sig, code):
    """A port that accepts TCP but never answers: the command is stopped at once."""
    server = socket.create_server(("127.0.0.1", 0))
    connected = threading.Event()

    def accept() -> None:
        conn, _ = server.accept()
        connected.set()
        time.sleep(30)
        conn.close()

    threading.Thread(target=accept, daemon=True).start()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{server.getsockname()[1]}"}
    proc = subprocess.Popen([*MLLM4WTAL, "sweep", *TINY_SWEEP, "--storage",
                             str(tmp_path / "s")], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert connected.wait(120), "the command never probed the address"
        start = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert time.monotonic() - start < 3
        assert proc.returncode == code, proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()
        server.close()


@pytest.mark.cluster
@pytest.mark.slow  # a `ray start` head, a private sweep and a driver: about a minute
def test_foreign_head_not_joined_and_readme_cluster_on_loopback(tmp_path):
    commands, ports = with_ports(readme_commands())
    head = [c for c in commands if "submit_sweep.sh" not in c]
    assert any("ray start --head" in c for c in head)
    with clean_env() as (env, home):
        started = subprocess.run(["bash", "-e", "-c", "\n".join(head)], cwd=ROOT, env=env,
                                 timeout=300, capture_output=True, text=True)
        assert started.returncode == 0, started.stderr[-4000:]
        gcs = f"127.0.0.1:{ports[6379]}"
        # the head, once its agents listen (they start a little after `ray start` returns)
        deadline = time.monotonic() + 120
        head_rows = listening(processes_of(home))
        while not AGENTS <= {name for _, name in head_rows}:
            assert time.monotonic() < deadline, head_rows
            time.sleep(1)
            head_rows = listening(processes_of(home))
        # a sweep started here, where `ray start` has just left its address
        # (<TMPDIR>/ray/ray_current_cluster), with its own HOME: a private Ray
        other = tmp_path / "home"
        other.mkdir()
        sweep = subprocess.run(
            [*MLLM4WTAL, "sweep", *TINY_SWEEP, "--set", f"text.cache_dir={tmp_path / 'c'}",
             "--storage", str(tmp_path / "sweeps")], cwd=ROOT, timeout=600,
            env={**env, "HOME": str(other)}, capture_output=True, text=True)
        log = sweep.stdout + sweep.stderr
        assert sweep.returncode == 0, log[-6000:]
        assert "Connecting to existing Ray cluster" not in log and gcs not in log
        assert (tmp_path / "sweeps" / "quickstart" / "summary").is_dir()
        assert not (other / ".ray").exists()  # no token written to ~/.ray

        driver = subprocess.Popen([sys.executable, "-c", DRIVER, gcs], cwd=ROOT, env=env,
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lines = iter(driver.stdout.readline, "")
            drivers = next(line for line in lines if line.startswith("DRIVERS"))
            assert drivers.split() == ["DRIVERS", "1"]  # itself: the sweep never joined
            assert next(line for line in lines if line.startswith("READY"))
            rows = head_rows + listening(processes_of(home))
        finally:
            driver.kill()
            driver.communicate()
    names = {name for _, name in rows}
    # the GCS, the raylet, the agents, the dashboard and client server, the driver, workers
    assert {"gcs_server", "raylet", *AGENTS} <= names, rows
    assert any(name.startswith("ray::hold") for name in names), rows
    outside = [(addr, name) for addr, name in rows if addr.rsplit(":", 1)[0] not in LOOPBACK]
    assert not outside, f"listening outside loopback: {outside}"
    print("\n".join(f"{addr} {name}" for addr, name in rows))  # the listing, with -s

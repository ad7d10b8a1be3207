"""Starting Ray, the one way every command does it (``sweep``, ``ablate``, ``describe``).

A command joins a cluster only when told where it is: ``address`` (the ``--address`` flag)
or ``$RAY_ADDRESS`` (set by ``ray job submit`` for its driver, and by users of a cluster).
Otherwise it starts a private Ray inside this process (``address="local"``), with no
dashboard, listening on 127.0.0.1 only, with a token of its own: a ``ray start`` head that
happens to run on the machine is never joined, and ``~/.ray`` is not written.

Before joining, the address is probed with a short TCP connect: a dead one fails within
seconds with one line naming it, instead of Ray's minutes of "Failed to connect to GCS"
during which Ctrl-C and SIGTERM are not answered.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Iterator

import ray
from ray.exceptions import AuthenticationError

from mllm4wtal.errors import UserError

#: the Ray release series whose internals the project reaches (:func:`check_ray_version`)
TESTED_RAY = "2.60"
ADDRESS_ENV = "RAY_ADDRESS"
PROBE_SECONDS = 5.0  # how long a join waits for the address to accept a TCP connection
PRIVATE_TOKEN_ENV = "RAY_AUTH_TOKEN"
PRIVATE_TOKEN = secrets.token_hex(32)
AUTH_ENVS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
GCS_RETRIES_ENV = "RAY_gcs_server_port_wait_time_s"  # Ray's attempts (~1 s each) to reach a GCS
JOIN_RETRIES = 5
TOKEN_FIX = ("set RAY_AUTH_TOKEN to the token of the cluster (`ray get-auth-token` on its head "
             "prints it; or RAY_AUTH_TOKEN_PATH to a file holding it)")
WHAT_TO_GIVE = ("the cluster's GCS address HOST:PORT (`ray status` on the head prints it, "
                "6379 by default) or ray://HOST:10001")


def cluster_address(address: str | None = None) -> str | None:
    """The cluster a command started now joins: ``address``, else ``$RAY_ADDRESS``; None for
    a private Ray in this process (also for the address ``local``)."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    return None if address == "local" else address


def where(address: str | None = None) -> str:
    """How the user named the address, for messages: ``--address X`` or ``RAY_ADDRESS=X``."""
    if address:
        return f"--address {address}"
    return f"{ADDRESS_ENV}={os.environ.get(ADDRESS_ENV, '')}"


def parse_address(address: str, named: str) -> tuple[str, int]:
    """``(host, port)`` of a GCS address ``HOST:PORT`` or a Ray Client one ``ray://HOST:PORT``;
    any other form is refused with one line (``named`` says where it came from)."""
    if address == "auto":
        raise UserError(f"{named}: give {WHAT_TO_GIVE}, not 'auto', which joins whatever Ray "
                        f"runs on this machine; unset {ADDRESS_ENV} and drop --address to run "
                        "on a private Ray here")
    if address.startswith(("http://", "https://")):
        raise UserError(f"{named} is a dashboard (Ray Jobs API) address, which `ray job "
                        f"submit` takes; mllm4wtal needs {WHAT_TO_GIVE}, or no address at all "
                        "to run on a private Ray here")
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536) or "/" in rest:
        raise UserError(f"{named} is no Ray address: give {WHAT_TO_GIVE}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe(host: str, port: int, named: str, seconds: float = PROBE_SECONDS) -> None:
    """Wait up to ``seconds`` for a gRPC server (a Ray GCS or Ray Client server) to answer at
    ``host:port``, else one line naming the address and what to check.

    A refused connection is retried (a head that is still starting). A port that accepts TCP
    but does not speak gRPC (HTTP/2) is refused too: Ray would wait ~30 s per attempt there.
    Ctrl-C and SIGTERM end the wait at once (Python handles them during it).
    """
    import grpc  # Ray's own dependency

    deadline = time.monotonic() + seconds
    reason = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(left, 0.5)):
                pass
            # as Ray's own channels: straight to the address, never through $http_proxy
            channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host
                                            else f"{host}:{port}",
                                            options=[("grpc.enable_http_proxy", 0)])
            try:
                grpc.channel_ready_future(channel).result(timeout=max(
                    deadline - time.monotonic(), 0.5))
                return
            except grpc.FutureTimeoutError:
                reason = "it accepts connections but does not answer as a Ray head (gRPC)"
                break
            finally:
                channel.close()
        except socket.gaierror as e:
            raise UserError(f"{named}: the host '{host}' is unknown ({e.strerror}); give "
                            f"{WHAT_TO_GIVE}") from None
        except OSError as e:
            reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        if time.monotonic() + 0.5 >= deadline:
            break
        time.sleep(0.5)
    raise UserError(f"no Ray cluster answers at {host}:{port} ({named}: {reason}, "
                    f"{seconds:g} s); check that its head runs (`ray status` on it) and that "
                    f"this machine reaches that port, or unset {ADDRESS_ENV} and drop --address "
                    "to run on a private Ray here")


def check_address(address: str | None = None) -> str | None:
    """The address a command would join (see :func:`cluster_address`), after checking its
    form and that something listens there; None for a private Ray. Call it before anything is
    written, so that a dead address costs seconds and no experiment folder."""
    joined = cluster_address(address)
    if joined is None:
        return None
    named = where(address)
    host, port = parse_address(joined, named)
    probe(host, port, named)
    return joined


def check_ray_version(version: str | None = None) -> None:
    """Refuse a Ray whose internals were not tested (``version``: default
    ``ray.__version__``). The project reaches, for Ray :data:`TESTED_RAY`.x only: the switch
    that keeps a node on 127.0.0.1 and the token set-up of a join (here), ``OptunaSearch``'s
    trial state (``sweep.search.OptunaSearchState``) and the Tuner's pickled state
    (``sweep.trust``)."""
    version = ray.__version__ if version is None else version
    if version != TESTED_RAY and not version.startswith(TESTED_RAY + "."):
        raise UserError(
            f"mllm4wtal uses internals of Ray {TESTED_RAY}.x (the loopback switch and token "
            f"set-up in mllm4wtal/ray_session.py, OptunaSearch's state in "
            f"mllm4wtal/sweep/search.py, the Tuner's state in mllm4wtal/sweep/trust.py), and "
            f"Ray {version} is installed; install the tested Ray (pip install "
            f"'ray[tune,default]=={TESTED_RAY}.*') or, to support Ray {version}, check those "
            "places against it and update TESTED_RAY")


def keep_on_loopback() -> None:
    """Let Ray take 127.0.0.1 as this node's address instead of the machine's external one.

    Ray rewrites a loopback node or cluster address to the external address unless it
    believes multi-node clusters are unsupported (its ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    switch, read once when Ray is imported). With 127.0.0.1 kept, the servers of a private Ray
    listen on loopback only, and a cluster named by 127.0.0.1 is reached there (a
    ``ray start`` head kept on loopback listens nowhere else).
    """
    check_ray_version()
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


@functools.lru_cache(maxsize=1)
def own_token() -> bool:
    """Whether private Rays use :data:`PRIVATE_TOKEN`: decided at the first start of this
    process, since Ray then sets ``RAY_AUTH_MODE`` itself."""
    return not any(os.environ.get(name) for name in AUTH_ENVS)


@contextlib.contextmanager
def private_token() -> Iterator[None]:
    """A private Ray gets a token of its own (one per process: Ray keeps the first token it
    loads), unless the user chose how Ray authenticates. Ray enables token authentication for
    a new local Ray and, without a token, writes one to ``~/.ray/auth_token``; this keeps that
    file untouched. The variable is set while Ray starts (its processes inherit it) and
    removed after, so that processes this one starts later do not inherit it."""
    if not own_token():
        yield
        return
    os.environ[PRIVATE_TOKEN_ENV] = PRIVATE_TOKEN
    try:
        yield
    finally:
        os.environ.pop(PRIVATE_TOKEN_ENV, None)


@contextlib.contextmanager
def env_default(name: str, value: str) -> Iterator[None]:
    """``$name`` is ``value`` for the block unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def join(address: str, named: str) -> None:
    """``ray.init`` on a cluster that answered :func:`probe`; Ray's failures as one line.

    Something that accepts TCP but is no Ray head (or a head that stopped in between) would
    keep Ray retrying for ~20 s per attempt: the attempts are capped at a few seconds' worth.
    A token the user keeps (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``)
    is sent as ``ray job submit`` drivers send it, since Ray sends none to an address it was
    given unless ``RAY_AUTH_MODE=token``.
    """
    if is_loopback(parse_address(address, named)[0]):
        keep_on_loopback()
    check_ray_version()
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    with env_default(GCS_RETRIES_ENV, str(JOIN_RETRIES)):
        try:
            ray.init(address=address, log_to_driver=True)
        except AuthenticationError as e:
            raise UserError(f"the Ray cluster at {address} ({named}) refused this process: "
                            f"{e.message}; {TOKEN_FIX}") from None
        except (ConnectionError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"no Ray cluster answers at {address} ({named}): {first}; check "
                            "that its head runs (`ray status` on it), or unset "
                            f"{ADDRESS_ENV} and drop --address to run on a private Ray "
                            "here") from None


def start_ray(address: str | None = None, num_cpus: int | None = None,
              runtime_env: dict | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS`` (checked first: one line, exit 2, when it
    is malformed or nothing answers there), or start a private local Ray on 127.0.0.1
    (with ``num_cpus`` CPUs, default what Ray detects, and ``runtime_env`` for its workers).

    Returns True when this call started (or connected) Ray, False when this process already
    had it; the caller that started it is the one that shuts it down.
    """
    # keeping one checkpoint per trial makes Tune snapshot its state at every report; that is
    # cheap at our report intervals, and its warning about it is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    joined = check_address(address)
    if joined is None:
        keep_on_loopback()
        with private_token():
            ray.init(address="local", include_dashboard=False, log_to_driver=True,
                     num_cpus=num_cpus, runtime_env=runtime_env)
    else:
        join(joined, where(address))
    return True

"""Starting Ray, the one way every command does it (``sweep``, ``ablate``, ``describe``).

A command joins a cluster only when told where it is: ``address`` (the ``--address`` flag)
or ``$RAY_ADDRESS`` (set by ``ray job submit`` and by users of a cluster). Otherwise it
starts a private Ray inside this process (``address="local"``), with no dashboard: a
``ray start`` head that happens to run on the machine is never joined.
"""

from __future__ import annotations

import os

import ray


def start_ray(address: str | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a private local Ray.

    Returns True when this call started (or connected) Ray, False when this process already
    had it; the caller that started it is the one that shuts it down.
    """
    # keeping one checkpoint per trial makes Tune snapshot its state at every report; that is
    # cheap at our report intervals, and its warning about it is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    return True

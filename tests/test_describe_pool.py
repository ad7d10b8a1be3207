"""The Ray actor pool of `mllm4wtal describe` (``ray.util.ActorPool``): a worker's error is
noted in its own words and the job goes on; an actor that dies for good fails only the
videos it had in flight while the living actors take the rest; a fatal backend error stops
the job; when every actor has died the job stops with one line. (The happy path, resuming
through the pool and an actor that cannot load its backend: test_describe.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from mllm4wtal.describe.backends import BackendSpec, FatalBackendError
from mllm4wtal.describe.job import run_describe
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import start_ray
from mllm4wtal.text.store import needed_pairs, read_store

COUNTING = "describe_helpers:CountingBackend"


@pytest.fixture(scope="module")
def ray_with_helpers():
    """An in-process Ray whose actors can import describe_helpers (the counting backend)."""
    ray = pytest.importorskip("ray")
    start_ray(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


def run(ds, out, options=None, **kw):
    return run_describe(ds, out, BackendSpec(COUNTING, model="counter", options=options or {}),
                        use_ray=True, num_cpus=1, progress=False, echo=lambda s: None, **kw)


def test_a_dead_actor_fails_only_its_videos_and_the_others_are_described(
        tiny_data, tmp_path, ray_with_helpers):
    videos = [v.name for v in tiny_data.train]
    out = tmp_path / "d.jsonl"
    # videos[0] kills its actor, twice (Ray restarts it once and retries the video once)
    s = run(tiny_data, out, {"die_on": [videos[0]], "fail_on": [videos[5]]}, actors=2)
    assert s.failed[videos[5]] == f"RuntimeError: cannot describe {videos[5]}"  # its own words
    died = set(s.failed) - {videos[5]}
    assert videos[0] in died and len(died) <= 2  # and at most the other video on that actor
    assert "actor died" in s.failed[videos[0]] and "actor_id" not in s.failed[videos[0]]
    assert {v for v, _ in read_store(out)} == set(videos) - set(s.failed)  # the rest: done
    assert s.videos_done == len(videos) - len(s.failed) and not s.complete

    again = run(tiny_data, out, actors=2)  # the rerun describes exactly the failed videos
    assert again.complete and not again.failed
    assert again.written == sum(1 for v, _ in needed_pairs(tiny_data) if v in s.failed)
    assert set(read_store(out)) == set(needed_pairs(tiny_data))


def test_fatal_error_or_every_actor_dead_stops_the_job(tiny_data, tmp_path, ray_with_helpers):
    videos = [v.name for v in tiny_data.train]
    with pytest.raises(FatalBackendError, match=f"refuses every request \\({videos[3]}\\)"):
        run(tiny_data, tmp_path / "f.jsonl", {"fatal_on": [videos[3]]}, actors=2)
    out = tmp_path / "d.jsonl"
    with pytest.raises(UserError, match="every describe actor died \\(the last while "
                                        "describing .*actor died.*rerun to go on"):
        run(tiny_data, out, {"die_on": videos}, actors=1)
    assert not out.exists() or read_store(out) == {}

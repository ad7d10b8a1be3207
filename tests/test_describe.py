"""`mllm4wtal describe`: frames, the template / hf / openai backends, the resumable job, the
Ray actor pool, the store check, and training reading what describe wrote."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from describe_helpers import (
    CountingBackend,
    FakeChatServer,
    build_tiny_llava,
    write_frame_folder,
    write_video,
)
from mllm4wtal.cli import main
from mllm4wtal.config import with_overrides
from mllm4wtal.data.types import Video, WTALDataset
from mllm4wtal.describe.backends import BackendSpec, FatalBackendError, Query, make_backend
from mllm4wtal.describe.backends.frames import (
    FrameError,
    frames_hash,
    index_videos,
    read_frames,
    uniform_indices,
)
from mllm4wtal.describe.check import check_store, format_check
from mllm4wtal.describe.job import load_describe_dataset, run_describe
from mllm4wtal.describe.writer import store_lock
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import start_ray
from mllm4wtal.text.prompts import format_prompt
from mllm4wtal.text.store import (
    DescriptionRecord,
    StoreError,
    append_record,
    build_store,
    descriptions_for,
    needed_pairs,
    read_store,
)

THUMOS = Path(__file__).parent / "data" / "thumos14reduced"
CORE = ("video", "cls", "key", "complete", "backend", "model", "prompt")
COUNTING = "describe_helpers:CountingBackend"


def core(rec: DescriptionRecord) -> tuple:
    return tuple(getattr(rec, f) for f in CORE)


def small_dataset(labels=((0,), (0, 1), (1,))) -> WTALDataset:
    feats = np.zeros((0, 0), dtype=np.float32)
    videos = [Video(name=f"v{i}", subset="validation", features=feats, labels=lab, segments=(),
                    duration=2.0, fps=12.0) for i, lab in enumerate(labels)]
    videos.append(Video(name="t0", subset="test", features=feats, labels=(0,), segments=(),
                        duration=2.0, fps=12.0))
    return WTALDataset(name="small", classes=["PoleVault", "HighJump"], videos=videos,
                       train_subset="validation", test_subset="test", rgb_dim=0)


def run(ds, out, spec, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("echo", lambda s: None)
    return run_describe(ds, out, spec, **kw)


# ================================================================= frames


def test_uniform_indices():
    assert uniform_indices(10, 4) == [1, 3, 6, 8]
    assert uniform_indices(24, 4) == [3, 9, 15, 21]
    assert uniform_indices(3, 5) == [0, 0, 1, 2, 2]  # short videos repeat frames
    assert uniform_indices(1, 2) == [0, 0]
    for total in (1, 7, 100, 4501):
        idx = uniform_indices(total, 8)
        assert len(idx) == 8 and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < total


def test_video_and_frame_folder_are_sampled_uniformly_and_hashed(tmp_path):
    vids = tmp_path / "videos"
    vids.mkdir()
    write_video(vids / "a.mp4", n=24, step=10)
    write_frame_folder(vids / "b", n=10, step=20)
    (vids / "notes.txt").write_text("not a video")
    index = index_videos(vids)
    assert set(index) == {"a", "b"}

    fa = read_frames(index["a"], 4)
    assert fa.array.shape == (4, 48, 64, 3) and fa.array.dtype == np.uint8
    assert fa.indices == [3, 9, 15, 21] and fa.total == 24
    # the right frames: frame i is grey i*10 (lossy codec: a few levels off)
    assert np.allclose(fa.array.reshape(4, -1).mean(1), [30, 90, 150, 210], atol=6)
    fb = read_frames(index["b"], 4)  # natural order: frame_10 is the last
    assert fb.indices == [1, 3, 6, 8]
    assert fb.array.reshape(4, -1).mean(1).tolist() == [20, 60, 120, 160]
    assert fa.digest == frames_hash(fa.array) == read_frames(index["a"], 4).digest
    assert fa.digest != read_frames(index["a"], 5).digest
    small = read_frames(index["a"], 2, max_side=32)
    assert small.array.shape == (2, 24, 32, 3)

    (vids / "broken.mp4").write_bytes(b"\x00\x01 not a video")
    with pytest.raises(FrameError, match="broken.mp4"):
        read_frames(vids / "broken.mp4", 4)
    with pytest.raises(FrameError, match="does not exist"):
        read_frames(vids / "none.mp4", 4)
    with pytest.raises(FrameError, match="not a directory"):
        index_videos(tmp_path / "nope")


# ================================================================= template backend, training


def test_template_store_synthetic_equals_build_store_and_training_reads_it(
        tiny_cfg, tiny_data, tmp_path):
    from mllm4wtal.text.bundle import build_text_bundle

    out = tmp_path / "desc.jsonl"
    s = run(tiny_data, out, BackendSpec("template"))
    assert s.complete and s.written == s.needed == len(needed_pairs(tiny_data))
    store = read_store(out)
    reference = build_store(tiny_data)
    assert {p: core(r) for p, r in store.items()} == {p: core(r) for p, r in reference.items()}
    r = next(iter(store.values()))
    assert r.extra["frames_hash"] == "" and r.extra["num_frames"] == 0
    assert r.extra["finish"] == {"key": "stop", "complete": "stop"}
    assert r.prompt == {k: format_prompt(k, r.cls) for k in ("key", "complete")}

    file_cfg = with_overrides(tiny_cfg, {"text.backend": "file", "text.store": str(out)})
    got, want = build_text_bundle(file_cfg, tiny_data), build_text_bundle(tiny_cfg, tiny_data)
    assert got.vocab.itos == want.vocab.itos
    assert torch.equal(got.tensors.key_ids, want.tensors.key_ids)
    from mllm4wtal.inference.evaluate import ModelEvaluator
    from mllm4wtal.train.loop import train

    short = with_overrides(file_cfg, {"train.iterations": 2})
    result = train(short, tiny_data, tmp_path / "run", evaluate=ModelEvaluator(short, tiny_data),
                   progress=False)  # the training loop, on the store
    assert result.best_iteration == 2

    # training refuses a store with a missing pair, unless told to fall back to templates
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(StoreError, match="1 \\(video, class\\) pair"):
        build_text_bundle(file_cfg, tiny_data)
    fallback = with_overrides(file_cfg, {"text.fallback_to_template": True})
    assert torch.equal(build_text_bundle(fallback, tiny_data).tensors.key_ids,
                       want.tensors.key_ids)


def test_thumos14_annotations_template_store_cli_and_check(tmp_path, capsys, tiny_overrides):
    from mllm4wtal.config import load_config
    from mllm4wtal.text.bundle import build_text_bundle

    out = tmp_path / "thumos.jsonl"
    assert main(["describe", "--dataset", str(THUMOS), "--out", str(out), "--no-progress",
                 "--json", str(tmp_path / "run.json")]) == 0
    assert "221 of 221 pairs described" in capsys.readouterr().out
    assert json.loads((tmp_path / "run.json").read_text())["complete"] is True
    ds = load_describe_dataset(str(THUMOS / "Thumos14reduced-Annotations"))
    assert ds.train_subset == "validation" and len(ds.train) == 200
    store = read_store(out)
    assert set(store) == set(needed_pairs(ds)) and len(store) == 221
    assert descriptions_for(ds, store, fallback_to_template=False, source=out) == store
    cfg = load_config("synthetic", tiny_overrides + ["text.backend=file", f"text.store={out}"])
    bundle = build_text_bundle(cfg, ds)  # training's reader, on the THUMOS14 classes
    assert bundle.tensors.key_ids.shape[0] == 20 and len(bundle.complete) == 200

    assert main(["describe", "--check", str(out), "--dataset", str(THUMOS)]) == 0
    report = capsys.readouterr().out
    assert "coverage: 221 of 221 pairs (complete)" in report and "usable" in report
    # a rerun has nothing to do
    assert main(["describe", "--dataset", str(THUMOS), "--out", str(out), "--no-progress"]) == 0
    assert "0 record(s) written" in capsys.readouterr().out
    # user errors: one line, exit 2
    assert main(["describe", "--dataset", "thumos14", "--out", str(out)]) == 2
    assert "data.root" in capsys.readouterr().err
    assert main(["describe", "--dataset", "synthetic", "--backend", "hf", "--out",
                 str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--videos" in err and err.count("\n") == 1


# ================================================================= resume


def test_interrupted_run_resumes_without_asking_twice(tiny_data, tmp_path):
    out = tmp_path / "d.jsonl"
    spec = BackendSpec(COUNTING, model="counter")
    needed = set(needed_pairs(tiny_data))
    CountingBackend.reset(interrupt_at=5)  # Ctrl-C while the 5th video is being described
    with pytest.raises(KeyboardInterrupt):
        run(tiny_data, out, spec, workers=1)
    first = [(v, c) for v, c, kind in CountingBackend.asked if kind == "key"]
    written = read_store(out)
    assert set(first) == set(written) and len({v for v, _ in written}) == 4  # nothing lost

    # then a crash in the middle of writing a record: the store's last line is cut off
    data = out.read_bytes()
    head, last = data[:-1].rsplit(b"\n", 1)
    out.write_bytes(head + b"\n" + last[: len(last) // 2])
    lost = DescriptionRecord.from_dict(json.loads(last)).pair
    notes: list[str] = []
    CountingBackend.reset()
    s = run(tiny_data, out, spec, workers=2, echo=notes.append)
    second = [(v, c) for v, c, kind in CountingBackend.asked if kind == "key"]
    assert s.repaired == str(tmp_path / "d.jsonl.corrupt-1")
    assert (tmp_path / "d.jsonl.corrupt-1").read_bytes() == last[: len(last) // 2] + b"\n"
    assert any("cut off" in n and "corrupt-1" in n for n in notes)  # said, not silent
    assert set(second) == (needed - set(written)) | {lost}
    asked = Counter(first + second)
    assert asked[lost] == 2 and all(n == 1 for p, n in asked.items() if p != lost)
    assert set(read_store(out)) == needed and s.complete
    assert sorted(k for _, _, k in CountingBackend.asked) == sorted(
        ["key", "complete"] * len(second))

    CountingBackend.reset()  # complete: nothing is asked again
    assert run(tiny_data, out, spec).written == 0 and CountingBackend.asked == []

    # a bad line that is not the last is no crash artefact: reported, never dropped
    lines = out.read_bytes().split(b"\n")
    out.write_bytes(b"\n".join([lines[0], b"{oops", *lines[1:]]))
    with pytest.raises(StoreError, match="line 2 is not valid JSON"):
        run(tiny_data, out, spec)


def test_killed_process_loses_only_the_videos_in_flight(tiny_data, tiny_overrides, tmp_path):
    out, log = tmp_path / "d.jsonl", tmp_path / "asked.tsv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "COUNTING_LOG": str(log),
           "COUNTING_DELAY": "0.4"}
    cmd = [sys.executable, "-m", "mllm4wtal.cli", "describe", "--dataset", "synthetic",
           *[x for o in tiny_overrides for x in ("--set", o)], "--backend", COUNTING,
           "--model", "counter", "--out", str(out), "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    killed = [tuple(ln.split("\t")[:2]) for ln in log.read_text().splitlines()
              if ln.endswith("\tkey")]
    CountingBackend.reset()
    s = run(tiny_data, out, BackendSpec(COUNTING, model="counter"))
    again = [(v, c) for v, c, k in CountingBackend.asked if k == "key"]
    needed = set(needed_pairs(tiny_data))
    assert set(read_store(out)) == needed and s.complete
    assert len(out.read_text().splitlines()) == len(needed)  # each pair written once
    twice = {v for v, _ in set(killed) & set(again)}
    assert len(twice) <= 2  # only videos in flight when killed (2 workers) are asked again
    assert set(killed) | set(again) == needed


def test_failures_lock_and_mixed_backends(tiny_data, tmp_path):
    out = tmp_path / "d.jsonl"
    videos = [v.name for v in tiny_data.train]
    CountingBackend.reset(fail=videos[:2])
    s = run(tiny_data, out, BackendSpec(COUNTING, model="counter"))
    assert set(s.failed) == set(videos[:2]) and "cannot describe" in s.failed[videos[0]]
    assert not s.complete and "rerun" in s.line()
    CountingBackend.reset(fail=videos)
    with pytest.raises(UserError, match="2 videos failed.*rerun"):
        run(tiny_data, out, BackendSpec(COUNTING, model="counter"), max_failures=2)
    CountingBackend.reset()
    assert run(tiny_data, out, BackendSpec(COUNTING, model="counter")).complete

    other = tmp_path / "o.jsonl"
    append_record(other, build_store(tiny_data)[needed_pairs(tiny_data)[0]])
    with pytest.raises(UserError, match="backend='template'.*--allow-mixed"):
        run(tiny_data, other, BackendSpec(COUNTING, model="counter"))
    assert run(tiny_data, other, BackendSpec(COUNTING, model="c"), allow_mixed=True).complete

    with store_lock(out), pytest.raises(UserError, match="another `mllm4wtal describe`"):
        run(tiny_data, out, BackendSpec(COUNTING, model="counter"))


# ================================================================= check


def test_check_reports_coverage_empty_truncated_unrelated_and_lengths(tmp_path):
    ds = small_dataset()  # pairs: (v0, PoleVault), (v1, PoleVault), (v1, HighJump), (v2, ...)
    out = tmp_path / "d.jsonl"

    def rec(video, cls, key, complete, finish=None):
        extra = {"finish": finish} if finish else {}
        return DescriptionRecord(video, cls, key, complete, "hf", "/m", extra=extra)

    append_record(out, rec("v0", "PoleVault", "An athlete vaults over the bar with a pole.",
                           "The athlete runs, plants the pole and", {"key": "stop",
                                                                       "complete": "length"}))
    append_record(out, rec("v1", "PoleVault", "", "The weather is sunny today."))
    append_record(out, rec("v1", "HighJump", "A man is throwing", "Someone jumps high."))
    append_record(out, rec("x9", "HighJump", "a", "b."))  # a pair this dataset does not train
    r = check_store(out, ds)
    assert not r["ok"] and r["missing"] == [["v2", "HighJump"]]
    assert r["other_pairs"] == [["x9", "HighJump"]]
    assert r["empty"] == {"key": [["v1", "PoleVault"]], "complete": []}
    assert r["truncated"] == {"key": [["v1", "HighJump"]], "complete": [["v0", "PoleVault"]]}
    assert r["unrelated"] == {"key": [], "complete": [["v1", "PoleVault"]]}
    assert r["no_class_word"]["key"] == [["v1", "HighJump"]]  # "throwing": a verb, no class
    assert r["words"]["key"]["max"] == 9 and r["words"]["complete"]["min"] == 3
    text = format_check(r)
    assert "1 missing: (v2, HighJump)" in text and "training refuses" in text
    assert main(["describe", "--check", str(out), "--dataset", "synthetic"]) == 1


# ================================================================= hf backend


def test_hf_backend_end_to_end_on_a_tiny_random_vlm(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("av")
    model_dir = build_tiny_llava(tmp_path / "tiny-llava")
    vids = tmp_path / "videos"
    vids.mkdir()
    write_video(vids / "v0.mp4", n=16)
    write_video(vids / "v1.avi", n=20)
    write_frame_folder(vids / "v2", n=6)
    ds = small_dataset()
    out = tmp_path / "d.jsonl"
    spec = BackendSpec("hf", model=str(model_dir),
                       options={"max_new_tokens": 6, "batch_size": 4, "device": "cpu"})
    s = run(ds, out, spec, videos=vids, num_frames=4, workers=2)
    assert s.complete and s.written == 4 and not s.failed
    store = read_store(out)
    assert set(store) == set(needed_pairs(ds))
    for (video, cls), r in store.items():
        assert r.backend == "hf" and r.model == str(model_dir.resolve())
        assert r.prompt == {k: format_prompt(k, cls) for k in ("key", "complete")}
        assert isinstance(r.key, str) and isinstance(r.complete, str)
        assert r.extra["num_frames"] == 4 and r.extra["seconds"] > 0
        path = index_videos(vids)[video]
        assert r.extra["frames_hash"] == read_frames(path, 4).digest
        assert set(r.extra["finish"].values()) <= {"stop", "length"}

    # the real loading code, chat template, processor and greedy generate, looked at closely
    backend = make_backend(spec)
    assert backend.frames_as == "images"  # LLaVA's processor has no video processor
    frames = read_frames(vids / "v0.mp4", 4)
    queries = [Query("v0", "PoleVault", k, format_prompt(k, "PoleVault"), frames)
               for k in ("key", "complete")]
    text = backend.texts(queries)[0]
    assert format_prompt("key", "PoleVault") in text and text.count("<image>") == 4
    batch = backend.inputs(queries)
    assert batch["pixel_values"].shape == (8, 3, 28, 28)  # 2 prompts x 4 frames
    assert batch["input_ids"].shape[0] == 2
    a1, a2 = backend.answer(queries), backend.answer(queries)
    assert [a.text for a in a1] == [a.text for a in a2]  # greedy: deterministic
    assert all(a.tokens is not None and a.tokens <= 6 for a in a1)
    assert [a.text for a in a1] == [store[("v0", "PoleVault")].key,
                                    store[("v0", "PoleVault")].complete]

    with pytest.raises(UserError, match="not a local model directory"):
        make_backend(BackendSpec("hf", model=str(tmp_path / "none")))
    with pytest.raises(UserError, match="no video processor"):
        make_backend(BackendSpec("hf", model=str(model_dir), options={"frames_as": "video"}))


# ================================================================= openai backend


KEY = "sk-test-9f8e7d6c5b4a"


def test_openai_backend_request_shape_images_retries_and_timeouts(tmp_path, monkeypatch,
                                                                  caplog, capsys):
    monkeypatch.setenv("MLLM4WTAL_TEST_KEY", KEY)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    vids = tmp_path / "videos"
    vids.mkdir()
    for name in ("v0", "v1", "v2"):
        write_video(vids / f"{name}.mp4", n=12)
    ds = small_dataset()
    out = tmp_path / "d.jsonl"
    caplog.set_level(logging.DEBUG)
    # the first requests: rate limited, a server error, a timeout; then answers
    with FakeChatServer(script=[429, 500, ("sleep", 1.5)]) as server:
        spec = BackendSpec("openai", options={
            "api_base": server.url, "api_key_env": "MLLM4WTAL_TEST_KEY", "timeout": 0.5,
            "retries": 4, "backoff": 0.01, "concurrency": 2, "max_new_tokens": 64})
        s = run(ds, out, spec, videos=vids, num_frames=3, workers=1)
        chats = server.chats()
        assert server.log[0]["path"] == "/v1/models"  # no --model: the served one
    assert s.complete and s.written == 4 and not s.failed and s.model == "tiny-vlm"
    assert server.outcomes[:3] == [429, 500, ("sleep", 1.5)]
    assert len(chats) == 8 + 3  # 4 pairs x 2 prompts, 3 of them retried
    prompts = Counter(c["body"]["messages"][0]["content"][-1]["text"] for c in chats)
    assert sum(prompts.values()) == 11 and len(prompts) == 4  # 2 classes x 2 kinds

    req = chats[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "tiny-vlm" and body["temperature"] == 0.0
    assert body["max_tokens"] == 64
    (msg,) = body["messages"]
    assert msg["role"] == "user"
    *images, text = msg["content"]
    assert text["type"] == "text" and text["text"] in {format_prompt(k, c) for k in
                                                       ("key", "complete")
                                                       for c in ds.classes}
    assert len(images) == 3 and all(p["type"] == "image_url" for p in images)
    from PIL import Image

    url = images[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and im.size == (64, 48)

    store = read_store(out)
    r = store[("v1", "HighJump")]
    assert r.backend == "openai" and r.model == "tiny-vlm"
    assert r.key == f"Answer: {format_prompt('key', 'HighJump')}"
    assert r.extra["finish"] == {"key": "stop", "complete": "stop"}
    assert r.extra["frames_hash"] == read_frames(vids / "v1.mp4", 3).digest
    assert "retry 1 of 4" in caplog.text  # the retries are logged ...

    # ... but the key never is: not in logs, output, records or errors
    with FakeChatServer(script=[401], error_body='{"error": "bad key {auth}"}') as server:
        spec = BackendSpec("openai", model="tiny-vlm", options={
            "api_base": server.url, "api_key_env": "MLLM4WTAL_TEST_KEY", "retries": 2,
            "backoff": 0.01})
        with pytest.raises(FatalBackendError) as err:
            run(ds, tmp_path / "e.jsonl", spec, videos=vids, num_frames=2, workers=1)
    assert "HTTP 401" in str(err.value) and "MLLM4WTAL_TEST_KEY" in str(err.value)
    with FakeChatServer(script=[503] * 10) as server:  # retries run out: the video fails
        spec = BackendSpec("openai", model="tiny-vlm", options={
            "api_base": server.url, "api_key_env": "MLLM4WTAL_TEST_KEY", "retries": 2,
            "backoff": 0.01, "concurrency": 1, "batch_size": 1})
        s = run(ds, tmp_path / "f.jsonl", spec, videos=vids, num_frames=2, workers=1)
        assert len(server.chats()) >= 3 and "503" in s.failed["v0"]
        assert "after 3 attempts" in s.failed["v0"]
    seen = capsys.readouterr()
    everything = [caplog.text, seen.out, seen.err, str(err.value), s.line(),
                  *(p.read_text() for p in tmp_path.glob("*.jsonl*") if p.is_file())]
    assert not any(KEY in t for t in everything)
    assert KEY not in repr(make_backend(BackendSpec("openai", model="m", options={
        "api_base": "http://127.0.0.1:9", "api_key_env": "MLLM4WTAL_TEST_KEY"})))


# ================================================================= Ray actor pool


def test_ray_actor_pool_two_cpu_actors(tiny_data, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "d.jsonl"
    notes: list[str] = []
    start_ray(num_cpus=2)
    try:
        s = run(tiny_data, out, BackendSpec("template"), use_ray=True, actors=2, num_cpus=1,
                echo=notes.append)
        assert s.complete and s.written == len(needed_pairs(tiny_data)) and not s.failed
        assert any("2 Ray actor(s) (0 GPU, 1 CPU each)" in n for n in notes)
        reference = build_store(tiny_data)
        assert {p: core(r) for p, r in read_store(out).items()} == {
            p: core(r) for p, r in reference.items()}
        # resume through the pool: only the pairs taken out are described again
        lines = out.read_text().splitlines()
        out.write_text("\n".join(lines[3:]) + "\n")
        s2 = run(tiny_data, out, BackendSpec("template"), use_ray=True, actors=2, num_cpus=1)
        assert s2.written == 3 and set(read_store(out)) == set(reference)
        assert ray.is_initialized()  # a session it did not start is left running

        # a backend that cannot load in the actors: one clear line, before any video
        vids = tmp_path / "videos"
        vids.mkdir()
        for v in tiny_data.train:
            (vids / f"{v.name}.mp4").touch()
        with pytest.raises(UserError, match="actors failed to start: UserError: --model "
                                            ".*not a local model directory"):
            run(tiny_data, tmp_path / "hf.jsonl", BackendSpec("hf", model=str(tmp_path)),
                videos=vids, use_ray=True, actors=1, num_cpus=1)
        assert not (tmp_path / "hf.jsonl").exists()
    finally:
        ray.shutdown()

"""The write policy (``mllm4wtal.files``): nothing overwritten without ``--force``, nothing
half-written, never a run the command did not start, and one line for a location that
cannot be written (read-only, name too long, disk full).

Read-only and full locations are real: a small tmpfs mounted by the test (the suite runs as
root, for whom ``chmod`` blocks nothing), remounted read-only where needed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from mllm4wtal import files
from mllm4wtal.cli import main
from mllm4wtal.config import load_config
from mllm4wtal.data import features as packed_format
from mllm4wtal.data import load_packed, pack, save_wtal, wtal_format
from mllm4wtal.data.load import load_from_config
from mllm4wtal.errors import UserError
from mllm4wtal.files import WriteError
from mllm4wtal.inference.evaluate import ModelEvaluator
from mllm4wtal.train.checkpoint import (
    RUN_LINE,
    load_checkpoint,
    read_run_id,
    save_checkpoint,
)
from mllm4wtal.train.loop import train

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"

# ----------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its sha256: what "left untouched" is checked against."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return TINY + [f"text.cache_dir={tmp_path_factory.mktemp('cache')}"]


@pytest.fixture(scope="module")
def runs(tiny: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs of the same tiny config, ``run1`` and ``run2``; tests copy them."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("synthetic", tiny)
    data = load_from_config(cfg.data)
    for name in ("run1", "run2"):
        train(cfg, data, root / name, evaluate=ModelEvaluator(cfg, data), progress=False)
    return root


@pytest.fixture
def two_runs(runs: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(runs, tmp_path / "runs")
    return tmp_path / "runs" / "run1", tmp_path / "runs" / "run2"


def _mount(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs ({done.stderr.strip() or done.returncode}): a "
                    "read-only or full location needs one, chmod does not stop root")


@pytest.fixture
def read_only(tmp_path: Path):
    """A read-only filesystem holding one folder, ``existing``."""
    mnt = tmp_path / "ro"
    _mount(mnt, "1m")
    try:
        (mnt / "existing").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(OSError):
            (mnt / "probe").write_text("x")
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB filesystem."""
    mnt = tmp_path / "small"
    _mount(mnt, "1m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_refuses_to_overwrite_another_runs_files(two_runs, capsys):
    run1, run2 = two_runs
    before = snapshot(run2)
    rc = main(["evaluate", "--checkpoint", str(run1 / "best.pt"), "--predictions",
               str(run2 / "predictions.json"), "--output", str(run2 / "config.yaml")])
    assert rc == 2
    one_line_error(capsys, str(run2 / "predictions.json"), "already exists", "--force")
    assert snapshot(run2) == before
    # one of the two taken is enough to refuse, before the model runs
    assert main(["evaluate", "--checkpoint", str(run1 / "best.pt"), "--output",
                 str(run2 / "config.yaml")]) == 2
    one_line_error(capsys, str(run2 / "config.yaml"), "--force")
    assert snapshot(run2) == before


def test_evaluate_force_replaces_whole_files_but_never_an_input(two_runs, tmp_path, capsys):
    run1, _ = two_runs
    out, pred = tmp_path / "m.json", tmp_path / "p.json"
    out.write_text("old")
    pred.write_text("old")
    assert main(["evaluate", "--checkpoint", str(run1 / "best.pt"), "--predictions", str(pred),
                 "--output", str(out), "--force"]) == 0
    assert "average" in json.loads(out.read_text())
    assert "results" in json.loads(pred.read_text())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(files.TMP_SUFFIX)) == []
    capsys.readouterr()
    before = snapshot(run1)
    assert main(["evaluate", "--checkpoint", str(run1 / "best.pt"), "--output",
                 str(run1 / "best.pt"), "--force"]) == 2
    one_line_error(capsys, "--output", "--checkpoint input")
    assert main(["evaluate", "--checkpoint", str(run1 / "best.pt"), "--output", str(out),
                 "--predictions", str(out), "--force"]) == 2
    one_line_error(capsys, "both name")
    assert snapshot(run1) == before


# ----------------------------------------------------------------------------- data pack/export


@pytest.mark.parametrize("command", ["pack", "export"])
def test_data_refuses_an_existing_out_unless_force(command, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    (out / "index.json").write_text("not a pack")
    (out / "Synthetic-Annotations").mkdir()
    before = snapshot(out)
    args = ["data", command, "--config", "synthetic", *sets(tiny), "--out", str(out)]
    assert main(args) == 2
    one_line_error(capsys, str(out), "already exists", "--force")
    assert snapshot(out) == before
    assert main([*args, "--force"]) == 0
    assert (out / "mine.txt").read_text() == "keep me"  # --force replaces only what it writes
    if command == "pack":
        assert len(load_packed(out).videos) == 24
    else:
        assert (out / "Synthetic-I3D-JOINTFeatures.npy").is_file()
        assert len(list((out / "Synthetic-Annotations").iterdir())) >= 7
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # an empty folder holds nothing to overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["data", command, "--config", "synthetic", *sets(tiny), "--out",
                 str(empty)]) == 0


def _crash_on_call(n: int):
    calls = {"n": 0}

    def crash(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt  # a kill in the middle of the writing
            return real(*args, **kwargs)
        return wrapped
    return crash


def test_pack_crash_leaves_no_half_written_target(tiny_data, tmp_path, monkeypatch):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    monkeypatch.setattr(packed_format, "_video_meta",
                        _crash_on_call(3)(packed_format._video_meta))
    with pytest.raises(KeyboardInterrupt):
        pack(tiny_data, tmp_path / "new", force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no target, no temporary
    # an existing pack replaced with --force: the crash leaves the old one whole
    monkeypatch.undo()
    pack(tiny_data, tmp_path / "old")
    before = snapshot(tmp_path / "old")
    monkeypatch.setattr(packed_format, "_video_meta",
                        _crash_on_call(3)(packed_format._video_meta))
    with pytest.raises(KeyboardInterrupt):
        pack(tiny_data, tmp_path / "old", force=True)
    assert snapshot(tmp_path / "old") == before
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["features.f16",
                                                                    "index.json"]


def test_export_crash_leaves_no_half_written_target(tiny_data, tmp_path, monkeypatch):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    # the second object array is segments.npy: the feature file is written by then
    monkeypatch.setattr(wtal_format, "_object_array",
                        _crash_on_call(2)(wtal_format._object_array))
    with pytest.raises(KeyboardInterrupt):
        save_wtal(tiny_data, tmp_path / "new", "toy", force=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_pack_library_refuses_without_force(tiny_data, tmp_path):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match="already exists and is not empty; pass --force"):
        pack(tiny_data, tmp_path, force=False)
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


# ----------------------------------------------------------------------------- train --resume


def test_a_run_id_marks_config_and_checkpoints(runs):
    ids = set()
    for name in ("run1", "run2"):
        run = runs / name
        run_id = read_run_id(run / "config.yaml")
        assert run_id and (run / "config.yaml").read_text().startswith(RUN_LINE)
        assert {load_checkpoint(run / f)["run_id"] for f in ("best.pt", "last.pt")} == {run_id}
        load_config(str(run / "config.yaml"))  # the id is a comment: still a config
        ids.add(run_id)
    assert len(ids) == 2  # same config, two runs


def test_resume_refuses_a_checkpoint_of_another_run(two_runs, tiny, capsys):
    run1, run2 = two_runs
    shutil.copy2(run2 / "last.pt", run1 / "run2-last.pt")
    before = snapshot(run1)
    assert main(["train", "--config", "synthetic", *sets(tiny), "--set", "train.iterations=6",
                 "--resume", str(run1 / "run2-last.pt"), "--no-progress"]) == 2
    one_line_error(capsys, "belongs to run", read_run_id(run2 / "config.yaml"),
                   "own run folder")
    assert snapshot(run1) == before


def test_resume_refuses_another_folder(two_runs, tiny, tmp_path, capsys):
    run1, run2 = two_runs
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy2(run1 / "last.pt", alone / "last.pt")
    assert main(["train", "--config", "synthetic", *sets(tiny), "--set", "train.iterations=6",
                 "--resume", str(alone / "last.pt"), "--no-progress"]) == 2
    one_line_error(capsys, "no config.yaml or metrics.jsonl", "not the run's own folder")
    before = snapshot(run2)
    assert main(["train", "--config", "synthetic", *sets(tiny), "--set", "train.iterations=6",
                 "--resume", str(run1 / "last.pt"), "--run-dir", str(run2),
                 "--no-progress"]) == 2
    one_line_error(capsys, "resumed in its own folder")
    assert snapshot(run2) == before
    assert [p.name for p in alone.iterdir()] == ["last.pt"]


def _strip_run_id(run: Path) -> None:
    """Make ``run`` look written before run ids: none in config.yaml or its checkpoints."""
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.split("\n", 1)[1])
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / name)
        del state["run_id"], state["format"]
        save_checkpoint(run / name, state)


def test_old_checkpoint_is_judged_by_its_folders_config(two_runs, tiny, capsys):
    run1, run2 = two_runs
    _strip_run_id(run1)
    _strip_run_id(run2)
    # run2's config.yaml says another config: run1's checkpoint is not run2's
    shutil.copy2(run1 / "last.pt", run2 / "run1.pt")
    text = (run2 / "config.yaml").read_text()
    (run2 / "config.yaml").write_text(text.replace("lambda1: 1.5", "lambda1: 0.5"))
    assert "lambda1: 0.5" in (run2 / "config.yaml").read_text()
    before = snapshot(run2)
    assert main(["train", "--config", "synthetic", *sets(tiny), "--resume",
                 str(run2 / "run1.pt"), "--no-progress"]) == 2
    one_line_error(capsys, "config differs from", "loss.lambda1", "belongs to another run")
    assert snapshot(run2) == before
    # in its own folder it resumes, and the run gets an id from then on
    assert main(["train", "--config", "synthetic", *sets(tiny), "--set", "train.iterations=6",
                 "--resume", str(run1 / "last.pt"), "--no-progress"]) == 0
    run_id = read_run_id(run1 / "config.yaml")
    assert run_id and load_checkpoint(run1 / "last.pt")["run_id"] == run_id
    assert load_checkpoint(run1 / "last.pt")["iteration"] == 6


def test_own_resume_keeps_the_id_and_updates_config(two_runs, tiny, capsys):
    run1, _ = two_runs
    run_id = read_run_id(run1 / "config.yaml")
    assert main(["train", "--config", "synthetic", *sets(tiny), "--set", "train.iterations=6",
                 "--resume", str(run1 / "last.pt"), "--no-progress"]) == 0
    assert read_run_id(run1 / "config.yaml") == run_id
    assert load_config(str(run1 / "config.yaml")).train.iterations == 6
    assert load_checkpoint(run1 / "last.pt")["run_id"] == run_id
    lines = (run1 / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [2.0, 4.0, 6.0]


def test_new_run_refuses_a_folder_holding_a_run_without_checkpoint(tiny, tmp_path, capsys):
    run = tmp_path / "dead"
    run.mkdir()
    (run / "config.yaml").write_text("# a run that died before its first checkpoint\n")
    assert main(["train", "--config", "synthetic", *sets(tiny), "--run-dir", str(run),
                 "--no-progress"]) == 2
    one_line_error(capsys, "already holds a run (config.yaml)", "no checkpoint to resume")


# ----------------------------------------------------------------------------- unwritable


def test_read_only_locations_are_one_line_at_the_door(read_only, tiny, tmp_path, capsys):
    gt = {"database": {"v": {"subset": "test", "annotations": [
        {"segment": [1.0, 5.0], "label": "A"}]}}}
    pred = {"results": {"v": [{"segment": [1.0, 5.0], "label": "A", "score": 0.9}]}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.json").write_text(json.dumps(pred))
    cases = {
        "train": ["train", "--config", "synthetic", *sets(tiny), "--run-dir",
                  str(read_only / "run"), "--no-progress"],
        "train.out_dir": ["train", "--config", "synthetic", *sets(tiny), "--set",
                          f"train.out_dir={read_only / 'existing'}", "--no-progress"],
        "evaluate": ["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred",
                     str(tmp_path / "p.json"), "--output", str(read_only / "m.json")],
        "pack": ["data", "pack", "--config", "synthetic", *sets(tiny), "--out",
                 str(read_only / "packed")],
        "export": ["data", "export", "--config", "synthetic", *sets(tiny), "--out",
                   str(read_only / "existing" / "exported")],
        "describe": ["describe", "--dataset", "synthetic", "--out",
                     str(read_only / "store.jsonl"), "--no-progress"],
        "sweep": ["sweep", str(QUICKSTART), "--storage",
                  str(read_only / "sweeps")],
    }
    for name, argv in cases.items():
        assert main(argv) == 2, name
        err = one_line_error(capsys, "not writable (read-only filesystem)", str(read_only))
        key = f"{QUICKSTART}: storage: " if name == "sweep" else ""  # the file's key, too
        assert err.startswith(f"mllm4wtal {argv[0]}: error: {key}cannot write"), (name, err)
    assert sorted(p.name for p in read_only.iterdir()) == ["existing"]


def test_long_out_dir_names_the_limit_and_the_key(tiny, tmp_path, capsys):
    long_dir = tmp_path / ("x" * 300)
    assert main(["train", "--config", "synthetic", *sets(tiny), "--set",
                 f"train.out_dir={long_dir}", "--no-progress"]) == 2
    one_line_error(capsys, "300 characters", "limit of 255", "use a shorter name",
                   "train.out_dir")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the policy itself


def test_full_disk_is_one_line_with_the_free_space(small_disk):
    with pytest.raises(WriteError, match=r"no space left on the device \(.* free of 1\.0 MiB\)"):
        files.write_text(small_disk / "big.txt", "x" * (2 << 20))
    assert list(small_disk.iterdir()) == []
    # torch reports a failed write without an errno: the folder is asked for the cause
    state = {"model": {"w": torch.zeros(400_000)}}
    with pytest.raises(WriteError, match=r"cannot write .*last\.pt: no space left"):
        save_checkpoint(small_disk / "last.pt", state)
    assert list(small_disk.iterdir()) == []


def test_replacing_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(UserError, match="already exists; pass --force"):
        files.write_text(target, "new")
    with pytest.raises(ZeroDivisionError):
        with files.replacing(target, force=True) as tmp:
            tmp.write_text("half")
            _ = 1 / 0
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.json"]
    files.write_text(target, "new", force=True)
    assert target.read_text() == "new"


def test_errors_reading_an_input_are_not_called_write_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        with files.replacing(tmp_path / "out" / "a.bin") as tmp:
            tmp.write_bytes(np.load(tmp_path / "elsewhere" / "missing.npy").tobytes())


def test_resume_refuses_to_rewind_a_run(two_runs, tiny, capsys):
    """Resuming from a checkpoint older than the run's last report (e.g. best.pt) would
    discard the iterations after it: refused, nothing written."""
    run1, _ = two_runs
    metrics = run1 / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + json.dumps({"iteration": 8.0}) + "\n")
    before = {p.name: p.read_bytes() for p in run1.iterdir()}
    assert main(["train", "--config", "synthetic", *sets(tiny), "--set", "train.iterations=10",
                 "--resume", str(run1 / "last.pt"), "--no-progress"]) == 2
    one_line_error(capsys, "the run went on to iteration 8", "resume from")
    assert {p.name: p.read_bytes() for p in run1.iterdir()} == before

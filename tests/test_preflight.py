"""``mllm4wtal sweep FILE --check`` reports everything the real start refuses (an existing
experiment, an unreachable or unwritable MLflow store, resources this machine does not have),
all at once, and the real start refuses the same before it writes anything. Run as a user
runs them: the installed command in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import yaml
from mllm4wtal.sweep import preflight, runner
from mllm4wtal.sweep.preflight import Capacity, capacity, resources_problems
from mllm4wtal.sweep.spaces.sections import ResourcesSpec, StudyTrials
from test_sweep import space_file

ROOT = Path(__file__).resolve().parents[1]
CPUS, GPUS = (int(n) for n in preflight.local_resources())  # what a private Ray gets


def sweep(*args: str, cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv/bin/mllm4wtal"), "sweep", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def edited(path: Path, overrides: dict | None = None, **changes) -> Path:
    """The search-space file at ``path`` with top-level ``changes`` and more overrides."""
    doc = yaml.safe_load(path.read_text())
    doc["overrides"].update(overrides or {})
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_check_passes_and_writes_nothing(tmp_path):
    path = space_file(tmp_path, "fine")
    proc = sweep(str(path), "--check", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    exp = tmp_path / "sweeps" / "fine"
    assert proc.stdout.splitlines()[-4:] == [
        "check: nothing the start would refuse",
        f"  experiment directory: {exp} (new, writable)",
        f"  MLflow: sqlite:///{tmp_path}/sweeps/mlflow.db (writable)",
        f"  resources: 1 CPU + 0 GPUs per trial fit this machine ({CPUS} CPUs, {GPUS:g} "
        f"GPU{'' if GPUS == 1 else 's'}: {CPUS} at a time, max_concurrent 2)"]
    assert not (tmp_path / "sweeps").exists()


def test_check_lists_every_problem_and_the_start_refuses_them_all(tmp_path):
    runner.claim(runner.load(space_file(tmp_path, "busy"), []), [])  # a sweep lives there
    exp = tmp_path / "sweeps" / "busy"
    before = listing(tmp_path)
    port = closed_port()
    path = edited(space_file(tmp_path, "busy"), {"train.device": "auto"},
                  mlflow={"tracking_uri": f"http://127.0.0.1:{port}"},
                  resources={"cpu": CPUS + 1, "gpu": GPUS + 1})
    check = sweep(str(path), "--check", cwd=tmp_path)
    assert check.returncode == 2
    head, *problems = check.stderr.strip().splitlines()
    assert head == "mllm4wtal sweep: error: 4 problems; nothing was started or written:"
    gpus = "no GPU; set it to 0" if GPUS == 0 else f"{GPUS} GPU"
    expected = [
        f"  {path}: {exp} already holds the sweep 'busy'; continue it with `mllm4wtal sweep "
        f"--resume {exp}`, or give the new one another name (key `name:`) or storage "
        "(--storage)",
        f"  {path}: mlflow.tracking_uri = http://127.0.0.1:{port}: MLflow tracking server "
        f"'http://127.0.0.1:{port}' is not reachable (",
        f"  {path}: resources.cpu = {CPUS + 1} per trial, but this machine has {CPUS} CPU",
        f"  {path}: resources.gpu = {GPUS + 1} per trial, but this machine has {gpus}"]
    assert len(problems) == 4
    for line, start in zip(problems, expected, strict=True):
        assert line.startswith(start), (line, start)
    assert problems[1].endswith("start it (`mlflow server --host 127.0.0.1 --port 5000`) or "
                                "set mlflow.tracking_uri to a sqlite file or leave it empty")
    assert problems[2].endswith(f"lower it to {CPUS} or less (in the file, or --space-set "
                                f"resources.cpu={CPUS}) or run on a Ray cluster with larger "
                                "nodes (RAY_ADDRESS)")
    assert problems[3].endswith("or run where GPUs are (RAY_ADDRESS)")

    start = sweep(str(path), cwd=tmp_path)  # the real start: the same refusal, nothing written
    assert (start.returncode, start.stderr) == (2, check.stderr)
    assert listing(tmp_path) == before
    assert sorted(p.name for p in exp.iterdir()) == [runner.SETTINGS, runner.SPACE_COPY]


def test_an_unwritable_sqlite_store_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    path = edited(space_file(tmp_path, "nodb"),
                  mlflow={"tracking_uri": str(tmp_path / "afile" / "mlflow.db")})
    before = listing(tmp_path)
    check = sweep(str(path), "--check", cwd=tmp_path)
    db = tmp_path / "afile" / "mlflow.db"
    assert check.returncode == 2
    assert check.stderr.strip() == (
        f"mllm4wtal sweep: error: {path}: mlflow.tracking_uri = sqlite:///{db}: cannot write "
        f"{db}: {tmp_path / 'afile'} is a file, not a folder; choose another path "
        "(mlflow.tracking_uri, or --tracking-uri)")
    start = sweep(str(path), cwd=tmp_path)
    assert (start.returncode, start.stderr) == (2, check.stderr)
    assert listing(tmp_path) == before  # no experiment directory, no store


def test_a_study_directory_is_refused_to_a_sweep(tmp_path):
    path = space_file(tmp_path, "taken")
    exp = tmp_path / "sweeps" / "taken"
    exp.mkdir(parents=True)
    (exp / runner.STUDY_COPY).write_text("name: taken\n")
    check = sweep(str(path), "--check", cwd=tmp_path)
    assert check.returncode == 2
    assert check.stderr.strip() == (
        f"mllm4wtal sweep: error: {path}: {exp} holds the ablation study 'taken'; give the "
        "sweep another name (key `name:`) or storage (--storage)")
    start = sweep(str(path), cwd=tmp_path)
    assert (start.returncode, start.stderr) == (2, check.stderr)
    assert [p.name for p in exp.iterdir()] == [runner.STUDY_COPY]


def test_on_a_cluster_check_asks_the_cluster_and_a_dead_one_is_one_line(tmp_path):
    """With RAY_ADDRESS, --check connects to the cluster to measure its nodes; where nothing
    answers it says so in one line (exit 2) and writes nothing."""
    address = f"127.0.0.1:{closed_port()}"
    path = edited(space_file(tmp_path, "remote"), resources={"cpu": CPUS + 64, "gpu": 0})
    proc = sweep(str(path), "--check", cwd=tmp_path, env={"RAY_ADDRESS": address})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0], proc.stderr
    assert not (tmp_path / "sweeps").exists()


def test_check_of_a_resume_accepts_its_own_directory(tmp_path):
    space = runner.load(space_file(tmp_path, "again"), [])
    runner.claim(space, [])
    proc = sweep("--resume", space.experiment_dir, "--check", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"  experiment directory: {space.experiment_dir} (continued, writable)" in (
        proc.stdout.splitlines())


class Target:
    """What the resources check reads of a sweep or study."""

    where = "s.yaml"

    def __init__(self, cpu: float, gpu: float) -> None:
        self.resources = ResourcesSpec(cpu=cpu, gpu=gpu)
        self.trials = StudyTrials(max_concurrent=3)


def test_resources_lines_name_the_key_what_there_is_and_the_fix():
    cap = Capacity(cpus=8.0, gpus=2.0, where="this machine")
    passed: list[str] = []
    assert resources_problems(Target(4, 4), cap, False, passed) == [
        "s.yaml: resources.gpu = 4 per trial, but this machine has 2 GPUs; lower it to 2 or "
        "less (in the file, or --space-set resources.gpu=2) or run where GPUs are "
        "(RAY_ADDRESS)"]
    assert resources_problems(Target(16, 0.5), cap, True, passed) == [
        "s.yaml: resources.cpu = 16 per trial, but this machine has 8 CPUs; lower it to 8 or "
        "less (in the file) or run on a Ray cluster with larger nodes (RAY_ADDRESS)"]
    assert not passed
    assert resources_problems(Target(2, 0.5), cap, False, passed) == []
    assert passed == ["resources: 2 CPUs + 0.5 GPUs per trial fit this machine (8 CPUs, "
                      "2 GPUs: 4 at a time, max_concurrent 3)"]


def test_a_ray_this_process_runs_is_what_trials_get(ray_session, monkeypatch):
    """A sweep started from a process that already runs Ray (a notebook, these tests) joins
    that Ray, whatever RAY_ADDRESS says: its largest node is the limit."""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert capacity() == Capacity(cpus=2.0, gpus=float(GPUS), where="the Ray this process runs")

"""The command line: help texts, evaluate, train/resume/evaluate a checkpoint, data tools,
one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from mllm4wtal.cli import build_parser, main
from mllm4wtal.data.synthetic import actionness
from mllm4wtal.evaluation import evaluate_detection
from mllm4wtal.inference import ProposalConfig, generate_proposals, results_json


def test_help_of_every_command():
    out = subprocess.run([sys.executable, "-m", "mllm4wtal.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("train", "evaluate", "data", "config"):
        assert cmd in out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name
        assert len(p.description or p.format_help()) > 20


def test_evaluate_files_writes_metrics(tmp_path, capsys):
    gt = {"database": {"v": {"subset": "test", "annotations": [
        {"segment": [1.0, 5.0], "label": "A"}]}}}
    pred = {"results": {"v": [{"segment": [1.0, 5.0], "label": "A", "score": 0.9}]}}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.json").write_text(json.dumps(pred))
    rc = main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "p.json"),
               "--tiou", "0.5,0.7", "--output", str(tmp_path / "m.json")])
    assert rc == 0
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "map": {"0.5": 1.0, "0.7": 1.0}, "average": 1.0}
    assert "100.00" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--config", "synthetic", "--set", "loss.lamda1=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "loss.lambda1" in err
    assert main(["evaluate", "--gt", str(tmp_path / "none.json"),
                 "--pred", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_resume_and_evaluate_checkpoint(tiny_overrides, tmp_path, capsys):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    run = tmp_path / "run"
    assert main(["train", "--config", "synthetic", *sets, "--run-dir", str(run),
                 "--no-progress"]) == 0
    assert (run / "best.pt").is_file() and (run / "config.yaml").is_file()
    # a second train into the same directory is refused, not overwritten
    assert main(["train", "--config", "synthetic", *sets, "--run-dir", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--config", "synthetic", *sets, "--set", "train.iterations=6",
                 "--resume", str(run / "last.pt"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--predictions",
                 str(tmp_path / "pred.json")]) == 0
    out = capsys.readouterr().out
    assert "mAP %" in out
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["iteration"] == 6.0
    assert "results" in json.loads((tmp_path / "pred.json").read_text())


def test_data_info_and_export(tiny_overrides, tmp_path, capsys):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["data", "info", "--config", "synthetic", *sets]) == 0
    assert "validation" in capsys.readouterr().out
    assert main(["data", "export", "--config", "synthetic", *sets, "--out",
                 str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "Synthetic-I3D-JOINTFeatures.npy").is_file()
    assert main(["data", "info", "--config", "synthetic", *sets, "--set", "data.format=wtal",
                 "--set", f"data.root={tmp_path / 'exp'}", "--set", "data.name=Synthetic"]) == 0
    assert main(["data", "pack", "--config", "synthetic", *sets, "--out",
                 str(tmp_path / "packed")]) == 0
    capsys.readouterr()
    assert main(["data", "info", "--config", "synthetic", *sets, "--set", "data.format=packed",
                 "--set", f"data.root={tmp_path / 'packed'}"]) == 0
    assert "validation" in capsys.readouterr().out


def test_synthetic_truth_round_trips_through_proposals_to_map_one(tiny_data):
    """True actionness and class scores -> proposals -> evaluation: mAP 1.0."""
    per_video = {}
    cfg = ProposalConfig()
    n_cls = len(tiny_data.classes)
    for v in tiny_data.test:
        act = np.zeros((v.num_snippets, n_cls))  # the true foreground of each class
        for c in v.labels:
            only_c = replace(v, segments=tuple(sg for sg in v.segments if sg.label == c))
            act[:, c] = actionness(only_c)
        cas = np.where(act > 0, 5.0, -5.0)
        scores = np.array([1.0 if c in v.labels else 0.0 for c in range(n_cls)])
        per_video[v.name] = generate_proposals(cas, act, v.fps, cfg, 16, v.duration,
                                               video_scores=scores)
    result = evaluate_detection(tiny_data.ground_truth("test"),
                                results_json(per_video, tiny_data.classes), (0.1, 0.3, 0.5, 0.7))
    assert result.average == pytest.approx(1.0)

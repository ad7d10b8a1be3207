"""jobs/cluster's configs for a lab's cluster, checked with the validation their tools run:
the `ray up` config with Ray's own cluster-launcher checks (``prepare_config`` +
``validate_config``, what `ray up` runs before it contacts the cloud), the KubeRay RayJob
manifest with the openAPIV3Schema of KubeRay's RayJob CRD (tests/data/kuberay/SOURCE.txt),
refusing unknown fields as the Kubernetes API server does under `kubectl apply`'s default
strict field validation. Each check is shown to fail on a broken copy."""

from __future__ import annotations

import copy
import functools
import gzip
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import torch
from mllm4wtal.cli import build_parser
from mllm4wtal.config import load_yaml, parse_yaml
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.mlflow_names import GIT_COMMIT_ENV, GIT_DIRTY_ENV
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

ROOT = Path(__file__).resolve().parents[1]
RAY_UP = ROOT / "jobs" / "cluster" / "ray-cluster.yaml"
RAYJOB = ROOT / "jobs" / "cluster" / "rayjob.yaml"
CRD = Path(__file__).parent / "data" / "kuberay" / "rayjob-v1.schema.json.gz"
TORCH = torch.__version__.split("+")[0]  # the version the tests run with: the one to pin


def read(path: Path) -> dict[str, Any]:
    return load_yaml(path.read_text(), str(path))


def sweep_command(argv: list[str], storage: str) -> None:
    """``mllm4wtal sweep ...`` as the project's CLI parses and validates it (the file, --set,
    --space-set; nothing started); ``storage`` is where the config says sweeps go."""
    assert argv[:2] == ["mllm4wtal", "sweep"], argv
    args = build_parser().parse_args(argv[1:])
    assert args.storage == storage
    space = runner.load(args.space, args.overrides, args.storage, args.tracking_uri,
                        args.edits)
    assert space.resources.gpu == 0.25  # packed 4 to a GPU
    assert space.experiment_dir.startswith(f"{storage}/")


# --- `ray up` --------------------------------------------------------------------------

def ray_up_validate(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's checks of a cluster config, offline; the config with Ray's defaults filled."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def commented_command(path: Path, first: str) -> list[str]:
    """The command in ``path``'s comments whose first line contains ``first`` (continued by
    trailing backslashes), split as the shell does."""
    lines = [line.lstrip("#").strip() for line in path.read_text().splitlines()
             if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if first in line)
    text = ""
    for line in lines[start:]:
        text += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            break
    return shlex.split(text, comments=True)


def test_ray_up_config_passes_rays_validation():
    cfg = ray_up_validate(read(RAY_UP))
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    gpu = [n for name, n in nodes.items() if name != cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the driver's node: no trials there
    assert [n["resources"]["GPU"] for n in gpu] == [1] and gpu[0]["min_workers"] >= 1
    # the project on every node: the working copy mounted and installed, torch pinned
    assert cfg["file_mounts"]["/home/ray/mllm4wtal"] == "."
    for setup in (cfg["head_setup_commands"], cfg["worker_setup_commands"]):
        assert f'pip install "torch=={TORCH}"' in setup
        assert "pip install -e ~/mllm4wtal" in setup
    docker = cfg["docker"]
    assert docker["head_image"] == f"rayproject/ray:{ray.__version__}-py311"
    assert docker["worker_image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    # shared storage: mounted on every host, passed into every container
    assert any("/shared" in c and "mount -t nfs4" in c for c in cfg["initialization_commands"])
    assert "-v /shared:/shared" in docker["run_options"]
    # token auth on every node, the token file shipped; the dashboard on loopback only
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in starts[0]
    assert "0.0.0.0" not in RAY_UP.read_text()
    # the commented `ray job submit` line: its files exist, its sweep command is valid
    submit = commented_command(RAY_UP, "ray job submit")
    assert submit[:4] == ["RAY_AUTH_MODE=token", "ray", "job", "submit"]
    assert (ROOT / submit[submit.index("--runtime-env") + 1]).is_file()
    sweep_command(submit[submit.index("--") + 1:], "/shared/sweeps")


@pytest.mark.parametrize("where, key, value, error", [
    ((), "setup_comands", ["true"], jsonschema.ValidationError),  # a misspelled key
    (("available_node_types", "worker.gpu"), "max_worker", 8, jsonschema.ValidationError),
    (("available_node_types", "worker.gpu", "resources"), "GPU", "1",
     jsonschema.ValidationError),  # a type error
    ((), "head_node_type", "head.gpu", ValueError),  # a node type that does not exist
], ids=["top-level-typo", "node-type-typo", "type-error", "unknown-head-type"])
def test_ray_up_validation_refuses_a_broken_config(where, key, value, error):
    cfg = read(RAY_UP)
    node = cfg
    for part in where:
        node = node[part]
    node[key] = value
    match = {"setup_comands": "'setup_comands' was unexpected",
             "max_worker": "'max_worker' was unexpected", "GPU": "'1' is not of type 'integer'",
             "head_node_type": "`head_node_type` must be one of"}[key]
    with pytest.raises(error, match=match):
        ray_up_validate(cfg)


# --- KubeRay RayJob ------------------------------------------------------------------

@functools.cache
def crd() -> dict[str, Any]:
    return json.loads(gzip.decompress(CRD.read_bytes()))


@functools.cache
def crd_validator(strict_fields: bool = True) -> jsonschema.Draft4Validator:
    """A validator of the CRD's schema (OpenAPI 3.0's schema object is JSON Schema draft 4
    with extensions, which JSON Schema ignores), itself checked to be a valid schema."""
    schema = crd()["openAPIV3Schema"]
    if strict_fields:
        schema = strict(schema)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def strict(schema: Any) -> Any:
    """The structural schema as Kubernetes applies it under strict field validation (the
    default of `kubectl apply`): an object with declared ``properties`` refuses any other
    field, unless it keeps unknown fields (``x-kubernetes-preserve-unknown-fields``) or
    declares ``additionalProperties``. Plain JSON Schema would allow them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if ("additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
        if isinstance(schema.get(key), dict | list):
            out[key] = strict(schema[key])
    return out


def kuberay_validate(manifest: dict[str, Any], strict_fields: bool = True) -> None:
    """What the API server checks of a RayJob: the group/version and kind the CRD serves,
    then the version's openAPIV3Schema (refusing unknown fields when ``strict_fields``)."""
    definition = crd()
    api = f"{definition['group']}/{definition['version']}"
    if manifest.get("apiVersion") != api or manifest.get("kind") != definition["kind"]:
        raise jsonschema.ValidationError(f"not a {api} {definition['kind']}")
    crd_validator(strict_fields).validate(manifest)


def test_rayjob_matches_the_kuberay_crd():
    job = read(RAYJOB)
    kuberay_validate(job)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "mllm4wtal-ray-token"}
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["serviceType"] == "ClusterIP"
    (head_container,) = head["template"]["spec"]["containers"]
    assert head_container["image"] == f"rayproject/ray:{ray.__version__}-py311"
    (tracking,) = [e for e in head_container["env"] if e["name"] == "MLFLOW_TRACKING_URI"]
    assert tracking["valueFrom"]["secretKeyRef"] == {"name": "mllm4wtal-mlflow",
                                                      "key": "tracking_uri"}
    (workers,) = cluster["workerGroupSpecs"]
    (worker,) = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    # the shared storage the entrypoint writes to, mounted in every pod
    for group in (head, workers):
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": "mllm4wtal-shared"}
                } in pod["volumes"]
    # the runtime env: valid for Ray, the env vars of jobs/runtime_env.yaml and the commit
    # the zip was made from, the project installed from that zip (the working dir), torch
    # pinned
    env = parse_yaml(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)
    shared = read(ROOT / "jobs" / "runtime_env.yaml")["env_vars"]
    assert {k: env["env_vars"][k] for k in shared} == shared
    commit = env["env_vars"][GIT_COMMIT_ENV]
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and env["env_vars"][GIT_DIRTY_ENV] == "false"
    assert env["working_dir"].endswith(f"/mllm4wtal-{commit[:7]}.zip")
    assert env["pip"] == [f"torch=={TORCH}", f"mllm4wtal @ {env['working_dir']}"]
    # the entrypoint (the shell expands the tracking URI from the head's environment)
    command = re.sub(r'"\$MLFLOW_TRACKING_URI"', "http://mlflow.lab.svc:5000",
                     spec["entrypoint"])
    sweep_command(shlex.split(command), "/shared/sweeps")


def mutate(job: dict[str, Any], path: str, value: Any, rename: str | None = None) -> None:
    """Set ``path`` (dotted; integers index lists) to ``value``, or rename its last key."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = job
    for part in parents:
        node = node[part]
    if rename is not None:
        node[rename] = node.pop(last)
    else:
        node[last] = value


TEMPLATE = "spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0"


@pytest.mark.parametrize("path, value, rename, match", [
    ("spec.shutdownAfterJobFinishes", None, "shutdownAfterJobFinish",
     "'shutdownAfterJobFinish' was unexpected"),
    (f"{TEMPLATE}.volumeMounts", None, "volumeMount", "'volumeMount' was unexpected"),
    ("spec.ttlSecondsAfterFinished", "600", None, "'600' is not of type 'integer'"),
    ("spec.rayClusterSpec.authOptions.mode", "tokens", None,
     r"'tokens' is not one of \['disabled', 'token'\]"),
    ("kind", "RayJobs", None, "not a ray.io/v1 RayJob"),
], ids=["spec-typo", "pod-template-typo", "type-error", "enum", "kind"])
def test_kuberay_validation_refuses_a_broken_manifest(path, value, rename, match):
    job = read(RAYJOB)
    mutate(job, path, value, rename)
    with pytest.raises(jsonschema.ValidationError, match=match):
        kuberay_validate(job)


def test_the_crd_schema_alone_lets_unknown_fields_through():
    # why strict(): the CRD does not say additionalProperties: false; the API server's
    # strict field validation is what refuses a misspelled field
    job = read(RAYJOB)
    mutate(job, "spec.shutdownAfterJobFinishes", None, "shutdownAfterJobFinish")
    kuberay_validate(job, strict_fields=False)


def test_cluster_configs_name_files_that_exist():
    for path in (RAY_UP, RAYJOB):
        for name in re.findall(r"\b((?:jobs|search_spaces|tests)/[\w./-]+\.(?:ya?ml|sh|py))",
                               path.read_text()):
            assert (ROOT / name).is_file(), f"{path.name} names {name}"
    assert os.path.getsize(CRD) < 300_000

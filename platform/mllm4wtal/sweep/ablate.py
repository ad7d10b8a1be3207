"""Ablation studies: ``mllm4wtal ablate`` runs a grid of variants x seeds as Ray Tune trials.

A study YAML names config variants (overrides of one base config), the seeds every variant is
trained with, and optionally the paper's figures of each variant. Every cell (variant, seed)
is one training run, i.e. one Ray Tune trial of :func:`~mllm4wtal.sweep.trainable.run_trial`
with fixed hyperparameters: a grid (``tune.grid_search`` over the cells), FIFO, no pruning,
the same resources, dataset sharing and MLflow tracking as a sweep (``sweep.runner``,
``sweep.tracking``). The MLflow experiment holds one parent run per study and one child run
per cell, tagged ``study``, ``variant``, ``seed`` and ``config_hash``. Cells already
finished in the experiment are skipped, so rerunning a study after an interruption runs only
what is missing, and a study is extended with more seeds (``--seeds 5``) without rerunning
the first ones. ``mllm4wtal report`` turns the experiment into the paper-style table.

Schema (YAML safe loader; ``5e-4`` is a number, duplicate keys are an error); every key
except ``base`` and ``variants`` is optional::

    name: components              # experiment name, [A-Za-z0-9._-]+; default: the file stem
    description: ...              # free text
    paper: {source: mllm4wtal.txt, table: 3, note: ...}   # where the figures come from
    base: synthetic               # preset or config YAML (relative: to this file's folder)
    overrides:                    # config keys fixed for every variant (dotted or nested)
      model.base: delu
    seeds: 3                      # N (seeds 0..N-1) or a list [0, 1, 7]; sets train.seed
    reference: Baseline           # the row differences and p-values refer to; default: first
    metric: map/avg_0.1-0.7       # the column compared (a map/* column); default: the average
    variants:                     # name -> spec, in table order
      Baseline:
        description: ...          # optional
        overrides: {ksm.enabled: false, csr.enabled: false}
        paper: {map/0.3: 56.5, map/0.5: 40.5, map/avg_0.3-0.7: 37.4}   # percent, optional
      +KSM:
        overrides: {csr.enabled: false}
        reference: Baseline       # optional: the row this one is compared with
    trials: {max_concurrent: 1, max_failures: 0}
    resources: {cpu: 1, gpu: 0}
    mlflow: {tracking_uri: null, experiment: null}   # as in a search-space file
    storage: {path: null}         # the experiment directory is <path>/<name>; default sweeps

Rules: variant overrides are config keys with valid values (every variant config is built
and checked, inference settings included); ``train.seed`` belongs to ``seeds``; keys that
define the dataset (``data.format``, ``data.root``, ``data.synthetic.*``, ...) and
``eval.tious`` (the table's columns) are the same for all variants and go under
``overrides``; two variants may not have the same overrides; a key set by ``--set`` may not
also be set by a variant. Paper figures are keyed by the report's column names:
``map/<tIoU>`` for a tIoU of ``eval.tious`` or ``map/avg_<lo>-<hi>`` (the mean over the
tIoUs from lo to hi, e.g. the papers' ``map/avg_0.3-0.7``), in percent. Paths a trial
reads (``text.store``, ``text.vectors``, ``text.cache_dir``) are made absolute against the
current directory, since a Ray trial runs in its own folder. A variant's ``reference``
(default: the study's) must name another variant; per-variant references give a table with
several groups (e.g. each base model against itself alone).

Cells: one per (variant, seed), run seed-major (every variant of seed 0, then of seed 1,
...), so a study stopped half-way has whole seeds. A cell is finished when its MLflow run is
FINISHED (not pruned, not failed); its tag ``config_hash`` (the training config without
seed, device and folders) must match the variant's config now, or the study is refused:
one experiment never mixes two settings of a variant.

Each mistake raises one :class:`StudyError` naming the file and the key, e.g.
``search_spaces/ablations/x.yaml: variants.+KSM.overrides.ksm.enabeld: unknown config key;
did you mean 'ksm.enabled'?``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mllm4wtal.config import Config, ConfigError, from_flat, to_flat
from mllm4wtal.errors import UserError
from mllm4wtal.evaluation.detection import average_metric_name, tiou_key
from mllm4wtal.sweep.spaces import (
    _DATASET_KEYS,
    MlflowSpec,
    ResourcesSpec,
    TrialsSpec,
    _close,
    _flatten,
    _is_int,
    _is_num,
    _Parser,
    _show,
)

TOP_LEVEL_KEYS = ("name", "description", "paper", "base", "overrides", "seeds", "reference",
                  "metric", "variants", "trials", "resources", "mlflow", "storage")
VARIANT_KEYS = ("description", "overrides", "paper", "reference")
#: paths a trial reads itself: made absolute (against the current directory), since a Ray
#: trial runs in its own folder
PATH_KEYS = ("text.store", "text.vectors", "text.cache_dir")
PAPER_KEYS = ("source", "table", "note")
DEFAULT_SEEDS = 3
STUDY_JSON = "study.json"

#: tags of an ablation's runs
STUDY_TAG = "study"
VARIANT_TAG = "variant"
SEED_TAG = "seed"
CONFIG_TAG = "config_hash"
KIND_TAG = "mllm4wtal.kind"

#: keys that do not change what a cell computes (left out of its config hash)
HASH_EXCLUDED = ("train.seed", "train.device", "train.out_dir", "text.cache_dir")
_VARIANT_FORBIDDEN = {
    "train.seed": "seeds are set by `seeds:` (or --seeds), for every variant alike",
    "eval.tious": "the table's columns must be the same for every variant; set it under "
                  "overrides",
}
_AVG_RE = re.compile(r"^map/avg_([0-9.]+)-([0-9.]+)$")


class StudyError(UserError):
    """A study file is missing, malformed or inconsistent; the message names the file, the
    key and the fix."""


class Cell(NamedTuple):
    """One training run of a study."""

    variant: str
    seed: int


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict[str, Any]  # flat, typed as the config has them
    paper: dict[str, float]  # column -> the paper's figure (percent)
    reference: str | None = None  # the row this one is compared with; None: the study's


@dataclass(frozen=True)
class Study:
    """A validated study file with every default resolved."""

    path: Path  # absolute path of the file
    where: str  # the path as the user gave it; starts every error message
    name: str
    description: str
    paper: dict[str, str]  # source, table, note
    base: str
    base_config: Config  # base + overrides + --set
    overrides: dict[str, Any]  # flat: the file's overrides, then --set
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    reference: str
    metric: str
    trials: TrialsSpec  # num_samples unused: the cells are the budget
    resources: ResourcesSpec
    mlflow: MlflowSpec
    storage_path: str
    experiment_dir: str
    configs: dict[str, Config] = field(default_factory=dict, repr=False)  # per variant

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def tious(self) -> tuple[float, ...]:
        return tuple(self.base_config.eval.tious)

    def cells(self) -> list[Cell]:
        """Every (variant, seed), seed-major: a study stopped half-way has whole seeds."""
        return [Cell(v.name, s) for s in self.seeds for v in self.variants]

    def cell_overrides(self, cell: Cell) -> dict[str, Any]:
        """The cell's flat overrides of the base config (what a trial gets)."""
        return {**self.variant(cell.variant).overrides, "train.seed": int(cell.seed)}

    def cell_params(self, cell: Cell) -> dict[str, Any]:
        """The cell's full flat training config."""
        return {**to_flat(self.base_config), **self.cell_overrides(cell)}

    def to_json(self) -> dict[str, Any]:
        """The resolved definition the report reads back (``study.json`` on the parent run)."""
        return {
            "kind": "ablation", "name": self.name, "description": self.description,
            "paper": dict(self.paper), "base": self.base, "file": str(self.path),
            "overrides": _jsonable(self.overrides), "seeds": list(self.seeds),
            "reference": self.reference, "metric": self.metric,
            "tious": list(self.tious),
            "variants": [{"name": v.name, "description": v.description,
                          "overrides": _jsonable(v.overrides), "paper": dict(v.paper),
                          "reference": v.reference or self.reference}
                         for v in self.variants],
        }


def _jsonable(flat: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def _absolute_paths(flat: dict[str, Any]) -> dict[str, Any]:
    out = dict(flat)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith("~") \
                and not Path(value).is_absolute():
            out[key] = str(Path(value).absolute())
    return out


def config_hash(flat: Mapping[str, Any]) -> str:
    """A short hash of a flat training config without the keys that do not change what a
    run computes (seed, device, output and cache folders): equal for the cells of one
    variant, different when the study's settings changed."""
    kept = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(flat.items())
            if k not in HASH_EXCLUDED}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_seeds(value: Any, label: str = "seeds") -> tuple[int, ...]:
    """``3`` -> (0, 1, 2); ``[0, 4]`` / ``"0,4"`` -> (0, 4). Raises ValueError with the fix."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+", text):
            value = int(text)
        elif re.fullmatch(r"\d+(\s*,\s*\d+)*,?", text):
            value = [int(x) for x in text.split(",") if x.strip()]
        else:
            raise ValueError(f"{label}: {value!r} is neither a number of seeds (e.g. 3) nor a "
                             "comma list of seeds (e.g. 0,1,7)")
    if _is_int(value):
        if value < 1:
            raise ValueError(f"{label}: {value} seeds; give at least 1")
        return tuple(range(int(value)))
    if isinstance(value, list) and value:
        for s in value:
            if not _is_int(s) or s < 0:
                raise ValueError(f"{label}: {_show(s)} is not a seed (an integer >= 0)")
        if len(set(value)) != len(value):
            dup = next(s for s in value if value.count(s) > 1)
            raise ValueError(f"{label}: seed {dup} is listed twice; list each seed once")
        return tuple(int(s) for s in value)
    raise ValueError(f"{label}: {_show(value)} must be a number of seeds (e.g. 3) or a "
                     "non-empty list of seeds (e.g. [0, 1, 7])")


def column_tious(column: str, tious: Sequence[float]) -> tuple[float, ...] | None:
    """The tIoUs a report column averages: ``map/0.5`` -> (0.5,), ``map/avg_0.3-0.7`` ->
    (0.3, ..., 0.7) among ``tious``; None when ``column`` is not a column over ``tious``."""
    keys = {tiou_key(t): float(t) for t in tious}
    if column.startswith("map/") and column[4:] in keys:
        return (keys[column[4:]],)
    m = _AVG_RE.match(column)
    if m and m.group(1) in keys and m.group(2) in keys:
        lo, hi = keys[m.group(1)], keys[m.group(2)]
        if lo < hi:
            return tuple(t for t in sorted(keys.values()) if lo - 1e-9 <= t <= hi + 1e-9)
    return None


# --------------------------------------------------------------------------- the parser


class _StudyParser(_Parser):
    KIND = "study"
    EXAMPLE = "search_spaces/ablations/components.yaml"
    REQUIRED = ("base", "variants")
    TOP_LEVEL = TOP_LEVEL_KEYS

    def fail(self, key: str, msg: str) -> StudyError:  # type: ignore[override]
        return StudyError(f"{self.where}: {key}: {msg}" if key else f"{self.where}: {msg}")

    def parse_study(self, seeds: Any = None) -> Study:
        raw, name, description = self.read_head()
        paper = self.parse_paper(raw.get("paper"))
        file_ovr, cli_ovr = self.parse_overrides(raw)
        file_ovr, cli_ovr = _absolute_paths(file_ovr), _absolute_paths(cli_ovr)
        for label, ovr in (("overrides", file_ovr), ("--set", cli_ovr)):
            if "train.seed" in ovr:
                raise self.fail(f"{label}.train.seed" if label == "overrides" else
                                "--set train.seed", "seeds are set by `seeds:` (or --seeds "
                                                    "on the command line); remove it")
        base = raw.get("base")
        base_config = self.build_base(base, file_ovr, cli_ovr)
        variants, configs = self.parse_variants(raw, base_config, cli_ovr)
        reference = raw.get("reference", variants[0].name)
        names = [v.name for v in variants]
        if reference not in names:
            raise self.fail("reference", f"{_show(reference)} is not a variant"
                                         f"{_close(str(reference), names)} (variants: "
                                         f"{', '.join(names)})")
        try:
            seed_list = parse_seeds(raw.get("seeds", DEFAULT_SEEDS) if seeds is None else seeds,
                                    "seeds" if seeds is None else "--seeds")
        except ValueError as e:
            raise self.fail("", str(e)) from None
        metric = self.parse_study_metric(raw, base_config)
        trials = self.parse_study_trials(raw)
        resources = self.parse_resources(raw, base_config)
        for v in variants:  # a variant may set train.device
            self.parse_resources(raw, configs[v.name])
        storage_path, experiment_dir = self.parse_storage(raw, name)
        mlflow = self.parse_mlflow(raw, name, storage_path)
        return Study(
            path=self.path.resolve(), where=self.where, name=name, description=description,
            paper=paper, base=base, base_config=base_config,
            overrides={**file_ovr, **cli_ovr}, variants=tuple(variants), seeds=seed_list,
            reference=reference, metric=metric, trials=trials, resources=resources,
            mlflow=mlflow, storage_path=storage_path, experiment_dir=experiment_dir,
            configs=configs)

    def parse_paper(self, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail("paper", "must be a mapping like {source: mllm4wtal.txt, table: 3, "
                                     "note: ...}")
        self.check_keys(value, PAPER_KEYS, "paper.")
        out = {}
        for k, v in value.items():
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise self.fail(f"paper.{k}", f"must be text; got {_show(v)}")
            out[k] = str(v)
        return out

    def parse_variants(self, raw: dict, base: Config, cli_ovr: dict
                       ) -> tuple[list[Variant], dict[str, Config]]:
        spec = raw.get("variants")
        if not isinstance(spec, dict) or not spec:
            raise self.fail("variants", "missing or empty; map variant names to their "
                                        "overrides, e.g. {Baseline: {overrides: "
                                        "{ksm.enabled: false}}}")
        base_flat = to_flat(base)
        variants: list[Variant] = []
        configs: dict[str, Config] = {}
        seen: dict[str, str] = {}
        for name, body in spec.items():
            label = f"variants.{name}"
            if not isinstance(name, str) or not name.strip() or name != name.strip() \
                    or "\n" in name or len(name) > 100:
                raise self.fail(label, "a variant name must be text without surrounding "
                                       "spaces or line breaks, at most 100 characters")
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise self.fail(label, f"must be a mapping with keys {', '.join(VARIANT_KEYS)};"
                                       f" got {_show(body)}")
            for k in body:
                if k not in VARIANT_KEYS:
                    raise self.fail(f"{label}.{k}", f"unknown key{_close(str(k), VARIANT_KEYS)}"
                                                    f" (allowed: {', '.join(VARIANT_KEYS)}; "
                                                    "config keys go under overrides)")
            description = body.get("description") or ""
            if not isinstance(description, str):
                raise self.fail(f"{label}.description", "must be text")
            ovr_tree = body.get("overrides")
            if ovr_tree is None:
                ovr_tree = {}
            if not isinstance(ovr_tree, dict):
                raise self.fail(f"{label}.overrides", "must be a mapping of config keys to "
                                                      "values, e.g. {csr.enabled: false}")
            ovr = _flatten(ovr_tree)
            for key in ovr:
                self.config_key(f"{label}.overrides.{key}", key)
            ovr = _absolute_paths(ovr)
            for key in ovr:
                kl = f"{label}.overrides.{key}"
                self.config_key(kl, key)
                if key in _VARIANT_FORBIDDEN:
                    raise self.fail(kl, f"cannot be set per variant: {_VARIANT_FORBIDDEN[key]}")
                if key in _DATASET_KEYS or key.startswith("data.synthetic."):
                    raise self.fail(kl, "defines the dataset all cells share (it is loaded "
                                        "once); set it under overrides")
                if key in cli_ovr:
                    raise self.fail(kl, f"is also set with --set {key}=...; --set changes "
                                        "every variant alike, drop it or change the variant")
            cfg = self.variant_config(label, base_flat, ovr)
            typed = to_flat(cfg)
            ovr = {k: typed[k] for k in ovr}
            canon = json.dumps(_jsonable(ovr), sort_keys=True, default=str)
            if canon in seen:
                raise self.fail(f"{label}.overrides", f"the same as those of variant "
                                                      f"'{seen[canon]}'; the two would be the "
                                                      "same runs")
            seen[canon] = name
            paper = self.parse_variant_paper(label, body.get("paper"), cfg)
            ref = body.get("reference")
            if ref is not None and (not isinstance(ref, str) or ref not in spec or ref == name):
                others = [str(n) for n in spec if n != name]
                raise self.fail(f"{label}.reference", f"{_show(ref)} must name another "
                                                      f"variant{_close(str(ref), others)} "
                                                      f"(variants: {', '.join(others)})")
            variants.append(Variant(name=name, description=description, overrides=ovr,
                                    paper=paper, reference=ref))
            configs[name] = cfg
        return variants, configs

    def variant_config(self, label: str, base_flat: dict, ovr: dict) -> Config:
        from mllm4wtal.train.evaluate import check_inference

        try:
            cfg = from_flat({**base_flat, **ovr}, where=f"{self.where}: {label}.overrides")
        except ConfigError as e:
            raise StudyError(str(e)) from None
        try:
            check_inference(cfg)
        except UserError as e:
            raise self.fail(f"{label}.overrides", str(e)) from None
        return cfg

    def parse_variant_paper(self, label: str, value: Any, cfg: Config) -> dict[str, float]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{label}.paper", "must map report columns to the paper's figures "
                                              "in percent, e.g. {map/0.5: 40.5, "
                                              "map/avg_0.3-0.7: 37.4}")
        out = {}
        tious = cfg.eval.tious
        for col, v in value.items():
            cl = f"{label}.paper.{col}"
            if not isinstance(col, str) or column_tious(col, tious) is None:
                shown = ", ".join(f"map/{tiou_key(t)}" for t in tious)
                raise self.fail(cl, f"not a column of this study; use one of {shown} or "
                                    f"map/avg_<lo>-<hi> with lo < hi among them (e.g. "
                                    f"{average_metric_name(tious)})")
            if not _is_num(v) or not 0 <= v <= 100:
                raise self.fail(cl, f"{_show(v)}: the paper's figure in percent, a number in "
                                    "[0, 100]")
            out[col] = float(v)
        return out

    def parse_study_metric(self, raw: dict, cfg: Config) -> str:
        tious = cfg.eval.tious
        metric = raw.get("metric", average_metric_name(tious))
        if not isinstance(metric, str) or column_tious(metric, tious) is None:
            shown = ", ".join(f"map/{tiou_key(t)}" for t in tious)
            raise self.fail("metric", f"{_show(metric)} is not a column of this study; use one "
                                      f"of {shown} or map/avg_<lo>-<hi> (default "
                                      f"{average_metric_name(tious)})")
        return metric

    def parse_study_trials(self, raw: dict) -> TrialsSpec:
        sec = self.section(raw, "trials", ("max_concurrent", "max_failures"))
        return TrialsSpec(num_samples=1,
                          max_concurrent=self.get_int(sec, "trials", "max_concurrent", 1, 1),
                          max_failures=self.get_int(sec, "trials", "max_failures", 0, 0))


def load_study(path: str | Path, overrides: Sequence[str] = (), seeds: Any = None,
               storage: str | None = None, tracking_uri: str | None = None) -> Study:
    """Read and validate a study file. ``overrides``: ``--set key=value`` strings applied to
    every variant; ``seeds``: ``--seeds`` (a count, a list or a comma string) replacing the
    file's; ``storage``/``tracking_uri`` replace the file's ``storage.path`` and
    ``mlflow.tracking_uri``. Raises :class:`StudyError` naming the file and key."""
    from mllm4wtal.sweep.runner import check_job_storage, storage_edits

    study = _StudyParser(path, list(overrides), storage_edits(storage, tracking_uri)
                         ).parse_study(seeds)
    check_job_storage(study.where, study.experiment_dir)
    return study


def preflight(study: Study) -> None:
    """What validation leaves to run time but a cell would fail on at its start: files a
    variant names (a description store)."""
    for v in study.variants:
        tc = study.configs[v.name].text
        if tc.backend == "file":
            store = Path(tc.store).expanduser()
            if not tc.store or not store.is_file():
                raise StudyError(f"{study.where}: variants.{v.name}: text.backend = 'file' "
                                 f"needs the description store text.store = {tc.store!r}, "
                                 "which does not exist; write it with `mllm4wtal describe` "
                                 "or point at one with --set text.store=/path/to/store.jsonl")


# --------------------------------------------------------------------------- the runner


@dataclass
class AblationResult:
    experiment_dir: Path
    tracking_uri: str
    experiment: str
    parent_run_id: str
    ran: list[Cell]  # started in this invocation
    skipped: list[Cell]  # finished before
    failed: list[Cell]
    records: list[dict[str, Any]]  # one per cell run now: trial_id, variant, seed, status
    interrupted: bool


def finished_cells(client: Any, experiment_id: str, study_name: str) -> dict[Cell, Any]:
    """The latest FINISHED (not pruned) run of every cell of the study in the experiment."""
    query = f"tags.`{STUDY_TAG}` = '{study_name}' and attributes.status = 'FINISHED'"
    out: dict[Cell, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get("pruned") == "true" or VARIANT_TAG not in tags or SEED_TAG not in tags:
                continue
            try:
                cell = Cell(tags[VARIANT_TAG], int(tags[SEED_TAG]))
            except ValueError:
                continue
            out[cell] = run  # oldest first: the latest wins
        token = page.token
        if not token:
            return out


def check_compatible(study: Study, done: Mapping[Cell, Any]) -> None:
    """Finished cells of a variant must have been run with the config it has now; otherwise
    the table would mix two settings."""
    from mllm4wtal.sweep.tracking import flatten_params

    names = {v.name for v in study.variants}
    for cell, run in done.items():
        if cell.variant not in names:
            continue
        params = study.cell_params(cell)
        if run.data.tags.get(CONFIG_TAG) == config_hash(params):
            continue
        now = flatten_params(params)
        there = dict(run.data.params)
        diff = [f"{k}: {there.get(k, '(absent)')} there, {now[k]} now" for k in sorted(now)
                if k not in HASH_EXCLUDED and there.get(k) != now[k]]
        detail = "; ".join(diff[:4]) or "a config that differs"
        raise StudyError(
            f"{study.where}: MLflow experiment '{study.mlflow.experiment}' already holds "
            f"finished runs of variant '{cell.variant}' trained with another config "
            f"({detail}); rerun with the settings it was started with, or put this one "
            "elsewhere (--storage DIR, or another `name:`)")


def _cell_tags(config: Mapping[str, Any], *, study: str, base: Mapping[str, Any]
               ) -> dict[str, str]:
    cell = config["cell"]
    return {STUDY_TAG: study, VARIANT_TAG: str(cell["variant"]), SEED_TAG: str(cell["seed"]),
            CONFIG_TAG: config_hash({**base, **cell["overrides"]}), KIND_TAG: "ablation"}


def _cell_params(config: Mapping[str, Any], *, base: Mapping[str, Any]) -> dict[str, Any]:
    return {**base, **config["cell"]["overrides"]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:40] or "variant"


def cell_dirname(trial: Any) -> str:
    """Trial folder names a person can read: ``<variant>_seed<seed>_<trial id>``."""
    cell = trial.config["cell"]
    return f"{_slug(str(cell['variant']))}_seed{cell['seed']}_{trial.trial_id}"


def claim_study(study: Study) -> Path:
    """Create (or reuse) the study's experiment directory; keep a copy of the file and its
    resolved definition there. A sweep's directory is never reused."""
    from mllm4wtal.sweep.runner import SPACE_COPY, STUDY_COPY

    exp = Path(study.experiment_dir)
    if (exp / SPACE_COPY).exists():
        raise StudyError(f"{exp} holds the sweep '{study.name}'; give the study another name "
                         "(key `name:`) or storage (--storage)")
    exp.mkdir(parents=True, exist_ok=True)
    if study.path != (exp / STUDY_COPY).resolve():
        shutil.copy2(study.path, exp / STUDY_COPY)
    (exp / STUDY_JSON).write_text(json.dumps(study.to_json(), indent=1, default=str) + "\n")
    return exp


def plan(study: Study, done: Mapping[Cell, Any] | None = None) -> str:
    cells = study.cells()
    todo = [c for c in cells if done is None or c not in done]
    r = study.resources
    lines = [f"study '{study.name}': {len(study.variants)} variants x {len(study.seeds)} seeds "
             f"({', '.join(map(str, study.seeds))}) = {len(cells)} cells, "
             f"{study.trials.max_concurrent} at a time, {r.cpu:g} CPU + {r.gpu:g} GPU each; "
             f"{study.base_config.train.iterations} iterations, no pruning"]
    for v in study.variants:
        ovr = " ".join(f"{k}={_show(x)}" for k, x in v.overrides.items()) or "(base config)"
        mark = "  (reference)" if v.name == study.reference else ""
        lines.append(f"  {v.name}: {ovr}{mark}")
    if done is not None:
        lines.append(f"  to run: {len(todo)} cells; already finished: {len(cells) - len(todo)}")
    lines += [f"  experiment directory: {study.experiment_dir}",
              f"  MLflow: {study.mlflow.tracking_uri} (experiment '{study.mlflow.experiment}')"]
    return "\n".join(lines)


def _records(grid: Any) -> list[dict[str, Any]]:
    out = []
    for r in grid:
        cell = (r.config or {}).get("cell", {})
        # the trial folder (cell_dirname) ends with the trial id, <hex>_<index>
        trial_id = str((r.metrics or {}).get("trial_id")
                       or "_".join(Path(r.path).name.split("_")[-2:]))
        out.append({"trial_id": trial_id, "variant": cell.get("variant"),
                    "seed": cell.get("seed"), "pruned": False,
                    "status": "FAILED" if r.error is not None else "FINISHED",
                    "iterations": int((r.metrics or {}).get("iteration", 0) or 0)})
    return out


def run_ablation(study: Study, verbose: int = 1) -> AblationResult:
    """Run the study's cells that are not finished in its MLflow experiment yet."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.sweep import runner
    from mllm4wtal.sweep.tracking import MlflowTuneCallback, SweepTracker
    from mllm4wtal.sweep.trainable import run_cell

    preflight(study)
    exp = claim_study(study)
    base = to_flat(study.base_config)
    tracker = SweepTracker(exp, study.mlflow.experiment, study.mlflow.tracking_uri,
                           sweep_name=study.name, base_params=base,
                           tags={STUDY_TAG: study.name, "study_file": str(study.path),
                                 KIND_TAG: "ablation"})
    done = finished_cells(tracker.client, tracker.experiment_id, study.name)
    check_compatible(study, done)
    cells = study.cells()
    todo = [c for c in cells if c not in done]
    skipped = [c for c in cells if c in done]
    tracker.log_parent_artifact(exp / STUDY_JSON)
    tracker.set_parent_tags({"n_variants": len(study.variants), "seeds": ",".join(
        map(str, study.seeds)), "reference": study.reference, "study_metric": study.metric})

    records: list[dict[str, Any]] = []
    interrupted = False
    if todo:
        dataset = load_from_config(study.base_config.data)
        runner.start_ray()
        trainable = runner.make_trainable(base, dataset, study.resources, fn=run_cell)
        callback = MlflowTuneCallback(
            tracker, functools.partial(_cell_params, base=base),
            study.base_config.train.iterations, run_dir_for=runner.checkpoint_dir,
            tags_for=functools.partial(_cell_tags, study=study.name, base=base))
        grid_cells = [{"variant": c.variant, "seed": c.seed,
                       "overrides": study.cell_overrides(c)} for c in todo]
        name = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        while (exp / name).exists():
            name += "x"
        tuner = tune.Tuner(
            trainable, param_space={"cell": tune.grid_search(grid_cells)},
            tune_config=tune.TuneConfig(num_samples=1, scheduler=FIFOScheduler(),
                                        reuse_actors=True,
                                        max_concurrent_trials=study.trials.max_concurrent,
                                        trial_dirname_creator=cell_dirname),
            run_config=tune.RunConfig(
                name=name, storage_path=runner.tune_storage(study.experiment_dir),
                callbacks=[callback], verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=study.trials.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        grid = runner.fit(tuner)
        records = _records(grid) if grid is not None else []
        running = runner.mark_killed(records, tracker)  # type: ignore[arg-type]
        interrupted = running or len(records) < len(todo)
    now_done = finished_cells(tracker.client, tracker.experiment_id, study.name)
    tracker.set_parent_tags({"n_cells": len(cells),
                             "n_finished_cells": sum(c in now_done for c in cells)})
    parent = tracker.parent_run_id
    tracker.finish("KILLED" if interrupted else "FINISHED")
    failed = [Cell(r["variant"], int(r["seed"])) for r in records if r["status"] == "FAILED"]
    return AblationResult(experiment_dir=exp, tracking_uri=tracker.tracking_uri,
                          experiment=study.mlflow.experiment, parent_run_id=parent,
                          ran=todo, skipped=skipped, failed=failed, records=records,
                          interrupted=interrupted)


def conclusion(study: Study, result: AblationResult) -> str:
    uri = result.tracking_uri
    report = f"mllm4wtal report --experiment {result.experiment} --tracking-uri {uri}"
    if result.interrupted:
        return (f"study interrupted; run the same command again to finish it (finished "
                f"cells are skipped)\nso far: {report}")
    lines = [f"{len(result.ran)} cells run ({len(result.failed)} failed), "
             f"{len(result.skipped)} already finished"]
    for c in result.failed:
        lines.append(f"  failed: {c.variant} seed {c.seed} (its MLflow run holds the error; "
                     "run the command again to retry it)")
    lines.append(f"table and plots: {report}")
    return "\n".join(lines)


__all__ = ["Study", "Variant", "Cell", "StudyError", "AblationResult", "load_study",
           "preflight", "run_ablation", "plan", "conclusion", "finished_cells",
           "config_hash", "parse_seeds", "column_tious"]

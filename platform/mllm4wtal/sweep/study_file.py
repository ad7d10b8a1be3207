"""The study file of ``mllm4wtal ablate``: reading and validating it into a :class:`Study`.

A study YAML names config variants (overrides of one base config), the seeds every variant is
trained with, and optionally the paper's figures of each variant (see ``sweep.ablate`` for how
its cells are run).

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

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mllm4wtal.config import Config, ConfigError, did_you_mean, flatten, from_flat, to_flat
from mllm4wtal.errors import UserError
from mllm4wtal.evaluation.detection import average_metric_name, tiou_key
from mllm4wtal.sweep.spaces.file_parser import FileParser, is_dataset_key
from mllm4wtal.sweep.spaces.sections import (
    URI_RE,
    MlflowSpec,
    ResourcesSpec,
    StudyTrials,
    TrialsSpec,
)
from mllm4wtal.sweep.spaces.values import is_int, is_num, show

TOP_LEVEL_KEYS = ("name", "description", "paper", "base", "overrides", "seeds", "reference",
                  "metric", "variants", "trials", "resources", "mlflow", "storage")
VARIANT_KEYS = ("description", "overrides", "paper", "reference")
#: paths a trial reads itself: made absolute (against the current directory), since a Ray
#: trial runs in its own folder
PATH_KEYS = ("text.store", "text.vectors", "text.cache_dir")
PAPER_KEYS = ("source", "table", "note")
DEFAULT_SEEDS = 3
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
    if is_int(value):
        if value < 1:
            raise ValueError(f"{label}: {value} seeds; give at least 1")
        return tuple(range(int(value)))
    if isinstance(value, list) and value:
        for s in value:
            if not is_int(s) or s < 0:
                raise ValueError(f"{label}: {show(s)} is not a seed (an integer >= 0)")
        if len(set(value)) != len(value):
            dup = next(s for s in value if value.count(s) > 1)
            raise ValueError(f"{label}: seed {dup} is listed twice; list each seed once")
        return tuple(int(s) for s in value)
    raise ValueError(f"{label}: {show(value)} must be a number of seeds (e.g. 3) or a "
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


class StudyParser(FileParser):
    KIND = "study"
    EXAMPLE = "search_spaces/ablations/components.yaml"
    REQUIRED = ("base", "variants")
    TOP_LEVEL = TOP_LEVEL_KEYS
    ERROR = StudyError

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
        base_config = self.build_base(base, file_ovr, cli_ovr, runs=False)
        variants, configs = self.parse_variants(raw, base_config, cli_ovr)
        reference = raw.get("reference", variants[0].name)
        names = [v.name for v in variants]
        if reference not in names:
            raise self.fail("reference", f"{show(reference)} is not a variant"
                                         f"{did_you_mean(str(reference), names)} (variants: "
                                         f"{', '.join(names)})")
        try:
            seed_list = parse_seeds(raw.get("seeds", DEFAULT_SEEDS) if seeds is None else seeds,
                                    "seeds" if seeds is None else "--seeds")
        except ValueError as e:
            raise self.fail("", str(e)) from None
        metric = self.parse_study_metric(raw, base_config)
        trials = self.section(raw, "trials", StudyTrials).spec()
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
                raise self.fail(f"paper.{k}", f"must be text; got {show(v)}")
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
                                       f" got {show(body)}")
            self.check_keys(body, VARIANT_KEYS, f"{label}.",
                            hint="config keys go under overrides")
            description = body.get("description") or ""
            if not isinstance(description, str):
                raise self.fail(f"{label}.description", "must be text")
            ovr_tree = body.get("overrides")
            if ovr_tree is None:
                ovr_tree = {}
            if not isinstance(ovr_tree, dict):
                raise self.fail(f"{label}.overrides", "must be a mapping of config keys to "
                                                      "values, e.g. {csr.enabled: false}")
            ovr = flatten(ovr_tree)
            for key in ovr:
                self.config_key(f"{label}.overrides.{key}", key)
            ovr = _absolute_paths(ovr)
            for key in ovr:
                kl = f"{label}.overrides.{key}"
                self.config_key(kl, key)
                if key in _VARIANT_FORBIDDEN:
                    raise self.fail(kl, f"cannot be set per variant: {_VARIANT_FORBIDDEN[key]}")
                if is_dataset_key(key):
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
                raise self.fail(f"{label}.reference", f"{show(ref)} must name another "
                                                      f"variant{did_you_mean(str(ref), others)} "
                                                      f"(variants: {', '.join(others)})")
            variants.append(Variant(name=name, description=description, overrides=ovr,
                                    paper=paper, reference=ref))
            configs[name] = cfg
        return variants, configs

    def variant_config(self, label: str, base_flat: dict, ovr: dict) -> Config:
        """The variant's config (what its cells run), checked as a sweep's trials are."""
        try:
            cfg = from_flat({**base_flat, **ovr}, where=f"{self.where}: {label}.overrides")
        except ConfigError as e:
            raise StudyError(str(e)) from None
        self.check_config(cfg, f"{label}.overrides")
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
            if not is_num(v) or not 0 <= v <= 100:
                raise self.fail(cl, f"{show(v)}: the paper's figure in percent, a number in "
                                    "[0, 100]")
            out[col] = float(v)
        return out

    def parse_study_metric(self, raw: dict, cfg: Config) -> str:
        tious = cfg.eval.tious
        metric = raw.get("metric", average_metric_name(tious))
        if not isinstance(metric, str) or column_tious(metric, tious) is None:
            shown = ", ".join(f"map/{tiou_key(t)}" for t in tious)
            raise self.fail("metric", f"{show(metric)} is not a column of this study; use one "
                                      f"of {shown} or map/avg_<lo>-<hi> (default "
                                      f"{average_metric_name(tious)})")
        return metric


def load_study(path: str | Path, overrides: Sequence[str] = (), seeds: Any = None,
               storage: str | None = None, tracking_uri: str | None = None) -> Study:
    """Read and validate a study file. ``overrides``: ``--set key=value`` strings applied to
    every variant; ``seeds``: ``--seeds`` (a count, a list or a comma string) replacing the
    file's; ``storage``/``tracking_uri`` replace the file's ``storage.path`` and
    ``mlflow.tracking_uri``. Raises :class:`StudyError` naming the file and key."""
    from mllm4wtal.sweep.runner import check_job_storage, storage_edits

    study = StudyParser(path, list(overrides), storage_edits(storage, tracking_uri)
                         ).parse_study(seeds)
    if URI_RE.match(study.storage_path):  # the study's runner writes its folder in place
        raise StudyError(f"{study.where}: storage.path = {study.storage_path!r}: an ablation "
                         "study keeps its folder on a file system (object-store URIs are for "
                         "`mllm4wtal sweep`); give a local or shared folder, e.g. --storage "
                         "/shared/ablations")
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

__all__ = ["Study", "Variant", "Cell", "StudyError", "load_study", "preflight", "config_hash",
           "parse_seeds", "column_tious", "HASH_EXCLUDED"]

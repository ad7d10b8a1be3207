"""What search-space files (``sweep.spaces.search_space``) and study files
(``sweep.study_file``) share: reading the YAML, the top level, ``name``, ``overrides`` and
``--set``, the base config and every check a trial's config must pass (cross-field rules and
what evaluation would refuse, :func:`~mllm4wtal.inference.evaluate.check_inference`), and the
run-setting sections (pydantic models of ``sweep.spaces.sections``).

:class:`FileParser` is subclassed once per kind of file; each mistake becomes one ``ERROR``
whose message is ``<file>: <key>: <problem and fix>``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError

from mllm4wtal.config import (
    PRESETS,
    Config,
    ConfigError,
    check_cross_fields,
    did_you_mean,
    flatten,
    from_flat,
    leaf_fields,
    load_config,
    load_yaml,
    parse_override,
    to_flat,
)
from mllm4wtal.errors import UserError
from mllm4wtal.inference.evaluate import check_inference
from mllm4wtal.sweep.spaces.sections import (
    MlflowSpec,
    ResourcesSpec,
    Section,
    StorageSpec,
    explain,
    first_error,
)
from mllm4wtal.sweep.spaces.values import show

#: keys that define the dataset all trials (cells) of a node share: loaded once, never searched
#: nor varied (``data.synthetic.*`` too)
DATASET_KEYS = ("data.format", "data.root", "data.name", "data.train_subset",
                "data.test_subset", "data.feature_dim", "data.rgb_dim", "data.fps",
                "data.frames_per_snippet", "data.select", "data.select_fraction",
                "data.select_seed")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
S = TypeVar("S", bound=Section)


def is_dataset_key(key: str) -> bool:
    return key in DATASET_KEYS or key.startswith("data.synthetic.")


def config_problem(cfg: Config) -> str | None:
    """What a trial (cell) with ``cfg`` would refuse at its start beyond the values and the
    config's cross-field rules (e.g. ``inference.source = loc_head`` without the localization
    head), or None. Sweeps and studies check every base, searched corner, point and variant
    with it."""
    try:
        check_inference(cfg)
    except UserError as e:
        return str(e)
    return None


class FileParser:
    """The shared reader; a subclass names the kind of file and its error."""

    KIND: ClassVar[str]  # for messages: "search-space", "study"
    EXAMPLE: ClassVar[str]  # a shipped file to point at
    REQUIRED: ClassVar[tuple[str, str]]  # the two keys an empty file is told about
    TOP_LEVEL: ClassVar[tuple[str, ...]]
    ERROR: ClassVar[type[UserError]]

    def __init__(self, path: str | Path, cli: Sequence[str], edits: Sequence[str] = ()) -> None:
        self.where = str(path)
        self.path = Path(path).expanduser()
        self.cli = list(cli)
        self.edits = list(edits)
        self.leaves = leaf_fields()
        self.sections = {k.rsplit(".", i)[0] for k in self.leaves
                         for i in range(1, k.count(".") + 1)}

    # ---------------------------------------------------------------- errors and keys

    def fail(self, key: str, msg: str) -> UserError:
        return self.ERROR(f"{self.where}: {key}: {msg}" if key else f"{self.where}: {msg}")

    def check_keys(self, mapping: Mapping, allowed: Sequence[str], prefix: str = "",
                   what: str = "key", hint: str = "") -> None:
        """Each key of ``mapping`` must be in ``allowed``; else one message with the closest
        (and ``hint``, where the key may belong instead)."""
        for k in mapping:
            if k not in allowed:
                close = did_you_mean(str(k), list(allowed))
                more = f"; {hint}" if hint else ""
                raise self.fail(f"{prefix}{k}", f"unknown {what}{close} (allowed: "
                                                f"{', '.join(allowed)}{more})")

    def config_key(self, label: str, key: Any) -> tuple[Any, dict]:
        """Check that ``key`` names a config leaf; return its type and metadata."""
        if not isinstance(key, str):
            raise self.fail(label, f"keys must be dotted config keys; got {show(key)}")
        if key in self.sections:
            example = next(k for k in self.leaves if k.startswith(key + "."))
            raise self.fail(label, f"'{key}' is a config section, not a key; name one of its "
                                   f"keys, e.g. '{example}'")
        if key not in self.leaves:
            raise self.fail(label, f"unknown config key{did_you_mean(key, list(self.leaves))} "
                                   "(see `mllm4wtal config --explain`)")
        tp, f = self.leaves[key]
        return tp, dict(f.metadata)

    def section(self, raw: Mapping, name: str, model: type[S],
                context: Mapping[str, Any] | None = None) -> S:
        """The section ``name`` of the file validated by ``model`` (absent: its defaults);
        ``context`` is what the model's rules read (the base config, the experiment)."""
        value = raw.get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(name, f"must be a mapping with keys {', '.join(model.model_fields)}; "
                                  f"got {show(value)}")
        try:
            return model.model_validate(value, context=dict(context or {}))
        except ValidationError as e:
            key, msg = explain(model, first_error(e.errors()))
            raise self.fail(f"{name}.{key}" if key else name, msg) from None

    # ---------------------------------------------------------------- the file

    def read(self) -> dict:
        kind = self.KIND
        if not self.path.exists():
            raise self.fail("", f"{kind} file not found; pass the path of a YAML file, "
                                f"e.g. {self.EXAMPLE}")
        if not self.path.is_file():
            raise self.fail("", f"is not a file; pass the path of a {kind} YAML file")
        try:
            text = self.path.read_text()
        except UnicodeDecodeError:
            raise self.fail("", f"not a text file; pass a {kind} YAML file") from None
        raw = load_yaml(text, self.where, self.ERROR)
        first, second = self.REQUIRED
        if raw is None:
            raise self.fail("", f"is empty; it needs at least '{first}' and '{second}' (see "
                                f"{self.EXAMPLE})")
        if not isinstance(raw, dict):
            raise self.fail("", f"top level must be a mapping ({first}:, {second}:, ...); "
                                f"got a {type(raw).__name__}")
        return raw

    def apply_edits(self, raw: dict) -> dict:
        """``--space-set section.key=value``: changes of the file's own sections."""
        for item in self.edits:
            try:
                key, value = parse_override(item)
            except ConfigError as e:
                raise self.fail("", f"--space-set: {e}") from None
            head, _, leaf = key.partition(".")
            if head not in self.TOP_LEVEL or head in ("space", "variants", "overrides"):
                raise self.fail(key, "--space-set changes the file's own sections ("
                                     "trials, scheduler, searcher, resources, mlflow, storage, "
                                     "name, metric, mode); config keys go to --set")
            if not leaf:
                raw[head] = value
                continue
            section = raw.setdefault(head, {})
            if not isinstance(section, dict):
                raise self.fail(head, f"is not a mapping; cannot apply --space-set {item}")
            section[leaf] = value
        return raw

    def read_head(self) -> tuple[dict, str, str]:
        """The file with its --space-set edits, its top-level keys checked, its name and
        description."""
        raw = self.apply_edits(self.read())
        self.check_keys(raw, self.TOP_LEVEL, what="top-level key")
        description = raw.get("description") or ""
        if not isinstance(description, str):
            raise self.fail("description", "must be text")
        name = raw.get("name", self.path.stem)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise self.fail("name", f"{show(name)} is not a valid experiment name; use "
                                    "letters, digits, '.', '_' and '-' (it names a folder)")
        return raw, name, description

    # ---------------------------------------------------------------- the base config

    def parse_overrides(self, raw: Mapping) -> tuple[dict[str, Any], dict[str, Any]]:
        """The file's ``overrides`` and the ``--set`` ones, flat, their keys checked."""
        tree = raw.get("overrides")
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise self.fail("overrides", "must be a mapping of config keys to values, e.g. "
                                         "{train.iterations: 600}")
        file_ovr = flatten(tree)
        for key in file_ovr:
            self.config_key(f"overrides.{key}", key)
        cli_ovr: dict[str, Any] = {}
        for item in self.cli:
            try:
                key, value = parse_override(item)
            except ConfigError as e:
                raise self.fail("--set", str(e)) from None
            self.config_key(f"--set {key}", key)
            cli_ovr[key] = value
        return file_ovr, cli_ovr

    def build_base(self, base: Any, file_ovr: dict, cli_ovr: dict, runs: bool = True
                   ) -> Config:
        """``base`` (a preset or a config YAML next to the file) with the overrides; a
        failure names ``base`` or ``overrides``, whichever is at fault. ``runs``: trials run
        this config (a sweep's base; a study's cells run its variants, checked each), so it
        is also checked with :func:`config_problem`."""
        if base is None:
            raise self.fail("base", f"missing; name a preset ({', '.join(PRESETS)}) or a "
                                    "config YAML")
        if not isinstance(base, str) or not base.strip():
            raise self.fail("base", f"must name a preset ({', '.join(PRESETS)}) or a config "
                                    f"YAML; got {show(base)}")
        source = base
        if base not in PRESETS:
            p = Path(base).expanduser()
            if not p.is_absolute():
                p = self.path.parent / p
            if not p.is_file():
                raise self.fail("base", f"'{base}' is neither a preset ({', '.join(PRESETS)}) "
                                        f"nor a YAML file (looked for {p})")
            source = str(p)
        where = "overrides" + (" and --set" if cli_ovr else "")
        try:
            cfg = load_config(source, {**file_ovr, **cli_ovr})
        except ConfigError:
            pass  # find out whether the base or the overrides are at fault
        else:
            if runs and config_problem(cfg) is not None:
                alone = load_config(source) if file_ovr or cli_ovr else cfg
                self.check_config(cfg, "base" if config_problem(alone) else where)
            return cfg
        try:
            flat = to_flat(load_config(source))
        except ConfigError as e:
            raise self.fail("base", str(e)) from None
        try:
            from_flat({**flat, **file_ovr, **cli_ovr}, where=f"{self.where}: {where}")
        except ConfigError as e:
            raise self.ERROR(str(e)) from None
        raise AssertionError("unreachable: the config loaded the second time")

    def check_config(self, cfg: Config, label: str, prefix: str = "") -> None:
        """Raise the file's error at ``label`` when :func:`config_problem` finds one."""
        problem = config_problem(cfg)
        if problem is not None:
            raise self.fail(label, prefix + problem)

    def variant(self, base: Config, flat: Mapping[str, Any], label: str) -> Config:
        """``base`` with already range-checked values set, checked as a trial's config
        (``dataclasses.replace``: far cheaper than a full ``from_flat``)."""
        cfg = base
        prefix = f"{show(dict(flat))} breaks the base config: "
        try:
            for key, value in flat.items():
                tp = self.leaves[key][0]
                cfg = _replace(cfg, key, float(value) if tp is float else value)
            check_cross_fields(cfg, "config")
        except (ConfigError, ValueError) as e:
            raise self.fail(label, prefix + str(e).removeprefix("config: ")) from None
        self.check_config(cfg, label, prefix)
        return cfg

    # ---------------------------------------------------------------- run settings

    def parse_resources(self, raw: Mapping, cfg: Config) -> ResourcesSpec:
        return self.section(raw, "resources", ResourcesSpec, {"config": cfg})

    def parse_storage(self, raw: Mapping, name: str) -> tuple[str, str]:
        """``(storage path, experiment directory)``."""
        return self.section(raw, "storage", StorageSpec).locate(name)

    def parse_mlflow(self, raw: Mapping, name: str, storage_path: str) -> MlflowSpec:
        return self.section(raw, "mlflow", MlflowSpec,
                            {"name": name, "storage_path": storage_path})


def _replace(node: Any, key: str, value: Any) -> Any:
    head, _, rest = key.partition(".")
    if rest:
        value = _replace(getattr(node, head), rest, value)
    return dataclasses.replace(node, **{head: value})


__all__ = ["FileParser", "DATASET_KEYS", "NAME_RE", "is_dataset_key", "config_problem"]

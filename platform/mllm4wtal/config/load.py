"""Loading, validating and writing configs: presets, YAML files and dotted overrides.

A config is a tree of frozen dataclasses (``config.schema``). Every leaf field carries ``metadata``:
``help`` (shown by ``mllm4wtal config --explain``), and optionally ``min``/``max``
(inclusive bounds) or ``choices``. Presets (``synthetic``, ``thumos14``,
``activitynet12``) are YAML files shipped in ``mllm4wtal/presets/``; a user YAML
may start from one with ``base: <preset or path>``.

Values a user can get wrong end in one :class:`ConfigError` that names the key,
the allowed values and, for a typo, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mllm4wtal.config.schema import PRESETS, Config
from mllm4wtal.config.show import shown
from mllm4wtal.errors import UserError


class ConfigError(UserError):
    """A user-facing configuration error (bad key, type, range or file)."""


# --------------------------------------------------------------------------- introspection


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def leaf_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every leaf as ``dotted key -> (type, dataclasses.Field)``, in declaration order."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            out.update(leaf_fields(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (tp, f)
    return out


def _sections(cls: type = Config, prefix: str = "") -> set[str]:
    out = set()
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            out.add(prefix + f.name)
            out |= _sections(tp, f"{prefix}{f.name}.")
    return out


def did_you_mean(key: str, valid: list[str]) -> str:
    tail = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in valid if k.rsplit(".", 1)[-1] == tail]  # right leaf, wrong section
    close = same_leaf[:1] or difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _hint(key: Any, valid: list[str]) -> str:
    return did_you_mean(key, valid) if isinstance(key, str) else ""


def describe_allowed(tp: Any, meta: dict) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    kind = _type_name(tp)
    if "valid" in meta:
        return f"{kind} {meta['valid'][1]}"
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} >= {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, meta: dict, value: Any, where: str) -> Any:
    """Check one leaf value against its type and metadata; return the typed value."""
    allowed = describe_allowed(tp, meta)
    bad = ConfigError(f"{where}: '{key}' = {shown(value)} is invalid; expected {allowed}")
    if typing.get_origin(tp) is tuple:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise bad
        elem = typing.get_args(tp)[0]
        return tuple(_coerce(key, elem, meta, v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad
    elif tp is float:
        if isinstance(value, str):  # PyYAML reads 5e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            raise bad from None
        if not math.isfinite(value):
            raise bad
    elif tp is str:
        if not isinstance(value, str):
            raise bad
    if "choices" in meta and value not in meta["choices"]:
        raise bad
    if "min" in meta and value < meta["min"]:
        raise bad
    if "max" in meta and value > meta["max"]:
        raise bad
    if "valid" in meta and not meta["valid"][0](value):
        raise bad
    return value


# --------------------------------------------------------------------------- building


def _merge(tree: dict, update: dict) -> dict:
    out = dict(tree)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the one dotted-key flattening of the project
    (config files, search-space overrides, MLflow params). Empty mappings add no key."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _build(cls: type, values: dict[str, Any], prefix: str, where: str) -> Any:
    kwargs = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if _is_section(tp):
            kwargs[f.name] = _build(tp, values, key + ".", where)
        elif key in values:
            kwargs[f.name] = _coerce(key, tp, dict(f.metadata), values[key], where)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own cross-field check (e.g. SyntheticConfig)
        raise ConfigError(f"{where}: section '{prefix.rstrip('.')}': {e}") from None


def from_flat(flat: dict[str, Any], where: str = "config") -> Config:
    """Build and validate a Config from ``{"a.b": value}``; missing keys keep defaults."""
    leaves = leaf_fields()
    valid = list(leaves)
    sections = _sections()
    for key in flat:
        if key in sections:
            raise ConfigError(f"{where}: '{key}' is a section, not a value; set one of its keys, "
                              f"e.g. '{next(k for k in valid if k.startswith(key + '.'))}'")
        if key not in leaves:
            raise ConfigError(f"{where}: unknown key {shown(key)}{_hint(key, valid)}")
    cfg = _build(Config, flat, "", where)
    check_cross_fields(cfg, where)
    return cfg


def check_cross_fields(cfg: Config, where: str) -> None:
    if cfg.data.format != "synthetic" and cfg.data.rgb_dim >= cfg.data.feature_dim:
        raise ConfigError(f"{where}: 'data.rgb_dim' = {cfg.data.rgb_dim} must be smaller than "
                          f"'data.feature_dim' = {cfg.data.feature_dim} (flow is the rest)")
    if cfg.loc_head.bg_threshold > cfg.loc_head.fg_threshold:
        raise ConfigError(f"{where}: 'loc_head.bg_threshold' = {cfg.loc_head.bg_threshold} must "
                          f"not exceed 'loc_head.fg_threshold' = {cfg.loc_head.fg_threshold}")
    if cfg.dpid.delta_l > cfg.dpid.delta_h:
        raise ConfigError(f"{where}: 'dpid.delta_l' = {cfg.dpid.delta_l} must not exceed "
                          f"'dpid.delta_h' = {cfg.dpid.delta_h}")


def to_flat(cfg: Any) -> dict[str, Any]:
    """The config as ``{"a.b": value}`` (tuples as lists); ``from_flat`` inverts it."""
    flat: dict[str, Any] = {}
    for key in leaf_fields(type(cfg)):
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def to_tree(cfg: Config) -> dict:
    """The config as nested dicts, as written to YAML."""
    tree: dict = {}
    for key, value in to_flat(cfg).items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def parse_override(item: str) -> tuple[str, Any]:
    """``"loss.lambda1=2.0"`` -> ``("loss.lambda1", 2.0)``; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {shown(item)} must look like key=value, e.g. "
                          "loss.lambda1=2.0")
    key, raw = item.split("=", 1)
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if value is None:
        value = ""
    return key.strip(), value


# --------------------------------------------------------------------------- YAML


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {shown(key)}")
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """SafeLoader (plain data only) that reads ``5e-4`` as a float (YAML 1.2) and rejects
    duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # unhashable key: let the base class complain
                pass
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    """The project's one YAML reader (config, search-space and study files, ``--set``
    values): safe, ``5e-4`` is a float, a duplicate key raises ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(text: str, where: str, error: type[UserError] = ConfigError) -> Any:
    """:func:`parse_yaml`, with every failure one ``error`` naming ``where`` (and the line of
    a duplicate key)."""
    try:
        return parse_yaml(text)
    except _DuplicateKey as e:
        raise error(f"{where}: line {e.line}: duplicate key {shown(e.key)}; keep one") from None
    except yaml.YAMLError as e:  # syntax: where it is, on one line
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{where}: not valid YAML{at}: {problem}; fix the syntax") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to read; flatten the YAML") from None


def _preset_text(name: str) -> str:
    return resources.files("mllm4wtal").joinpath("presets", f"{name}.yaml").read_text()


def _user_path(source: str) -> Path:
    try:
        return Path(source).expanduser()
    except RuntimeError:  # ~name of no known user: the path as written
        return Path(source)


def _read_yaml(source: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """Flat values of a preset or YAML file, with its ``base:`` chain resolved."""
    if source in PRESETS:
        text, where = _preset_text(source), f"preset '{source}'"
    else:
        path = _user_path(source)
        if path.is_dir():
            raise ConfigError(f"config {source!r} is a directory; pass a preset "
                              f"({', '.join(PRESETS)}) or a YAML file")
        if not path.is_file():
            raise ConfigError(f"config {source!r} is neither a preset ({', '.join(PRESETS)}) "
                              "nor an existing YAML file")
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}); save the config as "
                              "UTF-8 YAML") from None
        except OSError as e:
            raise ConfigError(f"{where}: cannot be read ({e.strerror}); check its "
                              "permissions") from None
    if source in seen:
        raise ConfigError(f"{where}: 'base' chain loops: {' -> '.join(seen + (source,))}")
    tree = load_yaml(text, where) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    base = tree.pop("base", None)
    flat = flatten(tree)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{where}: 'base' must name a preset or a YAML file")
        if base not in PRESETS and not Path(base).is_absolute() and source not in PRESETS:
            base = str(_user_path(source).parent / base)
        parent, _ = _read_yaml(base, seen + (source,))
        flat = {**parent, **flat}
    leaves, sections = leaf_fields(), _sections()
    for key in flat:  # name the file that holds a bad key
        if key in sections:
            raise ConfigError(f"{where}: '{key}' is a section; give it a mapping of its keys "
                              "(or leave it out)")
        if key not in leaves:
            raise ConfigError(f"{where}: unknown key {shown(key)}{_hint(key, list(leaves))}")
    return flat, where


def load_config(source: str = "synthetic", overrides: list[str] | dict[str, Any] | None = None
                ) -> Config:
    """A preset name or YAML path, then dotted overrides (``["loss.lambda1=2.0"]`` or a dict)."""
    flat, where = _read_yaml(source)
    if isinstance(overrides, dict):
        extra = dict(overrides)
    else:
        extra = dict(parse_override(o) for o in overrides or [])
    if extra:
        where = f"{where} with overrides"
    return from_flat({**flat, **extra}, where=where)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_tree(cfg), sort_keys=False))


def with_overrides(cfg: Config, dotted: dict[str, Any]) -> Config:
    """A validated copy with dotted keys changed: ``with_overrides(cfg, {"loss.lambda1": 2.0})``."""
    return from_flat({**to_flat(cfg), **dotted}, where="config")


def explain() -> str:
    """One line per key: dotted name, default, allowed values, help."""
    lines = []
    defaults = to_flat(Config())
    for key, (tp, f) in leaf_fields().items():
        meta = dict(f.metadata)
        lines.append(f"{key:34s} {defaults[key]!r:>14}  {describe_allowed(tp, meta):28s} "
                     f"{meta.get('help', '')}")
    return "\n".join(lines)

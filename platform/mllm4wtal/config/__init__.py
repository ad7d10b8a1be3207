"""Typed configuration tree (``schema``), presets, YAML files and dotted overrides
(``load``). Import from here: ``from mllm4wtal.config import Config, load_config``."""

from mllm4wtal.config.load import (
    ConfigError,
    check_cross_fields,
    describe_allowed,
    did_you_mean,
    explain,
    flatten,
    from_flat,
    leaf_fields,
    load_config,
    load_yaml,
    parse_override,
    parse_yaml,
    save_config,
    to_flat,
    to_tree,
    with_overrides,
)
from mllm4wtal.config.schema import (
    PRESETS,
    Config,
    CSRConfig,
    DataConfig,
    DPIDConfig,
    EvalConfig,
    InferenceConfig,
    KSMConfig,
    LocHeadConfig,
    LossConfig,
    ModelConfig,
    SyntheticConfig,
    TextConfig,
    TrainConfig,
)

__all__ = [
    "Config", "ConfigError", "DataConfig", "TextConfig", "ModelConfig", "KSMConfig", "CSRConfig",
    "LocHeadConfig", "LossConfig", "DPIDConfig", "TrainConfig", "InferenceConfig", "EvalConfig",
    "SyntheticConfig", "PRESETS", "load_config", "from_flat", "to_flat", "to_tree",
    "save_config", "with_overrides", "parse_override", "leaf_fields", "explain", "flatten",
    "parse_yaml", "load_yaml", "check_cross_fields", "describe_allowed", "did_you_mean",
]

"""MLLM4WTAL: MLLM-guided weakly-supervised temporal action localization, and its sweeps."""

__version__ = "0.1.0"

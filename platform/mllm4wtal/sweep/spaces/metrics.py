"""The metrics a sweep may optimise: what every evaluation report of a training run carries."""

from __future__ import annotations

from typing import Literal

from mllm4wtal.config import Config
from mllm4wtal.evaluation.detection import average_metric_name, tiou_key
from mllm4wtal.train.dpid import loss_names


def reported_metrics(cfg: Config) -> set[str]:
    """The names every evaluation report of a training run with ``cfg`` carries, as far as
    a sweep may use them as its metric.

    ``map/<tIoU>`` per ``eval.tious`` and their mean ``map/avg_<min>-<max>``
    (``DetectionResult.flat_metrics``), ``iteration``, ``lr`` and the DPID losses of the
    first report's step (:func:`mllm4wtal.train.dpid.loss_names`; the CSR side's losses
    appear only when it trains from the first report on, i.e. ``dpid.warmup_iterations`` <
    the first report's iteration). The base model's own regularisers (``loss/norm``,
    ``loss/guide``, ... of ``model.base``) are reported too but are left out here: they differ
    per base model and are no sweep objective.
    """
    tious = cfg.eval.tious
    names = {f"map/{tiou_key(t)}" for t in tious} | {average_metric_name(tious)}
    names |= {"iteration", "lr"}
    first_report = min(cfg.train.eval_interval, cfg.train.iterations)
    return names | loss_names(cfg, first_report - 1)  # a report follows its step


def metric_mode(metric: str) -> Literal["min", "max"] | None:
    """The only sensible mode of a metric: max for ``map/*``, min for ``loss/*``."""
    if metric.startswith("map/"):
        return "max"
    if metric.startswith("loss/"):
        return "min"
    return None


__all__ = ["reported_metrics", "metric_mode"]

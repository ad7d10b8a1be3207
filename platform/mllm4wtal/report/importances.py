"""A sweep's parameter importances, with what they rest on (``param_importances.json`` and
``param_importances.png``).

The numbers are Optuna's PED-ANOVA (``optuna.importance.PedAnovaImportanceEvaluator``, its
default evaluator) over the study's COMPLETE trials. It assesses a conditional parameter
(e.g. ``csr.gamma1``, sampled only when its parent branch is chosen) on the trials that
sampled it; Optuna's other evaluators (fANOVA, MDI) drop every parameter that is not in all
trials. Whatever is not assessed is listed with the reason (``left_out``), and the result
says how many trials it rests on, with a ``caveat`` when they are few: ASHA sweeps complete
few trials, and pruned ones do not count.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

from mllm4wtal.sweep.mlflow_names import truncate

#: fewer completed trials than this: the importances get a caveat
MIN_TRIALS = 10
METHOD = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"


def _complete(study: Any) -> tuple[list[Any], Counter[str]]:
    """The COMPLETE trials with a finite value, and how many of each other state there are."""
    import optuna

    done, others = [], Counter[str]()
    for t in study.get_trials(deepcopy=False):
        if (t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)):
            done.append(t)
        else:
            others[t.state.name.lower()] += 1
    return done, others


def _left_out(complete: list[Any]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Parameters to assess, those left out (with why) and the conditional ones (with how
    many trials sampled them)."""
    n = len(complete)
    keys = sorted({k for t in complete for k in t.params})
    assess, left, conditional = [], {}, {}
    for key in keys:
        values = [t.params[key] for t in complete if key in t.params]
        if len(values) < n:
            conditional[key] = f"sampled in {len(values)} of the {n} completed trials"
        if len(values) < 2:
            left[key] = (f"sampled in only {len(values)} of the {n} completed trials; "
                         "an importance needs 2 or more")
        elif len({repr(v) for v in values}) == 1:
            left[key] = f"the same value ({values[0]!r}) in every completed trial that sampled it"
        else:
            assess.append(key)
    return assess, left, conditional


def param_importances(study: Any) -> dict[str, Any]:
    """The importances of ``study``'s parameters (see the module docstring): ``importances``
    (name -> share, summing to 1), ``n_trials`` (the completed trials they rest on),
    ``not_counted`` (trials of other states), ``conditional``, ``left_out``, ``caveat``
    (when there is one) and ``note`` (when there are no importances)."""
    if study is None:
        return {"importances": {}, "n_trials": 0,
                "note": "no Optuna study (e.g. a grid or an ablation)"}
    import optuna

    complete, others = _complete(study)
    n = len(complete)
    out: dict[str, Any] = {"method": METHOD, "n_trials": n, "not_counted": dict(others),
                           "importances": {}, "conditional": {}, "left_out": {}}
    caveats = []
    if n < MIN_TRIALS:
        caveats.append(f"rests on only {n} completed trial(s) (fewer than {MIN_TRIALS}): "
                       "a hint, not a finding")
        if others:
            caveats.append(", ".join(f"{c} {s}" for s, c in sorted(others.items()))
                           + " trial(s) not counted: importances use completed trials only")
    if caveats:
        out["caveat"] = "; ".join(caveats)
    if n < 2:
        out["note"] = (f"{n} completed trial(s); importances need at least 2 completed trials "
                       "with varying parameters")
        return out
    assess, out["left_out"], conditional = _left_out(complete)
    if not assess:
        out["note"] = "no parameter varied across the completed trials"
        return out
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                params=assess)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        out["note"] = f"importances not computable: {e}"
        return out
    for key in assess:
        if key not in imp:
            out["left_out"][key] = "not assessed by Optuna's evaluator"
    out["importances"] = {k: float(v) for k, v in imp.items()}
    out["conditional"] = {k: v for k, v in conditional.items() if k in imp}
    said = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
    if said:  # e.g. PED-ANOVA: a parameter with too few trials in one of its regimes
        out["caveat"] = "; ".join([*caveats, *(f"Optuna: {s}" for s in said)])
    return out


def plot_importances(importances: dict[str, Any], label: str) -> Any:
    """The importances of ``param_importances`` as horizontal bars, most important on top
    (conditional parameters hatched, with how many trials sampled them), the number of trials
    in the title, the caveat and what was left out under it; where there are none, the note
    saying why. Returns the matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    imp = importances.get("importances") or {}
    left = importances.get("left_out") or {}
    conditional = importances.get("conditional") or {}
    n = int(importances.get("n_trials") or 0)
    method = str(importances.get("method", METHOD))
    foot = [f"left out: {k} ({why})" for k, why in sorted(left.items())]
    if importances.get("caveat"):
        foot.insert(0, f"caveat: {importances['caveat']}")
    fig = Figure(figsize=(7.5, 1.6 + 0.35 * len(imp) + 0.22 * len(foot)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(f"parameter importances for {label}, from {n} trials\n"
                 f"(completed trials only; Optuna's {method.split(' (')[0]})", fontsize=9)
    if not imp:
        ax.text(0.5, 0.5, importances.get("note", "no importances"), ha="center", va="center",
                wrap=True, fontsize=9)
        ax.set_axis_off()
    else:
        names = sorted(imp, key=lambda k: imp[k])  # barh draws bottom-up
        bars = ax.barh(range(len(names)), [imp[k] for k in names], color="tab:blue")
        for bar, key in zip(bars, names, strict=True):
            bar.set_gid(key)
            if key in conditional:
                bar.set_hatch("//")
                bar.set_facecolor("tab:cyan")
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                    f" {imp[key]:.2f}", va="center", fontsize=8)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{k}\n({conditional[k]})" if k in conditional else k
                            for k in names], fontsize=8)
        ax.set_xlim(0, max(1.0, max(imp.values()) * 1.15))
        ax.set_xlabel("share of the importance (sums to 1)", fontsize=8)
    if foot:
        fig.text(0.01, 0.01, "\n".join(truncate(f, 140) for f in foot), fontsize=7,
                 ha="left", va="bottom", color="firebrick")
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, min(0.6, (0.1 + 0.14 * len(foot)) / height) if foot else 0, 1, 1))
    return fig


__all__ = ["param_importances", "plot_importances", "MIN_TRIALS", "METHOD"]

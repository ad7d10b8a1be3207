"""The Optuna searcher of a sweep (``sweep.search``): ASHA-stopped trials are PRUNED in the
Optuna study, intermediate values sit at training iterations, and the one adapter to Ray's
private ``OptunaSearch`` state refuses a Ray it was not tested with. No Ray cluster: the
searcher is driven by hand as Tune would drive it."""

from __future__ import annotations

import optuna
import pytest
import ray
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import TESTED_RAY, check_ray_version
from mllm4wtal.sweep.search import OptunaSearchState, PruningAwareOptunaSearch

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(trial) -> dict:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def _searcher(storage: optuna.storages.BaseStorage) -> PruningAwareOptunaSearch:
    return PruningAwareOptunaSearch(
        space=_space, metric="m", mode="max", study_name="s", storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=0), total_iterations=10)


def test_the_installed_ray_is_the_tested_one():
    check_ray_version()
    assert ray.__version__.startswith(TESTED_RAY + ".")


@pytest.mark.parametrize("version", [TESTED_RAY + ".0", TESTED_RAY + ".7", TESTED_RAY])
def test_tested_series_accepted(version):
    check_ray_version(version)


@pytest.mark.parametrize("version", ["2.61.0", "2.6.0", TESTED_RAY + "0.1", "3.0.0"])
def test_untested_ray_refused_with_what_to_do(version):
    with pytest.raises(UserError, match=rf"Ray {version} is installed; install the tested Ray "
                                        r"\(pip install 'ray\[tune,default\]=="):
        check_ray_version(version)


def test_searcher_refuses_an_untested_ray_before_any_trial(monkeypatch):
    monkeypatch.setattr(ray, "__version__", "2.99.0")
    with pytest.raises(UserError, match=r"internals of Ray 2\.60\.x \(.*OptunaSearch's state.*\), "
                                        r"and Ray 2\.99\.0 is installed"):
        _searcher(optuna.storages.InMemoryStorage())
    with pytest.raises(UserError, match="Ray 2.99.0 is installed"):
        OptunaSearchState(object())  # type: ignore[arg-type]


def test_pruned_and_completed_trials_in_the_study():
    storage = optuna.storages.InMemoryStorage()
    searcher = _searcher(storage)
    for tid in ("a", "b", "c"):
        assert set(searcher.suggest(tid)) == {"x"}
    for it in (5, 5, 10):  # a resumed trial repeats iteration 5: reported once
        searcher.on_trial_result("b", {"m": it / 10, "iteration": it})
    searcher.on_trial_result("a", {"m": 0.2, "iteration": 5})
    searcher.on_trial_complete("a", {"m": 0.3, "iteration": 6})  # stopped by ASHA
    searcher.on_trial_complete("b", {"m": 1.0, "iteration": 10})  # ran to the end
    searcher.on_trial_complete("c", None, error=True)
    searcher.on_trial_complete("a", {"m": 0.9, "iteration": 10})  # told once only
    searcher.on_trial_result("a", {"m": 0.9, "iteration": 8})
    trials = optuna.load_study(study_name="s", storage=storage).trials
    a, b, c = trials
    assert a.state == optuna.trial.TrialState.PRUNED
    assert a.user_attrs == {"pruned_at_iteration": 6}
    assert a.intermediate_values == {5: 0.2, 6: 0.3}
    assert b.state == optuna.trial.TrialState.COMPLETE and b.value == 1.0
    assert b.intermediate_values == {5: 0.5, 10: 1.0}
    assert c.state == optuna.trial.TrialState.FAIL


def test_state_adapter_reads_the_searcher():
    searcher = _searcher(optuna.storages.InMemoryStorage())
    searcher.suggest("t")
    state = OptunaSearchState(searcher)
    assert not state.finished("t")
    assert isinstance(state.trial("t"), optuna.Trial)
    state.tell_pruned("t", 4)
    assert state.finished("t")
    assert state.trial("t").user_attrs == {"pruned_at_iteration": 4}

"""The backend contract (``tuner/backends/_base.py``), run against every backend: whichever engine
chooses the values, each trial lands in the Optuna study with its parameters, learning curve, state
and attributes, nothing is left RUNNING, the budget counts the same, failures stop the search the
same way, and the best ``keep`` models are kept.

The space is ``tiny`` (``conftest.tiny_space``): one Dense layer that really trains in about a
second, so the whole trial runner runs; the spaces' own models are trained in test_search.py and
test_keras_tuner.py.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tuner._names import BACKENDS
from tuner._names import SAMPLER_NEEDS
from tuner._names import SAMPLERS
from tuner.training._training import TrialResult

RESULT_ATTRS = set(TrialResult(value=0.0, best_epoch=1, epochs=1, train_seconds=0.0, params=1, best_logs={},
                               test_loss=0.0, test_accuracy=0.0).attrs())
RECIPE_ATTRS = {"batch_size", "augment", "precision", "patience", "max_epochs", "label_smoothing", "seed"}


@pytest.fixture(params=BACKENDS)
def backend(request, tiny_space) -> str:
    return request.param


def run(backend: str, url: str, **kwargs) -> optuna.Study:
    """A small search on either backend: Optuna with no pruner, Keras Tuner's random search, so
    every trial trains all its epochs on both."""
    engine = {"pruner": "none"} if backend == "optuna" else {"algorithm": "random"}
    settings = dict(trials=3, epochs=2, study="contract", storage=url, backend=backend, keep=0, patience=None,
                    **engine)
    return tuner.search("tiny", "digits", **{**settings, **kwargs})


def test_every_trial_lands_in_the_study_with_its_curve_and_attributes(backend, sqlite_url):
    study = run(backend, sqlite_url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    n = study.user_attrs["splits"]["train"]  # a report's step counts training images
    for trial in trials:
        assert set(trial.intermediate_values) == {n, 2 * n}
        assert trial.value == max(trial.intermediate_values.values()) == trial.user_attrs["val_accuracy"]
        assert {"units", "learning_rate", "optimizer"} <= set(trial.params)
        assert RESULT_ATTRS | RECIPE_ATTRS <= set(trial.user_attrs)
        assert trial.user_attrs["epochs"] == 2 and 0 <= trial.user_attrs["test_accuracy"] <= 1
    assert max(t.user_attrs["test_accuracy"] for t in trials) > 0.3  # it learns: chance is 0.1
    # Each trial's weights had their own seed, recorded on the trial (a worker's derived seed too).
    assert len({t.user_attrs["seed"] for t in trials}) == 3
    assert study.user_attrs["backend"] == backend and study.user_attrs["settings"]["seed"] == 0


def test_the_budget_counts_finished_trials_and_a_rerun_continues(backend, sqlite_url):
    assert len(run(backend, sqlite_url, trials=2).trials) == 2
    assert len(run(backend, sqlite_url, trials=2).trials) == 2  # spent: nothing added
    assert len(run(backend, sqlite_url, trials=3).trials) == 3


def test_failures_are_recorded_and_stop_the_search(backend, sqlite_url, monkeypatch):
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(tuner.TunerError, match="2 failed trials in a row; last error: ValueError: bad"):
        run(backend, sqlite_url, max_failures=2)
    trials = optuna.load_study(study_name="contract", storage=sqlite_url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["error"] == "ValueError: bad" for t in trials)


@pytest.mark.slow
def test_the_best_keep_models_are_kept(backend, sqlite_url, tmp_path):
    study = run(backend, sqlite_url, trials=4, keep=2)
    kept = [t for t in study.get_trials() if "model_artifact" in t.user_attrs]
    files = [p for p in (tmp_path / "tuner-artifacts").iterdir() if not p.name.startswith(".")]
    assert len(files) == 2 and {p.name for p in files} <= {t.user_attrs["model_artifact"] for t in kept}
    best_two = sorted(study.get_trials(), key=lambda t: (-t.value, t.number))[:2]
    assert [entry[0] for entry in study.user_attrs["kept_models"]] == [t.number for t in best_two]


# Trials each sampler proposes before its model of the study takes over (Optuna's defaults).
START_UP = {"tpe": 10, "gp": 10, "cmaes": 1, "nsga2": 50}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_listed_sampler_proposes_past_its_start_up_or_is_refused_naming_the_install(name):
    import importlib.util
    import math

    from search_spaces import get_space
    from tuner._request import SearchRequest
    from tuner.backends._optuna import OptunaHyperParameters
    from tuner.driver._search import make_sampler

    needs = SAMPLER_NEEDS.get(name)
    if needs is not None and importlib.util.find_spec(needs[0]) is None:
        with pytest.raises(tuner.TunerError, match=f"--sampler {name} needs {needs[0]}.*: pip install \\S"):
            SearchRequest(sampler=name).checked()
        return
    space = get_space("resnet")

    def objective(trial: optuna.Trial) -> float:  # no training: what is tested is the sampler's proposals
        values = space.declare(OptunaHyperParameters(trial))
        return -abs(math.log10(values["learning_rate"]) + 2.5) - values["dropout"]

    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed=0))
    study.optimize(objective, n_trials=START_UP.get(name, 0) + 2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * (START_UP.get(name, 0) + 2)


def test_a_sampler_whose_package_is_missing_is_refused_before_anything_is_created(tmp_path, monkeypatch, capsys):
    import importlib.util

    from tuner.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--sampler", "gp", "--trials", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sampler gp needs torch" in err and "pip install" in err
    assert list(tmp_path.iterdir()) == []  # no store, no cache, no artifacts

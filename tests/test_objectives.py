"""Budgets and Pareto fronts: ``--max-params`` / ``--max-latency-ms`` as constraints, several objectives
with their own pruning rule, and ``tuner best --pareto``."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import undeclared_attributes

import tuner
from tuner._objectives import cheaper_peers_better
from tuner._objectives import dominates
from tuner._objectives import pareto_front
from tuner._objectives import parse_count
from tuner._objectives import parse_objectives
from tuner.cli import main
from tuner.errors import TunerError


@pytest.mark.parametrize("text,count", [("250000", 250_000), ("250k", 250_000), ("1.5M", 1_500_000),
                                        (" 2g ", 2_000_000_000), (1200, 1200), (None, None)])
def test_counts_read_as_people_write_them(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["lots", "1.5.2k", "-3", "0", "10x"])
def test_a_count_that_is_not_one_is_refused(text):
    with pytest.raises(TunerError, match="--max-params"):
        parse_count(text)


def test_objectives_need_a_curve_and_distinct_names():
    assert parse_objectives("val_accuracy, latency_ms") == ("val_accuracy", "latency_ms")
    for text in ("param_count", "val_accuracy,val_accuracy", "val_accuracy,param_count,latency_ms,val_loss", ""):
        with pytest.raises(TunerError):
            parse_objectives(text)


def test_front_keeps_what_nothing_dominates():
    objectives = ("val_accuracy", "param_count")
    points = [(0, (0.90, 1000)), (1, (0.95, 5000)), (2, (0.89, 2000)), (3, (0.95, 5000)), (4, (0.80, 500))]
    assert pareto_front(points, objectives) == [0, 1, 3, 4]  # 2 is worse and bigger than 0; equal points stay
    assert dominates((0.9, 1000), (0.89, 2000), (1.0, -1.0)) and not dominates((0.9, 1000), (0.9, 1000), (1.0, -1.0))


def test_pruning_rule_stops_a_trial_only_for_cheaper_better_ones():
    cheap_and_good = [([0.9, 0.95], (100.0,))] * 3
    # Costlier and worse at epoch 1 than three cheaper trials: pruned.
    assert cheaper_peers_better(0.5, 1, (200.0,), cheap_and_good, maximize=True)
    # The cheapest trial is never pruned, however bad: it may be the front's low-cost end.
    assert not cheaper_peers_better(0.5, 1, (50.0,), cheap_and_good, maximize=True)
    # Better than the cheaper trials' median: goes on. Too few peers at that epoch: goes on.
    assert not cheaper_peers_better(0.96, 2, (200.0,), cheap_and_good, maximize=True)
    assert not cheaper_peers_better(0.5, 1, (200.0,), cheap_and_good[:2], maximize=True)
    # A loss is minimised; curves that did not reach the epoch, or are NaN there, do not count.
    assert cheaper_peers_better(2.0, 1, (200.0,), [([1.0], (1.0,))] * 3, maximize=False)
    assert not cheaper_peers_better(2.0, 2, (200.0,), [([1.0], (1.0,))] * 3 + [([1.0, None], (1.0,))],
                                    maximize=False)


@pytest.mark.slow
def test_max_params_rejects_before_training_and_the_best_is_within_budget(tiny_space, sqlite_url):
    """``tiny`` has 32, 16 or 8 hidden units: ~2.4k, ~1.2k, ~0.6k parameters on digits; 1.5k keeps two."""
    study = tuner.search(tiny_space, "digits", trials=4, epochs=2, storage=sqlite_url, study="budget",
                         max_params="1.5k", sampler="random", pruner="hyperband", seed=3)
    trials = study.get_trials(deepcopy=False)
    rejected = [t for t in trials if "rejected" in t.user_attrs]
    trained = [t for t in trials if "rejected" not in t.user_attrs]
    assert rejected, "the sampler proposed no configuration over budget: choose another seed"
    for t in rejected:  # never trained, recorded as over budget
        assert t.state == optuna.trial.TrialState.PRUNED and t.params["units"] == 32
        assert t.user_attrs["param_count"] > 1500 and "epochs" not in t.user_attrs and t.constraints["param_count"] > 0
    assert len([t for t in trained if t.state.is_finished()]) == 4  # rejected ones do not count as trials
    assert all(t.user_attrs["param_count"] <= 1500 and t.constraints["param_count"] <= 0 for t in trained)
    best = tuner.best_trial("budget", sqlite_url)
    assert best["param_count"] <= 1500 and best["feasible"] is True
    assert best["latency_ms"] > 0 and best["model_bytes"] > 1000


@pytest.mark.slow
def test_two_objectives_store_a_front_with_pruned_trials_and_best_lists_it(tiny_space, sqlite_url, capsys):
    study = tuner.search(tiny_space, "digits", trials=8, epochs=3, storage=sqlite_url, study="front",
                         objective="val_accuracy,param_count", seed=2, keep=3, patience=0)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.PRUNED in states, "the multi-objective rule pruned nothing"
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert main(["best", "--study", "front", "--storage", sqlite_url, "--pareto", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["objectives"] == ["val_accuracy", "param_count"] and len(found["front"]) >= 2
    for point in found["front"]:  # no other trial dominates a listed point
        assert not any(t.values[0] >= point["val_accuracy"] and t.values[1] <= point["param_count"]
                       and tuple(t.values) != (point["val_accuracy"], point["param_count"]) for t in complete)
    # The kept models are the front's: a point's model is there to export.
    assert {p["number"] for p in found["front"] if p["kept"]} == {p["number"] for p in found["front"]}
    assert main(["best", "--study", "front", "--storage", sqlite_url]) == 0  # the front by default
    assert "Pareto front" in capsys.readouterr().out
    assert undeclared_attributes(study) == []  # curves and constraints included
    assert main(["export", "--study", "front", "--storage", sqlite_url, "--output", "m.keras"]) == 2
    assert "choose a point of its front with --trial N" in capsys.readouterr().err
    point = found["front"][-1]["number"]
    assert main(["export", "--study", "front", "--storage", sqlite_url, "--trial", str(point),
                 "--output", "m.keras"]) == 0


def test_pareto_of_a_single_objective_study_weighs_its_objective_against_size(trained_study, capsys):
    assert main(["best", "--study", "d", "--storage", trained_study, "--pareto", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["objectives"][:2] == ["val_accuracy", "param_count"] and not found["multi_objective"]
    assert found["front"][0]["number"] == tuner.best_trial("d", trained_study)["number"]
    assert all(point["kept"] for point in found["front"])


def test_over_latency_budget_completes_infeasible_and_keeps_nothing(tiny_space, sqlite_url, tmp_path):
    study = tuner.search(tiny_space, "digits", trials=2, epochs=1, storage=sqlite_url, study="slow",
                         max_latency_ms=1e-6, keep=2)
    for t in study.get_trials(deepcopy=False):
        assert t.state == optuna.trial.TrialState.COMPLETE and t.constraints["latency_ms"] > 0
        assert "over --max-latency-ms" in t.user_attrs["over_budget"] and "model_artifact" not in t.user_attrs
    with pytest.raises(TunerError, match="no finished trial within its budgets"):
        tuner.best_trial("slow", sqlite_url)
    assert [p for p in (tmp_path / "tuner-artifacts").iterdir() if not p.name.startswith(".")] == []


def test_a_pareto_search_for_size_starts_from_both_ends():
    from search_spaces import get_space
    from tuner._request import SearchRequest
    from tuner.driver._search import first_trials

    specs = get_space("resnet").hyperparameters()
    single = first_trials(SearchRequest().checked(), specs)
    pareto = first_trials(SearchRequest(objective="val_accuracy,latency_ms").checked(), specs)
    assert single == pareto[:1] and single[0]["filters"] == 32
    sizes = {k: pareto[1][k] for k in ("depth", "filters", "kernel_size")}
    assert sizes == {"depth": 8, "filters": 16, "kernel_size": 3}
    assert pareto[1]["learning_rate"] == single[0]["learning_rate"]  # only size hyperparameters move

"""Reading studies back: the studies in a store, a study's trials, its best trial, as plain dicts."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner._objectives import DIRECTIONS
from tuner._objectives import pareto_front as front_of
from tuner._text import short
from tuner.attributes import KEPT_ATTR
from tuner.attributes import RETRAIN_ATTR
from tuner.errors import TunerError
from tuner.models._models import feasible
from tuner.models._models import ranked_trials


def _open(storage: str | None) -> optuna.storages.BaseStorage:
    from storage import open_storage

    return open_storage(storage, must_exist=True)


def load_study(name: str, storage: str | None = None) -> optuna.Study:
    """The study ``name``; an unknown name lists the studies the store has."""
    from storage import study_names

    store = _open(storage)
    names = study_names(store)
    if name not in names:
        known = ", ".join(names) if names else "none yet"
        raise TunerError(f"no study {name!r} in the store; studies: {known}")
    return optuna.load_study(study_name=name, storage=store)


def _number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as a JSON-ready dict: number, state, value, params, and what tuner measured."""
    duration = trial.duration.total_seconds() if trial.duration else None
    values = trial.values or []
    several = {"values": [_number(v) for v in values]} if len(values) > 1 else {}
    constraints = {"constraints": trial.constraints, "feasible": feasible(trial)} if trial.constraints else {}
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": _number(values[0]) if len(values) == 1 else None,
        **several,
        **constraints,
        "params": dict(trial.params),
        "duration_seconds": duration,
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        **{k: _number(v) if isinstance(v, float) else v for k, v in trial.user_attrs.items()},
    }


def list_trials(study: str, storage: str | None = None) -> list[dict[str, Any]]:
    """Every trial of ``study``, in order."""
    return [trial_record(t) for t in load_study(study, storage).get_trials(deepcopy=False)]


def best_trial(study: str, storage: str | None = None) -> dict[str, Any]:
    """The best finished trial of ``study``, with the study's description under ``"study"`` and each
    hyperparameter's importance under ``"importance"`` (None before 2 trials have finished), and its
    retrains (``tuner export --retrain --seeds K``) under ``"retrain_runs"``."""
    loaded = load_study(study, storage)
    if len(loaded.directions) > 1:
        raise TunerError(f"study {study!r} has several objectives ({loaded.user_attrs.get('objective')}): "
                         "it has a front, not one best trial; see tuner best --pareto")
    complete = loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TunerError(f"study {study!r} has no finished trial yet ({len(loaded.trials)} trials in all)")
    ranked = ranked_trials(loaded)
    if not ranked:
        raise TunerError(f"study {study!r} has no finished trial within its budgets "
                         f"({loaded.user_attrs.get('settings', {}).get('limits')})")
    record = trial_record(ranked[0])
    record["study"] = {"name": loaded.study_name, "direction": loaded.direction.name.lower(),
                       **loaded.user_attrs}
    record["retrain_runs"] = loaded.user_attrs.get(RETRAIN_ATTR, {}).get(str(record["number"]), [])
    found = importance_of(loaded)
    record["importance"] = None if found is None else {row["name"]: row["importance"]
                                                       for row in found["hyperparameters"]}
    return record


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """A summary of each study in the store: what it searched, how many trials, the best value."""
    store = _open(storage)
    rows = []
    for frozen in store.get_all_studies():
        trials = store.get_all_trials(store.get_study_id_from_name(frozen.study_name), deepcopy=False)
        counts = {state.name: 0 for state in TrialState}
        for t in trials:
            counts[t.state.name] += 1
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values and feasible(t)]
        best = None
        if complete and len(frozen.directions) == 1:
            pick = max if frozen.direction.name == "MAXIMIZE" else min
            best = pick(complete, key=lambda t: float(t.values[0]))
        attrs = frozen.user_attrs
        rows.append({
            "name": frozen.study_name,
            "space": attrs.get("space"),
            "dataset": attrs.get("dataset"),
            "backend": attrs.get("backend"),
            "objective": attrs.get("objective"),
            "direction": ",".join(d.name.lower() for d in frozen.directions),
            "trials": len(trials),
            "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"],
            "failed": counts["FAIL"],
            "running": counts["RUNNING"],
            "best_value": None if best is None else best.value,
            "best_trial": None if best is None else best.number,
        })
    return rows


# What a deployer compares, beside the objectives, in a front's table.
DEPLOY_METRICS = ("test_accuracy", "param_count", "model_bytes", "latency_ms")


def pareto(study: str, storage: str | None = None) -> dict[str, Any]:
    """The trade-offs a study found: its Pareto front, best first by its first objective.

    Of a multi-objective study, its own front (the feasible COMPLETE trials no other dominates).
    Of a single-objective study, the front of its objective against ``param_count`` (and
    ``latency_ms`` where every trial has it): the most accurate model is often many times larger
    than one a point below it. Each point gives its objectives, test accuracy, size, latency,
    whether its model was kept, and its trial number (``tuner export --trial N`` exports it).
    """
    return pareto_of(load_study(study, storage))


def pareto_of(loaded: optuna.Study) -> dict[str, Any]:
    """``pareto`` of a loaded study."""
    objectives = (loaded.metric_names or [loaded.user_attrs.get("objective", "val_accuracy")])
    trials = [t for t in loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    if len(loaded.directions) > 1:
        rows = [(t, dict(zip(objectives, t.values, strict=True))) for t in loaded.best_trials]
    else:
        objectives = [objectives[0], "param_count"]
        if trials and all("latency_ms" in t.user_attrs for t in trials):
            objectives.append("latency_ms")
        points = [(t.number, (t.values[0], *(t.user_attrs.get(m, math.inf) for m in objectives[1:])))
                  for t in trials]
        numbers, by_number = set(front_of(points, objectives)), dict(points)
        rows = [(t, dict(zip(objectives, by_number[t.number], strict=True))) for t in trials if t.number in numbers]
    kept = {entry[0] for entry in loaded.user_attrs.get(KEPT_ATTR, [])}
    sign = 1.0 if DIRECTIONS.get(objectives[0]) == "maximize" else -1.0
    rows.sort(key=lambda row: (-sign * row[1][objectives[0]], row[0].number))
    found = [{"number": t.number, **{k: int(v) if k == "param_count" else _number(v) for k, v in values.items()},
               **{m: _number(t.user_attrs.get(m)) for m in DEPLOY_METRICS if m not in values},
               "kept": t.number in kept} for t, values in rows]
    return {"study": loaded.study_name, "objectives": objectives, "multi_objective": len(loaded.directions) > 1,
            "finished_trials": len(trials), "front": found}


# The best values of a hyperparameter are those of the top quarter of the finished trials (at least 2).
TOP_FRACTION = 0.25
MIN_TOP = 2


def param_importance(study: str, storage: str | None = None) -> dict[str, Any]:
    """How much each hyperparameter mattered for the objective, over the finished trials.

    Importances come from Optuna's default evaluator (``optuna.importance.get_param_importances``,
    normalised to sum to 1; conditional hyperparameters count over the trials that used them).
    Each hyperparameter also gets the values the best trials took (``top_values``: ``low``/``high``
    for numbers, the distinct ``values`` otherwise, from the top quarter of the finished trials) and
    the best trial's value. Optuna's warning that there are too few trials to tell is kept as ``note``.
    """
    loaded = load_study(study, storage)
    found = importance_of(loaded)
    if found is None:
        finished = len(loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        raise TunerError(f"hyperparameter importance needs at least 2 finished trials; study {study!r} "
                         f"has {finished}")
    return found


def importance_of(loaded: optuna.Study) -> dict[str, Any] | None:
    """``param_importance`` of a loaded study; None with fewer than 2 finished trials."""
    import warnings

    ranked = ranked_trials(loaded)
    if len(ranked) < 2:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Of a multi-objective study, importance for its first objective.
        target = (lambda t: t.values[0]) if len(loaded.directions) > 1 else None
        importances = optuna.importance.get_param_importances(loaded, target=target)
    top = ranked[:max(MIN_TOP, math.ceil(TOP_FRACTION * len(ranked)))]
    rows = [{"name": name, "importance": float(value), "best_value": ranked[0].params.get(name),
             "top_values": _value_range([t.params[name] for t in top if name in t.params])}
            for name, value in importances.items()]
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return {"study": loaded.study_name, "finished_trials": len(ranked), "top_trials": len(top),
            "best_trial": ranked[0].number, "hyperparameters": rows, "note": " ".join(notes) or None}


def _value_range(values: list[Any]) -> dict[str, Any]:
    """``{"low", "high"}`` for numbers, else ``{"values"}`` (most frequent first)."""
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {"low": min(values), "high": max(values)}
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return {"values": sorted(counts, key=lambda v: -counts[v])}


def describe_values(top_values: dict[str, Any]) -> str:
    """``top_values`` as text: ``0.001..0.003`` or ``adam, sgd``."""
    if "low" in top_values:
        return f"{short(top_values['low'])}..{short(top_values['high'])}"
    return ", ".join(short(v) for v in top_values["values"])

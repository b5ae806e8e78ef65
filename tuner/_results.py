"""Reading studies back: the studies in a store, a study's trials, its best trial, as plain dicts."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.errors import TunerError


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
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": _number(trial.value),
        "params": dict(trial.params),
        "duration_seconds": duration,
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        **{k: _number(v) if isinstance(v, float) else v for k, v in trial.user_attrs.items()},
    }


def list_trials(study: str, storage: str | None = None) -> list[dict[str, Any]]:
    """Every trial of ``study``, in order."""
    return [trial_record(t) for t in load_study(study, storage).get_trials(deepcopy=False)]


def best_trial(study: str, storage: str | None = None) -> dict[str, Any]:
    """The best finished trial of ``study``, with the study's description under ``"study"``."""
    loaded = load_study(study, storage)
    complete = loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TunerError(f"study {study!r} has no finished trial yet ({len(loaded.trials)} trials in all)")
    record = trial_record(loaded.best_trial)
    record["study"] = {"name": loaded.study_name, "direction": loaded.direction.name.lower(),
                       **loaded.user_attrs}
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
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        best = None
        if complete:
            pick = max if frozen.direction.name == "MAXIMIZE" else min
            best = pick(complete, key=lambda t: float(t.value))  # type: ignore[arg-type]
        attrs = frozen.user_attrs
        rows.append({
            "name": frozen.study_name,
            "space": attrs.get("space"),
            "dataset": attrs.get("dataset"),
            "backend": attrs.get("backend"),
            "objective": attrs.get("objective"),
            "direction": frozen.direction.name.lower(),
            "trials": len(trials),
            "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"],
            "failed": counts["FAIL"],
            "running": counts["RUNNING"],
            "best_value": None if best is None else best.value,
            "best_trial": None if best is None else best.number,
        })
    return rows

"""Progress of a search on the terminal: the trial and its parameters, each epoch, the best so far."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from rich.console import Console


def format_params(params: Mapping[str, Any]) -> str:
    """``depth=20 learning_rate=0.00123 ...``, numbers shortened to 3 significant digits."""
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class SearchProgress:
    """Prints one line per trial start, epoch and trial end to stderr; silent when ``enabled`` is False."""

    def __init__(self, *, enabled: bool, objective: str, epochs: int, console: Console | None = None):
        self.enabled = enabled
        self.objective = objective
        self.epochs = epochs
        self.trial_epochs = epochs
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    # A trial is named by its Optuna number; a Keras Tuner trial by "kt-<its Keras Tuner id>" until it
    # is written to the study at its end, where both are shown.

    def trial_started(self, number: int | str, params: Mapping[str, Any], epochs: int | None = None) -> None:
        """``epochs``: what this trial will train, when a deadline gave it fewer than ``--epochs``."""
        self.trial_epochs = epochs or self.epochs
        planned = f"  ({epochs} epochs fit before the deadline)" if epochs and epochs < self.epochs else ""
        self.print(f"[bold]trial {number}[/bold]  {format_params(params)}{planned}")

    def epoch_ended(self, number: int | str, epoch: int, logs: Mapping[str, float]) -> None:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        self.print(f"  trial {number} epoch {epoch}/{self.trial_epochs}  {metrics}")

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        state = "SKIPPED" if "skipped" in attrs else trial.state.name
        value = "" if trial.value is None else f"{self.objective}={trial.value:.4f}  "
        why = attrs.get("error") or attrs.get("skipped") or (
            f"stopped by the {attrs['stopped_by']} after {attrs.get('epochs')} epochs"
            if "stopped_by" in attrs else "")
        reason = f"  ({why})" if why else ""
        kt_id = trial.user_attrs.get("kt_trial_id")
        name = f"{trial.number} (kt-{kt_id})" if kt_id is not None else str(trial.number)
        self.print(f"trial {name} {state}  {value}{self.best_text(study)}{reason}")

    def best_text(self, study: optuna.Study) -> str:
        best = best_trial(study)
        if best is None:
            return "no finished trial yet"
        return f"best {self.objective}={best.value:.4f} (trial {best.number})"


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial, or None while there is none."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    return best if best.value is not None and not math.isnan(best.value) else None

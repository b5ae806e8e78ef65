"""Progress of a search on the terminal: the trial and its parameters, each epoch, the best so far.

On a terminal a live view sits under those lines: the trial in flight with an epoch progress bar,
its metrics so far and the time left in the epoch; the study's finished, pruned and failed counts
and its best trial; the time the search has used and has left under ``--timeout``. Elsewhere (a
pipe, a CI log) the same events are plain lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tuner._text import short
from tuner.attributes import OVER_BUDGET_ATTR
from tuner.attributes import REJECTED_ATTR
from tuner.attributes import SKIPPED_ATTR


def format_params(params: Mapping[str, Any]) -> str:
    """``depth=20 learning_rate=0.00123 ...``, numbers shortened to 3 significant digits."""
    return " ".join(f"{k}={short(v, digits=3)}" for k, v in params.items())


class SearchProgress:
    """Prints one line per trial start, epoch and trial end to stderr; silent when ``enabled`` is False.

    ``live`` (default: whether stderr is a terminal) adds the live view; ``started`` and
    ``deadline`` (``time.time()`` values) are the search's, for the time used and left.
    """

    def __init__(self, *, enabled: bool, objective: str, epochs: int, console: Console | None = None,
                 live: bool | None = None, started: float | None = None, deadline: float | None = None):
        self.enabled = enabled
        self.objective = objective
        self.epochs = epochs
        self.trial_epochs = epochs
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.started = started if started is not None else time.time()
        self.deadline = deadline
        self.flight: dict[str, Any] = {}  # the trial in flight: name, epoch, step, steps, logs, times
        self.counts = {"finished": 0, "pruned": 0, "failed": 0}
        self.best = "no finished trial yet"
        self.live: Live | None = None
        if enabled and (self.console.is_terminal if live is None else live):
            self.live = Live(get_renderable=self.view, console=self.console, refresh_per_second=4,
                             transient=True, redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> SearchProgress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    # A trial is named by its Optuna number; a Keras Tuner trial by "kt-<its Keras Tuner id>" until it
    # is written to the study at its end, where both are shown.

    def trial_started(self, number: int | str, params: Mapping[str, Any], epochs: int | None = None,
                      note: str | None = None) -> None:
        """``epochs``: what this trial will train; ``note``: how they were planned (the deadline's share)."""
        self.trial_epochs = epochs or self.epochs
        self.flight = {"name": number, "params": format_params(params), "epoch": 1, "step": 0, "steps": 0,
                       "logs": {}, "epoch_started": time.time()}
        self.print(f"[bold]trial {number}[/bold]  {format_params(params)}" + (f"  ({note})" if note else ""))

    def batch_ended(self, step: int, steps: int, logs: Mapping[str, float]) -> None:
        """A training step of the trial in flight ended (1-based ``step`` of ``steps`` an epoch)."""
        if self.flight:
            self.flight.update(step=step, steps=steps, logs=dict(logs))

    @property
    def on_step(self):
        """``batch_ended`` where a live view shows it, else None: no per-step work without one."""
        return self.batch_ended if self.live is not None else None

    def epoch_ended(self, number: int | str, epoch: int, logs: Mapping[str, float]) -> None:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        self.print(f"  trial {number} epoch {epoch}/{self.trial_epochs}  {metrics}")
        if self.flight:
            self.flight.update(epoch=epoch + 1, step=0, epoch_started=time.time())

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        state = "SKIPPED" if SKIPPED_ATTR in attrs else "REJECTED" if REJECTED_ATTR in attrs else trial.state.name
        names = self.objective.split(",")
        value = "".join(f"{name}={v:{VALUE_FORMATS.get(name, '.4f')}}  "
                        for name, v in zip(names, trial.values or (), strict=False))
        reasons = ("error", SKIPPED_ATTR, REJECTED_ATTR, OVER_BUDGET_ATTR)
        why = next((attrs[key] for key in reasons if attrs.get(key)), None) or (
            f"stopped by the {attrs['stopped_by']} after {attrs.get('epochs')} epochs"
            if "stopped_by" in attrs else "")
        reason = f"  ({why})" if why else ""
        kt_id = trial.user_attrs.get("kt_trial_id")
        name = f"{trial.number} (kt-{kt_id})" if kt_id is not None else str(trial.number)
        self.print(f"trial {name} {state}  {value}{self.best_text(study)}{reason}")
        self.flight = {}
        if self.live is not None:
            trials = study.get_trials(deepcopy=False)
            self.counts = {
                "finished": sum(t.state == TrialState.COMPLETE for t in trials),
                "pruned": sum(t.state == TrialState.PRUNED and SKIPPED_ATTR not in t.user_attrs
                              and REJECTED_ATTR not in t.user_attrs for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
            }
            rejected = sum(REJECTED_ATTR in t.user_attrs for t in trials)
            if rejected:  # over --max-params: not trained
                self.counts["rejected (over --max-params)"] = rejected
            self.best = self.best_text(study)

    def view(self) -> Group:
        """The live view: the trial in flight and its epoch, then the search as a whole."""
        rows: list[Any] = []
        flight = self.flight
        if flight:
            grid = Table.grid(padding=(0, 1))
            done, steps = flight["step"], flight["steps"]
            left = ""
            if done and steps:
                per_step = (time.time() - flight["epoch_started"]) / done
                left = f"{_clock((steps - done) * per_step)} left in the epoch"
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in flight["logs"].items() if k != "learning_rate")
            grid.add_row(Text(f"trial {flight['name']} epoch {min(flight['epoch'], self.trial_epochs)}/"
                              f"{self.trial_epochs}", style="bold"),
                         ProgressBar(total=steps or 1, completed=done, width=30),
                         Text(f"{done}/{steps or '?'}"), Text(left), Text(metrics))
            rows += [Text(f"  {flight['params']}", style="dim"), grid]
        used = time.time() - self.started
        clock = f"used {_clock(used)}"
        if self.deadline is not None:
            clock += f", {_clock(max(self.deadline - time.time(), 0))} left of the --timeout"
        counts = ", ".join(f"{n} {k}" for k, n in self.counts.items())
        rows.append(Text(f"search: {counts}; {self.best}; {clock}"))
        return Group(*rows)

    def best_text(self, study: optuna.Study) -> str:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} trials on the front"
        best = best_trial(study)
        if best is None:
            return "no finished trial yet"
        return f"best {self.objective}={best.value:.4f} (trial {best.number})"


# How an objective's value is shown (a curve objective: 4 decimals).
VALUE_FORMATS = {"param_count": ".0f", "latency_ms": ".3g"}


def _clock(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE (and feasible) trial, or None while there is none."""
    try:
        best = study.best_trial
    except (ValueError, RuntimeError):
        return None
    return best if best.value is not None and not math.isnan(best.value) else None

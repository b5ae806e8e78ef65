"""The trial runner: the one way a configuration is trained, by either backend and by retraining.

A run starts clean (the last model's graph freed, the weights seeded, the precision policy set),
builds the space's model for the values ``hp`` holds, fits it with a report after every epoch,
restores its best epoch and tests it (``train_and_evaluate``: deadline, NaN guard, Ctrl-C), then
measures what the tested model costs a deployer: its size as stored and its batch-1 latency.
Who chooses the values and who decides to stop (Optuna's pruner, Keras Tuner's Hyperband rounds,
nobody when retraining) is the caller's business: it passes ``report``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras

from search_spaces import TunableSpace
from tuner._objectives import sign
from tuner.data import Dataset
from tuner.training._cost import latency_ms
from tuner.training._cost import stored_bytes
from tuner.training._progress import SearchProgress
from tuner.training._training import EpochReport
from tuner.training._training import TrialResult
from tuner.training._training import start_trial
from tuner.training._training import train_and_evaluate

# ``report(epoch, logs)`` after each epoch (1-based); True asks to stop the trial there (pruned).
Report = Callable[[int, dict[str, float]], bool]


@dataclass
class TrialRunner:
    """Trains configurations of ``hypermodel`` on ``data`` with one recipe.

    ``precision`` is a Keras dtype policy; ``patience`` stops a trial after that many epochs without
    a better ``objective`` (None: never); ``deadline`` (a ``time.time()``) ends a trial in time to
    test and store it; ``progress`` shows each trial's start, epochs and steps; ``deploy_costs``
    measures each tested model's stored size and batch-1 latency.
    """

    hypermodel: TunableSpace
    data: Dataset
    batch_size: int
    objective: str
    precision: str = "float32"
    patience: int | None = None
    deadline: float | None = None
    progress: SearchProgress | None = None
    deploy_costs: bool = True  # measure each tested model's size and latency (a search records them)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.y_train) / self.batch_size)

    def build(self, hp: Any, seed: int) -> keras.Model:
        """A fresh, compiled model for the values of ``hp`` (declaring them, for a sampler's ``hp``)."""
        start_trial(seed, self.precision)
        return self.hypermodel.build(hp)

    def with_augmentation(self, augment: str) -> TrialRunner:
        """This runner with the space's training augmentation set to ``augment`` (``transforms_of``)."""
        hypermodel = copy.copy(self.hypermodel)
        hypermodel.augment = augment
        return dataclasses.replace(self, hypermodel=hypermodel)

    def schedule(self, model: keras.Model, hp: Any, epochs: int) -> None:
        """Compile ``model`` again so that its learning-rate schedule ends after ``epochs`` epochs (a
        trial planned to fit before the deadline). A built optimizer's state (its step count, its
        moments) carries over to the new one: a trial planned again mid-way goes on."""
        trained = model.optimizer if model.optimizer is not None and model.optimizer.built else None
        self.hypermodel.compile(model, self.hypermodel.declare(hp), train_steps=epochs * self.steps_per_epoch)
        if trained is not None:
            model.optimizer.build(model.trainable_variables)
            for variable, value in zip(model.optimizer.variables, trained.variables, strict=True):
                variable.assign(value)

    def fit(self, model: keras.Model, *, label: int | str, params: Mapping[str, Any], epochs: int,
            initial_epoch: int = 0, report: Report | None = None, note: str | None = None,
            replan: Callable[[int, float, float], int | None] | None = None, hp: Any = None,
            rungs: Sequence[int] = (), on_rung: Callable[[int, dict[str, float]], None] | None = None,
            ) -> TrialResult:
        """Train ``model`` up to epoch ``epochs``, keep its best epoch and test it; ``result.pruned``
        says that ``report`` stopped it. ``label`` names the trial in the progress lines, which say
        with ``note`` after its parameters (how its epochs were planned). ``replan`` makes the plan
        again from measured epochs (``train_and_evaluate``); the model is then compiled again for the
        values of ``hp`` (``schedule``). ``on_rung(images, logs)`` reports a validation inside the
        first epoch, after each of ``rungs`` training images, and may raise to end the trial."""
        progress = self.progress

        def after_epoch(epoch: int, logs: dict[str, float]) -> bool:
            stop = bool(report(epoch, logs)) if report is not None else False
            if progress is not None:
                progress.epoch_ended(label, epoch, logs)
            return stop

        if progress is not None:
            progress.trial_started(label, params, epochs, note)
        reports = EpochReport(after_epoch)
        mode = "max" if sign(self.objective) > 0 else "min"
        result = train_and_evaluate(
            model, self.data, epochs=epochs, initial_epoch=initial_epoch, batch_size=self.batch_size,
            objective=self.objective, patience=self.patience, deadline=self.deadline,
            callbacks=[reports, *self.hypermodel.training_callbacks(dict(params), self.objective, mode)],
            inference=self.hypermodel.inference_model,
            on_step=None if progress is None else progress.on_step, replan=replan,
            reschedule=None if hp is None else lambda epochs: self.schedule(model, hp, epochs),
            rungs=rungs, on_rung=on_rung,
        )
        result.pruned = reports.stopped_early
        # What it costs a deployer; not after Ctrl-C (the user is waiting) or for an untested model.
        if (self.deploy_costs and result.model is not None and not result.pruned
                and result.stopped_by not in ("too_slow", "interrupt")):
            result.model_bytes = stored_bytes(result.model)
            result.latency_ms = latency_ms(result.model.predict_on_batch, self.data.x_test[0])
        return result

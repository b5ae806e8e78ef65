"""Training one configuration: fit with per-epoch reports, keep the best epoch, score it on test data.

Shared by every backend, so a trial means the same thing whichever engine chose its parameters.
Only the ``keras`` API is used: it runs on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import keras
import numpy as np

from tuner._compat import tensorflow_gradient_registry
from tuner._objectives import sign
from tuner.data import Dataset
from tuner.errors import TunerError
from tuner.training._process import interrupts_held
from tuner.training._process import raise_held_interrupt
from tuner.training._process import take_held_interrupt

# Training steps timed before a first epoch's end is projected (the first step traces the model).
PROBE_STEPS = 8
# Seconds kept, at a deadline, for writing the trial's model.
SAVE_SECONDS = 2.0
# How TensorFlow, JAX and PyTorch say that a device (or the host) ran out of memory.
OOM_MARKERS = ("out of memory", "resource_exhausted", "resourceexhausted", "oom when allocating")


# Threads that read a streamed dataset's next batches while the model trains on the current one.
READ_THREADS = 2


class Batches(keras.utils.PyDataset):
    """Batches of a streamed split (``ImageArray``), read from the cache as training asks for them:
    shuffled anew each epoch for training, in order otherwise. Memory holds a few batches, not the split."""

    def __init__(self, x: Any, y: np.ndarray | None, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        super().__init__(workers=READ_THREADS, use_multiprocessing=False, max_queue_size=4)
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        # Sorted within the batch: neighbouring rows are read in one call; a batch's order does not matter.
        rows = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        return self.x[rows] if self.y is None else (self.x[rows], self.y[rows])

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))


def predict_classes(model: keras.Model, x: Any, batch_size: int = 256) -> np.ndarray:
    """The class ``model`` predicts for each image of ``x`` (arrays, or a streamed split)."""
    if isinstance(x, np.ndarray):
        return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)
    return np.argmax(model.predict(Batches(x, None, batch_size), verbose=0), axis=-1)


@contextlib.contextmanager
def callers_state_kept() -> Iterator[None]:
    """Put back, when a search ends, the process-wide state its trials set (``start_trial``): the
    Keras dtype policy and the global random states of Python and NumPy, so that a notebook's next
    model is built as it would have been without the search. (TensorFlow's global seed, which Keras
    seeds too, has no public getter; ``clear_session`` frees the search's models, not the caller's.)"""
    policy = keras.config.dtype_policy()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def start_trial(seed: int, precision: str) -> None:
    """A clean slate for the next model: free the last one's graph, seed its weights, set its dtypes."""
    forget_custom_gradients()
    keras.backend.clear_session()  # after the registry lets go of the last graph: its collection frees it
    keras.utils.set_random_seed(seed)
    keras.config.set_dtype_policy(precision)


# The CustomGradient registrations a library caller made before the search began (see below).
_CALLERS_GRADIENTS: dict[str, set[str]] = {}


def keep_callers_gradients() -> None:
    """Mark the ``CustomGradient-N`` registrations that exist now as the caller's: a search calls
    this before its first trial, and ``forget_custom_gradients`` then leaves them alone."""
    registry = tensorflow_gradient_registry() or {}
    _CALLERS_GRADIENTS["names"] = {name for name in registry if name.startswith("CustomGradient-")}


def forget_custom_gradients() -> None:
    """Drop TensorFlow's ``CustomGradient-N`` registrations, which keep every past trial's graph alive.

    On TensorFlow, Keras' optimizer sums gradients through ``tf.distribute``'s all-reduce, a
    ``tf.custom_gradient``; each trace of a train step registers a gradient function in a
    process-wide registry that is never unregistered and holds the whole traced graph: 9-40 MB a
    trial that ``clear_session`` cannot free. Between trials no earlier graph is differentiated
    again, so the entries can go; those that existed before the search began
    (``keep_callers_gradients``) are a library caller's own and stay. The registry is private
    TensorFlow API (``tuner._compat.tensorflow_gradient_registry``): where it is missing, nothing
    happens (and a process recycled by ``--recycle-after`` still bounds memory).
    """
    registry = tensorflow_gradient_registry()
    if registry is None:
        return
    callers = _CALLERS_GRADIENTS.get("names", set())
    for name in [name for name in registry if name.startswith("CustomGradient-") and name not in callers]:
        del registry[name]


def trial_error(err: BaseException) -> str:
    """The reason a trial failed, as stored in its ``error`` attribute.

    After running out of memory (host or GPU) it first gives back what Keras holds, so the next
    trial starts with the memory this one took, and says so with what to change.
    """
    text = f"{type(err).__name__}: {err}"
    if isinstance(err, MemoryError) or any(marker in text.lower() for marker in OOM_MARKERS):
        keras.backend.clear_session()
        gc.collect()
        text = f"out of memory (try a smaller --batch-size, or --set a smaller depth): {text}"
    return text[:1000]


class TrialDiverged(TunerError):
    """The loss became NaN or infinite; the trial fails with this reason."""


class BestEpoch(keras.callbacks.Callback):
    """Remembers every epoch's logs, and the epoch with the best ``monitor`` value and its weights."""

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor = monitor
        self.sign = sign(monitor)
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_logs: dict[str, float] = {}
        self.best_weights: list[np.ndarray] | None = None
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        value = logs.get(self.monitor, math.nan)
        if math.isfinite(value) and self.sign * value > self.best_value:
            self.best_value = self.sign * value
            self.best_epoch = epoch + 1
            self.best_logs = logs
            self.best_weights = self.model.get_weights()


def learning_rate(model: keras.Model) -> float:
    """The rate ``model``'s optimizer applies at its current step (a schedule's value there)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class Patience(keras.callbacks.Callback):
    """Stops training after ``patience`` epochs without a better ``monitor`` value, unless the
    learning rate fell during them: a schedule planned to anneal is not cut while its rate is high.

    Keras's ``EarlyStopping`` cut a cosine schedule planned for 53 epochs after 33 (Fashion-MNIST,
    the defaults trial): 0.9187 test, where the same schedule run to its end scored 0.9337. A stall
    at a constant rate is stopped as before; an annealing run is judged by the pruner and ends with
    its schedule.
    """

    def __init__(self, monitor: str, patience: int) -> None:
        super().__init__()
        self.monitor, self.patience = monitor, patience
        self.sign = sign(monitor)
        self.best = -math.inf
        self.wait = 0
        self.rate_at_best = math.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = float((logs or {}).get(self.monitor, math.nan))
        rate = learning_rate(self.model)
        if math.isfinite(value) and self.sign * value > self.best:
            self.best, self.wait, self.rate_at_best = self.sign * value, 0, rate
            return
        self.wait += 1
        if self.wait >= self.patience and rate >= self.rate_at_best:
            self.model.stop_training = True


class Replan(keras.callbacks.Callback):
    """From the second epoch on, asks ``replan(done, seconds, retrace)`` after every epoch for the
    epochs to train in all (None: no answer now; it decides when to answer): ``seconds`` is the mean
    epoch since the end of this ``fit``'s first (the loop's own time between epochs counted), ``done``
    the epochs trained, ``retrace`` how much longer the first one took (tracing the train and test
    steps, which a model compiled again repeats). Where the answer differs from the plan, training
    stops there and ``epochs`` keeps it for the caller to go on with.
    """

    def __init__(self, replan: Callable[[int, float, float], int | None] | None) -> None:
        super().__init__()
        self.replan = replan
        self.epochs: int | None = None
        self._ends: list[float] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._ends = [time.time()]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._ends.append(time.time())
        if len(self._ends) < 3 or self.model.stop_training or self.replan is None:
            return
        seconds = (self._ends[-1] - self._ends[1]) / (len(self._ends) - 2)
        epochs = self.replan(epoch + 1, seconds, max(self._ends[1] - self._ends[0] - seconds, 0.0))
        if epochs is not None and epochs != self.params.get("epochs"):
            self.epochs = epochs
            self.model.stop_training = True


class EpochReport(keras.callbacks.Callback):
    """Calls ``report(epoch, logs)`` after every epoch (1-based), and stops when it returns True.

    An epoch after which training stops anyway (the deadline, early stopping) is reported but
    not pruned: its model is kept as it is.
    """

    def __init__(self, report: Callable[[int, dict[str, float]], bool | None]) -> None:
        super().__init__()
        self.report = report
        self.stopped_early = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        prune = self.report(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})
        if prune and not self.model.stop_training:
            self.stopped_early = True
            self.model.stop_training = True


class StepReport(keras.callbacks.Callback):
    """Calls ``report(step, steps, logs)`` after every training step (1-based within the epoch)."""

    def __init__(self, report: Callable[[int, int, dict[str, float]], None], steps: int) -> None:
        super().__init__()
        self.report = report
        self.steps = steps

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.report(batch + 1, self.steps, {k: float(v) for k, v in (logs or {}).items()})


class RungReport(keras.callbacks.Callback):
    """Validates the model inside its first epoch, once it has trained on each of ``rungs``
    training images, and calls ``report(images, logs)`` with the validation's logs (named as after
    an epoch: ``val_loss``, ``val_accuracy``...). ``report`` ends the trial by raising (a pruner's
    decision: nothing of a fraction of an epoch is worth keeping).

    Keras resets its metrics when it evaluates, so the first epoch's training loss and accuracy
    are those of its steps after the last rung.
    """

    def __init__(self, report: Callable[[int, dict[str, float]], None], rungs: Sequence[int],
                 batch_size: int, validation: dict[str, Any]) -> None:
        super().__init__()
        self.report, self.rungs = report, sorted(rungs)
        self.batch_size, self.validation = batch_size, validation  # ``evaluate``'s data keywords
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        while self._epoch == 0 and self.rungs and (batch + 1) * self.batch_size >= self.rungs[0]:
            images = self.rungs.pop(0)
            logs = self.model.evaluate(**self.validation, verbose=0, return_dict=True)
            self.report(images, {f"val_{k}": float(v) for k, v in logs.items()})


class Deadline(keras.callbacks.Callback):
    """Ends training on time: stops at ``deadline`` (``time.time()``) less the time the trial still
    needs to validate, test and store its model, and stops a first epoch that cannot end by then.

    Step times are measured from the second step on (the first one traces or compiles the model).
    ``stopped_by`` says why training stopped: ``"deadline"``, or ``"too_slow"`` when the first
    epoch's projected end is past the deadline, so not even one rung can be scored. ``clock`` tells
    the time (a test gives its own).
    """

    def __init__(self, deadline: float, *, steps_per_epoch: int, eval_steps: int,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.deadline, self.clock = deadline, clock
        self.steps_per_epoch = steps_per_epoch
        self.eval_steps = eval_steps  # validation and test batches still to run at the end
        self.stopped_by: str | None = None
        self.step_seconds: float | None = None
        self._steps = 0
        self._first_epoch = True
        self._step_start = 0.0
        self._timed = 0.0  # seconds inside training steps 2, 3, ... (validation excluded)
        self.first_step_seconds: float | None = None  # tracing (or compiling) the train step, and the step

    @property
    def steps(self) -> int:
        """Training steps run so far, every epoch's counted."""
        return self._steps

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._step_start = self.clock()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = self.clock()
        self._steps += 1
        if self._steps > 1:
            self._timed += now - self._step_start
            self.step_seconds = self._timed / (self._steps - 1)
        else:
            self.first_step_seconds = now - self._step_start
        if now + self.reserve() >= self.deadline:
            self.stop("deadline")
        elif (self._first_epoch and self.step_seconds is not None and self._steps == PROBE_STEPS
              and now + (self.steps_per_epoch - self._steps) * self.step_seconds + self.reserve()
              > self.deadline):
            self.stop("too_slow")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._first_epoch = False

    def reserve(self) -> float:
        """Seconds to keep for the end of a trial: inference over the held-out splits (a third of a
        training step per batch), one more step, and writing the model."""
        if self.step_seconds is None:
            return 0.0
        return (self.eval_steps / 3 + 1) * self.step_seconds + SAVE_SECONDS

    def stop(self, reason: str) -> None:
        self.stopped_by = reason
        self.model.stop_training = True


class RaiseHeldInterrupt(keras.callbacks.Callback):
    """Raises a Ctrl-C or SIGTERM that ``interrupts_held`` held, after a training step: in Keras's loop.

    Not after validation batches: a callback there makes Keras dispatch them synchronously (on JAX
    and PyTorch, a host sync per batch); one held during validation waits for the next step or the test.
    """

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        raise_held_interrupt()


@dataclass
class TrialResult:
    """What one training run measured; ``value`` is the objective at the best epoch.

    ``stopped_by`` is None for a run that trained its epochs (or stopped early or was pruned),
    ``"deadline"`` or ``"interrupt"`` for one cut short whose best epoch was kept, and ``"too_slow"``
    for one stopped in its first epoch because that epoch could not end before the deadline.
    """

    value: float
    best_epoch: int
    epochs: int
    train_seconds: float
    params: int
    best_logs: dict[str, float]
    test_loss: float
    test_accuracy: float
    history: dict[str, list[float]] = field(default_factory=dict)
    stopped_by: str | None = None
    step_seconds: float | None = None
    trace_seconds_per_layer: float | None = None  # the first step's time (tracing), per model layer
    model: Any = None  # the tested model, to keep: the trained one, or its inference form
    pruned: bool = False  # the caller's report stopped it (TrialRunner.fit)
    seed: int | None = None  # the weights' seed, where the caller records it (a retrain)
    model_bytes: int | None = None  # the tested model as stored, and its batch-1 latency (TrialRunner.fit)
    latency_ms: float | None = None

    def attrs(self) -> dict[str, float | int | str]:
        """The per-trial attributes stored in the study (losses and accuracies at the best epoch)."""
        logs = self.best_logs
        attrs: dict[str, float | int | str] = {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "train_seconds": round(self.train_seconds, 3),
            "seconds_per_epoch": round(self.train_seconds / max(self.epochs, 1), 3),
            "param_count": self.params,
            "train_loss": logs.get("loss", math.nan),
            "train_accuracy": logs.get("accuracy", math.nan),
            "val_loss": logs.get("val_loss", math.nan),
            "val_accuracy": logs.get("val_accuracy", math.nan),
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
        }
        if self.step_seconds is not None:
            attrs["step_seconds"] = round(self.step_seconds, 5)
        if self.trace_seconds_per_layer is not None:
            attrs["trace_seconds_per_layer"] = round(self.trace_seconds_per_layer, 5)
        if self.stopped_by is not None:
            attrs["stopped_by"] = self.stopped_by
        if self.model_bytes is not None:
            attrs["model_bytes"] = self.model_bytes
        if self.latency_ms is not None:
            attrs["latency_ms"] = round(self.latency_ms, 3)
        return attrs


def build_training_state(model: keras.Model, x: Any, y: Any) -> None:
    """Create the optimizer's and the compiled metrics' variables from one small batch before ``fit``.

    Without a distribution strategy, Keras on TensorFlow creates them while tracing the first train
    step, and a ``tf.function`` that creates variables is traced twice: building them first halves
    the train step's tracing, a trial's largest fixed cost on a CPU (benchmarks/trial_overhead.py:
    6.0 s against 4.3 s a ResNet-8 trial on digits). Other backends build them symbolically already.
    """
    if keras.backend.backend() != "tensorflow":
        return
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    x, y = np.asarray(x), np.asarray(y)
    y_pred = model(x, training=False)
    model.compute_loss(x=x, y=y, y_pred=y_pred)
    model.compute_metrics(x, y, y_pred, sample_weight=None)
    model.reset_metrics()


@interrupts_held()  # Ctrl-C and SIGTERM land between training steps, not inside the framework
def train_and_evaluate(
    model: keras.Model,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    objective: str,
    patience: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    deadline: float | None = None,
    inference: Callable[[keras.Model], keras.Model] | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    replan: Callable[[int, float, float], int | None] | None = None,
    reschedule: Callable[[int], None] | None = None,
    rungs: Sequence[int] = (),
    on_rung: Callable[[int, dict[str, float]], None] | None = None,
) -> TrialResult:
    """Fit ``model`` on the train split, validate each epoch, restore the best epoch, test it.

    Training stops early after ``patience`` epochs without a better ``objective`` at a learning
    rate that did not fall meanwhile (``Patience``: a decaying schedule runs to its end). Raises
    ``TrialDiverged`` if the loss stops being finite. ``initial_epoch`` continues a model trained
    for that many epochs already (Keras Tuner's Hyperband); epochs are counted from 1 overall.
    ``deadline`` (a ``time.time()``) stops training in time to test and store the model by then
    (``Deadline``). Ctrl-C (and SIGTERM, after ``stop_on_signals``) is held until the step ends
    (``interrupts_held``); after at least one epoch it stops training the same way, and the caller
    records the trial, then raises ``KeyboardInterrupt`` again (``stopped_by == "interrupt"``).
    ``inference`` turns the trained model into the one that is tested and kept (flip averaging:
    ``TunableSpace.inference_model``); the epochs are validated on the trained model itself.
    ``on_step(step, steps, logs)`` is called after every training step (``StepReport``).
    ``replan(done, seconds, retrace)``, given the mean seconds of the epochs after the first (which
    traces), returns the epochs to train in all, or None to be asked again after the next epoch
    (``Replan``): a plan made from a prediction is made again from a
    measurement; where it changes, ``reschedule(epochs)`` compiles the model for it (its schedule,
    the optimizer's state carried over) and training goes on. ``on_rung(images, logs)`` is called
    with the validation's logs once the first epoch has trained each of ``rungs`` images
    (``RungReport``); it may raise to end the trial there.
    """
    best = BestEpoch(objective)
    if patience:
        callbacks = [Patience(objective, patience), *callbacks]
    steps = math.ceil(len(data.y_train) / batch_size)
    # At an epoch's last step the check is followed by that epoch's validation and one more step
    # before the next: the reserve covers two validations, the test (twice over for a flip-averaged
    # inference model) and a step.
    val_steps, test_steps = (math.ceil(len(y) / batch_size) for y in (data.y_val, data.y_test))
    eval_steps = 2 * val_steps + (2 if inference else 1) * test_steps
    clock = Deadline(deadline or math.inf, steps_per_epoch=steps, eval_steps=eval_steps)
    if on_step is not None:
        callbacks = [*callbacks, StepReport(on_step, steps)]

    def evaluated(x: Any, y: Any) -> dict[str, Any]:
        """``evaluate``'s data keywords for a split: batches read from the cache, or arrays."""
        return {"x": Batches(x, y, batch_size)} if data.streamed else {"x": x, "y": y, "batch_size": batch_size}

    start = time.perf_counter()
    build_training_state(model, data.x_train[:2], data.y_train[:2])
    stopped_by = None
    try:
        if data.streamed:  # batches read from the cache; Keras takes no batch_size with them
            seed = int(np.random.randint(2**31))  # seeded by start_trial
            train: dict[str, Any] = {"x": Batches(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed)}
            validation: Any = Batches(data.x_val, data.y_val, batch_size)
        else:
            train = {"x": data.x_train, "y": data.y_train, "batch_size": batch_size}
            validation = (data.x_val, data.y_val)
        if on_rung is not None and rungs and initial_epoch == 0:
            callbacks = [*callbacks, RungReport(on_rung, rungs, batch_size, evaluated(data.x_val, data.y_val))]

        def fit(first: int, last: int) -> None:
            model.fit(**train, validation_data=validation, epochs=last, initial_epoch=first,
                      callbacks=[keras.callbacks.TerminateOnNaN(), clock, best, *callbacks, RaiseHeldInterrupt()],
                      verbose=0)

        timer = Replan(replan)
        if replan is not None and reschedule is not None and epochs > initial_epoch + 2:
            callbacks = [*callbacks, timer]  # last: it acts only where nothing else stopped training
        fit(initial_epoch, epochs)
        done = initial_epoch + len(best.history.get("loss", []))
        while timer.epochs is not None and timer.epochs > done:  # planned again: go on with the new plan
            epochs, timer.epochs = timer.epochs, None
            assert reschedule is not None
            reschedule(epochs)
            build_training_state(model, data.x_train[:2], data.y_train[:2])
            fit(done, epochs)
            done = initial_epoch + len(best.history.get("loss", []))
    except KeyboardInterrupt:
        if best.best_weights is None:
            raise
        stopped_by = "interrupt"
    seconds = time.perf_counter() - start
    losses = best.history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise TrialDiverged(f"loss became {losses[-1] if losses else 'undefined'} "
                            f"at epoch {initial_epoch + len(losses)}; try a lower learning_rate")
    if best.best_weights is None:
        raise TrialDiverged(f"{objective} was never finite")
    test_loss = test_accuracy = math.nan
    tested = model
    if clock.stopped_by != "too_slow":  # a discarded configuration is not tested
        model.set_weights(best.best_weights)
        tested = inference(model) if inference else model
        test_loss, test_accuracy = tested.evaluate(**evaluated(data.x_test, data.y_test), verbose=0)[:2]
        if take_held_interrupt():  # during the test: the trial is complete, and the search stops
            stopped_by = "interrupt"
    return TrialResult(
        value=best.sign * best.best_value,
        best_epoch=best.best_epoch,
        epochs=len(losses),
        train_seconds=seconds,
        params=int(model.count_params()),
        best_logs=best.best_logs,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        history=best.history,
        stopped_by=stopped_by or clock.stopped_by,
        step_seconds=clock.step_seconds,
        trace_seconds_per_layer=None if clock.first_step_seconds is None
        else clock.first_step_seconds / max(len(model.layers), 1),
        model=tested,
    )

"""The base class of every search space: static checks, the declare/build split, compilation."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import ClassVar

import keras
import keras_tuner

from search_spaces._declarations import ARCHITECTURES
from search_spaces._declarations import OPTIMIZERS
from search_spaces._declarations import SCHEDULES
from search_spaces._declarations import declare_space
from search_spaces._declarations import transforms_of
from search_spaces._errors import SpaceError
from search_spaces._layers import augment_images
from search_spaces._layers import flip_averaged
from search_spaces._layers import normalize_inputs
from search_spaces._params import ParamSpec
from search_spaces._params import declared

MIN_INPUT_SIZE = 8
# Steps spent warming the learning rate up from a tenth of its value: 5% of a trial's steps, at
# most 100 (a fixed length, so a long trial does not spend its first epoch warming up: on
# Fashion-MNIST 10 epochs are 4,220 steps at batch 128).
WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 100
# "step": the rate is divided by 10 at these fractions of the steps (He et al. 2016: 32k and 48k of 64k).
STEP_BOUNDARIES = (0.5, 0.75)
# "plateau": the rate is multiplied by this after this many epochs without a better objective.
PLATEAU_FACTOR = 0.2
PLATEAU_PATIENCE = 2


class TunableSpace(keras_tuner.HyperModel):
    """A Keras Tuner HyperModel whose ``build(hp)`` only declares hyperparameters and calls a builder.

    Subclasses implement two methods:

    - ``declare(hp)``: declare every hyperparameter with a literal name, range and default, and return
      their values as a dict. It must not depend on the input shape, so the space can be listed and
      ``--set`` checked without data.
    - ``architecture(values)``: call the pure builder with those values; returns an uncompiled model.

    ``input_shape`` is ``(height, width, channels)`` with both sides >= 8; ``classes`` >= 2. ``mean``
    and ``variance`` are per-channel pixel statistics of the training data: normalisation happens
    inside the model, so it takes raw pixels. ``augment`` (see ``transforms_of``) adds random
    training-time transforms inside the model, so they run on the accelerator and vanish at inference.
    ``train_steps``, the optimiser steps a trial will take, scales the learning-rate schedule; without
    it the learning rate is constant. ``label_smoothing`` moves that much of each target's
    probability evenly onto all classes (Szegedy et al. 2016); labels stay integers.
    """

    space_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Hyperparameters added to the space after its first release, with the value every model had
    # before: trials stored without them are rebuilt with it.
    added: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        input_shape: Sequence[int],
        classes: int,
        *,
        mean: Sequence[float] | None = None,
        variance: Sequence[float] | None = None,
        augment: str = "none",
        train_steps: int | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(name=self.space_name or None, tunable=True)
        self.input_shape = check_input_shape(input_shape)
        if int(classes) < 2:
            raise SpaceError(f"a classifier needs at least 2 classes, got {classes}")
        self.classes = int(classes)
        self.mean = None if mean is None else [float(v) for v in mean]
        self.variance = None if variance is None else [float(v) for v in variance]
        transforms_of(augment)  # refuses an unknown name
        self.augment = augment
        self.train_steps = train_steps
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise SpaceError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def declare(cls, hp: Any) -> dict[str, Any]:
        """A built-in space's declarations (``declare_space``); a space of your own declares its own."""
        if cls.space_name not in ARCHITECTURES:
            raise NotImplementedError(f"{cls.__name__} must declare its hyperparameters")
        return declare_space(cls.space_name, hp)

    def alternatives(self) -> tuple[dict[str, Any], ...]:
        """Known-good configurations beside the defaults for this input, each as the values it changes
        (none by default). A search that explores tries them right after the defaults, before its
        sampler proposes anything, and trains each for ``--epochs`` unpruned; one over the search's
        budgets is refused as any configuration is."""
        return ()

    # The space's pure builder, ``builder(input_shape, classes, **values, preprocess=...)``, where its
    # keywords are the hyperparameters' names; a space whose values need translating overrides
    # ``architecture`` instead.
    builder: ClassVar[Callable[..., keras.Model] | None] = None

    def architecture(self, values: dict[str, Any]) -> keras.Model:
        """The uncompiled model of ``values``: the ``builder`` called with those it takes."""
        if self.builder is None:
            raise NotImplementedError(f"{type(self).__name__} must build its architecture")
        takes = inspect.signature(self.builder).parameters
        return self.builder(self.input_shape, self.classes, preprocess=self.preprocess,
                            **{name: value for name, value in values.items() if name in takes})

    def preprocess(self, inputs: keras.KerasTensor) -> keras.KerasTensor:
        """Layers between the raw image and the network: normalisation, then augmentation."""
        return augment_images(normalize_inputs(inputs, self.mean, self.variance), self.augment)

    def inference_model(self, model: keras.Model) -> keras.Model:
        """The model to test, keep and export: flip-averaged (``flip_averaged``) when the space trains
        with random flips, else ``model`` itself; compiled with ``model``'s loss for ``evaluate``."""
        if "flip" not in transforms_of(self.augment):
            return model
        averaged = flip_averaged(model)
        averaged.compile(loss=model.loss, metrics=["accuracy"])
        return averaged

    @staticmethod
    def training_callbacks(values: dict[str, Any], monitor: str, mode: str) -> list[keras.callbacks.Callback]:
        """What the recipe of ``values`` needs beside the optimizer while it trains: for
        ``lr_schedule="plateau"``, lowering the rate when ``monitor`` (``mode``: min or max) stalls."""
        if values.get("lr_schedule") != "plateau":
            return []
        return [keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=PLATEAU_FACTOR,
                                                  patience=PLATEAU_PATIENCE, min_lr=values["learning_rate"] / 1000)]

    def build(self, hp: Any) -> keras.Model:
        values = self.declare(hp)
        model = self.architecture(values)
        self.compile(model, values)
        return model

    def compile(self, model: keras.Model, values: dict[str, Any], train_steps: int | None = None) -> None:
        """Compile ``model`` with the declared recipe, its schedule spanning ``train_steps``
        (default: the space's); a trial given fewer epochs than planned is compiled again with its own."""
        learning_rate = learning_rate_schedule(values["learning_rate"], values["lr_schedule"],
                                               train_steps or self.train_steps)
        compile_model(model, optimizer=values["optimizer"], learning_rate=learning_rate,
                      weight_decay=values["weight_decay"], label_smoothing=self.label_smoothing)

    @classmethod
    def hyperparameters(cls) -> list[ParamSpec]:
        """The declared hyperparameters (kind, name, range, default), in declaration order."""
        return declared(cls.declare)


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate an image shape ``(height, width, channels)``; smaller than 8x8 cannot be built."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise SpaceError(f"input shape must be (height, width, channels), got {tuple(input_shape)}")
    if min(shape[:2]) < MIN_INPUT_SIZE:
        raise SpaceError(
            f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {shape[0]}x{shape[1]}"
        )
    return shape


def learning_rate_schedule(
    learning_rate: float, schedule: str, train_steps: int | None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Cosine decay to zero over ``train_steps`` after a short linear warm-up (5% of the steps, at
    most ``MAX_WARMUP_STEPS``); steps down by 10 at ``STEP_BOUNDARIES``; or a constant rate (also for
    "plateau", which lowers it from a callback: ``training_callbacks``)."""
    if schedule not in SCHEDULES:
        raise SpaceError(f"unknown lr_schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if schedule in ("constant", "plateau") or not train_steps:
        return learning_rate
    if schedule == "step":
        boundaries = [max(int(f * train_steps), 1) for f in STEP_BOUNDARIES]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [learning_rate / 10**i for i in range(len(boundaries) + 1)])
    warmup = min(int(WARMUP_FRACTION * train_steps), MAX_WARMUP_STEPS)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10 if warmup else learning_rate,
        decay_steps=max(train_steps - warmup, 1),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(name: str, learning_rate: Any, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """Adam; AdamW with decoupled ``weight_decay``; SGD with Nesterov momentum 0.9 (the ResNet paper);
    or RMSprop (Keras' defaults: rho 0.9, no momentum)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate)
    raise SpaceError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


@keras.saving.register_keras_serializable(package="tuner")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy with label smoothing for integer labels.

    Keras' ``SparseCategoricalCrossentropy`` has no ``label_smoothing``; one-hot labels would make
    every user of the model change theirs. The labels are one-hot encoded inside the loss instead.
    """

    def __init__(self, label_smoothing: float = 0.1, name: str = "sparse_smoothed_crossentropy",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_loss(label_smoothing: float) -> str | keras.losses.Loss:
    """Keras' own loss for integer labels, or ours where labels are smoothed."""
    if label_smoothing:
        return SparseSmoothedCrossentropy(label_smoothing)
    return "sparse_categorical_crossentropy"


def compile_model(model: keras.Model, *, optimizer: str, learning_rate: Any, weight_decay: float = 0.0,
                  label_smoothing: float = 0.0) -> None:
    """Compile for integer labels with accuracy as the metric."""
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, weight_decay),
        loss=make_loss(label_smoothing),
        metrics=["accuracy"],
    )

"""What a configuration costs: the FLOPs of a built model, and its epoch time predicted from the
trials a study has already timed; what a trained model costs a deployer (its size and latency).

A search with a deadline uses them to start no trial whose first epoch cannot end in the time left.
FLOPs are counted, not timed, so the check costs a model build and no training; the rate that turns
them into seconds is measured on this machine, by the study's own trials.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Tracing the train step, then the test step (validation and testing): about one and a half of the
# first training step's time.
TRACE_TO_TRAIN_AND_TEST = 1.5
# Training steps timed by ``timed_rate``, after one that traces or compiles the train step.
TIMED_STEPS = 3


def _size(shape: Iterable[Any]) -> int:
    return math.prod(int(v) for v in shape if v is not None)


def layer_flops(layer: Any) -> int:
    """Floating-point operations of one forward pass of ``layer`` for one image (2 per multiply-add)."""
    kind = type(layer).__name__
    try:
        out = _size(layer.output.shape[1:])
    except (AttributeError, ValueError):
        return 0
    if kind == "Conv2D":
        kh, kw = layer.kernel_size
        channels_in = int(layer.input.shape[-1])
        return 2 * out * kh * kw * channels_in // max(int(getattr(layer, "groups", 1)), 1)
    if kind == "DepthwiseConv2D":
        kh, kw = layer.kernel_size
        return 2 * out * kh * kw
    if kind == "SeparableConv2D":
        kh, kw = layer.kernel_size
        channels_in = int(layer.input.shape[-1])
        return 2 * _size(layer.output.shape[1:3]) * channels_in * (kh * kw + int(layer.filters))
    if kind == "Dense":
        return 2 * out * int(layer.input.shape[-1])
    if kind == "InputLayer":
        return 0
    return out


def model_flops(model: Any) -> int:
    """Forward-pass FLOPs of ``model`` for one image: multiply-adds of its convolutions and dense
    layers, plus one operation per output value of every other layer."""
    return int(sum(layer_flops(layer) for layer in model.layers))


def seconds_per_flop(trials: Iterable[Any], batch_size: int) -> float | None:
    """This machine's training seconds per FLOP (per image), from timed trials at ``batch_size``:
    the median of ``step_seconds / (flops * batch_size)``. None until a trial has been timed."""
    rates = [t.user_attrs["step_seconds"] / (t.user_attrs["flops"] * batch_size)
             for t in trials
             if t.user_attrs.get("batch_size") == batch_size
             and t.user_attrs.get("step_seconds") and t.user_attrs.get("flops")]
    return statistics.median(rates) if rates else None


def trace_seconds(trials: Iterable[Any], layers: int) -> float | None:
    """Seconds a model of ``layers`` layers will spend tracing (or compiling) its train and test
    steps, from the study's timed first steps: the median per layer, times ``layers``, times
    ``TRACE_TO_TRAIN_AND_TEST``. None until a trial has been timed."""
    rates = [t.user_attrs["trace_seconds_per_layer"] for t in trials if t.user_attrs.get("trace_seconds_per_layer")]
    return statistics.median(rates) * layers * TRACE_TO_TRAIN_AND_TEST if rates else None


def timed_rate(model: Any, flops: int, images: Any, labels: Any, batch_size: int) -> float:
    """Training seconds per FLOP (per image) of ``model`` on this machine, from a few timed training
    steps on the first batch, for a study that has timed no trial yet. The model's weights and its
    optimizer's state are put back afterwards, so the trial starts as if untimed; the train step it
    traced is the one ``fit`` then runs.

    (Timed inference times a fixed ratio under-predicted a training epoch by 30% on one CPU and
    over-predicted it on another.)
    """
    x, y = images[:batch_size], labels[:batch_size]
    model.optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    state = [variable.numpy() for variable in model.optimizer.variables]
    model.train_on_batch(x, y)  # traces (or compiles) the train step
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - start) / TIMED_STEPS
    model.set_weights(weights)
    for variable, value in zip(model.optimizer.variables, state, strict=True):
        variable.assign(value)
    return seconds / (max(flops, 1) * len(x))


def epoch_seconds(flops: int, rate: float, *, train_images: int, eval_images: int) -> float:
    """Predicted seconds of one epoch: training, then inference on ``eval_images`` (a third of the
    cost of training an image)."""
    return rate * flops * (train_images + eval_images / 3)


# Batch-1 inference calls made before timing (the first traces or compiles the predict step), then timed.
LATENCY_WARMUP, LATENCY_RUNS = 3, 20


def latency_ms(predict: Callable[[Any], Any], image: Any) -> float:
    """Median milliseconds of ``predict`` on a batch of one ``image`` on this machine, after a warm-up:
    what a deployer serving one request at a time waits. ``predict`` is a Keras model's
    ``predict_on_batch`` (the backend's compiled step), or an exported file's runtime."""
    batch = image[None]
    for _ in range(LATENCY_WARMUP):
        predict(batch)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def stored_bytes(model: Any) -> int:
    """The size in bytes of ``model`` as a trial stores it (a ``.keras`` file: config and weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.stat().st_size

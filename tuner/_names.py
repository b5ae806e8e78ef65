"""The names a user picks from (backends, Keras Tuner's algorithms, samplers, pruners, ...): the
bottom of the package, beside ``errors``, so every layer can check a name without importing another."""

from __future__ import annotations

SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc", "nsga2")
# What a sampler imports beyond the base install, and the extra that brings it: (module, extra).
SAMPLER_NEEDS = {"gp": ("torch", "torch")}  # Optuna's GPSampler fits its Gaussian process with PyTorch
PRUNERS = ("hyperband", "sha", "median", "none")
CURVE_OBJECTIVES = ("val_accuracy", "val_loss")  # read off the training curve
OBJECTIVES = (*CURVE_OBJECTIVES, "param_count", "latency_ms")  # one, or several for a Pareto front
BACKENDS = ("optuna", "keras-tuner")
ALGORITHMS = ("random", "bayesian", "hyperband", "grid")  # Keras Tuner's tuners
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
RESIZE_MODES = ("crop", "pad")  # how an image of another aspect ratio is fitted to --image-size

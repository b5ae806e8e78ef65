"""What each built-in space declares: its hyperparameters' names, ranges and defaults (public API).

Kept free of Keras, so listing the spaces (``tuner spaces``) and checking ``--set`` need no
framework; the spaces' ``build(hp)`` calls the same functions with Keras Tuner's (or Optuna's) ``hp``.
"""

from __future__ import annotations

from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
RESNET_DEPTHS = [8, 14, 20, 32, 44, 56, 110]
# L = 6n+4, valid with and without bottleneck: 40 and 100 are the paper's CIFAR depths.
DENSENET_DEPTHS = [10, 16, 22, 40, 64, 100]

RESNET_DESCRIPTION = "CIFAR-style ResNet (He et al. 2016), depth 6n+2, post- (v1) or pre-activation (v2)"
DENSENET_DESCRIPTION = "CIFAR-style DenseNet / DenseNet-BC (Huang et al. 2017), depth L = 6n+4"


def declare_recipe(hp: Any) -> dict[str, Any]:
    """The training hyperparameters every space shares: optimiser, weight decay, learning rate, schedule.

    Weight decay is an L2 penalty in the loss (``l2``) for Adam and SGD, and decoupled
    (``weight_decay``, Loshchilov & Hutter 2019) for AdamW; each is declared only under its
    optimiser, so a trial records (and a sampler tunes) only the one it uses.
    """
    optimizer = hp.Choice("optimizer", list(OPTIMIZERS), default="adam")
    with hp.conditional_scope("optimizer", ["adam", "sgd"]):
        l2 = hp.Float("l2", 1e-6, 1e-3, sampling="log", default=1e-4)
    with hp.conditional_scope("optimizer", ["adamw"]):
        weight_decay = hp.Float("weight_decay", 1e-4, 1e-1, sampling="log", default=1e-2)
    return {
        "optimizer": optimizer,
        "l2": l2 or 0.0,  # None when inactive: AdamW decays the weights itself
        "weight_decay": weight_decay or 0.0,
        "learning_rate": hp.Float("learning_rate", 1e-4, 1e-1, sampling="log", default=1e-3),
        "lr_schedule": hp.Choice("lr_schedule", list(SCHEDULES), default="cosine"),
    }


def declare_resnet(hp: Any) -> dict[str, Any]:
    """ResNet's architecture (see ``search_spaces.resnet``), then the shared recipe."""
    return {
        # The defaults are the first trial of a new study: a shallow, wide ResNet-8 on a stride-2
        # stem reached Fashion-MNIST's 0.87 validation accuracy in one epoch of ~45 s on a
        # 2-core CPU, where ResNet-20 (16 filters, full resolution) had 0.79 after 78 s.
        "depth": hp.Choice("depth", RESNET_DEPTHS, default=8),
        "filters": hp.Choice("filters", [16, 32, 64], default=32),
        "kernel_size": hp.Choice("kernel_size", [3, 5], default=3),
        "stem_stride": hp.Choice("stem_stride", [1, 2], default=2),
        "version": hp.Choice("version", ["v1", "v2"], default="v1"),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.05, default=0.0),
        **declare_recipe(hp),
    }


def declare_densenet(hp: Any) -> dict[str, Any]:
    """DenseNet's architecture (see ``search_spaces.densenet``), then the shared recipe."""
    return {
        "depth": hp.Choice("depth", DENSENET_DEPTHS, default=40),
        "growth_rate": hp.Choice("growth_rate", [8, 12, 16, 24, 32], default=12),
        "filters": hp.Choice("filters", [16, 24, 32, 48], default=24),
        "bottleneck": hp.Boolean("bottleneck", default=True),
        "compression": hp.Float("compression", 0.5, 1.0, step=0.25, default=0.5),
        "kernel_size": hp.Choice("kernel_size", [3, 5], default=3),
        # Dropout after every conv, as in the paper (0.2 there): a light touch adds up over L layers.
        "dropout": hp.Float("dropout", 0.0, 0.3, step=0.05, default=0.0),
        **declare_recipe(hp),
    }


# The hyperparameters whose smaller values make a smaller, faster model, in every built-in space.
SIZE_HYPERPARAMETERS = ("depth", "filters", "kernel_size", "growth_rate")


def smallest_values(specs: Any) -> dict[str, Any]:
    """The defaults of ``specs`` (``ParamSpec``s, as a search draws them), with every size
    hyperparameter at its smallest value: the cheap end a Pareto search starts from, beside the defaults."""
    values = {}
    for spec in specs:
        value = spec.default
        if spec.name in SIZE_HYPERPARAMETERS and spec.kind == "Choice":
            value = min(spec.config["values"])
        elif spec.name in SIZE_HYPERPARAMETERS and spec.kind == "Int":
            value = spec.config["min_value"]
        values[spec.name] = value
    return values

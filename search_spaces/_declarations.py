"""What each built-in space declares: its hyperparameters' names, ranges and defaults (public API).

Kept free of Keras, so listing the spaces (``tuner spaces``) and checking ``--set`` need no
framework; the spaces' ``build(hp)`` calls the same functions with Keras Tuner's (or Optuna's) ``hp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_spaces._errors import SpaceError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
ACTIVATIONS = ("relu", "elu", "silu", "gelu")
# "step" divides the rate by 10 at half and three quarters of the steps (the ResNet paper's); "plateau"
# divides it by 5 after epochs without progress (Keras' ReduceLROnPlateau).
SCHEDULES = ("cosine", "constant", "step", "plateau")
RESNET_DEPTHS = [8, 14, 20, 32, 44, 56, 110]
# L = 6n+4, valid with and without bottleneck: 40 and 100 are the paper's CIFAR depths.
DENSENET_DEPTHS = [10, 16, 22, 40, 64, 100]
DENSENET_BLOCKS = ("depth", "4-8-16", "6-12-24-16")
# Weight layers: the convolutions of five stages plus three (Simonyan & Zisserman 2015, table 1); 8 is
# one convolution a stage, the "big-kernel" VGG of the articles with 5x5 and 7x7 kernels.
VGG_DEPTHS = [8, 11, 13, 16, 19]
RESNET_IMAGENET_DEPTHS = [18, 34, 50, 101, 152]

RESNET_DESCRIPTION = "CIFAR-style ResNet (He et al. 2016), depth 6n+2, post- (v1) or pre-activation (v2)"
DENSENET_DESCRIPTION = "CIFAR-style DenseNet / DenseNet-BC (Huang et al. 2017), depth L = 6n+4"
RESNET_IMAGENET_DESCRIPTION = ("ResNet-18/34/50/101/152 in the ImageNet layout (He et al. 2016): four stages, basic or "
                               "bottleneck blocks, v1 or v2")
INCEPTION_DESCRIPTION = "GoogLeNet-style Inception modules (Szegedy et al. 2015) with batch norm, stages 3-5"
AUTO_DESCRIPTION = "Every family above in one search: family is a hyperparameter, each family's own under it"
VGG_DESCRIPTION = "VGG-8/11/13/16/19 with batch norm (Simonyan & Zisserman 2015), five stages and a dense head"


# The random training transforms an augmentation is made of, named joined by "_" in this order
# ("flip_shift", "flip_shift_rotate_zoom"), or "none": horizontal flips, shifts of up to an eighth of
# the side, rotations of up to 15 degrees and zooms of up to 10% (the articles' Keras recipe).
TRANSFORMS = ("flip", "shift", "rotate", "zoom")
AUGMENTATION_HELP = f"none, or any of {', '.join(TRANSFORMS)} joined by _ in that order (flip_shift)"


def transforms_of(augment: str) -> tuple[str, ...]:
    """The transforms an augmentation's name holds, in ``TRANSFORMS`` order; refuses another name."""
    parts = () if augment == "none" else tuple(augment.split("_"))
    if not all(part in TRANSFORMS for part in parts) or list(parts) != sorted(set(parts), key=TRANSFORMS.index):
        raise SpaceError(f"unknown augmentation {augment!r}; choose {AUGMENTATION_HELP}")
    return parts


def declare_recipe(hp: Any) -> dict[str, Any]:
    """The training hyperparameters every space shares: activation, optimiser, weight decay, L1,
    learning rate, schedule.

    Weight decay is an L2 penalty in the loss (``l2``) for Adam, SGD and RMSprop, and decoupled
    (``weight_decay``, Loshchilov & Hutter 2019) for AdamW; each is declared only under its
    optimiser, so a trial records (and a sampler tunes) only the one it uses. ``l1``, a penalty on
    the weights' absolute values, is off by default, for every optimiser.
    """
    activation = hp.Choice("activation", list(ACTIVATIONS), default="relu")
    optimizer = hp.Choice("optimizer", list(OPTIMIZERS), default="adam")
    with hp.conditional_scope("optimizer", ["adam", "sgd", "rmsprop"]):
        l2 = hp.Float("l2", 1e-6, 1e-3, sampling="log", default=1e-4)
    with hp.conditional_scope("optimizer", ["adamw"]):
        weight_decay = hp.Float("weight_decay", 1e-4, 1e-1, sampling="log", default=1e-2)
    return {
        "activation": activation,
        "optimizer": optimizer,
        "l2": l2 or 0.0,  # None when inactive: AdamW decays the weights itself
        "weight_decay": weight_decay or 0.0,
        "l1": hp.Choice("l1", [0.0, 1e-6, 1e-5, 1e-4], default=0.0),
        "learning_rate": hp.Float("learning_rate", 1e-4, 1e-1, sampling="log", default=1e-3),
        "lr_schedule": hp.Choice("lr_schedule", list(SCHEDULES), default="cosine"),
    }


def resnet_architecture(hp: Any) -> dict[str, Any]:
    """ResNet's architecture (see ``search_spaces.resnet``); the space adds the shared recipe."""
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
    }


def densenet_architecture(hp: Any) -> dict[str, Any]:
    """DenseNet's architecture (see ``search_spaces.densenet``). ``blocks`` is
    "depth" (three equal blocks of ``depth``'s layers, the paper's CIFAR nets) or the layers of each
    block ("4-8-16": the articles' DenseNet; "6-12-24-16": DenseNet-121's four blocks)."""
    blocks = hp.Choice("blocks", list(DENSENET_BLOCKS), default="depth")
    with hp.conditional_scope("blocks", ["depth"]):
        depth = hp.Choice("depth", DENSENET_DEPTHS, default=40)
    return {
        "blocks": blocks,
        "depth": depth,
        "growth_rate": hp.Choice("growth_rate", [8, 12, 16, 24, 32], default=12),
        "filters": hp.Choice("filters", [16, 24, 32, 48], default=24),
        "bottleneck": hp.Boolean("bottleneck", default=True),
        # The bottleneck's channels, as a multiple of the growth rate (the paper's 4; the articles' 2).
        "bottleneck_width": hp.Choice("bottleneck_width", [2, 4], default=4),
        "compression": hp.Float("compression", 0.5, 1.0, step=0.25, default=0.5),
        "final_transition": hp.Boolean("final_transition", default=False),
        "kernel_size": hp.Choice("kernel_size", [3, 5], default=3),
        # Dropout after every conv, as in the paper (0.2 there): a light touch adds up over L layers.
        "dropout": hp.Float("dropout", 0.0, 0.3, step=0.05, default=0.0),
    }


def vgg_architecture(hp: Any) -> dict[str, Any]:
    """VGG's architecture (see ``search_spaces.vgg``). The defaults are a
    VGG-11 a quarter as wide as the paper's, light enough for a CPU; the articles' models are
    configurations (``docs/reference/spaces.md``)."""
    return {
        "depth": hp.Choice("depth", VGG_DEPTHS, default=11),
        "filters": hp.Choice("filters", [16, 32, 64], default=16),
        "kernel_size": hp.Choice("kernel_size", [3, 5], default=3),  # stages 1-2
        "deep_kernel_size": hp.Choice("deep_kernel_size", [3, 5, 7], default=3),  # stages 3-5
        "stage1_dropout": hp.Float("stage1_dropout", 0.0, 0.5, step=0.05, default=0.0),
        "conv_dropout": hp.Float("conv_dropout", 0.0, 0.5, step=0.05, default=0.0),  # stages 2-5
        "pool_dropout": hp.Float("pool_dropout", 0.0, 0.5, step=0.05, default=0.0),
        "dense_units": hp.Choice("dense_units", [0, 128, 256, 512], default=256),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.05, default=0.3),
    }


def resnet_imagenet_architecture(hp: Any) -> dict[str, Any]:
    """ResNet's ImageNet layout (see ``search_spaces.resnet_imagenet``). The
    defaults are a ResNet-18 half as wide as the paper's."""
    return {
        "depth": hp.Choice("depth", RESNET_IMAGENET_DEPTHS, default=18),
        "filters": hp.Choice("filters", [16, 32, 64], default=32),
        "kernel_size": hp.Choice("kernel_size", [3, 5], default=3),
        "version": hp.Choice("version", ["v1", "v2"], default="v1"),
        "stem_pool": hp.Boolean("stem_pool", default=True),
        "pooling": hp.Choice("pooling", ["avg", "max"], default="avg"),
        "dense_units": hp.Choice("dense_units", [0, 256, 512], default=0),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.05, default=0.0),
    }


def inception_architecture(hp: Any) -> dict[str, Any]:
    """Inception's architecture (see ``search_spaces.inception``). The
    defaults are a quarter of the paper's widths with 2, 2 and 1 modules in stages 3, 4 and 5."""
    return {
        "stage3_modules": hp.Int("stage3_modules", 1, 2, default=2),
        "stage4_modules": hp.Int("stage4_modules", 1, 5, default=2),
        "stage5_modules": hp.Int("stage5_modules", 1, 2, default=1),
        "width": hp.Choice("width", [0.25, 0.5, 1.0], default=0.25),  # x the paper's branch widths
        "stem_filters": hp.Choice("stem_filters", [16, 32, 64], default=32),
        "pooling": hp.Choice("pooling", ["avg", "max"], default="avg"),
        "dense_units": hp.Choice("dense_units", [0, 256, 512], default=0),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.05, default=0.2),
    }


# Each built-in space's architecture, by space name: what ``declare_space`` puts before the recipe.
ARCHITECTURES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "resnet": resnet_architecture,
    "densenet": densenet_architecture,
    "vgg": vgg_architecture,
    "resnet_imagenet": resnet_imagenet_architecture,
    "inception": inception_architecture,
}
FAMILY_SEPARATOR = "."


def declare_space(name: str, hp: Any) -> dict[str, Any]:
    """A built-in space's hyperparameters: its architecture's, then the shared recipe."""
    return {**ARCHITECTURES[name](hp), **declare_recipe(hp)}


class Prefixed:
    """An ``hp`` whose declarations (and the parents of its conditions) are named ``prefix`` +
    name: one family's architecture inside the ``auto`` space ("vgg.depth" beside "resnet.depth")."""

    def __init__(self, hp: Any, prefix: str) -> None:
        self.hp, self.prefix = hp, prefix

    def conditional_scope(self, parent_name: str, parent_values: Any) -> Any:
        return self.hp.conditional_scope(self.prefix + parent_name, parent_values)

    def __getattr__(self, kind: str) -> Callable[..., Any]:  # Int, Float, Choice, Boolean, Fixed
        declare = getattr(self.hp, kind)

        def prefixed(name: str, *args: Any, parent_name: str | None = None, **kwargs: Any) -> Any:
            if parent_name is not None:
                kwargs["parent_name"] = self.prefix + parent_name
            return declare(self.prefix + name, *args, **kwargs)

        return prefixed


def declare_auto(hp: Any) -> dict[str, Any]:
    """One search across families: ``family`` chooses the architecture, whose hyperparameters are
    named after it ("resnet.depth") and declared only under it; the recipe is shared. Returns the
    chosen family's architecture values under their own names, with ``family`` and the recipe."""
    family = hp.Choice("family", list(ARCHITECTURES), default="resnet")
    chosen: dict[str, Any] = {}
    for name, architecture in ARCHITECTURES.items():
        with hp.conditional_scope("family", [name]):
            values = architecture(Prefixed(hp, name + FAMILY_SEPARATOR))
        if name == family:
            chosen = values
    return {"family": family, **chosen, **declare_recipe(hp)}


# The hyperparameters whose smaller values make a smaller, faster model, in every built-in space.
SIZE_HYPERPARAMETERS = ("depth", "filters", "kernel_size", "growth_rate", "deep_kernel_size", "dense_units",
                        "bottleneck_width", "stage3_modules", "stage4_modules", "stage5_modules", "width",
                        "stem_filters")


def smallest_values(specs: Any) -> dict[str, Any]:
    """The defaults of ``specs`` (``ParamSpec``s, as a search draws them), with every size
    hyperparameter at its smallest value: the cheap end a Pareto search starts from, beside the defaults."""
    values = {}
    for spec in specs:
        value = spec.default
        size = spec.name.rpartition(FAMILY_SEPARATOR)[2] in SIZE_HYPERPARAMETERS  # "vgg.depth" too
        if size and spec.kind == "Choice":
            value = min(spec.config["values"])
        elif size and spec.kind == "Int":
            value = spec.config["min_value"]
        values[spec.name] = value
    return values

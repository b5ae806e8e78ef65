"""GoogLeNet-style Inception networks (Szegedy et al. 2015), with batch normalisation.

An Inception module runs four branches side by side and concatenates them: a 1x1 convolution; a 1x1
reduction then a 3x3; a 1x1 reduction then a 5x5; a 3x3 max pool (stride 1) then a 1x1 projection.
Stages 3, 4 and 5 hold up to 2, 5 and 2 modules whose branch widths are the paper's (modules 3a-3b,
4a-4e, 5a-5b; a stage of k modules has the paper's first k) times ``width``; max pooling joins the
stages. The stem is a 3x3 convolution, max pool, 5x5 convolution (1.5 times as wide) and max pool, as
in the articles' CIFAR GoogLeNet; inputs over 64 px are strided down first, as in every space here.
Pools halve the map while it is at least 2 px. The head pools (average or max), may hold a dense
layer with batch norm, and classifies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from search_spaces._base import TunableSpace
from search_spaces._declarations import INCEPTION_DESCRIPTION
from search_spaces._errors import SpaceError
from search_spaces._layers import pooled_head
from search_spaces._layers import stem
from search_spaces._layers import stem_downsamples
from search_spaces.vgg import conv_bn_act

# The paper's branch widths (table 1): 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection.
MODULES = {
    3: ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    4: ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
    5: ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
}


def inception_module(x, widths: Sequence[int], *, l2: float, l1: float, activation: str, name: str):
    """Four branches (1x1; 1x1-3x3; 1x1-5x5; 3x3 max pool-1x1) of ``widths``, concatenated."""
    one, reduce3, three, reduce5, five, project = widths
    unit = functools.partial(conv_bn_act, l2=l2, l1=l1, activation=activation)
    a = unit(x, one, 1, name=f"{name}_1x1")
    b = unit(unit(x, reduce3, 1, name=f"{name}_3x3_reduce"), three, 3, name=f"{name}_3x3")
    c = unit(unit(x, reduce5, 1, name=f"{name}_5x5_reduce"), five, 5, name=f"{name}_5x5")
    d = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    d = unit(d, project, 1, name=f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_concat")([a, b, c, d])


def scaled(widths: Sequence[int], width: float) -> list[int]:
    """The paper's branch widths times ``width``, at least 1 each."""
    return [max(1, int(w * width)) for w in widths]


def build_inception(
    input_shape: Sequence[int],
    classes: int,
    *,
    modules: Sequence[int] = (2, 5, 2),
    width: float = 1.0,
    stem_filters: int = 64,
    pooling: str = "avg",
    dense_units: int = 0,
    dropout: float = 0.4,
    l2: float = 1e-4,
    l1: float = 0.0,
    activation: str = "relu",
    preprocess: Callable[[keras.KerasTensor], keras.KerasTensor] | None = None,
) -> keras.Model:
    """An Inception network with ``modules`` modules in stages 3, 4 and 5; the articles' CIFAR
    GoogLeNet is ``build_inception((32, 32, 3), 10, width=0.5, pooling="max", dense_units=512,
    dropout=0.5, l2=5e-4)``."""
    if len(modules) != 3 or any(not 1 <= n <= len(MODULES[s]) for s, n in zip(MODULES, modules, strict=False)):
        raise SpaceError(f"Inception modules per stage must be 1-2, 1-5 and 1-2, got {list(modules)}")
    unit = functools.partial(conv_bn_act, l2=l2, l1=l1, activation=activation)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = preprocess(inputs) if preprocess else inputs
    size = min(input_shape[:2])

    def pool(x, name: str):
        nonlocal size
        if size < 2:
            return x
        size = (size + 1) // 2
        return layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)

    downsamples = stem_downsamples(size)
    if downsamples:  # a large input: a strided 7x7 convolution and pools first, as the paper's stem
        x = stem(x, stem_filters, kernel_size=7, downsamples=downsamples, l2=l2, l1=l1, activate=True,
                 activation=activation, name="stem0")
        size //= 2**downsamples
    x = pool(unit(x, stem_filters, 3, name="stem1"), "stem1_pool")
    x = pool(unit(x, stem_filters * 3 // 2, 5, name="stem2"), "stem2_pool")
    for stage, count in zip(MODULES, modules, strict=True):
        if stage > 3:
            x = pool(x, f"stage{stage}_pool")
        for j, widths in enumerate(MODULES[stage][:count]):
            x = inception_module(x, scaled(widths, width), l2=l2, l1=l1, activation=activation,
                                 name=f"inception{stage}{'abcde'[j]}")
    outputs = pooled_head(x, classes, pooling=pooling, dense_units=dense_units, dropout=dropout, l2=l2, l1=l1,
                          activation=activation)
    return keras.Model(inputs, outputs, name=f"inception_{'-'.join(map(str, modules))}")


class TunableInception(TunableSpace):
    """GoogLeNet-style Inception: modules per stage, width multiplier, stem width, head, dropout, L1/L2,
    activation, optimiser."""

    space_name = "inception"
    description = INCEPTION_DESCRIPTION


    def architecture(self, values: dict[str, Any]) -> keras.Model:
        return build_inception(
            self.input_shape,
            self.classes,
            modules=(values["stage3_modules"], values["stage4_modules"], values["stage5_modules"]),
            width=values["width"],
            stem_filters=values["stem_filters"],
            pooling=values["pooling"],
            dense_units=values["dense_units"],
            dropout=values["dropout"],
            l2=values["l2"],
            l1=values["l1"],
            activation=values["activation"],
            preprocess=self.preprocess,
        )

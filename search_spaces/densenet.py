"""DenseNet for small images (Huang et al. 2017, section 3): three dense blocks joined by transitions.

``depth`` is L as in the paper: 3 blocks of n layers, each one conv (two with ``bottleneck``, the "B"
of DenseNet-BC), plus the stem conv, two transitions and the classifier, so L = 3n+4 or 6n+4.
``compression`` < 1 is the "C": transitions keep that fraction of the channels. ``blocks`` gives each
block's layers instead (the articles' 4-8-16; DenseNet-121's 6-12-24-16), ``bottleneck_width`` the
bottleneck's channels as a multiple of the growth rate (4 in the paper), and ``final_transition`` a
transition after the last block too, as the articles' DenseNet has.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from search_spaces._base import TunableSpace
from search_spaces._declarations import DENSENET_DESCRIPTION
from search_spaces._errors import SpaceError
from search_spaces._layers import batch_norm
from search_spaces._layers import pooled_head
from search_spaces._layers import regularizer
from search_spaces._layers import stage_strides
from search_spaces._layers import stem
from search_spaces._layers import stem_downsamples

BLOCKS = 3


def layers_per_block(depth: int, bottleneck: bool) -> int:
    """n, the layers in each of the three dense blocks of a DenseNet of depth L."""
    convs_per_layer = 2 if bottleneck else 1
    if depth < 10 or (depth - 4) % (3 * convs_per_layer):
        form = "6n+4" if bottleneck else "3n+4"
        raise SpaceError(f"DenseNet depth must be {form} (for example 40 or 100), got {depth}")
    return (depth - 4) // (3 * convs_per_layer)


def bn_act_conv(x, filters: int, kernel_size: int, *, dropout: float, l2: float, l1: float, activation: str,
                name: str):
    """The composite function H of the paper: BN-activation (ReLU there)-conv, then dropout."""
    x = batch_norm(f"{name}_bn")(x)
    x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer(l2, l1),
        name=f"{name}_conv",
    )(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def dense_layer(x, growth_rate: int, *, bottleneck: bool, bottleneck_width: int, kernel_size: int, dropout: float,
                l2: float, l1: float, activation: str, name: str):
    """Adds ``growth_rate`` feature maps to ``x``; a bottleneck layer first reduces to
    ``bottleneck_width`` x k channels."""
    y = x
    if bottleneck:
        y = bn_act_conv(y, bottleneck_width * growth_rate, 1, dropout=dropout, l2=l2, l1=l1, activation=activation,
                        name=f"{name}_1")
    y = bn_act_conv(y, growth_rate, kernel_size, dropout=dropout, l2=l2, l1=l1, activation=activation,
                    name=f"{name}_2")
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def dense_block(x, layers_count: int, growth_rate: int, *, bottleneck: bool, bottleneck_width: int,
                kernel_size: int, dropout: float, l2: float, l1: float, activation: str, name: str):
    """``layers_count`` densely connected layers."""
    for i in range(1, layers_count + 1):
        x = dense_layer(x, growth_rate, bottleneck=bottleneck, bottleneck_width=bottleneck_width,
                        kernel_size=kernel_size,
                        dropout=dropout, l2=l2, l1=l1, activation=activation, name=f"{name}_layer{i}")
    return x


def transition(x, compression: float, *, downsample: bool, dropout: float, l2: float, l1: float,
               activation: str, name: str):
    """1x1 conv to ``compression`` times the channels, then 2x2 average pooling if the size allows
    (padded, so an odd side rounds up as ``stage_strides`` counts it: 7 px become 4)."""
    filters = max(1, int(x.shape[-1] * compression))
    x = bn_act_conv(x, filters, 1, dropout=dropout, l2=l2, l1=l1, activation=activation, name=name)
    if downsample:
        x = layers.AveragePooling2D(2, strides=2, padding="same", name=f"{name}_pool")(x)
    return x


def build_densenet(
    input_shape: Sequence[int],
    classes: int,
    *,
    depth: int | None = 40,
    blocks: Sequence[int] | None = None,
    growth_rate: int = 12,
    filters: int = 24,
    bottleneck: bool = True,
    bottleneck_width: int = 4,
    compression: float = 0.5,
    final_transition: bool = False,
    kernel_size: int = 3,
    dropout: float = 0.0,
    l2: float = 1e-4,
    l1: float = 0.0,
    activation: str = "relu",
    preprocess: Callable[[keras.KerasTensor], keras.KerasTensor] | None = None,
) -> keras.Model:
    """A CIFAR-style DenseNet; DenseNet-BC (L=100, k=12) is ``build_densenet(shape, 10, depth=100)``,
    the articles' DenseNet ``build_densenet(shape, 10, blocks=(4, 8, 16), growth_rate=32, filters=16,
    bottleneck_width=2, final_transition=True)``."""
    if not 0 < compression <= 1:
        raise SpaceError(f"DenseNet compression must be in (0, 1], got {compression}")
    size_name = f"_{'-'.join(map(str, blocks))}" if blocks is not None else str(depth)
    if blocks is None:
        if depth is None:
            raise SpaceError("a DenseNet needs its depth or its blocks' layers")
        blocks = [layers_per_block(depth, bottleneck)] * BLOCKS
    if not blocks or min(blocks) < 1:
        raise SpaceError(f"DenseNet blocks need one layer or more each, got {list(blocks)}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = preprocess(inputs) if preprocess else inputs
    size = min(input_shape[:2])
    downsamples = stem_downsamples(size)
    size //= 2**downsamples
    x = stem(x, filters, kernel_size=kernel_size, downsamples=downsamples, l2=l2, l1=l1, activate=False)
    strides = stage_strides(size, len(blocks) + final_transition)
    for i, count in enumerate(blocks):
        x = dense_block(x, count, growth_rate, bottleneck=bottleneck, bottleneck_width=bottleneck_width,
                        kernel_size=kernel_size, dropout=dropout, l2=l2, l1=l1, activation=activation,
                        name=f"block{i + 1}")
        if i < len(blocks) - 1 or final_transition:
            x = transition(x, compression, downsample=strides[i + 1] == 2, dropout=dropout, l2=l2, l1=l1,
                           activation=activation, name=f"transition{i + 1}")
    x = batch_norm("post_bn")(x)
    x = layers.Activation(activation, name=f"post_{activation}")(x)
    outputs = pooled_head(x, classes, dropout=0.0, l2=l2, l1=l1)
    kind = "densenet_bc" if bottleneck and compression < 1 else "densenet"
    return keras.Model(inputs, outputs, name=f"{kind}{size_name}_k{growth_rate}")


class TunableDenseNet(TunableSpace):
    """DenseNet(-BC) for small images: depth L, growth rate k, compression, bottleneck, dropout, L2."""

    space_name = "densenet"
    description = DENSENET_DESCRIPTION
    added = {"activation": "relu", "l1": 0.0, "blocks": "depth", "bottleneck_width": 4, "final_transition": False}


    def architecture(self, values: dict[str, Any]) -> keras.Model:
        return build_densenet(
            self.input_shape,
            self.classes,
            depth=values["depth"],
            blocks=None if values["blocks"] == "depth" else [int(n) for n in values["blocks"].split("-")],
            growth_rate=values["growth_rate"],
            filters=values["filters"],
            bottleneck=values["bottleneck"],
            bottleneck_width=values["bottleneck_width"],
            compression=values["compression"],
            final_transition=values["final_transition"],
            kernel_size=values["kernel_size"],
            dropout=values["dropout"],
            l2=values["l2"],
            l1=values["l1"],
            activation=values["activation"],
            preprocess=self.preprocess,
        )

"""VGG with batch normalisation (Simonyan & Zisserman 2015): five stages of convolutions, each ended by
2x2 max pooling, then a dense head.

``depth`` counts weight layers as the paper does (the convolutions plus three): VGG-11, -13, -16 and
-19 are the paper's configurations A, B, D and E; VGG-8 has one convolution a stage, the "big-kernel"
VGG of the articles when its later stages use 7x7 kernels. As in the CIFAR VGG16 of the articles,
every convolution is followed by batch normalisation and its activation, and dropout may follow each
convolution but a stage's last (the one before pooling); a stage of one convolution has it after
that one. Stages pool while the feature map is at least 2 px, so any input from 8 px on builds
(32 px ends at 1x1, as in the articles); a global average pool then feeds the head, which at 1x1 is
the articles' flatten. Convolutions and the hidden dense layer carry no bias: batch normalisation
follows each.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import keras
from keras import layers

from search_spaces._base import TunableSpace
from search_spaces._declarations import VGG_DESCRIPTION
from search_spaces._errors import SpaceError
from search_spaces._layers import batch_norm
from search_spaces._layers import pooled_head
from search_spaces._layers import regularizer

# Convolutions in each of the five stages, by depth (the paper's table 1; 8: one a stage).
STAGE_CONVS = {8: (1, 1, 1, 1, 1), 11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
               19: (2, 2, 4, 4, 4)}
# Each stage's width as a multiple of the first's: 64-128-256-512-512 in the paper.
STAGE_WIDTHS = (1, 2, 4, 8, 8)


def stage_convs(depth: int) -> tuple[int, ...]:
    """The convolutions in each stage of a VGG of ``depth`` weight layers."""
    if depth not in STAGE_CONVS:
        raise SpaceError(f"VGG depth must be one of {', '.join(map(str, STAGE_CONVS))}, got {depth}")
    return STAGE_CONVS[depth]


def conv_bn_act(x, filters: int, kernel_size: int, *, l2: float, l1: float, activation: str, name: str):
    """A bias-free, He-initialised 'same' convolution, batch normalisation, then the activation."""
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, kernel_initializer="he_normal",
                      kernel_regularizer=regularizer(l2, l1), name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn")(x)
    return layers.Activation(activation, name=f"{name}_{activation}")(x)


def vgg_stage(x, filters: int, convs: int, *, kernel_size: int, dropout: float, pool: bool, l2: float, l1: float,
              activation: str, name: str):
    """``convs`` convolutions, dropout after each but the last (after the only one of a single-conv
    stage), then 2x2 max pooling where ``pool``."""
    for i in range(1, convs + 1):
        x = conv_bn_act(x, filters, kernel_size, l2=l2, l1=l1, activation=activation, name=f"{name}_{i}")
        if dropout > 0 and (i < convs or convs == 1):
            x = layers.Dropout(dropout, name=f"{name}_{i}_dropout")(x)
    if pool:
        x = layers.MaxPooling2D(2, padding="same", name=f"{name}_pool")(x)
    return x


def build_vgg(
    input_shape: Sequence[int],
    classes: int,
    *,
    depth: int = 16,
    filters: int = 64,
    kernel_size: int = 3,
    deep_kernel_size: int = 3,
    stage1_dropout: float = 0.0,
    conv_dropout: float = 0.0,
    pool_dropout: float = 0.0,
    dense_units: int = 512,
    dropout: float = 0.5,
    l2: float = 1e-4,
    l1: float = 0.0,
    activation: str = "relu",
    preprocess: Callable[[keras.KerasTensor], keras.KerasTensor] | None = None,
) -> keras.Model:
    """A VGG of ``depth`` weight layers; the articles' CIFAR VGG16 is ``build_vgg((32, 32, 3), 10,
    stage1_dropout=0.3, conv_dropout=0.4, pool_dropout=0.5, l2=5e-4)``.

    ``filters`` is the first stage's width (the paper's 64); ``kernel_size`` the kernel of stages 1-2
    and ``deep_kernel_size`` of stages 3-5; ``stage1_dropout`` and ``conv_dropout`` the dropout inside
    stage 1 and stages 2-5; ``pool_dropout`` the dropout after the last stage; ``dense_units`` the
    hidden dense layer of the head (0: none, the pooled features go to the classifier) and ``dropout``
    the dropout before the classifier.
    """
    convs = stage_convs(depth)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = preprocess(inputs) if preprocess else inputs
    size = min(input_shape[:2])
    for i, (count, width) in enumerate(zip(convs, STAGE_WIDTHS, strict=True)):
        pool = size >= 2
        x = vgg_stage(x, filters * width, count, kernel_size=kernel_size if i < 2 else deep_kernel_size,
                      dropout=stage1_dropout if i == 0 else conv_dropout, pool=pool, l2=l2, l1=l1,
                      activation=activation, name=f"stage{i + 1}")
        size = (size + 1) // 2 if pool else size
    outputs = pooled_head(x, classes, pool_dropout=pool_dropout, dense_units=dense_units, dropout=dropout, l2=l2,
                          l1=l1, activation=activation)
    return keras.Model(inputs, outputs, name=f"vgg{depth}")


class TunableVGG(TunableSpace):
    """VGG-8/11/13/16/19 with batch norm: depth, width, kernels, dropout inside and after the stages,
    dense head, L1/L2, activation, optimiser."""

    space_name = "vgg"
    description = VGG_DESCRIPTION
    builder = staticmethod(build_vgg)

"""ResNet's ImageNet layout (He et al. 2016, table 1): four stages, basic blocks for ResNet-18 and -34,
bottleneck blocks (1x1, 3x3, 1x1 with four times the width out) for ResNet-50, -101 and -152;
post-activation (v1) or pre-activation (v2, He et al. 2016b) blocks.

The stem is a convolution then, with ``stem_pool``, a 3x3 max pool of stride 2 (the paper's 7x7/2
convolution and pool for inputs over 64 px, as every space here strides large inputs down; a 3x3
convolution of stride 1 below, as CIFAR versions of ResNet-18 have it). Stages after the first halve
the map while it stays at least 4 px. The head pools (``pooling``: average, as the paper, or max, as
the articles' ResNet-18) and may hold a dense layer with batch norm (``dense_units``) before the
classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import keras
from keras import layers

from search_spaces._base import TunableSpace
from search_spaces._declarations import RESNET_IMAGENET_DESCRIPTION
from search_spaces._errors import SpaceError
from search_spaces._layers import batch_norm
from search_spaces._layers import pooled_head
from search_spaces._layers import stage_strides
from search_spaces._layers import stem
from search_spaces._layers import stem_downsamples
from search_spaces.resnet import block_v1
from search_spaces.resnet import block_v2
from search_spaces.resnet import bn_act
from search_spaces.resnet import conv

# Blocks in each of the four stages, and whether they are bottleneck blocks, by depth.
LAYOUTS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}
EXPANSION = 4  # a bottleneck block's output width, as a multiple of its inner width


def layout(depth: int) -> tuple[tuple[int, ...], bool]:
    """The blocks of each stage of ResNet-``depth`` and whether they are bottleneck blocks."""
    if depth not in LAYOUTS:
        raise SpaceError(f"ImageNet ResNet depth must be one of {', '.join(map(str, LAYOUTS))}, got {depth}")
    return LAYOUTS[depth]


def bottleneck_v1(x, filters: int, *, stride: int, kernel_size: int, l2: float, l1: float, activation: str,
                  name: str):
    """Post-activation bottleneck: 1x1 conv-BN-act, kxk conv (stride)-BN-act, 1x1 conv to 4x-BN,
    add the shortcut, act."""
    out = EXPANSION * filters
    shortcut = x
    if stride != 1 or x.shape[-1] != out:
        shortcut = batch_norm(f"{name}_proj_bn")(conv(x, out, 1, stride=stride, l2=l2, l1=l1, name=f"{name}_proj"))
    x = bn_act(conv(x, filters, 1, stride=1, l2=l2, l1=l1, name=f"{name}_conv1"), activation, f"{name}_1")
    x = bn_act(conv(x, filters, kernel_size, stride=stride, l2=l2, l1=l1, name=f"{name}_conv2"), activation,
               f"{name}_2")
    x = batch_norm(f"{name}_3_bn")(conv(x, out, 1, stride=1, l2=l2, l1=l1, name=f"{name}_conv3"))
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation(activation, name=f"{name}_out")(x)


def bottleneck_v2(x, filters: int, *, stride: int, kernel_size: int, l2: float, l1: float, activation: str,
                  name: str):
    """Pre-activation bottleneck: BN-act, 1x1 conv, BN-act, kxk conv (stride), BN-act, 1x1 conv to 4x,
    add the shortcut."""
    out = EXPANSION * filters
    preact = bn_act(x, activation, f"{name}_pre")
    shortcut = x
    if stride != 1 or x.shape[-1] != out:
        shortcut = conv(preact, out, 1, stride=stride, l2=l2, l1=l1, name=f"{name}_proj")
    x = conv(preact, filters, 1, stride=1, l2=l2, l1=l1, name=f"{name}_conv1")
    x = conv(bn_act(x, activation, f"{name}_1"), filters, kernel_size, stride=stride, l2=l2, l1=l1,
             name=f"{name}_conv2")
    x = conv(bn_act(x, activation, f"{name}_2"), out, 1, stride=1, l2=l2, l1=l1, name=f"{name}_conv3")
    return layers.Add(name=f"{name}_add")([shortcut, x])


def build_resnet_imagenet(
    input_shape: Sequence[int],
    classes: int,
    *,
    depth: int = 18,
    filters: int = 64,
    kernel_size: int = 3,
    version: str = "v1",
    stem_pool: bool = True,
    pooling: str = "avg",
    dense_units: int = 0,
    dropout: float = 0.0,
    l2: float = 1e-4,
    l1: float = 0.0,
    activation: str = "relu",
    preprocess: Callable[[keras.KerasTensor], keras.KerasTensor] | None = None,
) -> keras.Model:
    """ResNet-``depth`` in the ImageNet layout, ``filters`` wide in its first stage (the paper's 64),
    doubling at each; the articles' ResNet-18 is ``build_resnet_imagenet((32, 32, 3), 10,
    pooling="max", dense_units=512, dropout=0.5, l2=5e-4)``."""
    if version not in ("v1", "v2"):
        raise SpaceError(f"ResNet version must be 'v1' or 'v2', got {version!r}")
    stage_blocks, bottleneck = layout(depth)
    block = {(False, "v1"): block_v1, (False, "v2"): block_v2, (True, "v1"): bottleneck_v1,
             (True, "v2"): bottleneck_v2}[bottleneck, version]
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = preprocess(inputs) if preprocess else inputs
    size = min(input_shape[:2])
    downsamples = stem_downsamples(size)
    size //= 2**downsamples
    x = stem(x, filters, kernel_size=7 if downsamples else 3, downsamples=downsamples, l2=l2, l1=l1,
             activate=version == "v1", activation=activation)
    if stem_pool and not downsamples and (size + 1) // 2 >= 4:  # a strided stem pools already
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        size = (size + 1) // 2
    for i, (blocks, stride) in enumerate(zip(stage_blocks, stage_strides(size, len(stage_blocks)), strict=True)):
        for j in range(1, blocks + 1):
            x = block(x, filters * 2**i, stride=stride if j == 1 else 1, kernel_size=kernel_size, l2=l2, l1=l1,
                      activation=activation, name=f"stage{i + 1}_block{j}")
    if version == "v2":
        x = bn_act(x, activation, "post")
    outputs = pooled_head(x, classes, pooling=pooling, dense_units=dense_units, dropout=dropout, l2=l2, l1=l1,
                          activation=activation)
    return keras.Model(inputs, outputs, name=f"resnet{depth}_imagenet_{version}")


class TunableResNetImageNet(TunableSpace):
    """ResNet-18/34/50/101/152 in the ImageNet layout: depth, width, kernel, v1/v2, stem pool, head,
    dropout, L1/L2, activation, optimiser."""

    space_name = "resnet_imagenet"
    description = RESNET_IMAGENET_DESCRIPTION
    builder = staticmethod(build_resnet_imagenet)

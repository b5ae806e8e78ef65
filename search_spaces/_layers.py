"""Pure building blocks shared by the spaces: input normalisation, stem, head, downsampling plan.

Nothing here knows about hyperparameters; every function takes plain values. Only ``keras`` is
imported, so the blocks run on every Keras 3 backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from search_spaces._declarations import transforms_of
from search_spaces._errors import SpaceError
from tuner._compat import let_keras_compile

# Below this side length a feature map is not halved again: a 3x3 kernel still sees context at 4x4.
MIN_FEATURE_SIZE = 4
# Inputs larger than this get an ImageNet-style strided stem, so stage 1 works at <= 64 px.
MAX_STAGE_INPUT = 64
# The smallest input a stride-2 stem halves (8x8 digits keep their pixels).
MIN_STRIDED_INPUT = 16


# Trials are short: Keras' default 0.99 leaves the moving statistics that validation uses far from
# the batch statistics after a few hundred steps. 0.9 is PyTorch's default and the ResNet papers'.
BN_MOMENTUM = 0.9


def batch_norm(name: str) -> layers.BatchNormalization:
    """BatchNormalization with statistics that settle within a short trial."""
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def regularizer(l2: float, l1: float = 0.0) -> keras.regularizers.Regularizer | None:
    """A kernel regulariser penalising squared weights (``l2``) and absolute ones (``l1``); none at 0."""
    if l1 > 0:
        return keras.regularizers.L1L2(l1=l1, l2=l2)
    return keras.regularizers.L2(l2) if l2 > 0 else None


def normalize_inputs(
    inputs: keras.KerasTensor,
    mean: Sequence[float] | None,
    variance: Sequence[float] | None,
) -> keras.KerasTensor:
    """Scale raw pixels inside the model, so an exported model takes images as the dataset gave them.

    With per-channel training statistics this standardises; without them it assumes 0..255 pixels.
    """
    if mean is not None and variance is not None:
        return layers.Normalization(mean=list(mean), variance=list(variance), name="normalize")(inputs)
    return layers.Rescaling(1.0 / 255.0, name="normalize")(inputs)


# "shift": random translations of up to 1/8 of the side (4 px at 32x32, the CIFAR recipe's pad-and-crop);
# "flip": random horizontal flips, for images where a mirror shows the same class; "rotate": up to 15
# degrees either way (a fraction of a full turn); "zoom": in or out by up to 10%.
SHIFT_FRACTION = 0.125
ROTATION_FRACTION = 15 / 360
ZOOM_FRACTION = 0.1


def augment_images(x: keras.KerasTensor, augment: str) -> keras.KerasTensor:
    """Random training-time transforms (``transforms_of(augment)``; identity at inference); where a
    transform leaves pixels uncovered they are zero, the mean pixel after normalisation."""
    transforms = transforms_of(augment)
    if "flip" in transforms:
        x = layers.RandomFlip("horizontal", name="augment_flip")(x)
    geometric = {
        "shift": lambda: layers.RandomTranslation(SHIFT_FRACTION, SHIFT_FRACTION, fill_mode="constant",
                                                  name="augment_shift"),
        "rotate": lambda: layers.RandomRotation(ROTATION_FRACTION, fill_mode="constant", name="augment_rotate"),
        "zoom": lambda: layers.RandomZoom(ZOOM_FRACTION, fill_mode="constant", name="augment_zoom"),
    }
    for name, make in geometric.items():
        if name in transforms:
            layer = make()
            if keras.backend.backend() == "jax":
                # Keras marks these layers as not XLA-compilable (TensorFlow's image transform is not),
                # which turns off compilation of the whole train step on every backend; JAX compiles them
                # fine, and uncompiled JAX trained ResNet-8 on digits 20-200x slower (AdamW worst).
                layer = let_keras_compile(layer)
            x = layer(x)
    return x
FLIP_AVERAGE = "flip_average"  # the name of flip_averaged's output layer


def mirror(x: keras.KerasTensor, name: str = "mirror") -> keras.KerasTensor:
    """Images flipped left to right with built-in layers only (Keras has no deterministic flip layer):
    the width axis moved last, multiplied by a fixed reversed identity, moved back. Exact in every
    precision, and any Keras, TFLite or ONNX runtime runs it."""
    width = x.shape[2]
    x = layers.Permute((1, 3, 2), name=f"{name}_width_last")(x)
    reverse = layers.Dense(width, use_bias=False, trainable=False, dtype="float32", name=f"{name}_reverse")
    x = reverse(x)
    reverse.set_weights([np.eye(width, dtype="float32")[::-1]])
    return layers.Permute((1, 3, 2), name=f"{name}_width_back")(x)


def flip_averaged(model: keras.Model) -> keras.Model:
    """``model`` predicting the mean class probabilities of each image and its mirror image.

    Test-time flip averaging for a model trained with random flips: one extra forward pass for a
    steadier prediction (Fashion-MNIST, ResNet-8 after 3 epochs: 0.904 validation accuracy alone,
    0.910 averaged). The result holds a copy of ``model`` with its weights, frozen, and saves as a
    plain Keras model.
    """
    copy = model.__class__.from_config(model.get_config())  # uncompiled: no optimizer state to save
    copy.set_weights(model.get_weights())
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    both = [copy(inputs), copy(mirror(inputs))]
    outputs = layers.Average(dtype="float32", name=FLIP_AVERAGE)(both)
    averaged = keras.Model(inputs, outputs, name=f"{model.name}_flip_averaged")
    averaged.trainable = False  # for prediction; nothing of the training optimizer is carried along
    return averaged


def is_flip_averaged(model: keras.Model) -> bool:
    """Whether ``model`` came from ``flip_averaged`` (a model stored before it existed did not)."""
    return any(layer.name == FLIP_AVERAGE for layer in model.layers)


def stem_downsamples(size: int, stem_stride: int = 1) -> int:
    """How many times the input is halved before the first stage: a large input until it is at most
    ``MAX_STAGE_INPUT``; a small one (``MIN_STRIDED_INPUT`` to 64 px) once more with ``stem_stride=2``,
    which runs every stage on a quarter of the pixels (28x28 Fashion-MNIST: 14, 7, 4)."""
    count = 0
    while size > MAX_STAGE_INPUT:
        size //= 2
        count += 1
    if stem_stride == 2 and count == 0 and size >= MIN_STRIDED_INPUT:
        count = 1
    return count


def stage_strides(size: int, stages: int) -> list[int]:
    """Stride of each stage: the first keeps the size, later ones halve it while the result stays at
    least ``MIN_FEATURE_SIZE`` ('same' padding rounds up: 7 px become 4).

    Fashion-MNIST on a stride-2 stem runs its stages at 14, 7 and 4 px: rounding down kept the widest
    stage at 7 px, and its first epoch took 102 s instead of 77 s for the same accuracy (0.861, 0.857).
    """
    strides = [1]
    for _ in range(stages - 1):
        if (size + 1) // 2 >= MIN_FEATURE_SIZE:
            strides.append(2)
            size = (size + 1) // 2
        else:
            strides.append(1)
    return strides


def stem(
    x: keras.KerasTensor,
    filters: int,
    *,
    kernel_size: int,
    downsamples: int,
    l2: float,
    l1: float = 0.0,
    activate: bool,
    activation: str = "relu",
    name: str = "stem",
) -> keras.KerasTensor:
    """First convolution; for large inputs a stride-2 conv then max-pools, as ImageNet ResNets do.

    ``activate`` adds BatchNorm and ``activation`` after the conv (post-activation nets);
    pre-activation nets leave that to their first block.
    """
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=2 if downsamples else 1,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer(l2, l1),
        name=f"{name}_conv",
    )(x)
    if activate:
        x = batch_norm(f"{name}_bn")(x)
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    for i in range(1, downsamples):
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool{i}")(x)
    return x


def pooled_head(x: keras.KerasTensor, classes: int, *, pooling: str = "avg", pool_dropout: float = 0.0,
                dense_units: int = 0, dropout: float, l2: float, l1: float = 0.0,
                activation: str = "relu") -> keras.KerasTensor:
    """Every space's head: global ``pooling`` (``avg`` or ``max``),
    dropout, an optional bias-free dense layer with batch norm and ``activation``, then the
    ``classifier`` with its own ``dropout``."""
    if pooling not in ("avg", "max"):
        raise SpaceError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    x = pool(name=f"{pooling}_pool")(x)
    if pool_dropout > 0:
        x = layers.Dropout(pool_dropout, name="pool_dropout")(x)
    if dense_units:
        x = layers.Dense(dense_units, use_bias=False, kernel_regularizer=regularizer(l2, l1), name="dense")(x)
        x = batch_norm("dense_bn")(x)
        x = layers.Activation(activation, name=f"dense_{activation}")(x)
    return classifier(x, classes, dropout=dropout, l2=l2, l1=l1)


def classifier(x: keras.KerasTensor, classes: int, *, dropout: float, l2: float, l1: float = 0.0) -> keras.KerasTensor:
    """Optional dropout and a softmax classifier kept in float32, on pooled features."""
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(classes, kernel_regularizer=regularizer(l2, l1), name="logits")(x)
    # float32 softmax keeps the loss stable under mixed precision.
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)

"""The search spaces, tested from the registry: a new space is covered the moment it registers."""

from __future__ import annotations

from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest

from search_spaces import Declarations
from search_spaces import SpaceError
from search_spaces import build_densenet
from search_spaces import build_inception
from search_spaces import build_resnet
from search_spaces import build_resnet_imagenet
from search_spaces import build_vgg
from search_spaces import get_space
from search_spaces import list_spaces
from search_spaces import parse_assignments
from search_spaces import resolve_overrides
from search_spaces import smallest_values
from search_spaces import space_entry
from search_spaces._declarations import SIZE_HYPERPARAMETERS
from search_spaces.densenet import layers_per_block
from search_spaces.resnet import blocks_per_stage

COMMON = {"dropout", "l2", "weight_decay", "learning_rate", "optimizer", "lr_schedule", "activation", "l1"}
SIZES = {"depth", "filters", "kernel_size"}
SPECIFIC = {"resnet": SIZES | {"version", "stem_stride"},
            "densenet": SIZES | {"growth_rate", "compression", "bottleneck", "blocks", "bottleneck_width",
                                 "final_transition"},
            "inception": {"stage3_modules", "stage4_modules", "stage5_modules", "width", "stem_filters", "pooling",
                          "dense_units"},
            "resnet_imagenet": SIZES | {"version", "stem_pool", "pooling", "dense_units"},
            "vgg": SIZES | {"deep_kernel_size", "stage1_dropout", "conv_dropout", "pool_dropout", "dense_units"}}
# The auto space: every family's architecture under its name, the recipe once.
SPECIFIC["auto"] = {"family"} | {f"{family}.{name}" for family, names in SPECIFIC.items()
                                 for name in names | {"dropout"}}
# Parameters of the articles' CIFAR VGG16 (32x32x3, 10 classes), from its layers' shapes: 3x3 convolutions
# of these widths, each with batch normalisation (4 numbers a channel; no bias), a 512-unit dense layer
# with batch normalisation, and the 10-class classifier with its bias.
VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]

# Spaces whose default model takes over 10 s to trace a train step on 2 cores (pytest -m slow).
SLOW_TO_TRACE = ("inception", "resnet_imagenet")


def test_registry_lists_every_space():
    assert list_spaces() == ["auto", "densenet", "inception", "resnet", "resnet_imagenet", "vgg"]
    assert get_space("resnet").__name__ == "TunableResNet"
    assert issubclass(get_space("densenet"), keras_tuner.HyperModel)


def test_unknown_space_names_the_valid_ones():
    with pytest.raises(SpaceError, match="choose one of: auto, densenet, inception, resnet, resnet_imagenet, vgg"):
        get_space("alexnet")


@pytest.mark.parametrize("name", list_spaces())
def test_space_declares_its_public_hyperparameters(name):
    names = {spec.name for spec in get_space(name).hyperparameters()}
    assert names == (COMMON - {"dropout"} if name == "auto" else COMMON) | SPECIFIC[name]


@pytest.mark.parametrize("name", list_spaces())
def test_declarations_read_without_keras_match_keras_tuners(name):
    """What ``tuner spaces`` and ``--set`` read without a framework is what Keras Tuner declares:
    the same names, kinds, ranges, defaults and conditions, and the same values at the defaults."""
    kt = keras_tuner.HyperParameters()
    kt_values = get_space(name).declare(kt)
    ours = Declarations()
    assert get_space(name).declare(ours) == kt_values
    for spec, h in zip(space_entry(name).hyperparameters(), kt.space, strict=True):
        config = h.get_config()
        assert (spec.kind, spec.name, spec.default) == (type(h).__name__, h.name, h.default)
        assert all(config[key] == value for key, value in spec.config.items())
        assert spec.condition == " and ".join(f"{c.name}={','.join(c.values)}" for c in h.conditions)


@pytest.mark.parametrize("name,shape", [
    pytest.param(name, shape, marks=[pytest.mark.slow] if name in SLOW_TO_TRACE else [])
    for name in list_spaces() if name != "auto"  # its families'
    for shape in [(8, 8, 1), (32, 32, 3)] if shape[0] == 8 or name in ("resnet", "densenet", "vgg")])
def test_space_builds_at_defaults_and_trains_one_batch(name, shape):
    """Every default but DenseNet's depth: its default 40 layers take 14 s to trace a train step on
    a CPU (its depths are built in test_densenet_depth_means_what_the_paper_means). The spaces in
    ``SLOW_TO_TRACE`` take 10-16 s at their defaults: end-to-end tier."""
    space = get_space(name)(shape, 10)
    hp = keras_tuner.HyperParameters()
    if name == "densenet":
        hp.Fixed("depth", 10)
    model = space.build(hp)
    x = np.random.randint(0, 256, size=(8, *shape)).astype("uint8")  # raw pixels
    y = np.arange(8) % 10
    loss, _ = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet", "densenet"])
@pytest.mark.parametrize("shape,final_size", [((8, 8, 1), 4), ((14, 14, 1), 4), ((32, 32, 3), 8),
                                              ((224, 160, 5), 10)])
def test_downsampling_follows_the_input_size(name, shape, final_size):
    """Small inputs are not shrunk below 4x4, odd sides round up (14 -> 7 -> 4); large ones get a
    strided stem (224 -> 56 -> 14)."""
    hp = keras_tuner.HyperParameters()
    if name == "resnet":
        hp.Fixed("stem_stride", 1)
    model = get_space(name)(shape, 3).build(hp)
    features = model.get_layer("avg_pool").input.shape
    assert min(features[1:3]) == final_size


@pytest.mark.parametrize("shape,stage_sizes", [((8, 8, 1), [8, 4, 4]), ((28, 28, 1), [14, 7, 4]),
                                               ((32, 32, 3), [16, 8, 4]), ((96, 96, 3), [48, 24, 12])])
def test_a_stride_2_stem_halves_small_inputs_once(shape, stage_sizes):
    """8x8 digits keep their pixels; 16-64 px inputs are halved once; large ones as without it."""
    model = build_resnet(shape, 10, depth=8, stem_stride=2)
    sizes = [model.get_layer(f"stage{i}_block1_add").output.shape[1] for i in (1, 2, 3)]
    assert sizes == stage_sizes


def test_inputs_smaller_than_8_are_refused():
    with pytest.raises(SpaceError, match="at least 8x8"):
        get_space("resnet")((7, 32, 3), 10)
    with pytest.raises(SpaceError, match="2 classes"):
        get_space("resnet")((8, 8, 1), 1)


def _weighted_layers(model: keras.Model) -> int:
    """Convolutions on the main path plus the classifier, as the papers count depth."""
    return sum(
        isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and "_proj" not in layer.name
        for layer in model.layers
    )


@pytest.mark.parametrize("depth,blocks", [(8, 1), (20, 3), (32, 5)])  # ResNet-20: n = 3 in the paper
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_resnet_depth_means_what_the_paper_means(depth, blocks, version):
    model = build_resnet((32, 32, 3), 10, depth=depth, version=version)
    assert _weighted_layers(model) == depth
    assert sum(layer.name.endswith("_add") for layer in model.layers) == 3 * blocks == 3 * blocks_per_stage(depth)
    with pytest.raises(SpaceError, match="6n\\+2"):
        blocks_per_stage(depth + 1)


# DenseNet-BC-100: 16 bottleneck layers a block, as in the paper; DenseNet-40: 12 plain ones.
@pytest.mark.parametrize("depth,bottleneck,layers", [(40, True, 6), (40, False, 12), (100, True, 16), (10, False, 2)])
def test_densenet_depth_means_what_the_paper_means(depth, bottleneck, layers):
    model = build_densenet((32, 32, 3), 10, depth=depth, bottleneck=bottleneck, growth_rate=4)
    assert _weighted_layers(model) == depth
    assert layers_per_block(depth, bottleneck) == layers


def test_densenet_100_bc_k12_matches_the_paper_size():
    """DenseNet-BC (L=100, k=12) has 0.8M parameters in the paper."""
    model = build_densenet((32, 32, 3), 10, depth=100, growth_rate=12, bottleneck=True, compression=0.5)
    assert 0.7e6 < model.count_params() < 0.85e6


@pytest.mark.parametrize("shape,final_size", [((8, 8, 1), 1), ((28, 28, 1), 1), ((32, 32, 3), 1),
                                              ((96, 96, 3), 3), ((224, 160, 5), 5)])
def test_vgg_pools_after_every_stage_down_to_one_pixel(shape, final_size):
    """As in the paper (224 -> 7) and the articles (32 -> 1); a map of 1 px is not pooled again."""
    model = get_space("vgg")(shape, 3).build(keras_tuner.HyperParameters())
    assert min(model.get_layer("avg_pool").input.shape[1:3]) == final_size


@pytest.mark.parametrize("depth", [8, 11, 13, 16, 19])
def test_vgg_depth_means_what_the_paper_means(depth):
    """The paper counts the convolutions and three dense layers; the head here has two."""
    model = build_vgg((32, 32, 3), 10, depth=depth, filters=8)
    assert _weighted_layers(model) == depth - 1


def test_the_articles_vgg16_has_the_size_of_its_layers():
    model = build_vgg((32, 32, 3), 10, depth=16, filters=64, stage1_dropout=0.3, conv_dropout=0.4,
                      pool_dropout=0.5, dense_units=512, dropout=0.5, l2=5e-4)
    expected, channels = 0, 3
    for width in VGG16_WIDTHS:
        expected += 3 * 3 * channels * width + 4 * width
        channels = width
    expected += 512 * 512 + 4 * 512 + 512 * 10 + 10
    assert model.count_params() == expected  # 14,996,682
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == [0.3] + [0.4] * 7 + [0.5, 0.5]  # inside the stages, after them, before the classifier


def test_the_articles_big_kernel_vgg_is_one_configuration():
    model = build_vgg((32, 32, 3), 10, depth=8, kernel_size=5, deep_kernel_size=7, stage1_dropout=0.3,
                      conv_dropout=0.4, pool_dropout=0.5)
    kernels = [layer.kernel_size[0] for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert kernels == [5, 5, 7, 7, 7]
    expected, channels = 0, 3
    for kernel, width in zip(kernels, [64, 128, 256, 512, 512], strict=True):
        expected += kernel * kernel * channels * width + 4 * width
        channels = width
    assert model.count_params() == expected + 512 * 512 + 4 * 512 + 512 * 10 + 10  # 21,358,026


def test_the_articles_densenet_has_the_size_of_its_layers():
    """Blocks of 4, 8 and 16 layers, k=32, a 2k bottleneck, a transition (compression 0.5) after each."""
    model = build_densenet((32, 32, 3), 10, blocks=(4, 8, 16), growth_rate=32, filters=16, bottleneck_width=2,
                           final_transition=True)
    k, channels = 32, 16
    expected = 3 * 3 * 3 * channels  # the stem's convolution
    for layers_count in (4, 8, 16):
        for _ in range(layers_count):  # BN, 1x1 conv to 2k, BN, 3x3 conv to k
            expected += 4 * channels + channels * 2 * k + 4 * 2 * k + 3 * 3 * 2 * k * k
            channels += k
        expected += 4 * channels + channels * (channels // 2)  # the transition: BN, 1x1 conv
        channels //= 2
    expected += 4 * channels + channels * 10 + 10  # BN, the classifier
    assert model.count_params() == expected
    pools = [layer.output.shape[1] for layer in model.layers if isinstance(layer, keras.layers.AveragePooling2D)]
    assert pools == [16, 8, 4]


def test_densenet_blocks_are_a_choice_beside_depth():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("blocks", "4-8-16")
    values = get_space("densenet").declare(hp)
    assert values["depth"] is None and "depth" not in hp.values
    model = get_space("densenet")((28, 28, 1), 10).build(hp)
    assert model.name == "densenet_bc_4-8-16_k12"


def test_the_articles_resnet18_has_the_size_of_its_layers():
    """A 3x3 stem of 64, four stages of two basic blocks (64-128-256-512; a 1x1 projection where a
    stage widens), global max pooling, a 512-unit dense layer with batch norm and dropout 0.5."""
    model = build_resnet_imagenet((32, 32, 3), 10, depth=18, filters=64, pooling="max", dense_units=512,
                                  dropout=0.5, l2=5e-4)
    expected = 3 * 3 * 3 * 64 + 4 * 64
    channels = 64
    for width in (64, 128, 256, 512):
        for _ in range(2):  # blocks
            expected += 3 * 3 * channels * width + 4 * width + 3 * 3 * width * width + 4 * width
            if channels != width:
                expected += channels * width + 4 * width  # the projection and its batch norm
            channels = width
    expected += 512 * 512 + 4 * 512 + 512 * 10 + 10
    assert model.count_params() == expected


@pytest.mark.parametrize("depth,blocks,bottleneck", [(18, 8, False), (34, 16, False), (50, 16, True),
                                                      (101, 33, True), (152, 50, True)])
def test_imagenet_resnet_depth_means_what_the_paper_means(depth, blocks, bottleneck):
    model = build_resnet_imagenet((32, 32, 3), 10, depth=depth, filters=8)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and "_proj" not in layer.name]
    assert len(convs) + 1 == depth  # the paper counts the stem and the classifier too
    assert sum(layer.name.endswith("_add") for layer in model.layers) == blocks
    assert any(layer.name.endswith("_conv3") for layer in model.layers) == bottleneck


def test_imagenet_resnet_strides_a_large_input_as_the_paper_does():
    model = build_resnet_imagenet((224, 224, 3), 10, depth=18, filters=8)
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert model.get_layer("avg_pool").input.shape[1:3] == (7, 7)


def test_the_articles_googlenet_has_the_size_of_its_layers():
    """A 3x3 stem of 64 and a 5x5 of 96, modules 3a-5b at half the paper's branch widths, global max
    pooling, a 512-unit dense layer with batch norm and dropout 0.5 (each conv has batch norm)."""
    paper = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), (192, 96, 208, 16, 48, 64),
             (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
             (256, 160, 320, 32, 128, 128), (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]
    model = build_inception((32, 32, 3), 10, width=0.5, stem_filters=64, pooling="max", dense_units=512,
                            dropout=0.5, l2=5e-4)
    expected = 3 * 3 * 3 * 64 + 4 * 64 + 5 * 5 * 64 * 96 + 4 * 96
    channels = 96
    for widths in paper:
        one, reduce3, three, reduce5, five, project = (w // 2 for w in widths)
        for fan_in, kernel, out in ((channels, 1, one), (channels, 1, reduce3), (reduce3, 3, three),
                                    (channels, 1, reduce5), (reduce5, 5, five), (channels, 1, project)):
            expected += kernel * kernel * fan_in * out + 4 * out
        channels = one + three + five + project
    expected += channels * 512 + 4 * 512 + 512 * 10 + 10
    assert model.count_params() == expected
    assert sum(layer.name.endswith("_concat") for layer in model.layers) == 9


def test_resnet20_matches_the_paper_size():
    """ResNet-20 has 0.27M parameters in the paper."""
    assert 0.26e6 < build_resnet((32, 32, 3), 10, depth=20).count_params() < 0.28e6


def test_the_docs_commands_build_the_articles_models_of_the_size_they_state(monkeypatch):
    """Each command of the docs' table of the articles' models (``benchmarks/articles.py`` reads it),
    its ``--set`` values declared as a search declares them, builds a model of the table's parameter
    count for 32x32x3 inputs and 10 classes."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    from articles import documented_models

    rows = documented_models()
    assert [row["space"] for row in rows] == ["vgg", "vgg", "resnet_imagenet", "inception", "densenet"]
    for row in rows:
        hp = keras_tuner.HyperParameters()
        for spec in _resolve(row["space"], *row["values"]).values():
            spec.declare(hp)
        model = get_space(row["space"])((32, 32, 3), 10).build(hp)
        assert model.count_params() == row["parameters"], row["model"]
        keras.backend.clear_session()


def _resolve(name: str, *items: str):
    return resolve_overrides(get_space(name).hyperparameters(), parse_assignments(items))


def test_set_fixes_narrows_and_subsets():
    specs = _resolve("resnet", "depth=20", "learning_rate=1e-3..1e-1", "optimizer=adam,sgd",
                     "dropout=0.1..0.3", "kernel_size=3..4")
    assert specs["depth"].kind == "Fixed" and specs["depth"].config["value"] == 20
    lr = specs["learning_rate"]
    assert (lr.kind, lr.config["min_value"], lr.config["max_value"], lr.config["sampling"]) == (
        "Float", 1e-3, 1e-1, "log")
    assert specs["optimizer"].kind == "Choice" and specs["optimizer"].config["values"] == ["adam", "sgd"]
    assert specs["dropout"].config["step"] == 0.05
    assert specs["kernel_size"].kind == "Fixed" and specs["kernel_size"].config["value"] == 3
    assert _resolve("densenet", "bottleneck=false")["bottleneck"].config["value"] is False
    assert _resolve("densenet", "depth=16..64")["depth"].config["values"] == [16, 22, 40, 64]


@pytest.mark.parametrize("item,message", [
    ("depth=21", "depth must be one of 8, 14, 20, 32, 44, 56, 110"),
    ("learning_rate=2", "within 0.0001..0.1"),
    ("learning_rate=1e-2..1e-3", "empty range"),
    ("optimizer=lamb", "optimizer must be one of adam, adamw, sgd, rmsprop"),
    ("dropout=0.12", "in steps of 0.05"),
    ("depth=abc", "not a valid int"),
    ("version=v1..v2", "takes no range"),
    ("growth=12", "unknown hyperparameter 'growth'; choose one of: activation, blocks, bottleneck,"),
    ("depth", "expects NAME=VALUE"),
])
def test_set_outside_the_space_names_the_valid_values(item, message):
    space = "densenet" if item.startswith("growth") else "resnet"
    with pytest.raises(SpaceError, match=message.replace("(", "\\(").replace("+", "\\+")):
        _resolve(space, item)


def test_overrides_reach_keras_tuner_as_predeclared_hyperparameters():
    """A spec declared on Keras Tuner's own HyperParameters wins over the space's declaration."""
    hp = keras_tuner.HyperParameters()
    for spec in _resolve("resnet", "depth=8", "filters=32").values():
        spec.declare(hp)
    values = get_space("resnet").declare(hp)
    assert values["depth"] == 8 and values["filters"] == 32


@pytest.mark.parametrize("optimizer,used,unused", [("adamw", "weight_decay", "l2"), ("sgd", "l2", "weight_decay"),
                                                   ("rmsprop", "l2", "weight_decay")])
def test_each_optimizer_samples_only_its_own_weight_decay(optimizer, used, unused):
    """AdamW decays weights itself (decoupled); Adam and SGD take an L2 penalty. Optuna sees only
    the active one, as Keras Tuner does."""
    import optuna

    from tuner.backends._optuna import OptunaHyperParameters

    space = get_space("resnet")((8, 8, 1), 10)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    hp = OptunaHyperParameters(trial, _resolve("resnet", f"optimizer={optimizer}", "depth=8", "l1=0"))
    model = space.build(hp)
    assert used in trial.params and unused not in trial.params
    assert type(model.optimizer).__name__ == {"adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop"}[optimizer]
    regularized = [layer for layer in model.layers if getattr(layer, "kernel_regularizer", None)]
    assert bool(regularized) == (optimizer != "adamw")
    if optimizer == "adamw":
        assert model.optimizer.weight_decay == pytest.approx(trial.params["weight_decay"])

    kt = keras_tuner.HyperParameters()
    kt.Fixed("optimizer", optimizer)
    get_space("resnet").declare(kt)
    assert used in kt.values and unused not in kt.values


def test_label_smoothing_keeps_integer_labels():
    """The smoothed loss on integer labels equals Keras' smoothed cross-entropy on one-hot labels."""
    from search_spaces._base import SparseSmoothedCrossentropy
    from search_spaces._base import make_loss

    assert make_loss(0.0) == "sparse_categorical_crossentropy"
    y = np.array([0, 2, 1, 2])
    probs = np.random.dirichlet(np.ones(3), size=4).astype("float32")
    ours = SparseSmoothedCrossentropy(0.1)(y, probs)
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(np.eye(3)[y], probs)
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)
    assert float(ours) != pytest.approx(float(keras.losses.SparseCategoricalCrossentropy()(y, probs)))
    space = get_space("resnet")((8, 8, 1), 3, label_smoothing=0.1)
    model = space.build(keras_tuner.HyperParameters())
    assert np.isfinite(model.train_on_batch(np.zeros((4, 8, 8, 1), "uint8"), y)[0])


@pytest.mark.core
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX compiles the augmented train step; "
                    "TensorFlow cannot compile the shift with XLA")
def test_augmented_models_still_compile_their_train_step_on_jax():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("depth", 8)
    model = get_space("resnet")((8, 8, 1), 10, augment="shift").build(hp)
    assert model.jit_compile  # Keras turns it off for RandomTranslation; uncompiled JAX is 20-200x slower
    shift = model.get_layer("augment_shift")
    state = np.array(shift.generator.state.value)
    images = np.random.default_rng(0).uniform(0, 16, (32, 8, 8, 1)).astype("float32")
    model.fit(images, np.arange(32) % 10, batch_size=16, epochs=1, verbose=0)
    assert not np.array_equal(state, np.array(shift.generator.state.value))  # a new shift every step


def test_a_space_trained_with_flips_predicts_by_flip_averaging(tmp_path):
    """The inference model averages the probabilities of each image and its mirror image, shares the
    trained weights, and saves as a file plain Keras loads; without flips the model is unchanged."""
    shape = (12, 10, 2)
    space = get_space("resnet")(shape, 3, augment="flip")
    model = space.build(keras_tuner.HyperParameters())
    x = np.random.randint(0, 256, size=(5, *shape)).astype("float32")
    model.train_on_batch(x, np.arange(5) % 3)
    averaged = space.inference_model(model)
    both = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(averaged.predict(x, verbose=0), both, rtol=1e-5, atol=1e-6)
    assert not np.allclose(both, model.predict(x, verbose=0), atol=1e-4)  # the mirror changes something
    path = tmp_path / "averaged.keras"
    averaged.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), both, rtol=1e-5, atol=1e-6)
    plain = get_space("resnet")(shape, 3, augment="shift")
    assert plain.inference_model(model) is model


@pytest.mark.core
@pytest.mark.parametrize("name", ["inception", "resnet_imagenet", "vgg"])  # added after resnet and densenet
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (96, 96, 3)])
@pytest.mark.parametrize("smallest", [True, False])
def test_a_new_space_builds_at_its_smallest_and_its_defaults(name, shape, smallest):
    hp = keras_tuner.HyperParameters()
    if smallest:
        for key, value in smallest_values(get_space(name).hyperparameters()).items():
            if key in SIZE_HYPERPARAMETERS:
                hp.Fixed(key, value)
    model = get_space(name)(shape, 10).build(hp)  # Keras checks every layer's shapes as it builds
    assert model.output_shape == (None, 10)


def test_the_step_schedule_divides_the_rate_by_ten_at_half_and_three_quarters():
    from search_spaces._base import learning_rate_schedule

    schedule = learning_rate_schedule(0.1, "step", 100)
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 50, 51, 75, 76, 99)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_the_plateau_schedule_trains_at_a_constant_rate_lowered_by_a_callback():
    space = get_space("resnet")((8, 8, 1), 10)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("lr_schedule", "plateau")
    model = space.build(hp)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-3)
    (callback,) = space.training_callbacks(hp.values, "val_accuracy", "max")
    assert isinstance(callback, keras.callbacks.ReduceLROnPlateau) and callback.monitor == "val_accuracy"
    assert space.training_callbacks({**hp.values, "lr_schedule": "cosine"}, "val_accuracy", "max") == []


@pytest.mark.parametrize("augment,layers", [("none", []), ("flip_shift", ["augment_flip", "augment_shift"]),
                                            ("rotate_zoom", ["augment_rotate", "augment_zoom"]),
                                            ("flip_shift_rotate_zoom", ["augment_flip", "augment_shift",
                                                                        "augment_rotate", "augment_zoom"])])
def test_augmentations_are_made_of_named_transforms(augment, layers):
    model = get_space("resnet")((28, 28, 1), 10, augment=augment).build(keras_tuner.HyperParameters())
    assert [layer.name for layer in model.layers if layer.name.startswith("augment_")] == layers


@pytest.mark.parametrize("augment", ["zoom_flip", "flip_flip", "blur", "flip-shift", ""])
def test_an_augmentation_out_of_order_or_unknown_is_refused(augment):
    with pytest.raises(SpaceError, match="joined by _ in that order"):
        get_space("resnet")((28, 28, 1), 10, augment=augment)


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_takes_the_shared_recipe_choices(name):
    """Activation, RMSprop and L1 reach every space's layers and optimizer."""
    hp = keras_tuner.HyperParameters()
    hp.Fixed("activation", "gelu")
    hp.Fixed("optimizer", "rmsprop")
    hp.Fixed("l1", 1e-5)
    if name == "densenet":
        hp.Fixed("depth", 10)
    model = get_space(name)((8, 8, 1), 10).build(hp)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    activations = {layer.get_config()["activation"] for layer in model.layers
                   if isinstance(layer, keras.layers.Activation) and layer.name != "predictions"}
    assert activations == {"gelu"}
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(layer.kernel_regularizer.get_config()["l1"] == pytest.approx(1e-5) for layer in convs)


@pytest.mark.parametrize("family", ["densenet", "inception", "resnet", "resnet_imagenet", "vgg"])
def test_the_auto_space_builds_each_family_as_its_own_space_does(family):
    """The same values, prefixed with the family's name, build the same model in ``auto``."""
    own = keras_tuner.HyperParameters()
    if family == "densenet":
        own.Fixed("depth", 10)
    model = get_space(family)((8, 8, 1), 10).build(own)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("family", family)
    for name, value in own.values.items():
        hp.Fixed(name if name in COMMON - {"dropout"} else f"{family}.{name}", value)
    auto = get_space("auto")((8, 8, 1), 10).build(hp)
    assert auto.count_params() == model.count_params() and auto.name == model.name
    assert all(name.startswith(("family", family + ".")) or name in COMMON for name in hp.values)


def test_the_auto_space_declares_each_family_under_its_choice():
    specs = {spec.name: spec for spec in get_space("auto").hyperparameters()}
    assert specs["family"].default == "resnet" and specs["vgg.depth"].condition == "family=vgg"
    assert specs["densenet.depth"].condition == "family=densenet and densenet.blocks=depth"
    assert specs["learning_rate"].condition == ""

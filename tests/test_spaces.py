"""The search spaces, tested from the registry: a new space is covered the moment it registers."""

from __future__ import annotations

import keras
import keras_tuner
import numpy as np
import pytest

from search_spaces import Declarations
from search_spaces import SpaceError
from search_spaces import build_densenet
from search_spaces import build_resnet
from search_spaces import get_space
from search_spaces import list_spaces
from search_spaces import parse_assignments
from search_spaces import resolve_overrides
from search_spaces import space_entry
from search_spaces.densenet import layers_per_block
from search_spaces.resnet import blocks_per_stage

COMMON = {"depth", "filters", "kernel_size", "dropout", "l2", "weight_decay", "learning_rate", "optimizer",
          "lr_schedule"}
SPECIFIC = {"resnet": {"version", "stem_stride"}, "densenet": {"growth_rate", "compression", "bottleneck"}}


def test_registry_lists_both_spaces():
    assert list_spaces() == ["densenet", "resnet"]
    assert get_space("resnet").__name__ == "TunableResNet"
    assert issubclass(get_space("densenet"), keras_tuner.HyperModel)


def test_unknown_space_names_the_valid_ones():
    with pytest.raises(SpaceError, match="choose one of: densenet, resnet"):
        get_space("vgg")


@pytest.mark.parametrize("name", list_spaces())
def test_space_declares_its_public_hyperparameters(name):
    names = {spec.name for spec in get_space(name).hyperparameters()}
    assert names == COMMON | SPECIFIC[name]


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


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3)])
def test_space_builds_at_defaults_and_trains_one_batch(name, shape):
    """Every default but DenseNet's depth: its default 40 layers take 14 s to trace a train step on
    a CPU (its depths are built in test_densenet_depth_means_what_the_paper_means)."""
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


@pytest.mark.parametrize("name", list_spaces())
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


@pytest.mark.parametrize("depth", [8, 20, 32])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_resnet_depth_means_what_the_paper_means(depth, version):
    model = build_resnet((32, 32, 3), 10, depth=depth, version=version)
    assert _weighted_layers(model) == depth
    assert blocks_per_stage(depth) == (depth - 2) // 6
    with pytest.raises(SpaceError, match="6n\\+2"):
        blocks_per_stage(depth + 1)


@pytest.mark.parametrize("depth,bottleneck", [(40, True), (40, False), (100, True), (10, False)])
def test_densenet_depth_means_what_the_paper_means(depth, bottleneck):
    model = build_densenet((32, 32, 3), 10, depth=depth, bottleneck=bottleneck, growth_rate=4)
    assert _weighted_layers(model) == depth
    assert layers_per_block(depth, bottleneck) == (depth - 4) // (6 if bottleneck else 3)


def test_densenet_100_bc_k12_matches_the_paper_size():
    """DenseNet-BC (L=100, k=12) has 0.8M parameters in the paper."""
    model = build_densenet((32, 32, 3), 10, depth=100, growth_rate=12, bottleneck=True, compression=0.5)
    assert 0.7e6 < model.count_params() < 0.85e6


def test_resnet20_matches_the_paper_size():
    """ResNet-20 has 0.27M parameters in the paper."""
    assert 0.26e6 < build_resnet((32, 32, 3), 10, depth=20).count_params() < 0.28e6


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
    ("optimizer=rmsprop", "optimizer must be one of adam, adamw, sgd"),
    ("dropout=0.12", "in steps of 0.05"),
    ("depth=abc", "not a valid int"),
    ("version=v1..v2", "takes no range"),
    ("growth=12", "unknown hyperparameter 'growth'; choose one of: bottleneck, compression, depth"),
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


@pytest.mark.parametrize("optimizer,used,unused", [("adamw", "weight_decay", "l2"), ("sgd", "l2", "weight_decay")])
def test_each_optimizer_samples_only_its_own_weight_decay(optimizer, used, unused):
    """AdamW decays weights itself (decoupled); Adam and SGD take an L2 penalty. Optuna sees only
    the active one, as Keras Tuner does."""
    import optuna

    from tuner.backends._optuna import OptunaHyperParameters

    space = get_space("resnet")((8, 8, 1), 10)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    hp = OptunaHyperParameters(trial, _resolve("resnet", f"optimizer={optimizer}", "depth=8"))
    model = space.build(hp)
    assert used in trial.params and unused not in trial.params
    assert type(model.optimizer).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[optimizer]
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

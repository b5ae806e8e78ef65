"""Exports for deployment: LiteRT (``.tflite``) and ONNX (``.onnx``), each verified by its own runtime.

Keras writes the files (``model.export(format="litert" | "onnx")``); this module strips what only
training needs (the augmentation layers, ``for_inference``), calibrates int8 quantization on a sample of the training
split, and then checks the file as a deployer would run it: the LiteRT interpreter or onnxruntime,
on the study's test split, against the Keras model that was scored. A float export must agree with
it on at least ``MIN_AGREEMENT`` of the top-1 predictions; an int8 one must stay within
``MAX_INT8_ACCURACY_DROP`` of its test accuracy. A file that fails is removed, and the export fails.

The converters and runtimes are optional (the ``export`` extra) and imported lazily.
"""

from __future__ import annotations

from abc import ABC
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import TunerError
from tuner.errors import install_hint
from tuner.training._cost import latency_ms

DEPLOY_SUFFIXES = (".tflite", ".onnx")
QUANTIZATIONS = ("float16", "int8")
MIN_AGREEMENT = 0.99  # top-1 agreement of a float export with the Keras model
MAX_INT8_ACCURACY_DROP = 0.01  # test accuracy an int8 export may lose
CALIBRATION_IMAGES = 200  # training images that calibrate int8 quantization
# What each format needs: (module, package) for the converter and the runtime, per Keras backend.
NEEDS = {
    ".tflite": {"tensorflow": [("ai_edge_litert", "ai-edge-litert")]},
    ".onnx": {"tensorflow": [("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime")],
              "jax": [("jax2onnx", "jax2onnx"), ("onnxruntime", "onnxruntime")],
              "torch": [("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")]},
}


def check_deploy_format(output: Path, quantize: str | None) -> None:
    """Refuse, before anything is loaded or trained, an export this installation cannot make."""
    import importlib.util

    import keras

    suffix = output.suffix if output.suffix in DEPLOY_SUFFIXES else None
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise TunerError(f"unknown --quantize {quantize!r}; choose one of: {', '.join(QUANTIZATIONS)}")
        if suffix != ".tflite":
            raise TunerError("--quantize applies to a LiteRT export: use an --output ending in .tflite")
    if suffix is None:
        return
    backend = keras.backend.backend()
    needs = NEEDS[suffix].get(backend)
    if needs is None:
        raise TunerError(f"a {suffix} export needs the TensorFlow backend (KERAS_BACKEND is {backend}); "
                         "run the export with KERAS_BACKEND=tensorflow")
    missing = [package for module, package in needs if importlib.util.find_spec(module) is None]
    if missing:
        raise TunerError(f"a {suffix} export needs {', '.join(missing)}: {install_hint('export')}")


def for_inference(model: Any) -> Any:
    """A copy of ``model`` as converters want it: the augmentation layers (identity at inference)
    replaced by ``Identity``, and a ``Normalization`` with fixed statistics by the same arithmetic
    as a ``Rescaling`` (its statistics are captured tensors, which tf2onnx turns into inputs); and
    frozen, so that batch normalisation uses its moving statistics in whatever mode a converter
    traces the model (tf2onnx's trace otherwise normalised with the batch's own statistics)."""
    import keras

    def clone(layer: Any) -> Any:
        if layer.name.startswith("augment_"):
            return keras.layers.Identity(name=layer.name)
        config = layer.get_config()
        if isinstance(layer, keras.layers.Normalization) and config.get("mean") is not None:
            std = np.maximum(np.sqrt(np.asarray(config["variance"], "float64")), keras.backend.epsilon())
            mean = np.asarray(config["mean"], "float64")
            return keras.layers.Rescaling(scale=(1.0 / std).tolist(), offset=(-mean / std).tolist(), name=layer.name)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    originals = {layer.path: layer for layer in _all_layers(model)}
    for layer in _all_layers(copy):
        source = originals.get(layer.path)
        if source is not None and layer.weights and not layer.name.startswith("augment_"):
            layer.set_weights(source.get_weights())
    copy.trainable = False
    return copy


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


def write_deployable(model: Any, output: Path, *, quantize: str | None, calibration: np.ndarray) -> str:
    """Write ``model`` as ``output`` (``.tflite`` or ``.onnx``); returns the format's name."""
    deployable = for_inference(model)
    # A model that has run (Keras's ONNX export asks).
    deployable.predict_on_batch(np.asarray(calibration[:1], "float32"))
    if output.suffix == ".onnx":
        deployable.export(str(output), format="onnx", verbose=False)
        return "onnx"
    options: dict[str, Any] = {}
    if quantize is not None:
        import tensorflow as tf

        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            options["target_spec"] = {"supported_types": [tf.float16]}
        else:  # int8 weights and activations, calibrated; float input and output for the caller
            sample = np.asarray(calibration[:CALIBRATION_IMAGES], "float32")
            options["representative_dataset"] = lambda: ([image[None]] for image in sample)
    deployable.export(str(output), format="litert", verbose=False, **options)
    return "tflite" if quantize is None else f"tflite-{quantize}"


class Runtime(ABC):
    """A deployed file run by its own runtime, without Keras: class probabilities for a batch."""

    @abstractmethod
    def predict(self, images: np.ndarray) -> np.ndarray: ...


class LiteRT(Runtime):
    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = -1

    def predict(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [len(images), *images.shape[1:]])
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.input["index"], images.astype(self.input["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])


class OnnxRuntime(Runtime):
    def __init__(self, path: Path) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: images.astype("float32")})[0]


RUNTIMES: dict[str, type[Runtime]] = {".tflite": LiteRT, ".onnx": OnnxRuntime}
# How a deployer loads each file (printed after an export).
LOAD_HINTS = {".tflite": "ai_edge_litert.interpreter.Interpreter(model_path=...) (float32 raw pixels in, "
                         "class probabilities out)",
              ".onnx": "onnxruntime.InferenceSession(...) (float32 raw pixels in, class probabilities out)"}


def verify(output: Path, model: Any, x_test: np.ndarray, y_test: np.ndarray, *, quantize: str | None,
           batch_size: int = 256) -> dict[str, Any]:
    """Run the written file with its own runtime on the test split and compare it with ``model``.

    Returns what it measured: top-1 agreement with the Keras model, the test accuracy of each, the
    file's size, and its median batch-1 latency on this machine. Raises ``TunerError`` (and removes
    the file) if a float export agrees on less than ``MIN_AGREEMENT``, or an int8 one loses more than
    ``MAX_INT8_ACCURACY_DROP`` of test accuracy.
    """
    runtime = RUNTIMES[output.suffix](output)  # type: ignore[call-arg]
    keras_top, top = [], []
    for i in range(0, len(x_test), batch_size):  # a batch at a time: the test split may be streamed
        x = np.asarray(x_test[i:i + batch_size], "float32")
        keras_top.append(np.asarray(model.predict_on_batch(x)).argmax(-1))
        top.append(runtime.predict(x).argmax(-1))
    labels = np.asarray(y_test).reshape(-1)
    found: dict[str, Any] = {
        "runtime": type(runtime).__name__,
        "test_images": len(x_test),
        "agreement": float((np.concatenate(top) == np.concatenate(keras_top)).mean()),
        "test_accuracy": float((np.concatenate(top) == labels).mean()),
        "keras_test_accuracy": float((np.concatenate(keras_top) == labels).mean()),
        "bytes": output.stat().st_size,
        "latency_ms": latency_ms(runtime.predict, np.asarray(x_test[0], "float32")),
    }
    if quantize == "int8":
        passed = float(found["keras_test_accuracy"]) - float(found["test_accuracy"]) <= MAX_INT8_ACCURACY_DROP
        rule = f"test accuracy within {MAX_INT8_ACCURACY_DROP:.0%} of the Keras model's"
    else:
        passed = float(found["agreement"]) >= MIN_AGREEMENT
        rule = f"top-1 agreement of at least {MIN_AGREEMENT:.0%} with the Keras model"
    if not passed:
        output.unlink()
        raise TunerError(f"{output.name} failed its check ({rule}): agreement {found['agreement']:.4f}, "
                         f"test accuracy {found['test_accuracy']:.4f} vs {found['keras_test_accuracy']:.4f}; "
                         "the file was removed")
    return found

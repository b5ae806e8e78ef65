"""Exports for deployment: each file loads in its own runtime without the project, and is verified."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tuner.cli import main
from tuner.data import load_dataset

# Run by a bare interpreter: tuner, Keras and TensorFlow cannot be imported there.
RUN_IN_RUNTIME = """
import sys
for name in ("tuner", "search_spaces", "storage", "keras", "tensorflow"):
    sys.modules[name] = None
import numpy as np
path, images, out = sys.argv[1:]
x = np.load(images)
if path.endswith(".onnx"):
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {session.get_inputs()[0].name: x})[0]
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path)
    entry, exit_ = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(entry["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    probabilities = interpreter.get_tensor(exit_["index"])
np.save(out, probabilities.argmax(-1))
"""


@pytest.mark.parametrize("output,quantize", [("m.tflite", None), ("m.onnx", None), ("q.tflite", "int8")])
def test_deployment_export_runs_in_its_runtime_and_matches_the_trial(trained_study, tmp_path, capsys,
                                                                     output, quantize):
    pytest.importorskip("onnxruntime" if output.endswith(".onnx") else "ai_edge_litert")
    argv = ["export", "--study", "d", "--storage", trained_study, "--output", output, "--json"]
    assert main(argv + (["--quantize", quantize] if quantize else [])) == 0
    verified = json.loads(capsys.readouterr().out)["verified"]
    if quantize == "int8":
        assert verified["keras_test_accuracy"] - verified["test_accuracy"] <= 0.01
    else:
        assert verified["agreement"] >= 0.99
    assert verified["bytes"] == (tmp_path / output).stat().st_size and verified["latency_ms"] > 0
    data = load_dataset("digits")
    np.save(tmp_path / "x.npy", data.x_test.astype("float32"))
    ran = subprocess.run([sys.executable, "-c", RUN_IN_RUNTIME, output, "x.npy", "top.npy"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    accuracy = float((np.load(tmp_path / "top.npy") == data.y_test.reshape(-1)).mean())
    assert accuracy == pytest.approx(verified["test_accuracy"]) and accuracy > 0.5


def test_an_export_the_installation_cannot_make_is_one_clear_line(trained_study, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    assert main(["export", "--study", "d", "--storage", trained_study, "--output", "m.onnx"]) == 2
    err = capsys.readouterr().err
    needs, hint = err.split(" needs ", 1)[1].split(": pip install ", 1)
    assert "onnxruntime" in needs and "onnxruntime" in hint.split()  # the hint names the package itself
    assert err.count("\n") == 1
    assert main(["export", "--study", "d", "--storage", trained_study, "--output", "m.keras",
                 "--quantize", "int8"]) == 2
    assert "--quantize applies to a LiteRT export" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.keras").exists()

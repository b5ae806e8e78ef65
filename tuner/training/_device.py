"""What the Keras backend runs on, and the numeric precision that suits it."""

from __future__ import annotations

from tuner._names import PRECISIONS
from tuner.errors import TunerError


def accelerator() -> str:
    """``"gpu"`` when the active Keras backend sees a GPU, else ``"cpu"``."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
        if backend == "jax":
            import jax

            return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
        if backend == "torch":
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
    except RuntimeError:  # a backend that cannot initialise its devices runs on the CPU
        return "cpu"
    return "cpu"


def resolve_precision(name: str) -> str:
    """The Keras dtype policy for ``--precision``: ``auto`` is mixed_float16 on a GPU, float32 on a CPU."""
    if name not in PRECISIONS:
        raise TunerError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
    if name == "auto":
        return "mixed_float16" if accelerator() == "gpu" else "float32"
    return name

"""The trained models a study keeps: the best trials' (or the front's) files as Optuna artifacts,
kept during a search and read back later (``_models``), and the deployment formats, ``.tflite`` and
``.onnx``, each verified by its runtime (``_deploy``). Above ``tuner.training``; the backends keep
models through it, and the search and the results read them."""

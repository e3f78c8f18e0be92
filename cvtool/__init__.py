"""cvtool: train image classifiers, export self-describing ONNX, predict and evaluate without torch."""

__version__ = "0.1.0"

"""Evaluation from an ONNX file alone: metrics, confusion matrices, figures."""

"""Checkpoint → ONNX export (PyTorch + onnx)."""

"""Checkpoint → ONNX export (PyTorch + onnx): the graph, its checks against PyTorch, --verify on
image files, and float16/INT8 files derived with the torch-free cvtool.onnxtools."""

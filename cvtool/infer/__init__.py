"""Inference on ONNX Runtime: sessions and providers, the batched pipeline, submission files."""

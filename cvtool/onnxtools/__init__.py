"""ONNX graph tools that need only onnx and onnxruntime, never PyTorch.

They work on any classifier ONNX file, cvtool's own or one exported by another tool:

- `model_file`: load and atomically save ONNX files, the graph's image input and logits output;
- `card_edit`: read, write and set the model card stored in the file's metadata;
- `inspect`: inputs, outputs, opsets, card, parameter count, size and operator histogram;
- `fp16`: float16 weights and activations with float32 inputs and outputs kept;
- `quantize`: static INT8 quantization calibrated through the card's preprocessing;
"""

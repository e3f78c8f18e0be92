"""ONNX graph reading and editing, with onnx and onnxruntime only, never PyTorch.

They work on any classifier ONNX file, cvtool's own or one exported by another tool:

- `model_file`: the one loader and atomic saver, the dims helper, the graph's image input and output;
- `card_edit`: read, write and set the model card stored in the file's metadata;
- `params`: what counts as a parameter (one rule for inspect and summary);
- `inspect`: inputs, outputs, opsets, card, parameter count, size and operator histogram;
- `summary`: a Keras-style table of the graph's nodes, shapes and parameters;
- `weights`: the first convolution's filters;
- `layers`: feature-map layers by module path or name, and the graph with them as extra outputs;
- `fp16`: float16 weights and activations with float32 inputs and outputs kept;
- `quantize`: static INT8 quantization calibrated through the card's preprocessing.
"""

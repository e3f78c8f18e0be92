"""Float16 conversion for GPUs: half the file size and faster tensor-core math.

Weights and activations become float16 while the graph's inputs and outputs stay float32 (a Cast
at each end), so predict and evaluate feed and read exactly what they did before. The conversion
is ONNX Runtime's own (`onnxruntime.transformers.float16`, the onnxconverter-common converter),
which keeps ops that are unsafe in float16 in float32. On the CPU, ONNX Runtime runs most float16
ops by casting back to float32, so the file works everywhere but is only faster on a GPU.
"""

from __future__ import annotations

import heapq
import warnings

import onnx

__all__ = ["to_fp16", "topological_sort"]


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` in place so that every node comes after the producers of its inputs.

    The float16 converter appends its input Casts at the end of the node list; onnx.checker (and
    the ONNX spec) require topological order. Among the nodes that are ready, the one that came
    first in the old order goes first, so an already sorted graph is left as it is.
    """
    nodes = list(graph.node)
    producer = {out: idx for idx, n in enumerate(nodes) for out in n.output if out}
    # deps[i]: indices of the nodes whose outputs node i reads (graph inputs and weights need none).
    deps = [{producer[i] for i in n.input if i in producer} - {idx} for idx, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for idx, d in enumerate(deps):
        for p in d:
            users.setdefault(p, []).append(idx)
    remaining = [len(d) for d in deps]
    ready = [idx for idx, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(idx)
        for u in users.get(idx, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle; it cannot be sorted")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of `model` with float32 inputs and outputs; metadata (the card) is kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with warnings.catch_warnings():
        # It warns for every weight it clamps to the float16 range; a count is not actionable here.
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(copy, keep_io_types=True)
    topological_sort(half.graph)
    return half

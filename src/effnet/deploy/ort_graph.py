"""onnxruntime's CPU graph with squeeze-and-excitation kept in the blocked (NCHWc) layout.

onnxruntime runs convolutions on x86 in a blocked layout, ``NCHWc``: channels in blocks of
``B`` (16 with AVX-512, 8 with AVX2), memory order (N, C/B, H, W, B). Its layout pass
(the ``NchwcTransformer``) leaves every op it does not know in plain NCHW, so each
squeeze-and-excitation block of an EfficientNet becomes, in its optimized graph::

    x_blk -> ReorderOutput -> x -> ReduceMean -> ReorderInput -> SE convs -> gate_blk
    gate_blk -> ReorderOutput -> gate;   Mul(x, gate) -> ReorderInput -> projection conv

two full passes over the block's largest activation (to NCHW and back) plus a mean on
NCHW. :func:`blocked_se_graph` rewrites each such block to stay blocked::

    x_blk -> GlobalAveragePool (NCHWc) -> SE convs -> gate_blk (N, C, 1, 1) == (N, C/B, 1, B)
    gate_blk -> Reshape (N, C/B, 1, B) -> Tile (1, 1, 1, W) -> (N, C/B, 1, W*B)
    Reshape(x_blk, (N, C/B, H, W*B)) * tiled gate -> Reshape (N, C, H, W) -> projection conv

Reshape only relabels memory here, so the multiply broadcasts over rows of ``W * B``
contiguous floats (a plain (N, C/B, H*W, B) view is three times slower in onnxruntime's
broadcasting: it walks spans of ``B`` floats). The gate is tiled ``W`` times, a few KB.
Where onnxruntime runs the gate conv itself in NCHW (B3's stages whose squeezed width, 34
or 58, is not a multiple of ``B``), the gate is a plain (N, C, 1, 1) tensor, which is the
same memory as the blocked one when ``C`` is a multiple of ``B``, and is used as it is.
The function is unchanged, only the reorder passes go; measured in
benchmarks/README.md. Blocks that do not match the pattern exactly are left as they were,
so the result is always the same function; :func:`effnet.deploy.onnx_session` still checks
it against onnxruntime's own graph before using it.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections import defaultdict
from typing import Optional, Tuple

import numpy as np

NCHWC = "com.microsoft.nchwc"


def optimized_session(model, opts=None):
    """An onnxruntime CPU session of ``model`` and the graph onnxruntime optimized it into.

    Args:
        model: an .onnx path or serialized model bytes.
        opts: ``onnxruntime.SessionOptions`` (default: onnxruntime's defaults, level ``all``).

    Returns:
        ``(session, graph)``: the ``InferenceSession`` and its optimized graph as an
        ``onnx.ModelProto``. The graph holds onnxruntime's CPU-specific ops
        (``com.microsoft.nchwc``), so it is only valid on this machine and is never written
        next to the model.
    """
    import onnx
    import onnxruntime as ort

    opts = opts or ort.SessionOptions()
    with tempfile.TemporaryDirectory() as d:
        opts.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        opts.optimized_model_filepath = ""
        return session, onnx.load(os.path.join(d, "optimized.onnx"))


def ort_optimized_graph(path: str, threads: Optional[int] = None):
    """onnxruntime's fully optimized graph of ``path`` for this CPU (:func:`optimized_session`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return optimized_session(str(path), opts)[1]


@functools.lru_cache(maxsize=None)
def nchwc_block_size() -> Optional[int]:
    """onnxruntime's NCHWc channel block on this CPU (16 with AVX-512, 8 with AVX2), or None.

    Found by letting onnxruntime optimize a one-conv probe graph: its NCHWc conv pads a
    single output channel up to one block. None where onnxruntime has no NCHWc kernels.
    """
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 64, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    optimized = optimized_session(probe.SerializeToString())[1].graph
    weights = {t.name: t for t in optimized.initializer}
    for node in optimized.node:
        if node.domain == NCHWC and node.op_type == "Conv":
            return int(weights[node.input[1]].dims[0])
    return None


def blocked_se_graph(model) -> Tuple[object, int]:
    """``model``, onnxruntime's optimized graph, with its SE blocks kept in NCHWc (module doc).

    Args:
        model: an ``onnx.ModelProto`` that onnxruntime optimized on this machine
            (:func:`optimized_session`, :func:`ort_optimized_graph`) from a float model with
            static H and W (e.g. from :func:`effnet.deploy.export_onnx`). Rewritten in place.

    Returns:
        ``(model, n)``: the rewritten model (to be run with graph optimisation disabled, on
        this machine only) and the number of SE blocks rewritten (0: nothing matched, e.g.
        an INT8 QDQ model or a CPU without NCHWc kernels).
    """
    from onnx import helper, numpy_helper

    block = nchwc_block_size()
    if block is None:
        return model, 0
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in graph.value_info}

    def only(name: str, op: str, domain: str = ""):
        users = consumers[name]
        return users[0] if len(users) == 1 and users[0].op_type == op and users[0].domain == domain else None

    dropped, before, after, constants = set(), {}, {}, []
    for mul in graph.node:
        if mul.op_type != "Mul" or mul.domain or len(mul.input) != 2:
            continue
        x, gate = mul.input
        x_out, gate_out = producer.get(x), producer.get(gate)
        if not (x_out and gate_out and x_out.op_type == "ReorderOutput" and x_out.domain == NCHWC):
            continue
        x_in = only(mul.output[0], "ReorderInput", NCHWC)
        means = [n for n in consumers[x] if n is not mul]
        if x_in is None or len(means) != 1 or means[0].op_type != "ReduceMean" or means[0].domain:
            continue
        mean = means[0]
        mean_in = only(mean.output[0], "ReorderInput", NCHWC)
        attrs = {a.name: a for a in mean.attribute}
        axes = ([list(attrs["axes"].ints)] if "axes" in attrs else
                [numpy_helper.to_array(t).tolist() for t in graph.initializer
                 if len(mean.input) > 1 and t.name == mean.input[1]])
        keepdims = attrs["keepdims"].i if "keepdims" in attrs else 1
        shape = shapes.get(x)
        if (mean_in is None or axes != [[2, 3]] or keepdims != 1 or not shape or len(shape) != 4
                or None in shape[1:] or len(consumers[gate]) != 1):
            continue
        channels, height, width = shape[1:]
        blocks = -(-channels // block)
        if gate_out.op_type == "ReorderOutput" and gate_out.domain == NCHWC:
            gate_blk = gate_out.input[0]            # the gate conv's blocked output
            dropped.add(id(gate_out))
        elif channels % block == 0 and shapes.get(gate) in ([shape[0], channels, 1, 1], [None, channels, 1, 1]):
            gate_blk = gate                         # a plain (N, C, 1, 1) gate: the same memory as blocked
        else:
            continue
        p = f"blocked_se{len(before)}_"
        constants += [numpy_helper.from_array(np.array(v, np.int64), p + k) for k, v in
                      [("x_view", [0, blocks, height, width * block]), ("gate_view", [0, blocks, 1, block]),
                       ("tile", [1, 1, 1, width]), ("back", [0, blocks * block, height, width])]]
        x_blk = x_out.input[0]
        after[x_blk] = helper.make_node("GlobalAveragePool", [x_blk], [mean_in.output[0]], domain=NCHWC,
                                        name=p + "mean")
        before[id(mul)] = [
            helper.make_node("Reshape", [x_blk, p + "x_view"], [p + "x"], name=p + "x"),
            helper.make_node("Reshape", [gate_blk, p + "gate_view"], [p + "gate"], name=p + "gate"),
            helper.make_node("Tile", [p + "gate", p + "tile"], [p + "gate_rows"], name=p + "tile"),
            helper.make_node("Mul", [p + "x", p + "gate_rows"], [p + "y"], name=p + "mul"),
            helper.make_node("Reshape", [p + "y", p + "back"], [x_in.output[0]], name=p + "back")]
        dropped |= {id(mul), id(x_in), id(mean), id(mean_in)}
        if len(consumers[x]) == 2:
            dropped.add(id(x_out))
    if not before:
        return model, 0
    nodes = []
    for node in graph.node:                     # keep topological order: new ops where the old ones were
        nodes += before.get(id(node), [])
        if id(node) not in dropped:
            nodes.append(node)
        nodes += [after[out] for out in node.output if out in after]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    return model, len(before)

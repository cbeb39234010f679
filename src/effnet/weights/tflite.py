"""TensorFlow Lite EfficientNet(-Lite) graphs -> effnet state dicts.

The flatbuffer is read with the ``tflite`` package (the schema's generated bindings), not
by hand. A converted TF model has BatchNorm folded into each conv's weights and bias, and
int8 models store weights as int8 with per-output-channel scales (zero point 0) and biases
as int32 with scale ``input_scale * weight_scale``. Here every weight is dequantized to
float32 (``(q - zero_point) * scale``), and the folded bias goes into the BatchNorm that
follows each conv, set to an exact pass-through plus bias (weight 1, running mean 0,
running variance ``1 - eps``), so the module structure, and every other effnet format,
stays the same.

The graph's own input handling (input quantization, then any MUL/ADD/SUB by constants
before the stem) is read, and the same function is kept: the stem kernel is rescaled so
that the model takes the official Lite normalisation (returned as ``mean``/``std`` on
[0, 1] pixels) and computes exactly what the graph computes from the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["TFLiteInfo", "tflite_state_dict", "tflite_num_classes"]

# tflite.TensorType values -> numpy dtypes (schema.fbs).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 9: np.int8}
# Input scale the loaded stem is normalised to: the official Lite std, 128 / 255
# (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py STDDEV_RGB).
STEM_STD = 128.0 / 255.0
# tflite.ActivationFunctionType values.
_ACT_NAMES = {0: None, 1: "relu", 3: "relu6"}


@dataclass
class TFLiteInfo:
    """What the graph says beyond its weights.

    Attributes:
        mean, std: the normalisation of RGB in [0, 1] the loaded model takes to compute the
            graph's function (None when the input is float and no scaling op precedes the stem).
        num_classes: outputs of the final FULLY_CONNECTED layer (0 if none).
        num_convs: convolutions mapped.
        quantized: whether weights were int8.
    """

    mean: Optional[Tuple[float, float, float]]
    std: Optional[Tuple[float, float, float]]
    num_classes: int
    num_convs: int
    quantized: bool


class _Graph:
    def __init__(self, buf: bytes) -> None:
        import tflite

        from .formats import _check_tflite

        _check_tflite(buf, "TFLite graph")      # every table and buffer inside buf (read_weight_file did it too)
        self.tfl = tflite
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        self.g = self.model.Subgraphs(0)
        self.op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        return self.op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")

    def ops(self):
        for i in range(self.g.OperatorsLength()):
            op = self.g.Operators(i)
            yield self.op_name(op), op

    def tensor(self, idx: int):
        return self.g.Tensors(idx)

    def quant(self, idx: int) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], int]:
        q = self.tensor(idx).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None, None, 0
        zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength(), np.int64)
        return q.ScaleAsNumpy().astype(np.float64), np.asarray(zp, np.int64), q.QuantizedDimension()

    def const(self, idx: int) -> Optional[np.ndarray]:
        """A constant tensor dequantized to float64, or None if it has no data."""
        t = self.tensor(idx)
        data = self.model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or len(data) == 0:
            return None
        dtype = _DTYPES.get(t.Type())
        if dtype is None:
            raise ValueError(f"TFLite tensor {t.Name().decode()!r} has unsupported type {t.Type()}")
        arr = np.frombuffer(data.tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy()).astype(np.float64)
        scale, zp, axis = self.quant(idx)
        if scale is not None and dtype in (np.int8, np.uint8, np.int32):
            shape = [1] * arr.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            arr = (arr - zp.reshape(shape if zp.size > 1 else [1] * arr.ndim)) * scale.reshape(shape)
        return arr

    def options(self, op, cls):
        opts = cls()
        table = op.BuiltinOptions()
        opts.Init(table.Bytes, table.Pos)
        return opts


def _input_function(graph: _Graph, pre_ops: List) -> Tuple[Optional[float], Optional[float]]:
    """The graph's affine map from pixels (0..255) to the stem input, ``(a, b)``: ``x = a * p + b``."""
    inp = graph.g.Inputs(0)
    t = graph.tensor(inp)
    scale, zp, _ = graph.quant(inp)
    if t.Type() in (3, 9) and scale is not None:          # uint8/int8 input: the graph takes raw pixels
        a, b = float(scale[0]), -float(scale[0]) * float(zp[0])
    elif pre_ops:
        a, b = 1.0 / 255.0, 0.0                            # float input with scaling ops: assume [0, 1]
    else:
        return None, None
    for name, op in pre_ops:
        ins = list(op.InputsAsNumpy())
        consts = [graph.const(i) for i in ins]
        c = next((x for x in consts if x is not None), None)
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if c is None or c.size != 1:
            raise ValueError(f"unsupported input preprocessing op {name} (non-scalar or non-constant operand)")
        c = float(c.reshape(-1)[0])
        if name == "MUL":
            a, b = a * c, b * c
        elif name == "ADD":
            b = b + c
        elif name == "SUB" and consts[1] is not None:       # x - c
            b = b - c
        elif name == "SUB":                                  # c - x = (-a) p + (c - b)
            a, b = -a, c - b
        else:
            raise ValueError(f"unsupported op {name} before the stem convolution")
    return a, b


def tflite_state_dict(buf: bytes, model: nn.Module) -> Tuple[Dict[str, torch.Tensor], TFLiteInfo]:
    """Convert a TFLite EfficientNet(-Lite) graph to effnet keys for ``model``.

    Convolutions are matched in graph order to the model's (stem, then per block
    expand, depthwise, project, then head); each pair must agree in shape, stride,
    padding (SAME) and fused activation, so a graph of another architecture fails here
    with the first disagreement named.

    Raises:
        ValueError: the graph does not match the model (the message says where), or
            uses ops this reader does not know before the stem.
        WeightFileError: ``buf`` is truncated or corrupt (a ValueError too).
    """
    graph = _Graph(buf)
    tfl = graph.tfl
    convs, pre_ops, fc = [], [], None
    quantized = False
    for name, op in graph.ops():
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            ins = list(op.InputsAsNumpy())
            w = graph.const(ins[1])
            bias = graph.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            quantized |= graph.tensor(ins[1]).Type() == 9
            if name == "CONV_2D":
                o = graph.options(op, tfl.Conv2DOptions)
                w = w.transpose(0, 3, 1, 2)                     # OHWI -> OIHW
            else:
                o = graph.options(op, tfl.DepthwiseConv2DOptions)
                w = w.transpose(3, 0, 1, 2)                     # 1HWC -> C1HW
            convs.append(dict(kind=name, weight=w, bias=bias, stride=(o.StrideH(), o.StrideW()),
                              same=o.Padding() == tfl.Padding.SAME,
                              act=_ACT_NAMES.get(o.FusedActivationFunction(), "other"),
                              name=graph.tensor(ins[1]).Name().decode().split(";")[0]))
        elif not convs:
            pre_ops.append((name, op))
        elif name == "FULLY_CONNECTED":
            ins = list(op.InputsAsNumpy())
            fc = (graph.const(ins[1]), graph.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None)

    targets = []   # (module path, conv module, expected activation)
    act = model.stem.act.__class__.__name__.lower()
    act = {"relu6": "relu6", "relu": "relu", "silu": "silu"}.get(act, act)
    targets.append(("stem", model.stem, act))
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            if not isinstance(block.se, nn.Identity):
                raise ValueError("TFLite EfficientNet-Lite graphs have no squeeze-and-excitation; "
                                 "load them into an efficientnet_lite* model")
            if not isinstance(block.expand, nn.Identity):
                targets.append((f"stages.{s}.{b}.expand", block.expand, act))
            targets.append((f"stages.{s}.{b}.depthwise", block.depthwise, act))
            targets.append((f"stages.{s}.{b}.project", block.project, None))
    targets.append(("head", model.head, act))
    if len(convs) != len(targets):
        raise ValueError(f"the TFLite graph has {len(convs)} convolutions, the model {len(targets)}: "
                         f"a different architecture (e.g. another Lite variant)")

    sd: Dict[str, torch.Tensor] = {}
    for c, (path, module, expected_act) in zip(convs, targets):
        conv, bn = module.conv, module.bn
        if tuple(c["weight"].shape) != tuple(conv.weight.shape):
            raise ValueError(f"{c['name']}: TFLite weight shape {tuple(c['weight'].shape)} != "
                             f"{path}.conv.weight {tuple(conv.weight.shape)}")
        if c["stride"] != tuple(conv.stride):
            raise ValueError(f"{c['name']}: stride {c['stride']} != {path} stride {tuple(conv.stride)}")
        if not c["same"]:
            raise ValueError(f"{c['name']}: VALID padding is not supported (EfficientNet uses SAME)")
        if c["act"] != expected_act:
            raise ValueError(f"{c['name']}: fused activation {c['act']} where {path} has {expected_act}")
        out = conv.weight.shape[0]
        bias = c["bias"] if c["bias"] is not None else np.zeros(out)
        sd[f"{path}.conv.weight"] = torch.from_numpy(c["weight"].astype(np.float32))
        sd[f"{path}.bn.weight"] = torch.ones(out)
        sd[f"{path}.bn.bias"] = torch.from_numpy(bias.astype(np.float32))
        sd[f"{path}.bn.running_mean"] = torch.zeros(out)
        sd[f"{path}.bn.running_var"] = torch.full((out,), 1.0 - bn.eps)
        sd[f"{path}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    num_classes = 0
    if fc is not None and fc[0] is not None:
        num_classes = fc[0].shape[0]
        sd["classifier.weight"] = torch.from_numpy(fc[0].astype(np.float32))
        sd["classifier.bias"] = torch.from_numpy((fc[1] if fc[1] is not None else np.zeros(num_classes))
                                                 .astype(np.float32))
    a, b = _input_function(graph, pre_ops)
    mean = std = None
    if a is not None:
        # The stem sees x = a * p + b. Feed it the official Lite normalisation instead,
        # x' = (p - 255 m) / (255 s) with s = 128/255, and scale the stem kernel by
        # k = a * 255 * s, so that conv(W, x) == conv(k W, x') exactly (zero padding is
        # p = 255 m in both). For Model Maker graphs (x = p - 127) that is k = 128: the
        # inputs are back in [-1, 1] and the stem's gradients at a normal scale for training.
        s_ = STEM_STD
        m_ = -b / (255.0 * a)
        k = a * 255.0 * s_
        sd["stem.conv.weight"] = sd["stem.conv.weight"] * k
        mean, std = (m_,) * 3, (s_,) * 3
    return sd, TFLiteInfo(mean, std, num_classes, len(convs), quantized)


def tflite_num_classes(buf: bytes) -> int:
    """Outputs of the graph's last FULLY_CONNECTED layer (0 if it has none: a feature extractor)."""
    graph = _Graph(buf)
    n = 0
    for name, op in graph.ops():
        if name == "FULLY_CONNECTED":
            n = int(graph.tensor(op.InputsAsNumpy()[1]).ShapeAsNumpy()[0])
    return n

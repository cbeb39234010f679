"""Export: BatchNorm folding, ONNX export verified against eager PyTorch, TorchScript.

Everything here takes a trained :class:`~effnet.model.EfficientNet` in eval mode and
produces a file or module that computes the same function: a module with BN folded into the
convolutions, an ONNX file checked against eager PyTorch, a scripted archive. The engines
that run these files are in :mod:`effnet.deploy.engines`, INT8 in :mod:`effnet.deploy.quantize`.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .._io import atomic_write, make_parent
from ..layers import ConvNormAct

__all__ = ["ExportError", "fold_bn", "export_onnx", "export_torchscript"]


class ExportError(RuntimeError):
    """An exported model does not reproduce the eager model within tolerance."""


@torch.no_grad()
def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every conv-BatchNorm pair folded into one conv with bias.

    In eval mode BN is the affine map ``y = (x - mean) / sqrt(var + eps) * w + b``; folded,
    the conv kernel is scaled per output channel by ``s = w / sqrt(var + eps)`` and gets the
    bias ``b - mean * s``. Exact up to float rounding (tested within 1e-5). The copy is in
    eval mode; training it would no longer update BN statistics.
    """
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            conv, bn = m.conv, m.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.bias = nn.Parameter(bias)
            m.bn = nn.Identity()
    return model


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], input_size: Optional[int] = None,
                batch_size: int = 1, dynamic_batch: bool = True, fold: bool = True, verify: bool = True,
                atol: float = 1e-4) -> Path:
    """Export to ONNX (opset 18, torch.onnx's dynamo exporter) and check it in onnxruntime.

    Args:
        model: an EfficientNet (eval mode is set on a copy).
        path: output .onnx file, written atomically.
        input_size: square input side in pixels (default: the model's preprocessing size).
        batch_size: the example batch; with ``dynamic_batch`` any batch size runs.
        fold: fold BatchNorm into the convs first (:func:`fold_bn`).
        verify: run the file in onnxruntime on random input and compare with the original
            (unfolded) eager model.
        atol: the largest allowed difference of outputs relative to the logits' scale:
            ``max |onnx - eager| <= atol * max(1, max |eager|)``. Relative, because float32
            rounding grows with the logits: on random input a deep network (EfficientNetV2)
            reaches logits in the tens, where other conv kernels alone differ by ~1e-3.

    Returns:
        The path.

    Raises:
        ExportError: the ONNX outputs differ from eager by more than that.
    """
    path = Path(path)
    original = model.eval()
    model = fold_bn(model) if fold else copy.deepcopy(model).eval()
    size = input_size or model.config.preprocess.input_size
    x = torch.randn(max(batch_size, 2) if dynamic_batch else batch_size, model.in_chans, size, size)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    make_parent(path)

    def write(tmp: str) -> None:
        torch.onnx.export(model, (x,), tmp, input_names=["input"], output_names=["output"], opset_version=18,
                          dynamic_shapes=dynamic, dynamo=True, external_data=False, verbose=False)
        if verify:
            with torch.no_grad():
                ref = original(x).numpy()      # the unfolded eager model: checks folding and export
            from .engines import OnnxModel

            out = OnnxModel(tmp)(x.numpy())
            diff, scale = float(np.abs(out - ref).max()), max(1.0, float(np.abs(ref).max()))
            if not diff <= atol * scale:
                raise ExportError(f"ONNX output differs from eager by {diff:.3g} (> {atol} x the logits' "
                                  f"scale {scale:.3g})")

    return atomic_write(path, write, suffix=".onnx")


def export_torchscript(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Script ``model`` with BatchNorm folded (:func:`fold_bn`) and write it atomically.

    The archive is serialised to memory first and written by :func:`effnet._io.atomic_write`:
    torch's own file writer aborts the process on a full disk (SIGABRT) and truncates the
    file it replaces, where this raises an ``OSError`` and keeps the previous file.

    Args:
        model: an EfficientNet (input (N, C, H, W) float32 -> logits (N, num_classes)).
        path: output file (``.pt``); its folder is created when missing.

    Returns:
        The path.

    Raises:
        OSError (``effnet._io.WriteError``): the file could not be written (no space left,
            a folder in the path is a file...); the message names it.
    """
    path = make_parent(path)
    scripted = torch.jit.script(fold_bn(model))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    return atomic_write(path, buf.getbuffer())

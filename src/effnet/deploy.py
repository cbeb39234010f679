"""Deployment: BatchNorm folding, ONNX export with verification, onnxruntime and OpenVINO, INT8.

Everything here takes a trained :class:`~effnet.model.EfficientNet` in eval mode and
produces something that computes the same function faster or smaller: a module with BN
folded into the convolutions, an ONNX file checked against eager PyTorch, an onnxruntime
session with explicit threading and graph optimisation, the same file compiled by OpenVINO
with static shapes (the fastest fp32 CPU engine measured here, see benchmarks/README.md),
a statically quantized INT8 ONNX model calibrated on real images.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ._io import atomic_write, make_parent
from ._validate import check_int
from .layers import ConvNormAct

__all__ = ["fold_bn", "export_onnx", "onnx_session", "OnnxModel", "OpenVinoModel", "run_in_micro_batches",
           "MICRO_BATCH", "calibration_batches", "quantize_onnx_int8", "ExportError", "export_torchscript"]


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
            out = OnnxModel(tmp)(x.numpy())
            diff, scale = float(np.abs(out - ref).max()), max(1.0, float(np.abs(ref).max()))
            if not diff <= atol * scale:
                raise ExportError(f"ONNX output differs from eager by {diff:.3g} (> {atol} x the logits' "
                                  f"scale {scale:.3g})")

    return atomic_write(path, write, suffix=".onnx")


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None, optimization: str = "blocked"):
    """An onnxruntime CPU InferenceSession with explicit settings.

    Args:
        path: .onnx file.
        threads: intra-op threads (default: all cores onnxruntime sees).
        optimization: graph optimisation level: ``disable``, ``basic``, ``extended``, ``all``
            (onnxruntime's levels) or ``blocked`` (default): ``all``, then every
            squeeze-and-excitation block kept in onnxruntime's blocked NCHWc layout
            (:func:`effnet.ort_graph.blocked_se_graph`, two fewer passes over each block's
            largest activation; 0.93x the time of ``all`` at batch 1 on b0, see
            benchmarks/README.md). The rewritten graph is checked against ``all`` on a random
            batch before it is used (within 1e-4 of the logits' scale); where nothing matches
            or the check fails (with a warning), the session is ``all``.

    Raises:
        ValueError: an unknown ``optimization``.
    """
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels and optimization != "blocked":
        raise ValueError(f"unknown optimization {optimization!r}; choose from {sorted(levels) + ['blocked']}")

    def options(level: str):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return opts

    if optimization != "blocked":
        return ort.InferenceSession(str(path), options(optimization), providers=["CPUExecutionProvider"])
    from .ort_graph import blocked_se_graph, optimized_session

    def fallback(reason: str):
        warnings.warn(f"could not rewrite {path} for the blocked layout ({reason}); using onnxruntime's graph")

    try:                                    # one optimization gives both onnxruntime's session and its graph
        plain, optimized = optimized_session(str(path), options("all"))
    except Exception as e:                  # e.g. a graph over protobuf's 2 GB that onnx cannot reload
        fallback(e)
        return ort.InferenceSession(str(path), options("all"), providers=["CPUExecutionProvider"])
    inp = plain.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 2 for d in inp.shape],
                                                 dtype=np.float32)
    try:
        model, rewritten = blocked_se_graph(optimized)
        if not rewritten:
            return plain
        blocked = ort.InferenceSession(model.SerializeToString(), options("disable"),
                                       providers=["CPUExecutionProvider"])
        got = blocked.run(None, {inp.name: x})[0]
    except Exception as e:
        fallback(e)
        return plain
    want = plain.run(None, {inp.name: x})[0]
    diff, scale = float(np.abs(want - got).max()), float(np.abs(want).max()) + 1e-12
    if not diff <= 1e-4 * scale:
        warnings.warn(f"blocked-layout graph of {path} differs from onnxruntime's by {diff:.3g} "
                      f"(logits up to {scale:.3g}); using onnxruntime's graph")
        return plain
    return blocked


MICRO_BATCH = 4
"""Default micro-batch of the ONNX engines, in images (measured, see :func:`run_in_micro_batches`)."""


def _as_batch(x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected a (N, C, H, W) batch of images, got shape {x.shape}")
    return x


def run_in_micro_batches(run, x: np.ndarray, micro_batch: Optional[int]) -> np.ndarray:
    """``run`` over ``x`` (N, ...) in consecutive chunks of ``micro_batch`` images, outputs concatenated.

    EfficientNet is memory-bound on a CPU: every depthwise conv, SiLU and SE multiply is a
    pass over its activations, and at 224 px B0's largest (96 x 112 x 112 float32) is 4.8 MB
    per image. At batch 32 that is 154 MB per pass, streamed through DRAM; in chunks of 4
    images it stays within a 32 MB L3 cache. Measured on this project's 2-core machine
    (AMD EPYC, 32 MB L3), b0 at batch 32 in onnxruntime: 199 images/s in chunks of 4
    against 138 for the whole batch at once; OpenVINO: 192 against 157 (chunks of 8: 176,
    of 1: 157). b3 at 300 px in onnxruntime, batch 32: 30.7 images/s whole, 38.3 / 44.9 /
    42.6 / 37.7 in chunks of 1 / 2 / 4 / 8, so 4 stays a sound default for larger models.
    The function computed is the same: images are independent in eval mode.
    ``None`` or 0 runs the whole batch at once.
    """
    if not micro_batch or len(x) <= micro_batch:
        return run(x)
    return np.concatenate([run(x[i:i + micro_batch]) for i in range(0, len(x), micro_batch)])


class OnnxModel:
    """Callable wrapper of an onnxruntime session: float32 (N, C, H, W) array -> (N, classes) logits.

    Args:
        path: .onnx file.
        threads: intra-op threads (default: all cores onnxruntime sees).
        optimization: graph optimisation level (:func:`onnx_session`; default ``blocked``).
        micro_batch: images per session run; larger batches are split
            (:func:`run_in_micro_batches`; default :data:`MICRO_BATCH`).

    Raises:
        ValueError: (on call) the input is not a 4-D batch.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None,
                 optimization: str = "blocked", micro_batch: Optional[int] = MICRO_BATCH) -> None:
        self.session = onnx_session(path, threads, optimization)
        self.input = self.session.get_inputs()[0].name
        self.micro_batch = micro_batch

    def __call__(self, x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        return run_in_micro_batches(lambda b: self.session.run(None, {self.input: b})[0], _as_batch(x),
                                    self.micro_batch)


class OpenVinoModel:
    """An ONNX file run by OpenVINO's CPU plugin: float32 (N, C, H, W) array -> (N, classes) logits.

    OpenVINO fuses what onnxruntime cannot on this model family: SiLU (Swish) into the
    convolution before it (onnxruntime runs it as a separate pass, a fifth of its time on
    B0), and the squeeze-and-excitation gate's sigmoid and multiply into one generated
    kernel without leaving its blocked layout (onnxruntime reorders to NCHW and back). It
    runs fastest with static shapes, so the model is compiled once per input shape met
    (about a second for B0) and cached; batches run in micro-batches
    (:func:`run_in_micro_batches`), so a few shapes are met in all. Computation is float32
    (``INFERENCE_PRECISION_HINT`` f32, never bf16 behind the caller's back), so outputs
    match the ONNX file within float rounding (tested within 1e-4 relative); an INT8 QDQ
    file from :func:`quantize_onnx_int8` runs in integer arithmetic.

    Args:
        path: .onnx file (fp32 from :func:`export_onnx`, or INT8 QDQ).
        threads: CPU threads (default: ``torch.get_num_threads()``).
        micro_batch: images per inference request (default :data:`MICRO_BATCH`).

    Raises:
        ImportError: OpenVINO is not installed (``pip install 'effnet[openvino]'``).
        ValueError: (on call) the input is not a 4-D batch.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None,
                 micro_batch: Optional[int] = MICRO_BATCH) -> None:
        self.core = self.check_available().Core()
        self.path = str(path)
        self.threads = max(1, threads or torch.get_num_threads())
        self.micro_batch = micro_batch
        self._requests: dict = {}

    @staticmethod
    def check_available():
        """The ``openvino`` module; ImportError with the install command when it is missing."""
        try:
            import openvino
        except ImportError as e:
            raise ImportError("the openvino engines need OpenVINO: pip install 'effnet[openvino]' "
                              "(or pip install openvino)") from e
        return openvino

    def _run(self, x: np.ndarray) -> np.ndarray:
        request = self._requests.get(x.shape)
        if request is None:
            model = self.core.read_model(self.path)
            model.reshape(list(x.shape))
            config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32",
                      "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
            request = self._requests[x.shape] = self.core.compile_model(model, "CPU", config).create_infer_request()
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    def __call__(self, x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        return run_in_micro_batches(self._run, _as_batch(x), self.micro_batch)


def calibration_batches(model: nn.Module, images: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None] = None,
                        n: int = 64, batch: int = 16, size: Optional[int] = None) -> List[np.ndarray]:
    """Real images preprocessed for INT8 calibration, as :func:`quantize_onnx_int8` takes them.

    Files are decoded by the library's one decoder (:func:`effnet.data.load_transformed`),
    exactly as at inference; one that cannot be decoded (corrupt, truncated, oversized, not
    an image) is skipped with a ``UserWarning`` naming it, and the next file takes its place.

    Args:
        model: the model to quantize (its eval preprocessing is used).
        images: a folder (searched recursively, sorted), one image file or a list of image
            files; default the shared ImageNet sample photos (``$EFFNET_DATA/imagenet-samples/images``).
        n: the first ``n`` readable images are used.
        batch: images per returned batch.
        size: input side in pixels when it is not the model's own (same crop_pct).

    Returns:
        float32 arrays (<= batch, C, size, size).

    Raises:
        ValueError: no images found, or none of them could be decoded (the message names
            the first file and why).
    """
    check_int("n", n, 1)
    check_int("batch", batch, 1)
    if size is not None:
        check_int("size", size, 1)
    import dataclasses

    from .data import ImageDecodeError, data_dir, eval_transform, list_images, load_transformed

    if images is None or isinstance(images, (str, os.PathLike)):
        root = Path(images) if images is not None else data_dir() / "imagenet-samples" / "images"
        files = list_images(root) if root.is_dir() else [root] if root.is_file() else []
        where = str(root)
    else:
        files, where = [Path(f) for f in images], "the given list"
    if not files or n <= 0:
        raise ValueError(f"no calibration images in {where}; pass a folder of real images (--calibration DIR)")
    pre = model.config.preprocess
    t = eval_transform(dataclasses.replace(pre, input_size=size) if size else pre)
    xs, errors = [], []
    for f in files:
        if len(xs) == n:
            break
        try:
            xs.append(load_transformed(f, t))
        except (ImageDecodeError, FileNotFoundError) as e:
            errors.append(str(e))
    if errors:
        warnings.warn(f"skipped {len(errors)} unreadable calibration image(s): " + " | ".join(errors), stacklevel=2)
    if not xs:
        raise ValueError(f"none of the {len(errors)} calibration images in {where} could be decoded "
                         f"(first: {errors[0]}); pass a folder of real images (--calibration DIR)")
    x = torch.stack(xs).numpy()
    return [x[i:i + batch] for i in range(0, len(x), batch)]


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


def quantize_onnx_int8(fp32_path: Union[str, os.PathLike], out_path: Union[str, os.PathLike],
                       calibration: Iterable[np.ndarray], per_channel: bool = True) -> Path:
    """Static INT8 post-training quantization with onnxruntime, calibrated on real images.

    Weights int8 per output channel, activations uint8/int8 with ranges from the calibration
    batches (QDQ format, MinMax calibration).

    Args:
        fp32_path: a float ONNX model from :func:`export_onnx`.
        out_path: the INT8 model.
        calibration: float32 batches (N, C, H, W), preprocessed exactly as at inference.
        per_channel: per-output-channel weight scales (needed for depthwise convs).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise ValueError("calibration needs at least one batch of preprocessed images")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b}

    out_path = Path(out_path)
    make_parent(out_path)
    with tempfile.TemporaryDirectory(prefix="effnet-int8-") as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        atomic_write(out_path, lambda tmp: quantize_static(
            str(pre), tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8), suffix=".onnx")
    return out_path


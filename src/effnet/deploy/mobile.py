"""Mobile and edge: LiteRT (TFLite) and ExecuTorch programs, fp32 and INT8, verified before they are written.

The two runtimes phones run from PyTorch: LiteRT (``litert-torch`` converts a
``torch.export`` program to a ``.tflite`` flatbuffer, ``ai-edge-litert`` runs it with the
XNNPACK delegate) and ExecuTorch (``executorch``: a ``.pte`` program whose convolutions,
depthwise convolutions, adds and activations are delegated to XNNPACK). Both are heavy
and optional: ``pip install 'effnet[mobile]'``.

What every exported file is:

- Batch 1, static shapes (what a phone runs); the runners here loop over a batch.
- BatchNorm folded into the convolutions first (:func:`effnet.deploy.export.fold_bn`).
- TFLite takes NHWC input (the TFLite convention, as the official Lite files), ExecuTorch
  NCHW (PyTorch's). Both take images normalised with the model's mean/std (eval
  preprocessing: resize, centre crop ``crop_pct``, scale to [0, 1], ``(x - mean) / std``);
  the INT8 TFLite file takes that tensor quantized to int8 with the input's own
  (scale, zero_point) and returns int8 logits with the output's, like the official INT8
  Lite files (full-integer quantization). ExecuTorch INT8 keeps float input and output.
- A JSON file beside it (``<file>.json``, :func:`metadata_path`) says all this: layout,
  shape, dtype and quantization of input and output, the preprocessing, the classes and
  what the verification measured.

INT8 is PyTorch's post-training static quantization (PT2E: ``prepare_pt2e``, calibration
on real images, ``convert_pt2e``) with each runtime's own quantizer (LiteRT's
``PT2EQuantizer``, ExecuTorch's ``XNNPACKQuantizer``): int8 weights symmetric per output
channel, int8 activations per tensor with ranges from a histogram observer, plus two fixes
of ours (:func:`_relu6_fused`): ReLU6 quantized with its convolution, residual adds in
int8. On tf_efficientnet_lite0 they take top-1 on the 304 shared ImageNet photos from
81.6 / 83.9 % (LiteRT / ExecuTorch, the quantizers as they come) to 86.8 / 86.8 %
(fp32: 87.5 %; benchmarks/README.md).
"""

from __future__ import annotations

import collections
import json
import os
import re
import traceback
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Union

import numpy as np
import torch
from torch import nn

from .._io import atomic_write, make_parent
from .engines import _as_batch, run_in_micro_batches
from .export import ExportError, fold_bn

__all__ = ["MOBILE_FORMATS", "export_mobile", "export_tflite", "export_executorch", "TFLiteModel",
           "ExecuTorchModel", "runtime_model", "tflite_summary", "metadata_path", "check_mobile_available"]

MOBILE_FORMATS = ("tflite", "tflite-int8", "executorch", "executorch-int8")
"""The mobile formats of ``effnet export --format`` and engines of ``effnet predict/bench --engine``."""

MAX_PROGRAM_MB = 2048
"""Largest .tflite / .pte file the runners load, in MiB (checked before reading: files from outside are capped)."""

_INSTALL = "pip install 'effnet[mobile]' (litert-torch, ai-edge-litert, executorch)"


def check_mobile_available(runtime: str) -> None:
    """Raise ImportError with the install command when ``runtime`` (``tflite`` or ``executorch``) is missing.

    ``tflite`` needs ``litert_torch`` to convert (``convert=True`` callers) and ``ai_edge_litert`` to
    run; this checks both. ``executorch`` needs ``executorch``.
    """
    modules = ("litert_torch", "ai_edge_litert") if runtime.startswith("tflite") else ("executorch",)
    for name in modules:
        try:
            __import__(name)
        except ImportError as e:
            raise ImportError(f"the {runtime} format needs {name}: {_INSTALL}") from e


def metadata_path(path: Union[str, os.PathLike]) -> Path:
    """The JSON file written beside an exported program: ``model.tflite`` -> ``model.tflite.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _check_size(path: Union[str, os.PathLike], what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    mb = path.stat().st_size / 2 ** 20
    if mb > MAX_PROGRAM_MB:
        raise ValueError(f"{path} is {mb:.0f} MiB, over the {MAX_PROGRAM_MB} MiB cap for a {what} program; "
                         "is it the right file?")
    return path


class TFLiteModel:
    """A .tflite file run by LiteRT (``ai_edge_litert``, XNNPACK on CPU): float32 (N, C, H, W) -> (N, classes) logits.

    The file's input layout is read from its input shape: (1, H, W, C) with C of 1 or 3 is
    NHWC (effnet's exports, the official Lite files), anything else NCHW; the runner
    transposes. An int8/uint8 input is quantized with the tensor's own (scale, zero_point),
    an int8/uint8 output dequantized, so the caller always gives normalised float32 images
    and gets float32 logits. Images run one at a time when the file's batch is 1.

    Args:
        path: .tflite file (at most :data:`MAX_PROGRAM_MB` MiB).
        threads: XNNPACK threads (default: ``torch.get_num_threads()``).

    Raises:
        ImportError: ``ai_edge_litert`` is not installed.
        ValueError: the file is over the size cap or is not a TFLite model (LiteRT's message).
        FileNotFoundError: no such file.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ImportError(f"the tflite engines need ai_edge_litert: {_INSTALL}") from e
        self.path = _check_size(path, "TFLite")
        self.threads = max(1, threads or torch.get_num_threads())
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        shape = tuple(int(s) for s in self.input["shape"])
        self.nhwc = len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3)
        self.batch = shape[0]

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return x
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self.output["dtype"] == np.float32:
            return y.astype(np.float32, copy=True)
        scale, zero = self.output["quantization"]
        return (y.astype(np.float32) - zero) * scale

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(self._quantize(x)))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))

    def __call__(self, x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        x = _as_batch(x)
        return run_in_micro_batches(self._run, x.transpose(0, 2, 3, 1) if self.nhwc else x, self.batch)


class ExecuTorchModel:
    """A .pte program run by ExecuTorch's runtime (XNNPACK delegate): float32 (N, C, H, W) -> (N, classes) logits.

    Images run one at a time (effnet's programs are batch 1). ExecuTorch's XNNPACK threads
    are one pool per process: ``threads`` resets it (the last model built sets it for all).

    Args:
        path: .pte file (at most :data:`MAX_PROGRAM_MB` MiB).
        threads: threads of the process's XNNPACK pool (default: ``torch.get_num_threads()``).

    Raises:
        ImportError: ``executorch`` is not installed.
        ValueError: over the size cap; RuntimeError: ExecuTorch cannot load the program
            (not a .pte file, or an operator this runtime lacks: the message of
            :func:`export_executorch` names them at export time).
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None) -> None:
        try:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
            from executorch.runtime import Runtime
        except ImportError as e:
            raise ImportError(f"the executorch engines need executorch: {_INSTALL}") from e
        self.path = _check_size(path, "ExecuTorch")
        self.threads = max(1, threads or torch.get_num_threads())
        _unsafe_reset_threadpool(self.threads)
        self.program = Runtime.get().load_program(self.path)
        self.method = self.program.load_method("forward")
        meta = self.method.metadata.input_tensor_meta(0)
        self.batch = int(meta.sizes()[0])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(x)])[0].numpy().copy()

    def __call__(self, x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        return run_in_micro_batches(self._run, _as_batch(x), self.batch)


def runtime_model(fmt: str, path: Union[str, os.PathLike], threads: Optional[int] = None):
    """The runner of a file of format ``fmt`` (one of :data:`MOBILE_FORMATS`): :class:`TFLiteModel` or
    :class:`ExecuTorchModel`, with the errors they raise."""
    return (TFLiteModel if fmt.startswith("tflite") else ExecuTorchModel)(path, threads)


def _cause_chain(exc: BaseException) -> List[BaseException]:
    """``exc`` and what it was raised from (``__cause__``), outermost first."""
    chain: List[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__
    return chain


def _layer_in_traceback(model: nn.Module, exc: BaseException) -> Optional[str]:
    """The deepest ``forward`` frame of one of ``model``'s modules in ``exc``'s traceback (or what
    it was raised from), as ``'stages.3.0.se (SqueezeExcite)'``: ``torch.export`` runs the modules'
    Python ``forward``, so a layer it cannot trace is on the stack."""
    names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
    for e in reversed(_cause_chain(exc)):          # innermost first
        found = None
        for frame, _ in traceback.walk_tb(e.__traceback__):
            owner = frame.f_locals.get("self")
            if owner is not None and frame.f_code.co_name == "forward" and id(owner) in names:
                found = f"{names[id(owner)]} ({type(owner).__name__})"
        if found:
            return found
    return None


def _layer_of_nodes(nodes: Iterable, wanted: Optional[set] = None) -> Optional[str]:
    """The layer of the first exported node (named in ``wanted``, if given), from its ``nn_module_stack``."""
    for node in nodes:
        if not wanted or node.name in wanted:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, kind = list(stack.values())[-1]
                kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
                return f"{path or 'model'} ({kind.rsplit('.', 1)[-1]})"
    return None


def _failing_layer(model: nn.Module, exc: BaseException, nodes: Iterable = ()) -> Optional[str]:
    """The model's layer where a conversion failed, or None: from the traceback, else from the
    exported node the message names (``While executing %name``)."""
    found = _layer_in_traceback(model, exc)
    if found:
        return found
    match = re.search(r"While executing %(\w+)", " ".join(str(e) for e in _cause_chain(exc)))
    return _layer_of_nodes(nodes, {match.group(1)} if match else None)


def _conversion_error(fmt: str, model: nn.Module, exc: BaseException, nodes: Iterable = ()) -> ExportError:
    layer = _failing_layer(model, exc, nodes)
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    where = f"layer {layer}" if layer else "a layer that could not be located"
    return ExportError(f"{fmt}: cannot convert {where}: {type(exc).__name__}: {first.strip()[:300]}")


def _per_image(calibration: Iterable[np.ndarray]) -> List[torch.Tensor]:
    images = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))[i:i + 1]
              for b in calibration for i in range(len(b))]
    if not images:
        raise ValueError("INT8 export needs calibration images: at least one batch of preprocessed real images")
    return images


def _quantize_pt2e(module: nn.Module, example: torch.Tensor, quantizer, calibration: List[torch.Tensor],
                   fold_quantize: bool) -> nn.Module:
    """torch.export at batch 1, ``prepare_pt2e`` with ``quantizer``, one forward per calibration image, ``convert_pt2e``.

    ``fold_quantize``: store weights as int8 constants (ExecuTorch) or keep their float
    quantize nodes for the converter to fold (LiteRT's converter expects those).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
    move_exported_model_to_eval(converted)
    return converted


def _relu6_fused(quantizer):
    """``quantizer`` with every conv / linear followed by ReLU6 quantized after the ReLU6, as one op.

    Both runtimes' PT2E quantizers quantize a convolution's output and let the ReLU6 after
    it share those parameters, so the int8 grid spans the conv's whole range (on
    tf_efficientnet_lite0 often -30..20) where only 0..6 survives the clamp: a few dozen
    of the 256 levels carry each activation. TFLite's own converter fuses the ReLU6 into
    the convolution and quantizes its output over 0..6, as ONNX Runtime's QDQ quantizer
    does; this does the same: the conv's output is left unquantized, the ReLU6's output
    gets the conv's activation spec with its own observer, and both runtimes then run
    conv + ReLU6 as one int8 kernel with a fused clamp. Measured on the 304 shared
    ImageNet photos (benchmarks/README.md).

    Also: LiteRT's quantizer leaves the residual adds of an exported effnet model
    unannotated (it finds adds by their source function, which ``torch.export`` records
    differently here); the converter then keeps an add in float wherever its input is
    another add (a dequantize / float add / quantize per block in stages 4-6 of Lite0).
    Every add left unannotated gets int8 inputs and output with the quantizer's
    activation spec (the one its convolutions take).
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

    relu6 = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}
    adds = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
    producers = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default, torch.ops.aten.linear.default}

    class Relu6Fused(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            quantizer.annotate(model)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in relu6:
                    continue
                low, high = (list(node.args[1:3]) + [-1.0, 1.0][len(node.args) - 1:])[:2]
                producer = node.args[0]
                if (low, high) != (0.0, 6.0) or getattr(producer, "target", None) not in producers \
                        or len(producer.users) != 1:
                    continue
                spec = getattr(producer.meta.get("quantization_annotation"), "output_qspec", None)
                if not isinstance(spec, QuantizationSpec):
                    continue
                producer.meta["quantization_annotation"].output_qspec = None
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={}, output_qspec=spec, _annotated=True)
            act = next((a.input_qspec_map.get(n.args[0]) for n in model.graph.nodes
                        if n.op == "call_function" and n.target in producers
                        for a in [n.meta.get("quantization_annotation")] if a is not None), None)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in adds or act is None \
                        or getattr(node.meta.get("quantization_annotation"), "_annotated", False):
                    continue
                inputs = {a: act for a in node.args[:2] if isinstance(a, torch.fx.Node)}
                if len(inputs) == 2:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map=inputs, output_qspec=act, _annotated=True)
            return model

        def validate(self, model):
            quantizer.validate(model)

    return Relu6Fused()


class _NHWC(nn.Module):
    """(N, H, W, C) input -> the wrapped NCHW model (a permute, which LiteRT folds into its NHWC graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def _verify(fmt: str, run: Callable[[np.ndarray], np.ndarray], reference: np.ndarray, images: np.ndarray,
            int8: bool, atol: float, min_agreement: Optional[float]) -> dict:
    out = run(images)
    diff, scale = float(np.abs(out - reference).max()), max(1.0, float(np.abs(reference).max()))
    agree = float((out.argmax(1) == reference.argmax(1)).mean())
    report = {"images": int(len(images)), "max_abs_diff": diff, "logit_scale": scale, "top1_agreement": agree}
    if not int8 and not diff <= atol * scale:
        raise ExportError(f"{fmt} output differs from eager by {diff:.3g} (> {atol} x the logits' scale "
                          f"{scale:.3g}) on {len(images)} images")
    if int8 and min_agreement is not None and agree < min_agreement:
        raise ExportError(f"{fmt}: top-1 agrees with fp32 eager on {agree:.1%} of {len(images)} images, under "
                          f"the {min_agreement:.0%} asked; calibrate on more (or more typical) images")
    return report


def _verify_images(model: nn.Module, size: int, images) -> np.ndarray:
    if images is None:
        torch.manual_seed(0)
        return torch.randn(4, model.in_chans, size, size).numpy()
    x = np.concatenate([np.asarray(b, dtype=np.float32) for b in images]) if isinstance(images, (list, tuple)) \
        else np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (model.in_chans, size, size):
        raise ValueError(f"verification images must be (N, {model.in_chans}, {size}, {size}), got {x.shape}")
    return x


def export_tflite(model: nn.Module, path: Union[str, os.PathLike], input_size: Optional[int] = None,
                  int8: bool = False, calibration: Optional[Iterable[np.ndarray]] = None, images=None,
                  atol: float = 1e-4, min_agreement: Optional[float] = None) -> dict:
    """Convert to a LiteRT (.tflite) flatbuffer with ``litert-torch``, verify it in LiteRT, then write it.

    Args:
        model: an EfficientNet (or any model with ``.config.preprocess`` and ``.in_chans``)
            taking (N, C, H, W) float32 images, returning (N, classes) logits.
        path: the .tflite file, written atomically with its JSON beside it (:func:`metadata_path`).
        input_size: square input side in pixels (default: the model's preprocessing size).
        int8: full-integer INT8 (int8 input, weights per output channel, activations,
            output), calibrated on ``calibration``.
        calibration: float32 batches (N, C, H, W) of real images preprocessed as at
            inference (:func:`effnet.deploy.calibration_batches`); needed when ``int8``.
        images: float32 (N, C, H, W) preprocessed images to verify on (real photos; default:
            4 random images).
        atol: fp32: largest allowed difference relative to the logits' scale,
            ``max |tflite - eager| <= atol * max(1, max |eager|)``.
        min_agreement: INT8: refuse a file whose top-1 agrees with fp32 eager on fewer of
            ``images`` than this fraction (default: only reported).

    Returns:
        The metadata written beside the file (also has ``path`` and ``bytes``).

    Raises:
        ImportError: litert-torch / ai-edge-litert missing (``pip install 'effnet[mobile]'``).
        ExportError: a layer does not convert (the message names it) or the file does not
            reproduce eager within ``atol`` (fp32) / ``min_agreement`` (INT8).
        ValueError: ``int8`` without calibration images, or ``images`` of the wrong shape.
    """
    return _export("tflite-int8" if int8 else "tflite", model, path, input_size, calibration, images, atol,
                   min_agreement)


def export_executorch(model: nn.Module, path: Union[str, os.PathLike], input_size: Optional[int] = None,
                      int8: bool = False, calibration: Optional[Iterable[np.ndarray]] = None, images=None,
                      atol: float = 1e-4, min_agreement: Optional[float] = None) -> dict:
    """Lower to an ExecuTorch (.pte) program with the XNNPACK delegate, verify it in ExecuTorch, then write it.

    Same arguments, returns and errors as :func:`export_tflite`; input (1, C, H, W) float32
    (NCHW), output (1, classes) float32 logits, INT8 inside (float input quantized by the
    program's first node). A program using an operator the installed ExecuTorch runtime
    has no kernel for is refused with the operator and the layer named.
    """
    return _export("executorch-int8" if int8 else "executorch", model, path, input_size, calibration, images, atol,
                   min_agreement)


def export_mobile(model: nn.Module, path: Union[str, os.PathLike], fmt: str, **kwargs) -> dict:
    """:func:`export_tflite` or :func:`export_executorch` by format name (one of :data:`MOBILE_FORMATS`).

    Raises:
        ValueError: an unknown format (and what those two raise).
    """
    if fmt not in MOBILE_FORMATS:
        raise ValueError(f"unknown mobile format {fmt!r}; choose from {', '.join(MOBILE_FORMATS)}")
    kwargs["int8"] = fmt.endswith("-int8")
    return (export_tflite if fmt.startswith("tflite") else export_executorch)(model, path, **kwargs)


def _convert_tflite(fmt: str, model: nn.Module, example: torch.Tensor, calibration) -> Callable[[str], None]:
    import litert_torch

    litert_torch.config.show_progress = False
    wrapped = _NHWC(model).eval()
    nhwc = example.permute(0, 2, 3, 1).contiguous()
    if fmt.endswith("-int8"):
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        images = [c.permute(0, 2, 3, 1).contiguous() for c in calibration]
        module = _quantize_pt2e(wrapped, nhwc, _relu6_fused(quantizer), images, fold_quantize=False)
        edge = litert_torch.convert(module, (nhwc,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    else:
        edge = litert_torch.convert(wrapped, (nhwc,))
    return lambda tmp: edge.export(tmp)


def _convert_executorch(fmt: str, model: nn.Module, example: torch.Tensor, calibration):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = model
    if fmt.endswith("-int8"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                           get_symmetric_quantization_config)

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        module = _quantize_pt2e(model, example, _relu6_fused(quantizer), calibration, fold_quantize=True)
    edge = to_edge_transform_and_lower(torch.export.export(module, (example,)), partitioner=[XnnpackPartitioner()])
    program = edge.to_executorch()
    _check_operators(fmt, model, program, edge)
    buffer = program.buffer
    return lambda tmp: Path(tmp).write_bytes(buffer)


def _check_operators(fmt: str, model: nn.Module, program, edge) -> None:
    """Refuse a program whose non-delegated operators have no kernel in the installed ExecuTorch runtime."""
    from executorch.extension.pybindings.portable_lib import _get_operator_names

    registered = set(_get_operator_names())
    plans = program.executorch_program.execution_plan
    used = {(op.name + ("." + op.overload if op.overload else "")) for plan in plans for op in plan.operators}
    missing = sorted(op for op in used if op not in registered and op.split(".")[0] not in registered)
    if not missing:
        return
    nodes = [n for n in edge.exported_program().graph.nodes
             if n.op == "call_function" and any(m.split("::")[-1].split(".")[0] in str(n.target) for m in missing)]
    layer = _layer_of_nodes(nodes)
    where = f"layer {layer}" if layer else "a layer that could not be located"
    raise ExportError(f"{fmt}: cannot convert {where}: the ExecuTorch runtime has no kernel for "
                      f"{', '.join(missing)} (not delegated to XNNPACK either)")


def _export(fmt: str, model: nn.Module, path, input_size, calibration, images, atol, min_agreement) -> dict:
    check_mobile_available(fmt)
    path = Path(path)
    original = model.eval()
    folded = fold_bn(model)
    size = input_size or model.config.preprocess.input_size
    int8 = fmt.endswith("-int8")
    cal = _per_image(calibration) if int8 else []
    if int8 and tuple(cal[0].shape[1:]) != (model.in_chans, size, size):
        raise ValueError(f"calibration images are {tuple(cal[0].shape[1:])}, the export input is "
                         f"({model.in_chans}, {size}, {size}); preprocess them at {size} px")
    check = _verify_images(model, size, images)
    example = torch.from_numpy(check[:1]).contiguous()
    try:
        convert = (_convert_tflite if fmt.startswith("tflite") else _convert_executorch)(fmt, folded, example, cal)
    except ExportError:
        raise
    except Exception as e:
        nodes = []
        try:
            nodes = list(torch.export.export(folded, (example,)).graph.nodes)
        except Exception:
            pass
        raise _conversion_error(fmt, folded, e, nodes) from e
    with torch.no_grad():
        reference = original(torch.from_numpy(check)).numpy()
    report: dict = {}

    def write(tmp: str) -> None:
        convert(tmp)
        runner = runtime_model(fmt, tmp, threads=1)
        report.update(_verify(fmt, runner, reference, check, int8, atol, min_agreement))
        if fmt.startswith("tflite"):
            report["io"] = {k: _tensor_info(d) for k, d in (("input", runner.input), ("output", runner.output))}

    suffix = ".tflite" if fmt.startswith("tflite") else ".pte"
    make_parent(path)
    atomic_write(path, write, suffix=suffix)
    meta = _metadata(fmt, model, size, report, path)
    atomic_write(metadata_path(path), (json.dumps(meta, indent=2) + "\n").encode())
    return {**meta, "path": str(path), "bytes": path.stat().st_size}


def _tensor_info(d: dict) -> dict:
    scale, zero = d.get("quantization", (0.0, 0))
    info = {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
    if scale:
        info["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
    return info


def _metadata(fmt: str, model: nn.Module, size: int, report: dict, path: Path) -> dict:
    pre = model.config.preprocess
    c = model.in_chans
    io = report.pop("io", None)
    if io is None:       # ExecuTorch: NCHW float32 in, float32 logits out
        io = {"input": {"shape": [1, c, size, size], "dtype": "float32"},
              "output": {"shape": [1, model.num_classes], "dtype": "float32"}}
    layout = "NHWC" if fmt.startswith("tflite") else "NCHW"
    from ..data import model_class_names

    return {
        "format": fmt, "file": path.name, "model": model.config.name,
        "input": {**io["input"], "layout": layout,
                  "meaning": "an RGB image resized, centre-cropped and scaled to [0, 1], then (x - mean) / std"
                             + ("; quantized as round(x / scale) + zero_point" if "quantization" in io["input"] else "")},
        "output": {**io["output"], "meaning": "logits (softmax for probabilities)"
                   + ("; dequantize as (q - zero_point) * scale" if "quantization" in io["output"] else "")},
        "preprocess": {"input_size": size, "crop_pct": pre.crop_pct, "interpolation": pre.interpolation,
                       "mean": list(pre.mean), "std": list(pre.std)},
        "classes": model_class_names(model),
        "verification": {**report, "against": "eager PyTorch fp32 (BatchNorm unfolded)"},
    }


def tflite_summary(path: Union[str, os.PathLike]) -> dict:
    """The structure of a .tflite file: operator counts, tensor count, bytes, input and output tensors.

    Read with LiteRT's interpreter without delegates (the file's own operators).

    Returns:
        ``{"ops": {name: count}, "tensors": int, "bytes": int, "input": {...}, "output": {...}}``.

    Raises:
        ImportError: no ai_edge_litert; ValueError / FileNotFoundError as :class:`TFLiteModel`.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ImportError(f"reading .tflite files needs ai_edge_litert: {_INSTALL}") from e
    path = _check_size(path, "TFLite")
    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    ops = collections.Counter(o["op_name"] for o in it._get_ops_details())
    return {"ops": dict(ops.most_common()), "tensors": len(it.get_tensor_details()), "bytes": path.stat().st_size,
            "input": _tensor_info(it.get_input_details()[0]), "output": _tensor_info(it.get_output_details()[0])}

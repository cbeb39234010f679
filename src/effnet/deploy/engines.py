"""Inference engines: onnxruntime and OpenVINO wrappers and :func:`build_engine`, one callable per engine.

The server, the web app and batch inference (:mod:`effnet.serve`) and the benchmarks
(:mod:`effnet.analysis`) all run a model through :func:`build_engine`: eager PyTorch,
channels-last, torch.compile, onnxruntime (with the blocked squeeze-and-excitation graph of
:mod:`effnet.deploy.ort_graph`), OpenVINO (the fastest fp32 CPU engine measured here, see
benchmarks/README.md) and both in INT8.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from . import export as _export
from .quantize import quantize_onnx_int8

__all__ = ["ENGINES", "INT8_ENGINES", "TORCH_ENGINES", "build_engine", "onnx_session", "OnnxModel",
           "OpenVinoModel", "run_in_micro_batches", "MICRO_BATCH"]


ENGINES = ("eager", "channels_last", "compile", "onnx", "openvino", "onnx-int8", "openvino-int8",
           "tflite", "tflite-int8", "executorch", "executorch-int8")
INT8_ENGINES = ("onnx-int8", "openvino-int8", "tflite-int8", "executorch-int8")
#: Engines that compute on PyTorch's own intra-op threads; the others have their own pools.
TORCH_ENGINES = ("eager", "channels_last", "compile")


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None, optimization: str = "blocked",
                 spinning: bool = True):
    """An onnxruntime CPU InferenceSession with explicit settings.

    Args:
        path: .onnx file.
        threads: intra-op threads (default: all cores onnxruntime sees).
        optimization: graph optimisation level: ``disable``, ``basic``, ``extended``, ``all``
            (onnxruntime's levels) or ``blocked`` (default): ``all``, then every
            squeeze-and-excitation block kept in onnxruntime's blocked NCHWc layout
            (:func:`effnet.deploy.ort_graph.blocked_se_graph`, two fewer passes over each block's
            largest activation; 0.93x the time of ``all`` at batch 1 on b0, see
            benchmarks/README.md). The rewritten graph is checked against ``all`` on a random
            batch before it is used (within 1e-4 of the logits' scale); where nothing matches
            or the check fails (with a warning), the session is ``all``.
        spinning: onnxruntime's worker threads busy-wait for the next run (its default: the
            lowest latency for back-to-back runs). ``False`` puts them to sleep at once, which
            a server wants: between engine calls the cores decode uploads and parse HTTP
            (``session.intra_op.allow_spinning``; measured in benchmarks/README.md).

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
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        spinning: let worker threads busy-wait between runs (:func:`onnx_session`).

    Raises:
        ValueError: (on call) the input is not a 4-D batch.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None,
                 optimization: str = "blocked", micro_batch: Optional[int] = MICRO_BATCH, spinning: bool = True) -> None:
        self.session = onnx_session(path, threads, optimization, spinning)
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


def build_engine(model: nn.Module, engine: str, resolution: int, calibration=None, workdir=None,
                 spinning: bool = True):
    """A callable ``f(x: Tensor (N, C, H, W) float32) -> Tensor (N, classes)`` running ``model`` with ``engine``.

    Engines (:data:`ENGINES`):

    - ``eager``: PyTorch, fp32, NCHW.
    - ``channels_last``: PyTorch with NHWC memory format.
    - ``compile``: torch.compile (inductor, freezing) of the BN-folded model.
    - ``onnx``: BN folded, exported, verified and run in onnxruntime with all graph optimisations.
    - ``openvino``: that ONNX file compiled by OpenVINO, fp32, static shapes
      (:class:`~effnet.OpenVinoModel`; needs ``pip install 'effnet[openvino]'``).
    - ``onnx-int8`` / ``openvino-int8``: the ONNX file statically quantized to INT8, calibrated
      on ``calibration`` (a list of preprocessed float32 (N, C, H, W) batches of real images),
      run in onnxruntime / OpenVINO.
    - ``tflite`` / ``tflite-int8`` / ``executorch`` / ``executorch-int8``: the mobile programs of
      :mod:`effnet.deploy.mobile` (batch 1, XNNPACK; INT8 calibrated on ``calibration``),
      verified on the calibration images, run in LiteRT / ExecuTorch one image at a time
      (needs ``pip install 'effnet[mobile]'``).

    ONNX engines use ``torch.get_num_threads()`` threads; ``spinning=False`` stops onnxruntime's
    threads busy-waiting between calls (:func:`onnx_session`; for a server sharing its cores).

    Raises:
        ValueError: an unknown engine, or an INT8 engine without calibration batches.
        ImportError: ``openvino*`` without OpenVINO installed, the mobile engines without the mobile extra.
    """
    from . import mobile as _mobile         # here: mobile builds on this module's batch helpers

    model = model.eval()
    if engine in _mobile.MOBILE_FORMATS:
        if engine in INT8_ENGINES and not calibration:
            raise ValueError(f"{engine} needs calibration batches (preprocessed real images)")
        _mobile.check_mobile_available(engine)
        tmp = None if workdir else tempfile.TemporaryDirectory(prefix="effnet-mobile-")
        path = Path(workdir or tmp.name) / ("model.tflite" if engine.startswith("tflite") else "model.pte")
        _mobile.export_mobile(model, path, engine, input_size=resolution, calibration=calibration,
                              images=calibration[:2] if calibration else None)
        runner = _mobile.runtime_model(engine, path, threads=torch.get_num_threads())
        return lambda x, _keep=tmp: torch.from_numpy(runner(x))
    if engine == "eager":
        return lambda x: model(x)
    if engine == "channels_last":
        m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        return lambda x: m(x.contiguous(memory_format=torch.channels_last))
    if engine == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(_export.fold_bn(model))
        return lambda x: compiled(x)
    if engine in ("onnx", "openvino") + INT8_ENGINES:
        if engine in INT8_ENGINES and not calibration:
            raise ValueError(f"{engine} needs calibration batches (preprocessed real images)")
        if engine.startswith("openvino"):
            OpenVinoModel.check_available()
        # A folder of our own is removed when the engine is dropped, or at exit (weakref.finalize
        # of TemporaryDirectory): OpenVINO reads the file again for each new input shape.
        tmp = None if workdir else tempfile.TemporaryDirectory(prefix="effnet-bench-")
        d = Path(workdir or tmp.name)
        path = _export.export_onnx(model, d / "model.onnx", input_size=resolution)
        if engine in INT8_ENGINES:
            path = quantize_onnx_int8(path, d / "model-int8.onnx", calibration)
        if engine.startswith("openvino"):
            runner = OpenVinoModel(path, threads=torch.get_num_threads())
        else:
            runner = OnnxModel(path, threads=torch.get_num_threads(), spinning=spinning)
        return lambda x, _keep=tmp: torch.from_numpy(runner(x))
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")

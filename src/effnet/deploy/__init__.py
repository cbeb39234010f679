"""Deployment: export, inference engines, the onnxruntime graph rewrite and INT8 quantization.

One home for what runs a trained model outside training: :mod:`~effnet.deploy.export`
(BatchNorm folding, verified ONNX, TorchScript), :mod:`~effnet.deploy.engines`
(:func:`build_engine` and the onnxruntime / OpenVINO wrappers), :mod:`~effnet.deploy.ort_graph`
(squeeze-and-excitation kept in onnxruntime's blocked layout),
:mod:`~effnet.deploy.quantize` (calibration on real images, static INT8) and
:mod:`~effnet.deploy.mobile` (LiteRT / TFLite and ExecuTorch programs, fp32 and INT8). The HTTP server,
the web app and batch inference (:mod:`effnet.serve`) build on them; :mod:`effnet.analysis`
keeps the measuring.
"""

from .engines import (ENGINES, INT8_ENGINES, MICRO_BATCH, TORCH_ENGINES, OnnxModel, OpenVinoModel, build_engine,
                      onnx_session, run_in_micro_batches)
from .export import ExportError, export_onnx, export_torchscript, fold_bn
from .mobile import (MOBILE_FORMATS, ExecuTorchModel, TFLiteModel, export_executorch, export_mobile, export_tflite,
                     tflite_summary)
from .quantize import calibration_batches, quantize_onnx_int8

__all__ = ["ENGINES", "INT8_ENGINES", "MICRO_BATCH", "TORCH_ENGINES", "OnnxModel", "OpenVinoModel", "build_engine",
           "onnx_session", "run_in_micro_batches", "ExportError", "export_onnx", "export_torchscript", "fold_bn",
           "calibration_batches", "quantize_onnx_int8", "MOBILE_FORMATS", "ExecuTorchModel", "TFLiteModel",
           "export_executorch", "export_mobile", "export_tflite", "tflite_summary"]

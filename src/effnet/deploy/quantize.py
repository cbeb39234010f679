"""INT8 post-training quantization: calibration batches of real images and onnxruntime's static quantizer."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union
import os

import numpy as np
import torch
from torch import nn

from .._io import atomic_write, make_parent
from .._validate import check_int

__all__ = ["calibration_batches", "quantize_onnx_int8"]


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

    from ..data import ImageDecodeError, data_dir, eval_transform, list_images, load_transformed

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

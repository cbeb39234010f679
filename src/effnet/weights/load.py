"""Loading weights into a model, and effnet's own save/load format."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._io import atomic_write
from .convert import convert_state_dict
from .formats import read_weight_file
from .hub import fetch, is_url

__all__ = ["WeightMismatchError", "adapt_input_conv", "resolve_source_path", "load_weights", "load_state_dict",
           "save_pretrained", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class WeightMismatchError(ValueError):
    """A weight file's keys or shapes do not fit the model (wrong architecture or a bad file).

    Attributes: ``missing``, ``unexpected`` (key lists) and ``mismatched``
    (``(key, file_shape, model_shape)`` tuples).
    """

    def __init__(self, source: str, missing: List[str], unexpected: List[str],
                 mismatched: List[Tuple[str, tuple, tuple]]) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

        def show(items: Sequence[Any]) -> str:
            head = ", ".join(str(i) for i in items[:8])
            return head + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        parts = [f"weights from {source} do not fit the model:"]
        if mismatched:
            parts.append(f"  mis-shaped ({len(mismatched)}): " +
                         show([f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]))
        if missing:
            parts.append(f"  missing ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"  unexpected ({len(unexpected)}): {show(unexpected)}")
        parts.append("  Check that the model name matches the weights (e.g. b0 weights need an *_b0 model).")
        super().__init__("\n".join(parts))


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt an RGB stem kernel (O, 3, k, k) to ``in_chans`` input channels.

    One channel: the sum over RGB (a gray image gives the same response as the RGB image
    with that gray in every channel). More channels: RGB repeated cyclically and scaled by
    ``3 / in_chans`` so the activation scale is kept.
    """
    if weight.shape[1] == in_chans:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"can only adapt a 3-channel stem, got {weight.shape[1]} channels")
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / 3)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (3.0 / in_chans)


def resolve_source_path(source: Union[str, os.PathLike], sha256: Optional[str] = None) -> Path:
    """A local path for a weight source: a file or folder path, or a URL fetched into the cache."""
    if is_url(str(source)):
        return fetch(str(source), sha256=sha256)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weight file not found: {path}")
    return path


def load_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "state dict",
                    unmapped: Sequence[str] = ()) -> Dict[str, Any]:
    """Load effnet-keyed tensors into ``model``, checking every key and shape.

    A classifier whose size differs from the model's (or a model without classifier) is
    not loaded: the model keeps its freshly initialised head. A 3-channel stem is adapted
    to the model's ``in_chans`` (:func:`adapt_input_conv`). Older files without BatchNorm
    ``num_batches_tracked`` counters load with the counters at 0.

    Returns:
        ``{"classifier_loaded": bool, "stem_adapted": bool}``.

    Raises:
        WeightMismatchError: any missing, unexpected or mis-shaped key (all listed); the
            model is left unchanged.
    """
    target = model.state_dict()
    sd = dict(state_dict)
    classifier_loaded = "classifier.weight" in sd
    if classifier_loaded and ("classifier.weight" not in target
                              or sd["classifier.weight"].shape != target["classifier.weight"].shape):
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        classifier_loaded = False
    stem_adapted = False
    stem = sd.get("stem.conv.weight")
    if stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and model.in_chans != 3:
        sd["stem.conv.weight"] = adapt_input_conv(stem, model.in_chans)
        stem_adapted = True
    optional = {k for k in target if k.endswith("num_batches_tracked")}
    if not classifier_loaded:
        optional |= {k for k in target if k.startswith("classifier.")}
    missing = [k for k in target if k not in sd and k not in optional]
    unexpected = list(unmapped) + [k for k in sd if k not in target]
    mismatched = [(k, tuple(sd[k].shape), tuple(target[k].shape)) for k in target   # model order: stem first
                  if k in sd and sd[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise WeightMismatchError(source, missing, unexpected, mismatched)
    with torch.no_grad():
        for k, v in sd.items():
            target[k].copy_(v)
    return dict(classifier_loaded=classifier_loaded, stem_adapted=stem_adapted)


def load_weights(model: nn.Module, source: Union[str, os.PathLike, Tuple[str, Any]],
                 sha256: Optional[str] = None, name: Optional[str] = None) -> Dict[str, Any]:
    """Load a weight file, URL or effnet folder into ``model`` (in place).

    The format is told from the content: safetensors or torch pickles in the timm,
    torchvision, EfficientNet-PyTorch or effnet layout, TensorFlow Lite graphs, or an
    effnet folder from :func:`save_pretrained`.

    Args:
        model: an :class:`~effnet.model.EfficientNet`.
        source: path, URL, or an already read ``(kind, object)`` pair from
            :func:`~effnet.weights.formats.read_weight_file`.
        sha256: expected hash for URLs (else the hash prefix in the file name is checked).
        name: how error messages name the source (default: its path).

    Returns:
        A report: ``format``, ``classifier_loaded``, ``stem_adapted`` and, for TFLite,
        ``mean``/``std`` (the graph's input normalisation) and ``quantized``.

    Raises:
        FileNotFoundError, WeightFileError, DownloadError, HashMismatchError,
        WeightMismatchError (keys/shapes, listed), ValueError (TFLite graph mismatch).
    """
    if isinstance(source, tuple):
        kind, obj = source
        name = name or "weights"
    else:
        path = resolve_source_path(source, sha256)
        if path.is_dir():
            path = path / WEIGHTS_NAME
        kind, obj = read_weight_file(path)
        name = name or str(path)
    if kind == "tflite":
        from .tflite import tflite_state_dict

        sd, info = tflite_state_dict(obj, model)
        report = load_state_dict(model, sd, name)
        report.update(format="tflite", mean=info.mean, std=info.std, quantized=info.quantized,
                      source_classes=info.num_classes)
        return report
    try:
        sd, fmt, unmapped = convert_state_dict(obj, model)
    except KeyError as e:
        raise WeightMismatchError(name, [], list(obj)[:20], []) from e
    report = load_state_dict(model, sd, name, unmapped)
    report["format"] = fmt
    return report


def save_pretrained(model: nn.Module, directory: Union[str, os.PathLike],
                    class_names: Optional[Sequence[str]] = None) -> Path:
    """Write ``model`` as safetensors weights plus a JSON config in ``directory``.

    The config holds the model name and its overrides (padding, BatchNorm, dropout,
    drop_path), ``num_classes``, ``in_chans``, the class names and the eval preprocessing,
    so :func:`effnet.from_pretrained` rebuilds the identical model. Both files are written
    atomically (temporary file, then rename).

    Raises:
        ValueError: the model was not made by ``create_model`` (no config to record).
    """
    from safetensors.torch import save_file

    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("save_pretrained needs a model from effnet.create_model (it records the model name)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    if names and len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.num_classes} classes")
    config = dict(
        format="effnet", version=1, model=cfg.name, num_classes=model.num_classes, in_chans=model.in_chans,
        overrides=dict(drop_rate=cfg.scaling.dropout, drop_path_rate=cfg.drop_path_rate, padding=cfg.padding,
                       norm_eps=cfg.norm_eps, norm_momentum=cfg.norm_momentum),
        class_names=names, preprocess=dataclasses.asdict(cfg.preprocess))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1)))
    return directory

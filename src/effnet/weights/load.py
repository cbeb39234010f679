"""Loading weights into a model, and effnet's own save/load format.

Checks made on every load, whatever the format:

* non-finite tensors (NaN/Inf) are refused, naming the tensor and the file;
* an effnet folder (:func:`save_pretrained`) loads strictly: its ``config.json`` must
  have every key (:data:`FOLDER_CONFIG_KEYS`) and agree with its weights
  (``num_classes`` = classifier rows, ``in_chans`` = stem input channels), and the model
  must have the folder's ``num_classes``/``in_chans`` unless the caller asked for other
  values (``strict=False``);
* TF-trained weights put in a symmetric-padding model give a ``UserWarning`` naming the
  ``tf_`` model to use. Which files are TF-trained is only known for some: TFLite graphs
  and EfficientNet-PyTorch (lukemelas) files (all of its weights are ports of the TF
  checkpoints); registered sources carry :attr:`~effnet.registry.WeightSource.tf_trained`;
  a file whose name is that of a registered TF-trained source or starts with ``tf_``
  (timm's name for its TF ports). A timm or torchvision file under another name cannot be
  told apart from PyTorch-trained weights by its keys or values, so it gets no warning.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._io import WriteError, atomic_write, make_parent
from .convert import convert_state_dict
from .formats import WeightFileError, read_json, read_weight_file
from .hub import fetch, is_url

__all__ = ["WeightMismatchError", "ConfigError", "adapt_input_conv", "resolve_source_path", "load_weights",
           "load_state_dict", "save_pretrained", "read_folder_config", "check_finite", "non_finite_keys", "CONFIG_NAME", "WEIGHTS_NAME",
           "FOLDER_CONFIG_KEYS"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Keys :func:`save_pretrained` writes and :func:`read_folder_config` requires.
FOLDER_CONFIG_KEYS = ("format", "model", "num_classes", "in_chans", "overrides", "preprocess")
PREPROCESS_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std")


class ConfigError(WeightFileError):
    """An effnet folder's ``config.json`` lacks a key, or disagrees with its weights or the model."""


class WeightMismatchError(ValueError):
    """A weight file's keys or shapes do not fit the model (wrong architecture or a bad file).

    Attributes: ``missing``, ``unexpected`` (key lists) and ``mismatched``
    (``(key, file_shape, model_shape)`` tuples).
    """

    def __init__(self, source: str, missing: List[str], unexpected: List[str],
                 mismatched: List[Tuple[str, tuple, tuple]], hint: Optional[str] = None) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

        def show(items: Sequence[Any]) -> str:
            head = ", ".join(str(i) for i in items[:8])
            return head + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        parts = [f"weights from {source} do not fit the model:"] + ([f"  {hint}"] if hint else [])
        if mismatched:
            parts.append(f"  mis-shaped ({len(mismatched)}): " +
                         show([f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]))
        if missing:
            parts.append(f"  missing ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"  unexpected ({len(unexpected)}): {show(unexpected)}")
        if not hint:
            parts.append("  Check that the model name matches the weights (e.g. b0 weights need an *_b0 model).")
        super().__init__("\n".join(parts))


# Which network family a state dict in effnet's keys holds, told from its block layers
# (see effnet.weights.convert for the names): FusedMBConv exists only in EfficientNetV2,
# the Bottleneck's restore conv only in ResNet, squeeze-and-excitation after a depthwise
# conv in EfficientNet (V1; V2 has it too, but V2 is told first by its fused blocks).
_FAMILY_MARKS = (("EfficientNetV2", ".fused."), ("ResNet", ".restore."), ("EfficientNet", ".se."),
                 ("MobileNet or EfficientNet-Lite", ".depthwise."))
_FAMILY_MODELS = {"EfficientNetV2": "an efficientnetv2_* or tf_efficientnetv2_* model",
                  "EfficientNet": "an efficientnet_* or tf_efficientnet_b* model", "ResNet": "resnet50",
                  "MobileNet or EfficientNet-Lite": "a mobilenetv1/v2 or *efficientnet_lite* model"}


def weights_family(keys: Sequence[str]) -> Optional[str]:
    """The network family of a state dict in effnet's keys (``EfficientNetV2``, ``ResNet``,
    ``EfficientNet``, ``MobileNet or EfficientNet-Lite``), or None when no block tells."""
    for family, mark in _FAMILY_MARKS:
        if any(mark in k for k in keys):
            return family
    return None


def _family_hint(file_keys: Sequence[str], model: nn.Module) -> Optional[str]:
    """A sentence for a mismatch between a file of one family and a model of another."""
    have, want = weights_family(file_keys), weights_family(list(model.state_dict()))
    if have is None or want is None or have == want:
        return None
    name = getattr(getattr(model, "config", None), "name", type(model).__name__)

    def a(family: str) -> str:
        return f"{'an' if family[0] in 'AEIOU' else 'a'} {family}"
    return (f"The file holds {a(have)} network but the model ({name}) is {a(want)}: load it into "
            f"{_FAMILY_MODELS[have]} (effnet.list_models() lists them).")


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


def non_finite_keys(state_dict: Dict[str, Any]) -> List[str]:
    """Keys of the floating-point tensors of ``state_dict`` that hold NaN or Inf, in order."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(state_dict: Dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Refuse floating-point tensors holding NaN or Inf.

    Raises:
        WeightFileError: the first non-finite tensor, by key, with its NaN/Inf counts and
            ``source`` (the file).
    """
    bad = non_finite_keys(state_dict)
    if bad:
        value = state_dict[bad[0]]
        nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        raise WeightFileError(f"{source}: tensor {bad[0]!r} holds {nan} NaN and {inf} Inf values; refusing "
                              f"non-finite weights (a corrupt file or a diverged training run)")


def read_folder_config(directory: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``config.json`` of an effnet folder, with every required key checked.

    Returns:
        The config dict (keys :data:`FOLDER_CONFIG_KEYS`, ``preprocess`` with
        ``PREPROCESS_KEYS``, optional ``class_names`` and ``version``).

    Raises:
        FileNotFoundError: no ``config.json`` in ``directory``.
        ConfigError: not an effnet config, a key missing or of the wrong type; one line
            naming the file and the key.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{Path(directory)} has no {CONFIG_NAME}; expected a folder written by save_pretrained")
    cfg = read_json(path)
    for key in FOLDER_CONFIG_KEYS:
        if key not in cfg:
            raise ConfigError(f"{path}: missing key {key!r} (an effnet config needs {list(FOLDER_CONFIG_KEYS)})")
    if cfg["format"] != "effnet":
        raise ConfigError(f"{path} is not an effnet config (format={cfg['format']!r})")
    for key, lo in (("num_classes", 0), ("in_chans", 1)):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"{path}: key {key!r} must be an integer >= {lo}, got {v!r}")
    if not isinstance(cfg["model"], str):
        raise ConfigError(f"{path}: key 'model' must be a model name string, got {cfg['model']!r}")
    if not isinstance(cfg["overrides"], dict):
        raise ConfigError(f"{path}: key 'overrides' must be an object, got {cfg['overrides']!r}")
    pre = cfg["preprocess"]
    if not isinstance(pre, dict):
        raise ConfigError(f"{path}: key 'preprocess' must be an object, got {pre!r}")
    for key in PREPROCESS_KEYS:
        if key not in pre:
            raise ConfigError(f"{path}: missing key 'preprocess.{key}'")
    return cfg


def _check_folder(folder: Path, cfg: Dict[str, Any], sd: Dict[str, torch.Tensor], model: nn.Module,
                  strict: bool) -> None:
    """An effnet folder's config against its weights (always) and the model (``strict``)."""
    weights = folder / WEIGHTS_NAME
    if "stem.conv.weight" not in sd:
        raise ConfigError(f"{weights} is not in effnet's layout (no 'stem.conv.weight'); "
                          f"an effnet folder holds the weights save_pretrained writes")
    w = sd.get("classifier.weight")
    rows = int(w.shape[0]) if w is not None else 0
    chans = int(sd["stem.conv.weight"].shape[1])
    for key, said, found, what in (("num_classes", cfg["num_classes"], rows,
                                    f"'classifier.weight' has {rows} rows" if w is not None else "there is no classifier"),
                                   ("in_chans", cfg["in_chans"], chans, f"'stem.conv.weight' takes {chans} channels")):
        if said != found:
            raise ConfigError(f"{folder}: {CONFIG_NAME} says {key}={said} but in {WEIGHTS_NAME} {what} "
                              f"({key}={found}); the folder is inconsistent, save it again with save_pretrained")
    if strict:
        for key in ("num_classes", "in_chans"):
            have = getattr(model, key)
            if have != cfg[key]:
                raise ConfigError(f"{folder}: the model has {key}={have} but the folder's {CONFIG_NAME} says "
                                  f"{key}={cfg[key]}; load it with effnet.from_pretrained, or pass {key}={cfg[key]}")


def _tf_model_name(model: nn.Module) -> str:
    name = getattr(getattr(model, "config", None), "name", None)
    if isinstance(name, str) and name.startswith("efficientnet_"):
        return "tf_" + name
    if isinstance(name, str) and name.startswith("tf_"):
        return name
    return "the matching tf_efficientnet_* model"


def _tf_trained_reason(kind: str, fmt: str, path: Optional[Path]) -> Optional[str]:
    """Why a file is known to hold TF-trained weights, or None (see the module docstring)."""
    if kind == "tflite":
        return "a TFLite graph"
    if fmt == "lukemelas":
        return "EfficientNet-PyTorch weights are ports of the TF checkpoints"
    if path is not None:
        if path.name.startswith("tf_"):
            return "its name starts with tf_, timm's name for its TF ports"
        try:
            from ..registry import tf_trained_file_names
        except ImportError:            # pragma: no cover - registry always importable in the package
            return None
        if path.name in tf_trained_file_names():
            return "a registered TF-trained source has this file name"
    return None


def _warn_tf_padding(model: nn.Module, name: str, reason: str) -> None:
    from ..layers import Conv2dSame

    if isinstance(model.stem.conv, Conv2dSame):
        return
    eps = model.stem.bn.eps
    tf_name = _tf_model_name(model)
    fix = "padding='same'" if tf_name == getattr(getattr(model, "config", None), "name", None) else repr(tf_name)
    warnings.warn(f"{name} holds TF-trained weights ({reason}) but the model uses symmetric padding "
                  f"(BatchNorm eps {eps:g}); they were trained with TF 'SAME' padding, so outputs will be off "
                  f"(for B0, logits by about 0.8). Use {fix} instead (TF padding, eps 1e-3)", UserWarning, stacklevel=3)


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
        WeightFileError: a NaN/Inf tensor (:func:`check_finite`).
    """
    check_finite(state_dict, source)
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
        raise WeightMismatchError(source, missing, unexpected, mismatched, _family_hint(list(sd), model))
    with torch.no_grad():
        for k, v in sd.items():
            target[k].copy_(v)
    return dict(classifier_loaded=classifier_loaded, stem_adapted=stem_adapted)


def load_weights(model: nn.Module, source: Union[str, os.PathLike, Tuple[str, Any]],
                 sha256: Optional[str] = None, name: Optional[str] = None, strict: Optional[bool] = None,
                 tf_trained: Optional[bool] = None) -> Dict[str, Any]:
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
        strict: for an effnet folder, require the model's ``num_classes``/``in_chans`` to
            be the folder's (default True for folders; False lets a caller who asked for a
            new head or stem have one). Other sources ignore it.
        tf_trained: whether the weights were trained with TF 'SAME' padding; None: told
            from the file where possible (module docstring). True with a symmetric-padding
            model gives a ``UserWarning`` naming the ``tf_`` model to use.

    Returns:
        A report: ``format``, ``classifier_loaded``, ``stem_adapted`` and, for TFLite,
        ``mean``/``std`` (the graph's input normalisation) and ``quantized``.

    Raises:
        FileNotFoundError, WeightFileError (also NaN/Inf tensors, by key), ConfigError
        (effnet folder: missing key, config vs weights vs model), DownloadError,
        HashMismatchError, WeightMismatchError (keys/shapes, listed), ValueError (TFLite
        graph mismatch).
    """
    path: Optional[Path] = None
    folder_cfg = None
    if isinstance(source, tuple):
        kind, obj = source
        name = name or "weights"
    else:
        path = resolve_source_path(source, sha256)
        if path.is_dir():
            folder_cfg = read_folder_config(path)
            name = str(Path(name) / WEIGHTS_NAME) if name else None
            path = path / WEIGHTS_NAME
        kind, obj = read_weight_file(path)
        name = name or str(path)
    if kind == "tflite":
        from .tflite import tflite_state_dict

        sd, info = tflite_state_dict(obj, model)          # load_state_dict refuses non-finite tensors
        if tf_trained is not False and (tf_trained or _tf_trained_reason(kind, "", path)):
            _warn_tf_padding(model, name, "a TFLite graph")
        report = load_state_dict(model, sd, name)
        report.update(format="tflite", mean=info.mean, std=info.std, quantized=info.quantized,
                      source_classes=info.num_classes)
        return report
    check_finite(obj, name)                     # the file's own keys
    if folder_cfg is not None:
        _check_folder(path.parent, folder_cfg, obj, model, strict is not False)
    try:
        sd, fmt, unmapped = convert_state_dict(obj, model)
    except KeyError as e:
        raise WeightMismatchError(name, [], list(obj)[:20], []) from e
    named = path if path is not None else (Path(str(name)) if name else None)   # a pre-read file: its name
    reason = None if tf_trained is False else (_tf_trained_reason(kind, fmt, named) or
                                               ("the registered source is TF-trained" if tf_trained else None))
    if reason:
        _warn_tf_padding(model, name, reason)
    report = load_state_dict(model, sd, name, unmapped)
    report["format"] = fmt
    return report


def save_pretrained(model: nn.Module, directory: Union[str, os.PathLike],
                    class_names: Optional[Sequence[str]] = None) -> Path:
    """Write ``model`` as safetensors weights plus a JSON config in ``directory``.

    The config holds the model name and its overrides (padding, BatchNorm, dropout,
    drop_path), ``num_classes``, ``in_chans``, the class names and the eval preprocessing,
    so :func:`effnet.from_pretrained` rebuilds the identical model. Both files are written
    atomically (serialised in memory, written beside, renamed); the folder and its parents
    are created when missing.

    Raises:
        ValueError: the model was not made by ``create_model`` (no config to record).
        OSError (``effnet._io.WriteError``): ``directory`` (or a parent) is a file, or a write
            failed (no space left on device...); the message names the file, and the
            previous files are kept.
    """
    from safetensors.torch import save

    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("save_pretrained needs a model from effnet.create_model (it records the model name)")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WriteError(errno.EEXIST, f"cannot save to {directory}: it is a file, not a folder; choose another "
                                       f"folder", str(directory))
    make_parent(directory / WEIGHTS_NAME)
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    if names and len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.num_classes} classes")
    config = dict(
        format="effnet", version=1, model=cfg.name, num_classes=model.num_classes, in_chans=model.in_chans,
        overrides=dict(drop_rate=cfg.scaling.dropout, drop_path_rate=cfg.drop_path_rate, padding=cfg.padding,
                       norm_eps=cfg.norm_eps, norm_momentum=cfg.norm_momentum),
        class_names=names, preprocess=dataclasses.asdict(cfg.preprocess))
    if getattr(cfg, "rescaled", None) is not None:
        config["scaling"] = dataclasses.asdict(cfg.rescaled)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))     # bytes: OSError on a full disk
    atomic_write(directory / CONFIG_NAME, json.dumps(config, indent=1).encode())
    return directory

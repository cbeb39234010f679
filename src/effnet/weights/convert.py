"""Other projects' state dicts (EfficientNet, MobileNetV1/V2, ResNet-50) -> effnet's, by explicit key maps.

effnet's names (``model.state_dict()``)::

    stem.conv, stem.bn                                   stem conv (3x3; ResNet 7x7) + BN
    stages.S.B.expand.conv/.bn                           MBConv expand 1x1 (absent when ratio 1)
    stages.S.B.depthwise.conv/.bn                        depthwise kxk (MBConv, DepthwiseSeparable)
    stages.S.B.se.reduce, stages.S.B.se.expand           squeeze-and-excitation 1x1 convs (bias)
    stages.S.B.fused.conv/.bn                            FusedMBConv kxk (EfficientNetV2)
    stages.S.B.project.conv/.bn                          projection 1x1 (MBConv, FusedMBConv, DepthwiseSeparable)
    stages.S.B.reduce/.conv/.restore.conv/.bn            ResNet Bottleneck 1x1, 3x3, 1x1
    stages.S.B.shortcut.conv/.bn                         ResNet projection shortcut (strided 1x1)
    head.conv, head.bn                                   head 1x1 conv + BN (absent: MobileNetV1, ResNet)
    classifier                                           Linear

Layouts read: timm (EfficientNet V1 and V2, MobileNetV1/V2: ``conv_stem``, ``blocks.S.B``),
torchvision (EfficientNet V1 and V2: ``features.S.B.block.I``; MobileNetV2: ``features.K.conv.I``
numbered flat over all blocks), ResNet (torchvision's and timm's ``resnet50``, the same
names: ``conv1``, ``layerN.B.conv1..3``, ``downsample``, ``fc``) and EfficientNet-PyTorch.

Each ``conv``/``bn`` carries the usual ``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked`` leaves; the maps below rename module paths and
keep the leaf. Tensor layouts are identical in every project (PyTorch OIHW), so no
tensor is transposed.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["FORMATS", "CLASSIFIER_KEYS", "classifier_size", "detect_format", "convert_state_dict", "TIMM_TOP", "TIMM_INVERTED_RESIDUAL",
           "TIMM_DEPTHWISE_SEPARABLE", "TIMM_EDGE_RESIDUAL", "TIMM_CONV_BN_ACT", "TORCHVISION_BLOCK_LAYERS", "TORCHVISION_INVERTED_RESIDUAL",
           "TORCHVISION_INVERTED_RESIDUAL_T1", "RESNET_TOP", "RESNET_BOTTLENECK", "LUKEMELAS_TOP", "LUKEMELAS_BLOCK"]

# The key whose presence identifies each layout.
FORMATS: Dict[str, str] = {
    "effnet": "stem.conv.weight",
    "timm": "conv_stem.weight",                  # timm efficientnet_*, tf_efficientnet_*, mobilenetv1/v2_*
    "torchvision": "features.0.0.weight",        # torchvision.models.efficientnet_b*, mobilenet_v2
    "lukemelas": "_conv_stem.weight",            # EfficientNet-PyTorch (efficientnet_pytorch)
    "resnet": "layer1.0.conv1.weight",           # torchvision.models.resnet50 and timm resnet50 (same names)
}

# timm (timm/models/efficientnet.py, _efficientnet_blocks.py).
TIMM_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv", "bn2": "head.bn",
            "classifier": "classifier"}
# blocks.S.B.* of an InvertedResidual (expand ratio > 1).
TIMM_INVERTED_RESIDUAL = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "depthwise.conv",
                          "bn2": "depthwise.bn", "se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand",
                          "conv_pwl": "project.conv", "bn3": "project.bn"}
# blocks.S.B.* of a DepthwiseSeparableConv (expand ratio 1): conv_pw is the *projection* here.
TIMM_DEPTHWISE_SEPARABLE = {"conv_dw": "depthwise.conv", "bn1": "depthwise.bn", "se.conv_reduce": "se.reduce",
                            "se.conv_expand": "se.expand", "conv_pw": "project.conv", "bn2": "project.bn"}
# blocks.S.B.* of an EdgeResidual, timm's FusedMBConv with expansion (EfficientNetV2 "er" rows).
TIMM_EDGE_RESIDUAL = {"conv_exp": "fused.conv", "bn1": "fused.bn", "se.conv_reduce": "se.reduce",
                      "se.conv_expand": "se.expand", "conv_pwl": "project.conv", "bn2": "project.bn"}
# blocks.S.B.* of a ConvBnAct, timm's FusedMBConv1 (EfficientNetV2 "cn" rows): the fused conv alone.
TIMM_CONV_BN_ACT = {"conv": "fused.conv", "bn1": "fused.bn"}

# torchvision (torchvision/models/efficientnet.py): features.0 = stem (0 conv, 1 BN),
# features.1..N = stages, features.N+1 = head, classifier.1 = Linear. Inside a block,
# block.I are its layers in order (conv-norm layers: .0 conv, .1 BN; SE: fc1, fc2).
# By the number of layers in the block: MBConv with and without expansion; FusedMBConv
# with expansion (fused kxk, project 1x1; torchvision's has no SE) and without (the kxk alone).
TORCHVISION_BLOCK_LAYERS = {4: ("expand", "depthwise", "se", "project"), 3: ("depthwise", "se", "project"),
                            2: ("fused", "project"), 1: ("fused",)}
TORCHVISION_CONV_NORM = {"0": "conv", "1": "bn"}
TORCHVISION_SE = {"fc1": "reduce", "fc2": "expand"}

# torchvision MobileNetV2 (torchvision/models/mobilenetv2.py): features.0 = stem, features.K
# (K = 1..17) = the InvertedResidual blocks numbered flat over all stages, features.18 = head.
# A block's ``conv`` is a Sequential: with expansion, [expand ConvBNReLU6 (.0 conv, .1 BN),
# depthwise ConvBNReLU6, project conv, project BN]; without (t = 1), the first is dropped.
TORCHVISION_INVERTED_RESIDUAL = {"conv.0.0": "expand.conv", "conv.0.1": "expand.bn", "conv.1.0": "depthwise.conv",
                                 "conv.1.1": "depthwise.bn", "conv.2": "project.conv", "conv.3": "project.bn"}
TORCHVISION_INVERTED_RESIDUAL_T1 = {"conv.0.0": "depthwise.conv", "conv.0.1": "depthwise.bn",
                                    "conv.1": "project.conv", "conv.2": "project.bn"}

# ResNet (torchvision/models/resnet.py; timm/models/resnet.py keeps the names): conv1/bn1
# stem, layerN (N = 1..4) = stages, fc = Linear. In a Bottleneck, conv1/bn1 reduce (1x1),
# conv2/bn2 the 3x3 (stride here, v1.5), conv3/bn3 restore (1x1), downsample.0/.1 the
# projection shortcut.
RESNET_TOP = {"conv1": "stem.conv", "bn1": "stem.bn", "fc": "classifier"}
RESNET_BOTTLENECK = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv.conv", "bn2": "conv.bn",
                     "conv3": "restore.conv", "bn3": "restore.bn", "downsample.0": "shortcut.conv",
                     "downsample.1": "shortcut.bn"}

# EfficientNet-PyTorch (efficientnet_pytorch/model.py): blocks numbered flat, _blocks.K.
LUKEMELAS_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
                 "_fc": "classifier"}
LUKEMELAS_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                   "_bn1": "depthwise.bn", "_se_reduce": "se.reduce", "_se_expand": "se.expand",
                   "_project_conv": "project.conv", "_bn2": "project.bn"}


# The classifier weight of each layout (rows = classes).
CLASSIFIER_KEYS = {"effnet": "classifier.weight", "timm": "classifier.weight",
                   "torchvision": "classifier.1.weight", "lukemelas": "_fc.weight", "resnet": "fc.weight"}


def classifier_size(state_dict: Dict[str, torch.Tensor]) -> int:
    """Number of classes of a state dict's classifier (0 when it has none)."""
    w = state_dict.get(CLASSIFIER_KEYS[detect_format(state_dict)])
    return int(w.shape[0]) if w is not None else 0


def detect_format(state_dict: Dict[str, torch.Tensor]) -> str:
    """Which project's layout a state dict has (see :data:`FORMATS`).

    Raises:
        KeyError: no known layout; the message shows the first keys found.
    """
    for fmt, key in FORMATS.items():
        if key in state_dict:
            return fmt
    raise KeyError(f"unrecognised state dict layout: none of {sorted(FORMATS.values())} is present; "
                   f"first keys: {list(state_dict)[:6]}")


def _rename(rest: str, table: Dict[str, str]) -> Optional[str]:
    """Map ``module.path.leaf`` through ``table`` (longest module prefix first)."""
    for src in sorted(table, key=len, reverse=True):
        if rest.startswith(src + "."):
            return table[src] + rest[len(src):]
    return None


def _timm_key(sd: Dict[str, torch.Tensor]) -> Callable[[str], Optional[str]]:
    def rename(key: str) -> Optional[str]:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.(.+)$", key)
        if not m:
            return _rename(key, TIMM_TOP)
        s, b, rest = m.groups()
        block = f"blocks.{s}.{b}."
        if block + "conv_exp.weight" in sd:
            table = TIMM_EDGE_RESIDUAL
        elif block + "conv.weight" in sd:
            table = TIMM_CONV_BN_ACT
        elif block + "conv_pwl.weight" in sd:
            table = TIMM_INVERTED_RESIDUAL
        else:
            table = TIMM_DEPTHWISE_SEPARABLE
        new = _rename(rest, table)
        return f"stages.{s}.{b}.{new}" if new else None
    return rename


def _block_ids(model: nn.Module) -> List[Tuple[int, int]]:
    """``(stage, block)`` of every block of ``model`` in order: where a flat block index K goes."""
    return [(s, b) for s, stage in enumerate(getattr(model, "stages", ())) for b in range(len(stage))]


def _torchvision_key(sd: Dict[str, torch.Tensor], model: nn.Module) -> Callable[[str], Optional[str]]:
    head_id = max(int(k.split(".")[1]) for k in sd if k.startswith("features."))
    block_ids = _block_ids(model)              # MobileNetV2: features.K is block K - 1
    layer_counts: Dict[Tuple[str, str], set] = {}
    for k in sd:
        m = re.match(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.", k)
        if m:
            layer_counts.setdefault(m.groups()[:2], set()).add(m.group(3))

    def rename(key: str) -> Optional[str]:
        m = re.match(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$", key)
        if m:
            s, b, i, rest = m.groups()
            layers = TORCHVISION_BLOCK_LAYERS.get(len(layer_counts[(s, b)]))
            if layers is None or int(i) >= len(layers):
                return None
            layer = layers[int(i)]
            sub = _rename(rest, TORCHVISION_SE if layer == "se" else TORCHVISION_CONV_NORM)
            return f"stages.{int(s) - 1}.{b}.{layer}.{sub}" if sub else None
        m = re.match(r"features\.(\d+)\.(conv\..+)$", key)
        if m:                                  # MobileNetV2 InvertedResidual, numbered flat
            k, rest = int(m.group(1)), m.group(2)
            if not 1 <= k <= len(block_ids):
                return None
            table = (TORCHVISION_INVERTED_RESIDUAL if f"features.{k}.conv.3.weight" in sd
                     else TORCHVISION_INVERTED_RESIDUAL_T1)
            sub = _rename(rest, table)
            s, b = block_ids[k - 1]
            return f"stages.{s}.{b}.{sub}" if sub else None
        m = re.match(r"features\.(\d+)\.(.+)$", key)
        if m and int(m.group(1)) in (0, head_id):
            sub = _rename(m.group(2), TORCHVISION_CONV_NORM)
            return f"{'stem' if m.group(1) == '0' else 'head'}.{sub}" if sub else None
        if key.startswith("classifier.1."):
            return "classifier." + key[len("classifier.1."):]
        return None
    return rename


def _resnet_key(key: str) -> Optional[str]:
    m = re.match(r"layer(\d+)\.(\d+)\.(.+)$", key)
    if not m:
        return _rename(key, RESNET_TOP)
    n, b, rest = m.groups()
    sub = _rename(rest, RESNET_BOTTLENECK)
    return f"stages.{int(n) - 1}.{b}.{sub}" if sub and int(n) >= 1 else None


def _lukemelas_key(model: nn.Module) -> Callable[[str], Optional[str]]:
    block_ids = _block_ids(model)

    def rename(key: str) -> Optional[str]:
        m = re.match(r"_blocks\.(\d+)\.(.+)$", key)
        if not m:
            return _rename(key, LUKEMELAS_TOP)
        k, sub = int(m.group(1)), _rename(m.group(2), LUKEMELAS_BLOCK)
        if sub is None or k >= len(block_ids):
            return None
        s, b = block_ids[k]
        return f"stages.{s}.{b}.{sub}"
    return rename


def convert_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module
                       ) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """Rename another project's state dict to effnet's keys.

    Args:
        state_dict: tensors in timm, torchvision (EfficientNet, MobileNetV2), ResNet
            (torchvision/timm), EfficientNet-PyTorch or effnet layout.
        model: the target :class:`~effnet.model.ConvNet` (its block layout numbers the
            flat block indices of EfficientNet-PyTorch and torchvision's MobileNetV2).

    Returns:
        ``(converted, format, unmapped)``: tensors under effnet keys, the detected format,
        and the source keys no map rule covers (reported as unexpected by the loader).

    Raises:
        KeyError: unrecognised layout.
    """
    fmt = detect_format(state_dict)
    if fmt == "effnet":
        return dict(state_dict), fmt, []
    if fmt == "timm":
        rename = _timm_key(state_dict)
    elif fmt == "torchvision":
        rename = _torchvision_key(state_dict, model)
    elif fmt == "resnet":
        rename = _resnet_key
    else:
        rename = _lukemelas_key(model)
    out, unmapped = {}, []
    for key, value in state_dict.items():
        new = rename(key)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    return out, fmt, unmapped

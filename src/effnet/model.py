"""The network builder: stem, stages of blocks, head, classifier, from any spec.

:class:`ConvNet` builds every network from a scaled :class:`~effnet.specs.NetworkSpec`:
EfficientNet B0..L2 and Lite, MobileNetV1/V2, ResNet-50, at any scaling. It knows nothing
of model names or weight files (those live in :mod:`effnet.registry` and
:mod:`effnet.weights`). :class:`EfficientNet` is the same builder under the family's name:
``create_model`` returns it for the EfficientNet names, so ``isinstance(m, EfficientNet)``
tells an EfficientNet from a scaled baseline while both share one implementation.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._validate import check_float, check_int
from .blocks import create_block
from .layers import ConvNormAct, create_max_pool
from .specs import NetworkSpec

__all__ = ["ConvNet", "EfficientNet"]


class ConvNet(nn.Module):
    """A ConvNet from a network spec: stem (+ max-pool), stages of blocks, head, classifier.

    Args:
        spec: the network with concrete widths and repeats (see
            :func:`effnet.scaling.scale_network`).
        num_classes: classifier outputs; 0 removes the classifier and ``forward`` returns
            the pooled features (N, ``num_features``).
        in_chans: input image channels (3 for RGB).
        drop_rate: dropout before the classifier (0.2..0.5 per variant, official table).
        drop_path_rate: stochastic depth of the last block; block ``i`` of ``n`` gets
            ``drop_path_rate * i / n`` (official ``survival_prob`` ramp; 0.2 officially).
        padding: ``symmetric`` (PyTorch-trained weights) or ``same`` (TF-trained weights).
        norm_eps, norm_momentum: BatchNorm settings; the paper's TF values by default
            (epsilon 1e-3, decay 0.99 = PyTorch momentum 0.01).

    Attributes:
        feature_info: one dict per feature level: ``stage`` index, ``num_chs``, ``reduction``
            (input pixels per feature pixel) and ``module`` name.

    Shapes:
        ``forward``: (N, in_chans, H, W) float -> (N, num_classes) logits, any H, W >= 1.
        ``forward_features``: -> (N, num_features, ceil(H/32), ceil(W/32)).
        ``forward_feature_maps``: -> one map per ``feature_info`` entry (strides 2, 4,
        8, 16, 32 for EfficientNet and MobileNet; 4, 8, 16, 32 for ResNet-50, whose first
        stage follows the stem's max-pool).
    """

    # Python-side metadata, not used in forward: TorchScript leaves them out.
    __jit_ignored_attributes__ = ["feature_info", "config", "class_names", "_checkpoint_stages", "_stage_reduction"]

    def __init__(self, spec: NetworkSpec, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.2, drop_path_rate: float = 0.2, padding: str = "symmetric",
                 norm_eps: float = 1e-3, norm_momentum: float = 0.01) -> None:
        super().__init__()
        in_chans = check_int("in_chans", in_chans, 1)
        num_classes = check_int("num_classes", num_classes, 0)
        drop_rate = check_float("drop_rate", drop_rate, 0.0, 1.0, high_open=True)
        drop_path_rate = check_float("drop_path_rate", drop_path_rate, 0.0, 1.0, high_open=True)
        # PyTorch's convention (1 - TF's decay): above 1 the running statistics diverge.
        norm_momentum = check_float("norm_momentum", norm_momentum, 0.0, 1.0, low_open=True)
        norm_eps = check_float("norm_eps", norm_eps, 0.0, low_open=True)
        norm = dict(padding=padding, norm_eps=norm_eps, norm_momentum=norm_momentum)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.num_features = spec.num_features
        self.grad_checkpointing = False
        self._checkpoint_stages = []

        self.stem = ConvNormAct(in_chans, spec.stem_chs, spec.stem_kernel, spec.stem_stride, act=spec.act, **norm)
        self.stem_pool = create_max_pool(3, 2, padding) if spec.stem_pool else nn.Identity()
        stages: List[nn.Module] = []
        feature_info: List[Dict[str, Union[int, str]]] = []
        in_chs, block_idx = spec.stem_chs, 0
        reduction = spec.stem_stride * (2 if spec.stem_pool else 1)
        stage_reduction: List[int] = []
        for i, stage in enumerate(spec.stages):
            blocks = []
            for j in range(stage.repeats):
                rate = drop_path_rate * block_idx / spec.num_blocks
                blocks.append(create_block(stage, in_chs, stage.stride if j == 0 else 1, spec.act,
                                           drop_path_rate=rate, **norm))
                in_chs, block_idx = stage.out_chs, block_idx + 1
            stages.append(nn.Sequential(*blocks))
            reduction *= stage.stride
            stage_reduction.append(reduction)
            # A feature level ends where the resolution is about to halve, and at the end.
            if i == len(spec.stages) - 1 or spec.stages[i + 1].stride > 1:
                feature_info.append(dict(stage=i, num_chs=stage.out_chs, reduction=reduction,
                                              module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
        self._stage_reduction = stage_reduction
        self._feature_stages: List[int] = [int(f["stage"]) for f in feature_info]
        self.head = ConvNormAct(in_chs, spec.head_chs, 1, act=spec.act, **norm) if spec.head_chs else nn.Identity()
        self.dropout = nn.Dropout(drop_rate)
        self.classifier: nn.Module = nn.Linear(spec.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    # ---- initialisation -------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """The official initialisation (efficientnet_model.py).

        Convs: normal(0, sqrt(2 / fan_out)) with ``fan_out = k*k*out_channels / groups``
        (``conv_kernel_initializer``); classifier: uniform(+-1/sqrt(num_classes))
        (``dense_kernel_initializer``); biases 0; BatchNorm weight 1, bias 0.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                self._init_linear(m)

    @staticmethod
    def _init_linear(m: nn.Linear) -> None:
        bound = 1.0 / math.sqrt(m.out_features)
        nn.init.uniform_(m.weight, -bound, bound)
        nn.init.zeros_(m.bias)

    # ---- configuration --------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs (0 = none).

        Raises:
            TypeError, ValueError: ``num_classes`` not an integer >= 0.
        """
        num_classes = check_int("num_classes", num_classes, 0)
        self.num_classes = num_classes
        if num_classes > 0:
            ref = self.stem.conv.weight
            linear = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            self._init_linear(linear)
            self.classifier = linear
        else:
            self.classifier = nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True, stages: Optional[List[int]] = None) -> None:
        """Recompute blocks' activations in the backward pass instead of storing them.

        Trades compute for memory in training; has no effect in eval or under no_grad.

        Args:
            enable: on or off.
            stages: indices of the stages to checkpoint. Default: every stage before the
                last resolution (output stride < 32). The stride-32 stages hold little
                activation memory but much of the compute; measured on b0 at 224 px, batch
                32 (benchmarks/README.md): all stages -49% peak memory for +42% step time,
                the default -47% for +27%.

        Raises:
            ValueError: a stage index outside ``0 .. len(stages) - 1``.
        """
        self.grad_checkpointing = bool(enable)
        if stages is None:
            last = max(self._stage_reduction)
            stages = [i for i, r in enumerate(self._stage_reduction) if r < last]
        n = len(self._stage_reduction)
        bad = [i for i in stages if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
        if bad:
            raise ValueError(f"stages {bad} are not stage indices of this model (0..{n - 1})")
        self._checkpoint_stages = sorted(stages)

    def save_pretrained(self, directory: str, class_names: Optional[List[str]] = None) -> None:
        """Write safetensors weights and a JSON config to ``directory`` (see :func:`effnet.weights.save_pretrained`).

        Reload with ``effnet.from_pretrained(directory)`` or ``effnet predict --weights directory``.
        """
        from .weights import save_pretrained

        save_pretrained(self, directory, class_names)

    # ---- forward --------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse what would otherwise fail deep inside (or silently compute garbage).

        Raises:
            ValueError: not (N, in_chans, H, W), or an empty batch/side (0 pixels).
            TypeError: integer pixels (uint8 images: preprocess first), or a float dtype
                other than the weights' outside autocast (float64 input: call ``.float()``).
        """
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input of shape (N, {self.in_chans}, H, W), got {list(x.shape)}; "
                             f"the model was built with in_chans={self.in_chans}")
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"input {list(x.shape)} is empty (0 images or 0 pixels); give at least one image "
                             f"of at least 1x1 pixels")
        if not x.is_floating_point():
            raise TypeError(f"input dtype {x.dtype} is not floating point; preprocess images with "
                            f"effnet.data.eval_transform(model.config) (or x.float() and normalise)")
        w = self.stem.conv.weight
        if x.dtype != w.dtype and not torch.is_autocast_enabled():
            raise TypeError(f"input dtype {x.dtype} does not match the model's weights ({w.dtype}); "
                            f"convert the input with x.to({w.dtype}) (x.float() for float32)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and head: (N, in_chans, H, W) -> (N, num_features, ceil(H/32), ceil(W/32))."""
        self._check_input(x)
        x = self.stem_pool(self.stem(x))
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            for i, stage in enumerate(self.stages):
                x = _checkpoint_blocks(stage, x) if i in self._checkpoint_stages else stage(x)
            return self.head(x)
        return self.head(self.stages(x))

    def forward_feature_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Multi-scale features for detection/segmentation backbones.

        Returns one map per ``feature_info`` entry, (N, num_chs, ceil(H/r), ceil(W/r)) for
        reductions r = 2, 4, 8, 16, 32 (the last block of each resolution; the head conv
        is not applied).
        """
        self._check_input(x)
        x = self.stem_pool(self.stem(x))
        maps: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting() \
                    and i in self._checkpoint_stages:
                x = _checkpoint_blocks(stage, x)
            else:
                x = stage(x)
            if i in self._feature_stages:
                maps.append(x)
        return maps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, dropout, classifier: (N, C, h, w) -> (N, num_classes).

        With ``pre_logits`` returns the pooled features (N, num_features) instead.
        """
        x = x.mean((2, 3), keepdim=True).flatten(1)      # keepdim: XNNPACK delegates a 4-D global mean only
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class EfficientNet(ConvNet):
    """EfficientNet (Tan & Le, ICML 2019): the :class:`ConvNet` builder under the family's name.

    Adds nothing to :class:`ConvNet`; ``create_model`` returns this class for the
    EfficientNet (and Lite) names so that code can tell the family apart by type.
    """


def _checkpoint_blocks(seq: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the blocks in ``seq`` (a stage, or all stages) with per-block activation checkpointing."""
    for child in seq.children():
        if isinstance(child, nn.Sequential):
            x = _checkpoint_blocks(child, x)
        else:
            x = checkpoint(child, x, use_reentrant=False)
    return x

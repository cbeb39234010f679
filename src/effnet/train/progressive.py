"""Progressive learning (EfficientNetV2, Tan & Le 2021, Section 4.2, Algorithm 1, Table 6).

Training runs in M stages of equal length; from the first stage to the last the image size
and the regularization (RandAugment magnitude, mixup alpha, dropout) grow linearly from a
minimum to a maximum: small images with weak regularization early, large images with strong
regularization late. Two variants:

- ``paper`` (Algorithm 1): stage i of M uses ``min + (max - min) * i / (M - 1)`` for the
  image size and every regularization value.
- ``automl`` (the released code, google/automl efficientnetv2/main.py): the image size is
  ``int(min + (max - min) * (i + 1) / M)`` (so the first stage is already above the
  minimum: 171 px for S), magnitude and mixup follow ``linspace(min, max, M)``, CutMix
  follows the mixup schedule (alpha equal to mixup's; half of each batch gets mixup, half
  CutMix, when both are on), and dropout stays at its maximum (the code computes a dropout
  schedule, then leaves it unused).

Stage i covers epochs ``int(i * E / M) .. int((i + 1) * E / M) - 1`` of an E-epoch run (the
official TF2 loop's boundaries).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ["Progressive", "StageValues", "PROGRESSIVE_PRESETS", "progressive_preset", "MixBatch"]


@dataclass(frozen=True)
class StageValues:
    """What one stage trains with.

    Attributes:
        stage: index, 0-based.
        image_size: training side in pixels.
        magnitude: RandAugment magnitude on the TF scale (10 = each op's full range;
            :class:`effnet.train.augment.TrainAugment` maps it to kornia's).
        mixup: mixup alpha (lambda ~ Beta(alpha, alpha)); 0 = off.
        cutmix: CutMix alpha; 0 = off.
        dropout: dropout rate before the classifier.
    """

    stage: int
    image_size: int
    magnitude: float
    mixup: float
    cutmix: float
    dropout: float


@dataclass(frozen=True)
class Progressive:
    """A progressive-learning schedule: M stages from the minimum values to the maximum ones.

    Attributes:
        stages: M, the number of stages (4 in the paper and the official code), >= 1.
        min_size, max_size: image side of the first/last stage, pixels, 8 <= min <= max.
        min_magnitude, max_magnitude: RandAugment magnitude (TF scale, 10 = full range), in [0, 30).
        min_mixup, max_mixup: mixup alpha, >= 0.
        min_dropout, max_dropout: dropout rate, in [0, 1).
        variant: ``paper`` or ``automl`` (module docstring).

    Raises:
        ValueError: a value out of range, a minimum above its maximum, an unknown variant;
            the message names the field.
    """

    stages: int = 4
    min_size: int = 128
    max_size: int = 300
    min_magnitude: float = 5.0
    max_magnitude: float = 15.0
    min_mixup: float = 0.0
    max_mixup: float = 0.0
    min_dropout: float = 0.1
    max_dropout: float = 0.3
    variant: str = "paper"

    def __post_init__(self) -> None:
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"progressive stages must be an int >= 1, got {self.stages!r}")
        if self.variant not in ("paper", "automl"):
            raise ValueError(f"progressive variant must be 'paper' or 'automl', got {self.variant!r}")
        for name, lo, hi in (("size", 8, math.inf), ("magnitude", 0.0, 30.0), ("mixup", 0.0, math.inf),
                             ("dropout", 0.0, 1.0)):
            a, b = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            for which, v in (("min", a), ("max", b)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v < hi or \
                        (name == "size" and not isinstance(v, int)):
                    kind = "an int" if name == "size" else "a number"
                    raise ValueError(f"progressive {which}_{name} must be {kind} in [{lo:g}, {hi:g}), got {v!r}")
            if a > b:
                raise ValueError(f"progressive min_{name} {a:g} is above max_{name} {b:g}; the schedule grows "
                                 f"from the minimum to the maximum: swap them")

    def check_epochs(self, epochs: int) -> None:
        """Raises ValueError when the ``stages`` do not fit in ``epochs`` (every stage needs one)."""
        if self.stages > epochs:
            raise ValueError(f"a progressive schedule of {self.stages} stages needs at least {self.stages} epochs, "
                             f"the run has {epochs}; use fewer stages (--progressive-stages) or more epochs")

    def stage_of(self, epoch: int, epochs: int) -> int:
        """The stage that 0-based ``epoch`` of an ``epochs``-epoch run belongs to."""
        self.check_epochs(epochs)
        return max(i for i in range(self.stages) if int(i * epochs / self.stages) <= epoch)

    def values(self, stage: int) -> StageValues:
        """The image size and regularization of ``stage`` (0-based)."""
        if not 0 <= stage < self.stages:
            raise ValueError(f"stage {stage} is outside 0..{self.stages - 1}")
        lin = stage / (self.stages - 1) if self.stages > 1 else 1.0

        def grow(name: str, ratio: float) -> float:
            lo, hi = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            return lo + (hi - lo) * ratio

        if self.variant == "paper":
            return StageValues(stage, int(round(grow("size", lin))), grow("magnitude", lin), grow("mixup", lin),
                               0.0, grow("dropout", lin))
        mixup = grow("mixup", lin)
        return StageValues(stage, int(grow("size", (stage + 1) / self.stages)), grow("magnitude", lin), mixup,
                           mixup, self.max_dropout)

    def at_epoch(self, epoch: int, epochs: int) -> StageValues:
        """:meth:`values` of the stage holding ``epoch``."""
        return self.values(self.stage_of(epoch, epochs))

    def replace(self, **changes) -> "Progressive":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# V2 paper Table 6: (min, max) of image size, RandAugment magnitude, mixup alpha, dropout.
PROGRESSIVE_PRESETS: Dict[str, Progressive] = {
    "s": Progressive(4, 128, 300, 5, 15, 0.0, 0.0, 0.1, 0.3),
    "m": Progressive(4, 128, 380, 5, 20, 0.0, 0.2, 0.1, 0.4),
    "l": Progressive(4, 128, 380, 5, 25, 0.0, 0.4, 0.1, 0.5),
}


def progressive_preset(model_name: Optional[str], variant: str = "paper", max_size: Optional[int] = None,
                       **overrides) -> Progressive:
    """The Table 6 schedule for a model, optionally ending at another size.

    ``*_m`` and ``*_l`` (and ``*_xl``) names take the M and L rows, every other model the S
    row. With ``max_size`` (the run's training size) the sizes end there and start at the
    row's min/max ratio of it (128/300 for S), rounded to a multiple of 8 pixels, so that a
    small proxy run keeps the paper's proportions. ``overrides`` replace any field.

    Raises:
        ValueError: as :class:`Progressive`.
    """
    key = (model_name or "").rsplit("_", 1)[-1]
    row = PROGRESSIVE_PRESETS["l" if key == "xl" else key if key in PROGRESSIVE_PRESETS else "s"]
    row = row.replace(variant=variant)
    if max_size is not None and max_size != row.max_size:
        low = max(8, int(round(max_size * row.min_size / row.max_size / 8)) * 8)
        row = row.replace(min_size=min(low, max_size), max_size=max_size)
    return row.replace(**overrides) if overrides else row


class MixBatch:
    """Mixup and CutMix on a whole batch (kornia's ``RandomMixUpV2`` and ``RandomCutMixV2``)
    and the matching loss.

    Mixup draws one lambda per image from Beta(alpha, alpha) (Zhang et al. 2018; kornia's own
    sampler is uniform, so the Beta draws are handed to it as its parameters); CutMix's box
    follows Beta(alpha, alpha) in kornia (Yun et al. 2019). With both on, the first half of
    the batch gets mixup and the second CutMix (the official EfficientNetV2 code).

    Shapes: ``__call__``: float (N, C, H, W), int64 (N,) -> the mixed batch (N, C, H, W) and
    ``(y_a, y_b, lam)``, three (N,) tensors: each image is ``(1 - lam)`` of class ``y_a`` and
    ``lam`` of ``y_b``. ``loss``: logits (N, K) -> scalar.
    """

    def __init__(self, mixup: float, cutmix: float) -> None:
        import kornia.augmentation as K

        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self._mix = K.RandomMixUpV2(data_keys=["input", "class"])
        self._cut = (K.RandomCutMixV2(beta=self.cutmix, use_correct_lambda=True, data_keys=["input", "class"])
                     if self.cutmix > 0 else None)

    def _mixup(self, x: torch.Tensor, y: torch.Tensor):
        n = x.shape[0]
        lam = torch.distributions.Beta(self.mixup, self.mixup).sample((n,)).to(x.device, x.dtype)
        pairs = torch.randperm(n, device=x.device)
        out, labels = self._mix(x, y, params={"mixup_pairs": pairs, "mixup_lambdas": lam,
                                              "batch_prob": torch.ones(n, dtype=torch.bool, device=x.device)})
        return out, labels[:, 0].long(), labels[:, 1].long(), labels[:, 2].to(x.dtype)

    def _cutmix(self, x: torch.Tensor, y: torch.Tensor):
        out, labels = self._cut(x, y)
        labels = labels[-1]                                       # (num_mix = 1, N, 3) -> (N, 3)
        # kornia's CutMix lambda (use_correct_lambda, as Yun et al.) is the share of the
        # image's own label; here lam is the pasted share, as in mixup.
        return out, labels[:, 0].long(), labels[:, 1].long(), (1 - labels[:, 2]).to(x.dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if self.mixup > 0 and self._cut is not None and x.shape[0] >= 2:
            h = x.shape[0] // 2
            parts = [self._mixup(x[:h], y[:h]), self._cutmix(x[h:], y[h:])]
            return (torch.cat([p[0] for p in parts]),
                    tuple(torch.cat([p[i] for p in parts]) for i in (1, 2, 3)))
        if self.mixup > 0:
            out, a, b, lam = self._mixup(x, y)
        else:
            out, a, b, lam = self._cutmix(x, y)
        return out, (a, b, lam)

    @staticmethod
    def loss(logits: torch.Tensor, target, label_smoothing: float = 0.0) -> torch.Tensor:
        """``(1 - lam) * CE(y_a) + lam * CE(y_b)`` per image, averaged."""
        a, b, lam = target
        ce_a = F.cross_entropy(logits, a, reduction="none", label_smoothing=label_smoothing)
        ce_b = F.cross_entropy(logits, b, reduction="none", label_smoothing=label_smoothing)
        return ((1 - lam) * ce_a + lam * ce_b).mean()

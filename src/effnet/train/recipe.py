"""The training recipe as data, with the paper's preset and a fine-tuning preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

__all__ = ["Recipe", "RECIPES", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """Everything about *how* to train, separate from what and on which data.

    Attributes:
        name: preset name.
        optimizer: ``rmsprop_tf`` (paper), ``sgd`` (momentum, nesterov) or ``adamw``.
        lr_per_256: peak learning rate per 256 images; scaled linearly with the global batch.
        warmup_epochs: linear warmup from 0 to the peak (epochs, fractional allowed).
        decay_rate, decay_epochs: staircase exponential decay, x``decay_rate`` every
            ``decay_epochs`` epochs (counted from step 0, as the official code does).
        weight_decay: L2 coefficient (added to the gradient, TF style); never on BatchNorm
            parameters or biases.
        rmsprop_decay, momentum, eps: RMSProp's squared-gradient decay, momentum and the
            epsilon added *inside* the square root (TF form); ``momentum`` is also SGD's.
        label_smoothing: cross-entropy label smoothing.
        ema_decay: decay of the exponential moving average of the weights (None = no EMA);
            validation uses the EMA weights when there are any.
        drop_path_rate: stochastic depth of the last block; dropout: None keeps the model's
            per-variant rate.
        augment: ``autoaugment`` (ImageNet policy), ``randaugment`` or ``none``, after
            RandomResizedCrop and horizontal flip.
        crop_scale: RandomResizedCrop area range.
        freeze_bn: keep BatchNorm running statistics (and their eval-mode normalisation)
            fixed while training.
        head_only_epochs: train only the classifier for this many first epochs.
        backbone_lr_scale: learning rate of everything but the classifier, relative to the
            classifier's (fine-tuning keeps pretrained features from being overwritten).
        zero_init_head: start the (new) classifier at zero. The official init,
            uniform(+-1/sqrt(num_classes)), suits 1000 classes from scratch; on a few classes
            over pretrained features it starts with logits in the tens.
        train_size_scale: training resolution relative to the model's own, rounded to a
            multiple of 8 pixels, when ``fit`` is given no ``image_size``.
        eval_size_scale: validation (and the saved model's inference) resolution relative to
            the training resolution, rounded to a multiple of 8 pixels. Above 1 it corrects the
            "train-test resolution discrepancy" of Touvron et al. 2019 (FixRes): RandomResizedCrop
            shows objects larger in training than a center crop does at the same size.
        eval_crop_pct: the center crop of validation and of the saved model (None: the
            weights' own ``crop_pct``).
        magnitude: RandAugment magnitude on the TF scale of the papers' code (10 = each
            op's full range; see :class:`~effnet.train.TrainAugment`); None: kornia's m=9.
        progressive: progressive learning (:mod:`effnet.train.progressive`): ``paper``
            (V2 Algorithm 1), ``automl`` (the official code's variant) or None (off); the
            schedule is the model's Table 6 row ending at the run's training size.
    """

    name: str
    optimizer: str = "rmsprop_tf"
    lr_per_256: float = 0.016
    warmup_epochs: float = 5.0
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    weight_decay: float = 1e-5
    rmsprop_decay: float = 0.9
    momentum: float = 0.9
    eps: float = 1e-3
    label_smoothing: float = 0.1
    ema_decay: Optional[float] = 0.9999
    drop_path_rate: float = 0.2
    dropout: Optional[float] = None
    augment: str = "autoaugment"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    freeze_bn: bool = False
    head_only_epochs: int = 0
    backbone_lr_scale: float = 1.0
    zero_init_head: bool = False
    train_size_scale: float = 1.0
    eval_size_scale: float = 1.0
    eval_crop_pct: Optional[float] = None
    magnitude: Optional[float] = None
    progressive: Optional[str] = None

    def __post_init__(self) -> None:
        if self.progressive not in (None, "paper", "automl"):
            raise ValueError(f"progressive must be 'paper', 'automl' or None, got {self.progressive!r}")
        if self.optimizer not in ("rmsprop_tf", "sgd", "adamw"):
            raise ValueError(f"optimizer must be rmsprop_tf, sgd or adamw, got {self.optimizer!r}")
        if self.augment not in ("autoaugment", "randaugment", "none"):
            raise ValueError(f"augment must be autoaugment, randaugment or none, got {self.augment!r}")
        if self.lr_per_256 <= 0 or self.warmup_epochs < 0 or not 0 < self.decay_rate <= 1:
            raise ValueError("lr_per_256 must be > 0, warmup_epochs >= 0 and decay_rate in (0, 1]")
        for field in ("train_size_scale", "eval_size_scale"):
            if not 0.25 <= getattr(self, field) <= 4:
                raise ValueError(f"{field} must be in [0.25, 4], got {getattr(self, field)}")
        if self.eval_crop_pct is not None and not 0 < self.eval_crop_pct <= 1:
            raise ValueError(f"eval_crop_pct must be in (0, 1] or None, got {self.eval_crop_pct}")
        if self.magnitude is not None and not 0 <= self.magnitude < 30:
            raise ValueError(f"magnitude must be in [0, 30) or None, got {self.magnitude}")
        if self.magnitude is not None and self.augment != "randaugment":
            raise ValueError(f"magnitude is RandAugment's; this recipe augments with {self.augment!r} (add "
                             f"--augment randaugment, or drop --magnitude)")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1) or None, got {self.dropout}")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")

    def replace(self, **changes) -> "Recipe":
        """A copy with some fields changed (unknown fields raise TypeError)."""
        return dataclasses.replace(self, **changes)


RECIPES = {
    # Paper Section 5.2 and the official code (tensorflow/tpu models/official/efficientnet
    # main.py, utils.py): RMSProp decay 0.9, momentum 0.9, epsilon 1e-3; lr 0.016 per 256
    # images (0.256 at batch 4096), 5 warmup epochs, x0.97 every 2.4 epochs; weight decay
    # 1e-5; label smoothing 0.1; weight EMA 0.9999; drop_connect (drop_path) 0.2; AutoAugment.
    "paper": Recipe("paper"),
    # Transfer learning: a pretrained backbone and a new classifier trained first alone,
    # BatchNorm statistics frozen (small batches; TFLite weights carry BN folded into the
    # convs, which batch statistics would undo), a short schedule with no warmup, no EMA.
    # Measured from the ImageNet Lite0 (benchmarks/README.md): training BatchNorm gains about
    # one photo on ants/bees but loses 7.5 points on flowers12, so it stays frozen.
    # Resolution: fine-tune 1.3x above the pretraining resolution (288 px for Lite0) and
    # evaluate there with the official 0.875 center crop, as BiT's HyperRule (Kolesnikov et
    # al. 2020) and FixRes (Touvron et al. 2019) fine-tune above the training size: the eval
    # crop policy and the resolution, not the learning rates, were what held ants/bees under
    # 96% (96.73 / 96.73 / 96.08 on seeds 0-2, against 95.42 / 94.77 / 95.42 before).
    # Augmentation: random-resized crops and flips only. A linear probe on the pooled
    # features beat every run with RandAugment on two more real sets (lemur6 97.35 against
    # 92.92, flowers5 64.5-66 against 61.5); without it, mean best of seeds 0-2 went to 95.28
    # on lemur6 and the same 96.73 / 96.73 / 96.08 on ants/bees (benchmarks/README.md).
    "finetune": Recipe("finetune", optimizer="sgd", lr_per_256=0.08, warmup_epochs=0.0, decay_rate=0.7,
                       decay_epochs=1.0, weight_decay=1e-5, label_smoothing=0.1, ema_decay=None,
                       drop_path_rate=0.1, augment="none", crop_scale=(0.25, 1.0), freeze_bn=True,
                       head_only_epochs=1, backbone_lr_scale=0.1, zero_init_head=True,
                       train_size_scale=1.3, eval_crop_pct=0.875),
    # EfficientNetV2 (V2 paper Section 5.1 and google/automl efficientnetv2/hparams.py,
    # datasets.py ImageNet): V1's RMSProp (decay 0.9, momentum 0.9, TF epsilon), lr 0.016 per
    # 256 images (0.256 at batch 4096), 5 warmup epochs then x0.97 every 2.4 epochs, EMA
    # 0.9999, stochastic depth 0.2 (survival 0.8), weight decay 1e-5, label smoothing 0.1,
    # RandAugment, and progressive learning (Table 6) on.
    "v2": Recipe("v2", augment="randaugment", progressive="paper"),
}
# Noisy Student (Xie et al. 2020, Sec. 3 and 4): the student is noised with stochastic depth
# (survival 0.8 for the last block, drop_path 0.2), dropout 0.5 on the classifier and
# RandAugment N=2, M=27. Here on top of the fine-tuning recipe, since effnet's students start
# from ImageNet weights on small sets; every value is a flag (--dropout, --drop-path,
# --magnitude). M=27 on the TF scale goes beyond each op's full range (10); kornia cannot
# extrapolate, so it runs at its full range (TrainAugment).
RECIPES["noisy-student"] = RECIPES["finetune"].replace(name="noisy-student", dropout=0.5, drop_path_rate=0.2,
                                                       augment="randaugment", magnitude=27.0)


def get_recipe(name: str) -> Recipe:
    """A preset by name. Raises KeyError listing the presets."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name]

"""Training and transfer learning with the paper's recipe (see :func:`fit`)."""

from .augment import TrainAugment, train_decode
from .distill import (DistillError, Distillation, LogitCache, PseudoLabels, Teacher, Unlabeled, kd_loss, kd_term,
                      pseudo_label, write_logit_cache)
from .loop import CheckpointError, FitResult, NonFiniteLossError, check_data, fit, load_checkpoint, make_datasets, tf_ema
from .progressive import PROGRESSIVE_PRESETS, MixBatch, Progressive, StageValues, progressive_preset
from .optim import RMSpropTF, build_optimizer, lr_factor, param_groups
from .recipe import RECIPES, Recipe, get_recipe

__all__ = ["fit", "check_data", "FitResult", "make_datasets", "tf_ema", "Recipe", "RECIPES", "get_recipe", "RMSpropTF",
           "build_optimizer", "lr_factor", "param_groups", "TrainAugment", "train_decode", "CheckpointError",
           "NonFiniteLossError", "load_checkpoint", "Progressive", "StageValues", "PROGRESSIVE_PRESETS",
           "progressive_preset", "MixBatch", "Distillation", "Unlabeled", "DistillError", "LogitCache", "PseudoLabels",
           "Teacher", "kd_loss", "kd_term", "pseudo_label", "write_logit_cache"]

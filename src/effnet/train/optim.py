"""The paper's optimiser (RMSProp in its TensorFlow form), parameter groups and LR schedule."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn

__all__ = ["RMSpropTF", "param_groups", "lr_factor", "build_optimizer"]


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer`` computes it (the paper's optimiser).

    Per parameter, with gradient ``g`` (plus ``weight_decay * p``, L2 as in the official
    code's loss)::

        ms  <- decay * ms + (1 - decay) * g^2          # ms starts at 1, not 0
        mom <- momentum * mom + lr * g / sqrt(ms + eps)  # eps inside the square root
        p   <- p - mom

    This differs from ``torch.optim.RMSprop`` in three ways: the square average starts at
    1 (TF's slot initialiser), epsilon is added inside the square root, and the learning
    rate is applied before the momentum buffer (so a schedule changes only new updates).

    Args:
        params: parameters or groups. lr: learning rate. decay: squared-gradient decay
        (0.9). momentum: 0.9. eps: 1e-3. weight_decay: L2 coefficient.
    """

    def __init__(self, params: Iterable, lr: float = 0.016, decay: float = 0.9, momentum: float = 0.9,
                 eps: float = 1e-3, weight_decay: float = 0.0) -> None:
        if lr < 0 or not 0 <= decay < 1 or momentum < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid RMSpropTF settings lr={lr} decay={decay} momentum={momentum} eps={eps}")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum, eps, wd = (group[k] for k in ("lr", "decay", "momentum", "eps", "weight_decay"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    state["mom"] = torch.zeros_like(p)
                ms, mom = state["ms"], state["mom"]
                ms.mul_(decay).addcmul_(g, g, value=1 - decay)
                update = g / (ms + eps).sqrt()
                mom.mul_(momentum).add_(update, alpha=lr)
                p.sub_(mom)
        return loss


def param_groups(model: nn.Module, weight_decay: float, lr: float, backbone_lr_scale: float = 1.0) -> List[dict]:
    """Optimizer groups: (backbone | classifier) x (decayed | not decayed), each with its ``lr``.

    Conv and linear weights get ``weight_decay``; BatchNorm parameters and biases none.
    Everything outside ``classifier`` gets ``lr * backbone_lr_scale``.
    """
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            no_decay = isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias"
            head = module_name.startswith("classifier")
            groups.setdefault((head, no_decay), []).append(p)
    return [dict(params=ps, weight_decay=0.0 if no_decay else weight_decay,
                 lr=lr if head else lr * backbone_lr_scale)
            for (head, no_decay), ps in sorted(groups.items())]


def lr_factor(step: int, steps_per_epoch: int, warmup_epochs: float, decay_rate: float,
              decay_epochs: float) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (official utils.build_learning_rate).

    Linear warmup ``step / warmup_steps`` for the first ``warmup_epochs``, else
    ``decay_rate ** floor(step / (decay_epochs * steps_per_epoch))`` (staircase, counted
    from step 0).
    """
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return step / warmup
    return decay_rate ** math.floor(step / max(decay_epochs * steps_per_epoch, 1e-12))


def build_optimizer(model: nn.Module, recipe, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimiser over :func:`param_groups`; ``lr`` is the classifier's peak learning rate."""
    groups = param_groups(model, recipe.weight_decay, lr, recipe.backbone_lr_scale)
    if recipe.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, decay=recipe.rmsprop_decay, momentum=recipe.momentum, eps=recipe.eps)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)

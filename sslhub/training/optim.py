"""Optimizers and learning-rate schedules of the recipes; schedules are pure functions of the step."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCHEDULES = ("cosine", "step")


class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman, Ginsburg 2017) as the MoCo v3 authors use it.

    For a parameter `w` with more than one dimension and gradient `g`, the update is `d = g + wd * w`,
    rescaled by the trust ratio `eta * ||w|| / ||d||` (1 where either norm is 0), also when `wd = 0`.
    Biases and normalization weights (one dimension) get neither weight decay nor the rescaling. Then
    heavy-ball momentum: `mu = momentum * mu + d`, `w = w - lr * mu`. (timm's `Lars` differs: it divides by
    `||g|| + wd * ||w||` and skips the ratio when `wd = 0`.)

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        weight_decay: wd, applied to parameters with more than one dimension.
        momentum: heavy-ball momentum.
        trust_coefficient: eta of the trust ratio.
    """

    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            updates = [p.grad.clone() for p in params]
            matrices = [i for i, p in enumerate(params) if p.ndim > 1]
            if matrices:
                weights = [params[i] for i in matrices]
                adapted = [updates[i] for i in matrices]
                torch._foreach_add_(adapted, weights, alpha=group["weight_decay"])  # d = g + wd * w
                weight_norms = torch._foreach_norm(weights)
                update_norms = torch._foreach_norm(adapted)
                for d, w_norm, d_norm in zip(adapted, weight_norms, update_norms, strict=True):
                    trust = group["trust_coefficient"] * w_norm / d_norm
                    d.mul_(torch.where((w_norm > 0) & (d_norm > 0), trust, torch.ones_like(trust)))
            momenta = []
            for p in params:
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                momenta.append(state["mu"])
            if params:
                torch._foreach_mul_(momenta, group["momentum"])
                torch._foreach_add_(momenta, updates)  # mu = momentum * mu + d
                torch._foreach_add_(params, momenta, alpha=-group["lr"])
        return loss


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters a model's timm parts exclude from weight decay (`no_weight_decay()`:
    e.g. a ViT's position embedding and class token), wherever they sit in `model`."""
    names = set()
    for prefix, module in model.named_modules():
        if module is not model and hasattr(module, "no_weight_decay"):
            names.update(f"{prefix}.{name}" for name in module.no_weight_decay())
    return names


def create_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """SGD (MoCo v1/v2), LARS (MoCo v3 ResNets) or AdamW (MoCo v3 ViTs), as the papers' code builds them.

    Every trainable parameter is decayed, as in the authors' code (their LARS leaves one-dimensional
    parameters out by itself). `args.no_decay_bias_and_norm` excludes biases, normalization weights and ViT
    position embeddings / class tokens from the decay of SGD and AdamW (the BYOL / timm convention). SGD
    and AdamW use torch's fused kernels where the parameters' device and dtype have them (one call for all
    parameters instead of a Python loop: on a CPU, 3 ms instead of 530 ms per ResNet-18 step, with the
    same result), else the plain multi-tensor path. Build the optimizer after moving the model to its device.

    Args:
        model: the model; only parameters with `requires_grad` are optimized.
        args: the recipe settings (`optimizer`, `learning_rate`, `weight_decay`, `sgd_momentum`,
            `no_decay_bias_and_norm`).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if args.optimizer == "lars":
        return LARS([p for _, p in trainable], args.learning_rate, args.weight_decay, args.sgd_momentum)
    groups: list[dict] = [{"params": [p for _, p in trainable]}]
    if getattr(args, "no_decay_bias_and_norm", False):
        excluded = no_weight_decay_names(model)
        no_decay = [p for n, p in trainable if p.ndim <= 1 or n in excluded]
        ids = {id(p) for p in no_decay}
        groups = [
            {"params": [p for _, p in trainable if id(p) not in ids]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    fused = fused_kernels_available([p for _, p in trainable])
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=args.learning_rate,
            momentum=args.sgd_momentum,
            weight_decay=args.weight_decay,
            fused=fused,
        )
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay, fused=fused)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {args.optimizer!r}")


def timm_backbone(model: nn.Module) -> nn.Module | None:
    """The timm model inside `model` (the first module with timm's `group_matcher`), or None."""
    return next((module for module in model.modules() if hasattr(module, "group_matcher")), None)


def finetune_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> list[dict]:
    """Parameter groups of fine-tuning, built by timm: no weight decay on one-dimensional parameters and on
    what the backbone names in `no_weight_decay()` (a ViT's position embedding and class token), and with
    `layer_decay` the learning rate of backbone layer l of L scaled by `layer_decay ** (L - l)` (BEiT, MAE,
    MoCo v3's fine-tuning). Everything outside the timm backbone (the new head) is the top layer.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    backbone = timm_backbone(model)
    groups: list[dict] = []
    if backbone is not None:
        skip = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ()
        if layer_decay:
            groups = param_groups_layer_decay(backbone, weight_decay, skip, layer_decay=layer_decay)
        else:
            groups = param_groups_weight_decay(backbone, weight_decay, skip)
    elif layer_decay:
        raise ValueError("layer_decay needs a timm backbone (sslhub and timm models); this model has none")
    inside = {id(p) for group in groups for p in group["params"]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in inside]
    groups += [
        {"params": [p for p in rest if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def create_finetune_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """AdamW over `finetune_param_groups` (`args.weight_decay`, `args.layer_decay`), fused where possible."""
    groups = finetune_param_groups(model, args.weight_decay, getattr(args, "layer_decay", None))
    fused = fused_kernels_available([p for group in groups for p in group["params"]])
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay, fused=fused)


def fused_kernels_available(parameters: list[torch.Tensor]) -> bool | None:
    """Whether torch has fused SGD/AdamW kernels for every parameter's device and dtype.

    Returns True, or None (torch's default: the multi-tensor path) where it has not.
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices  # private: guarded
    except ImportError:
        return None
    devices = _get_fused_kernels_supported_devices()
    ok = all(p.device.type in devices and p.is_floating_point() for p in parameters)
    return True if ok and parameters else None


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Linear warmup to `base_lr`, then half-cosine decay to 0; a pure function of the step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def step_lr(
    step: int,
    total_steps: int,
    base_lr: float,
    milestones: list[float],
    warmup_steps: int = 0,
    gamma: float = 0.1,
) -> float:
    """Linear warmup, then `base_lr` times `gamma` for every milestone passed (MoCo v1: x0.1 at epochs 120
    and 160 of 200, i.e. milestones 0.6 and 0.8 of the run); a pure function of the step.

    Args:
        milestones: fractions of the run (in (0, 1]) where the learning rate drops.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    passed = sum(step >= round(fraction * total_steps) for fraction in milestones)
    return base_lr * gamma**passed


@dataclass(frozen=True)
class LRSchedule:
    """A run's learning rate as a pure function of the optimizer step: `schedule(step)`.

    Checkpoints keep its settings (`settings()`), so a resumed run can tell when it continues on another
    schedule than the one its checkpoint was trained on (a longer `--max_steps`, another learning rate).
    """

    total_steps: int
    peak_lr: float  # the learning rate for the global batch (`scaled_lr`)
    warmup_steps: int = 0
    kind: str = "cosine"  # or "step": x0.1 at each of `milestones` (fractions of the run)
    milestones: tuple[float, ...] = ()

    @classmethod
    def of(cls, args, length, num_processes: int) -> LRSchedule:
        """The schedule a recipe's arguments ask for (`learning_rate` scaled to the global batch,
        `warmup_epochs`, `lr_schedule`, `lr_milestones`) over its `RunLength`."""
        return cls(
            length.total_steps,
            scaled_lr(args, num_processes),
            length.warmup_steps(args.warmup_epochs),
            args.lr_schedule,
            tuple(args.lr_milestones) if args.lr_schedule == "step" else (),
        )

    def __call__(self, step: int) -> float:
        if self.kind == "step":
            return step_lr(step, self.total_steps, self.peak_lr, list(self.milestones), self.warmup_steps)
        return cosine_lr(step, self.total_steps, self.peak_lr, self.warmup_steps)

    def settings(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "milestones": list(self.milestones)}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group, times the group's `lr_scale` (layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def scaled_lr(args, num_processes: int) -> float:
    """The learning rate for the global batch: `learning_rate * global_batch / 256` (Goyal et al. 2017)."""
    global_batch = args.batch_size * num_processes * args.gradient_accumulation_steps
    return args.learning_rate * global_batch / 256

"""NAD: Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li, Ma: "Neural Attention
Distillation: Erasing Backdoor Triggers from Deep Neural Networks", ICLR 2021).

Row "NAD [4]" of the supplement's Table 7; needs no backdoor knowledge.

1. Teacher: a copy of the backdoored model fine-tuned on clean D_U (SGD momentum 0.9, lr 0.01,
   10 epochs — NAD's teacher step).
2. Student: the backdoored model trained on D_U with
   ``CE(student(x), y) + Σ_g β_g · MSE(A_g(student), A_g(teacher))`` where the attention map of a
   feature map a (N,C,H,W) is ``mean_c |a_c|^p`` flattened and L2-normalised per sample (p=2).
   NAD's defaults: β=5000 for the distilled group(s), 20 epochs, SGD (Nesterov, momentum 0.9,
   weight decay 1e-4), lr 0.1 divided by 10 after the first 2 epochs, batch size 64.
   The mean squared error over the map's elements follows NAD's released code, for which β=5000
   was tuned. The teacher runs in eval mode; the student in train mode.

Layer groups come from :mod:`bdtool.defenses.layer_groups` (automatic for SmallCNN, ResNet18 and
VGGSmall; a fallback for other models), or from ``layers=name+name``. ``betas`` holds one β for
all groups or one per group.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bdtool
from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.compute.training import TrainConfig, check_sgd, train_supervised
from bdtool.defenses._finetune import check_finite, epoch_logger, seeded_batches
from bdtool.defenses.layer_groups import resolve_layers


@dataclass
class NADParams:
    """NAD's defaults (Li et al. 2021, and its released code bboylyg/NAD)."""

    teacher_epochs: int = 10
    teacher_lr: float = 0.01
    epochs: int = 20
    lr: float = 0.1
    lr_drop_epoch: int = 2
    """After this many epochs the learning rate is divided by 10 (NAD's schedule)."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    p: float = 2.0
    betas: tuple[float, ...] = (5000.0,)
    """β per layer group; a single value applies to every group."""
    layers: tuple[str, ...] = ()
    """Module names to distil; empty = chosen automatically (see layer_groups)."""

    def validate(self) -> None:
        try:
            check_sgd(epochs=self.teacher_epochs, lr=self.teacher_lr)
        except ValueError as exc:
            raise ValueError(f"teacher_{exc}") from None
        check_sgd(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                  batch_size=self.batch_size)
        if self.lr_drop_epoch < 0:
            raise ValueError("lr_drop_epoch must be >= 0")
        if self.p <= 0:
            raise ValueError("p must be > 0")
        if not self.betas or any(b < 0 for b in self.betas):
            raise ValueError("betas must hold one or more values >= 0")
        if self.layers and len(self.betas) not in (1, len(self.layers)):
            raise ValueError(f"give one beta or one per layer ({len(self.layers)}), not {len(self.betas)}")


def attention_map(a: Tensor, p: float) -> Tensor:
    """NAD/AT attention: mean over channels of |a|^p, flattened, L2-normalised per sample."""
    am = a.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(am, p=2, dim=1, eps=1e-6)


def attention_loss(student: Tensor, teacher: Tensor, p: float) -> Tensor:
    return F.mse_loss(attention_map(student, p), attention_map(teacher, p))


class _Capture:
    """Forward hooks that keep the latest output of each named module."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
            self.outputs[name] = out
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class NeuralAttentionDistillation(Defense):
    """Distil a fine-tuned teacher's attention maps into the backdoored model (NAD, ICLR 2021)."""

    name = "nad"
    label = "NAD"
    description = "Neural Attention Distillation: teacher fine-tuned on D_U, student CE + attention loss (β=5000, p=2)"
    requires_trigger = False
    accepts_trigger = False
    Params = NADParams

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        params: NADParams = self.params
        example = ctx.unlearn.x[:1].to(ctx.device)
        layers = resolve_layers(model, example, params.layers, owner=self.name)
        betas = list(params.betas) * len(layers) if len(params.betas) == 1 else list(params.betas)
        if len(betas) != len(layers):
            raise DefenseInputError(
                f"nad: {len(params.betas)} betas for {len(layers)} automatically chosen layers ({', '.join(layers)}); "
                "give one beta or name the layers"
            )
        # 1. Teacher: fine-tuned copy.
        teacher = copy.deepcopy(model)
        teacher_cfg = TrainConfig(epochs=params.teacher_epochs, lr=params.teacher_lr, momentum=params.momentum,
                                  weight_decay=params.weight_decay, batch_size=params.batch_size,
                                  schedule="constant")
        train_supervised(teacher, ctx.unlearn, teacher_cfg, ctx.device, ctx.seed, ctx.progress,
                         epoch_logger(ctx, "nad.teacher_loss"), label="NAD teacher fine-tuning")
        teacher.eval()
        for prm in teacher.parameters():
            prm.requires_grad_(False)

        # 2. Student: CE + attention distillation.
        student_hooks = _Capture(model, layers)
        teacher_hooks = _Capture(teacher, layers)
        optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                    weight_decay=params.weight_decay, nesterov=params.momentum > 0)
        gen = torch.Generator().manual_seed(ctx.seed + 1)
        try:
            for epoch in range(1, params.epochs + 1):
                lr = params.lr if epoch <= params.lr_drop_epoch else params.lr * 0.1
                for group in optimizer.param_groups:
                    group["lr"] = lr
                model.train()
                total_ce = total_at = 0.0
                count = 0
                for xb, yb in seeded_batches(ctx.unlearn, params.batch_size, gen, ctx.device):
                    with torch.no_grad():
                        teacher(xb)
                    logits = model(xb)
                    ce = F.cross_entropy(logits, yb)
                    at = sum(beta * attention_loss(student_hooks.outputs[name], teacher_hooks.outputs[name].detach(), params.p)
                             for name, beta in zip(layers, betas))
                    loss = ce + at
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total_ce += float(ce.detach()) * len(yb)
                    total_at += float(at.detach()) * len(yb)
                    count += len(yb)
                ctx.log_metric("nad.ce_loss", total_ce / max(count, 1), epoch)
                ctx.log_metric("nad.at_loss", total_at / max(count, 1), epoch)
                ctx.progress("NAD attention distillation", epoch, params.epochs)
        finally:
            student_hooks.close()
            teacher_hooks.close()
        check_finite(model, self.name)
        return model.eval()


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(NeuralAttentionDistillation)

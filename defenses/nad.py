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
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bdtool
from bdtool.core.compute.modules import ForwardCapture
from bdtool.core.compute.training import SGDParams
from bdtool.core.errors import DefenseInputError
from bdtool.core.compute.training_defense import TrainingDefense
from bdtool.core.interfaces import DefenseContext
from bdtool.core.params import param
from bdtool.defenses.layer_groups import distillation_layers


@dataclass
class NADParams(SGDParams):
    """NAD's defaults (Li et al. 2021, and its released code bboylyg/NAD). The SGD fields are the
    student's (20 epochs, lr 0.1 divided by 10 after ``lr_drop_epoch`` epochs, weight decay 1e-4,
    batch size 64; momentum 0.9 is SGDParams'); the teacher shares them except its own epochs and
    learning rate, with a constant schedule."""

    epochs: int = 20
    lr: float = 0.1
    weight_decay: float = 1e-4
    batch_size: int = 64
    schedule: Literal["cosine", "constant", "step"] = "step"
    lr_drop_epoch: int = param(2, ge=0)
    """After this many epochs the learning rate is divided by 10 (NAD's schedule, ``schedule=step``)."""
    teacher_epochs: int = param(10, ge=1)
    teacher_lr: float = param(0.01, gt=0)
    p: float = param(2.0, gt=0)
    betas: tuple[float, ...] = param((5000.0,), ge=0)
    """β per layer group; a single value applies to every group."""
    layers: tuple[str, ...] = ()
    """Module names to distil; empty = chosen automatically (see layer_groups)."""

    schedules: ClassVar[tuple[str, ...]] = ("step", "constant", "cosine")

    def validate(self) -> None:
        super().validate()
        if not self.betas:
            raise ValueError("betas must hold one or more values")
        if self.layers and len(self.betas) not in (1, len(self.layers)):
            raise ValueError(f"give one beta or one per layer ({len(self.layers)}), not {len(self.betas)}")

    def teacher_config(self) -> SGDParams:
        """The teacher's fine-tuning: the student's SGD settings with the teacher's epochs and lr,
        constant schedule (NAD's teacher step)."""
        return replace(self.train_config(), epochs=self.teacher_epochs, lr=self.teacher_lr, schedule="constant")


def attention_map(a: Tensor, p: float) -> Tensor:
    """NAD/AT attention: mean over channels of |a|^p, flattened, L2-normalised per sample."""
    am = a.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(am, p=2, dim=1, eps=1e-6)


def attention_loss(student: Tensor, teacher: Tensor, p: float) -> Tensor:
    return F.mse_loss(attention_map(student, p), attention_map(teacher, p))


class NeuralAttentionDistillation(TrainingDefense):
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
        layers = distillation_layers(model, example, params.layers, owner=self.name)
        betas = list(params.betas) * len(layers) if len(params.betas) == 1 else list(params.betas)
        if len(betas) != len(layers):
            raise DefenseInputError(
                f"nad: {len(params.betas)} betas for {len(layers)} automatically chosen layers ({', '.join(layers)}); "
                "give one beta or name the layers"
            )
        # 1. Teacher: fine-tuned copy.
        teacher = copy.deepcopy(model)
        self.fine_tune(teacher, ctx, params.teacher_config(), label="NAD teacher fine-tuning", metric_prefix="teacher_")
        teacher.eval()
        for prm in teacher.parameters():
            prm.requires_grad_(False)

        # 2. Student: CE + attention distillation, in the same loop.
        with ForwardCapture(model, layers) as student_maps, ForwardCapture(teacher, layers) as teacher_maps:

            def distillation_loss(student: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
                with torch.no_grad():
                    teacher(xb)
                ce = F.cross_entropy(student(xb), yb)
                at = sum(beta * attention_loss(student_maps.outputs[name], teacher_maps.outputs[name].detach(), params.p)
                         for name, beta in zip(layers, betas))
                return ce + at, {"ce_loss": ce, "at_loss": at}

            # Nesterov momentum and a generator seeded with seed + 1: NAD's released code, and
            # batches that differ from the teacher's.
            self.fine_tune(model, ctx, params.train_config(), label="NAD attention distillation", seed_offset=1,
                           loss=distillation_loss, nesterov=True, lr_drop_epoch=params.lr_drop_epoch)
        return model


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(NeuralAttentionDistillation)

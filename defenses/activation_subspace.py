"""Class-preserving activation-guided editing — the ``ours-proj`` defense (docs/method.md,
"Class-preserving edit").

The reconstructed ``ours`` (``defenses/activation_editing.py``) scales the classifier's rows by
the rescaled activation of the stamped D_U and reaches ASR 0 by deleting the target class (CTCA 0,
exactly the null row's numbers). This sibling keeps the paper's idea — the activations of a
handful of unseen samples locate what to edit, and the edit is a multiplication of the weights —
and applies it where the trigger lives, not to the classes:

1. Forward D_U and D_U stamped with the trigger through the unedited model once each (eval mode,
   BN statistics untouched), reading the *input* of one Linear layer ``layer`` (default: the
   first Linear, i.e. the pooled convolutional features the head sees).
2. The per-sample difference the trigger makes, D = A(stamp(x)) − A(x) (n × d): the supplement's
   A = α·A_clean + β·A_poisoned with α = 1, β = −1 (Table 9's working cell), kept per sample
   instead of averaged.
3. Its top-r right singular vectors V (d × r) span the trigger's subspace (``rank``, default 1;
   or, with ``rank=0``, the smallest r whose singular values hold ``energy`` of ‖D‖²).
4. The edit W ← W·(I − VVᵀ) removes that subspace from what the layer sees; it is a
   multiplicative edit of W by a matrix (the paper's diagonal per-unit factors generalised), and
   ``b ← b + W·VVᵀ·μ`` (μ the clean D_U's mean input) puts the clean mean back into the removed
   directions, so clean inputs keep, on average, what those directions carried.

Cost: two forward passes over D_U and one SVD of an n × d matrix (measured against one forward
pass in ``benchmarks/bench_activation_editing.py``). It needs the trigger: without it D is
unknown (docs/method.md says what was measured there).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

import bdtool
from bdtool.core.compute.modules import preserve_modes
from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.defenses._trigger import stamp


@dataclass
class SubspaceEditParams:
    """Parameters of ``ours-proj``; defaults chosen in docs/method.md, "Class-preserving edit"."""

    layer: str = "auto"
    """The Linear layer whose input is edited: ``auto`` = the first Linear in module order (the
    head's input, after the convolutional features), or a module name from ``named_modules()``."""
    rank: int = 1
    """The trigger subspace's rank r (1 ≤ r ≤ min(n, d)); 0 = chosen by ``energy``. Default 1, the
    direction the trigger moves the features most: among r = 1..24 it gave the lowest clean
    cross-entropy on D_U in every digits run, the best ACC on both attacks, and ASR 0 (docs/method.md,
    "Class-preserving edit"); larger r keeps more of the target class on BadNets and costs ACC on Blend."""
    energy: float = 0.9
    """With ``rank=0``: the smallest r whose squared singular values hold this share of ‖D‖²
    (0 < energy ≤ 1)."""
    restore_mean: bool = True
    """Put the clean D_U's mean back into the removed directions (through the bias); false
    projects them to zero."""
    batch_size: int = 1024
    """Forward-pass batch size (memory only)."""

    def validate(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0 (0 = chosen by energy), got {self.rank}")
        if not str(self.layer).strip():
            raise ValueError("layer must be 'auto' or a Linear module's name")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def edited_linear(model: nn.Module, spec: str, owner: str = "ours-proj") -> tuple[str, nn.Linear]:
    """The (name, Linear) ``spec`` names; DefenseInputError naming the choices otherwise."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DefenseInputError(f"{owner}: the model has no Linear layer whose input could be edited")
    if spec == "auto":
        return linears[0]
    modules = dict(model.named_modules())
    if spec not in modules:
        close = difflib.get_close_matches(spec, [n for n, _ in linears], n=3)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise DefenseInputError(f"{owner}: layer: no module named '{spec}'.{hint} "
                                f"Linear layers: {', '.join(n for n, _ in linears)}")
    if not isinstance(modules[spec], nn.Linear):
        raise DefenseInputError(f"{owner}: layer: '{spec}' is a {type(modules[spec]).__name__}, not a Linear layer")
    return spec, modules[spec]  # type: ignore[return-value]


@torch.no_grad()
def layer_inputs(model: nn.Module, layer: nn.Module, x: Tensor, device: torch.device, batch_size: int) -> Tensor:
    """The (flattened) input of ``layer`` for every image of ``x``, float64 on ``device``; eval mode."""
    chunks: list[Tensor] = []
    handle = layer.register_forward_pre_hook(lambda mod, inputs: chunks.append(inputs[0].detach().flatten(1)))
    try:
        with preserve_modes(model):
            model.eval()
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size].to(device, non_blocking=True))
    finally:
        handle.remove()
    return torch.cat(chunks).double()


def trigger_subspace(diff: Tensor, energy: float, rank: int) -> Tensor:
    """Orthonormal basis V (d × r) of the top-r right singular vectors of ``diff`` (n × d)."""
    if not torch.isfinite(diff).all():
        raise DefenseInputError("ours-proj: the activations are not finite (NaN/inf in the model?)")
    _, s, vh = torch.linalg.svd(diff, full_matrices=False)
    power = s.square()
    if float(power.sum()) == 0.0:
        raise DefenseInputError("ours-proj: the trigger changes nothing at the edited layer's input "
                                "(D = 0); choose another layer")
    if rank > 0:
        if rank > len(s):
            raise DefenseInputError(f"ours-proj: rank={rank} exceeds min(n, d) = {len(s)}; use a smaller rank "
                                    "or rank=0 (chosen by energy)")
        r = rank
    else:
        share = power.cumsum(0) / power.sum()
        r = int((share < energy - 1e-12).sum()) + 1
    return vh[:r].T.contiguous()


@torch.no_grad()
def project_out(layer: nn.Linear, basis: Tensor, clean_mean: Tensor | None) -> None:
    """W ← W·(I − VVᵀ) and, with ``clean_mean`` μ, b ← b + W·VVᵀ·μ (in place; float64 maths)."""
    w = layer.weight.double()
    removed = (w @ basis) @ basis.T  # W·VVᵀ
    if clean_mean is not None:
        shift = removed @ clean_mean
        if layer.bias is None:
            raise DefenseInputError("ours-proj: the edited Linear layer has no bias to restore the clean mean "
                                    "into; use restore_mean=false")
        layer.bias.add_(shift.to(layer.bias.dtype))
    layer.weight.copy_((w - removed).to(layer.weight.dtype))


class SubspaceEditing(Defense):
    """Remove the trigger's activation subspace from one Linear layer's input (needs the trigger)."""

    name = "ours-proj"
    label = "Ours-proj"
    description = ("class-preserving activation-guided edit: project the trigger's activation subspace out of the "
                   "head's input (needs the trigger)")
    requires_trigger = True
    accepts_trigger = True
    Params = SubspaceEditParams
    default_rows = ("ours-proj",)
    row_order = 1

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        assert ctx.attack is not None  # Defense.defend refuses to run without it
        p: SubspaceEditParams = self.params
        name, layer = edited_linear(model, str(p.layer).strip())
        x = ctx.unlearn.x
        clean = layer_inputs(model, layer, x, ctx.device, p.batch_size)
        stamped = layer_inputs(model, layer, stamp(ctx.attack, x, self.name), ctx.device, p.batch_size)
        basis = trigger_subspace(stamped - clean, p.energy, p.rank)
        project_out(layer, basis, clean.mean(0) if p.restore_mean else None)
        ctx.log_metric("ours-proj.rank", float(basis.shape[1]), None)
        ctx.log_metric("ours-proj.input_dim", float(basis.shape[0]), None)
        return model.eval()


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(SubspaceEditing)

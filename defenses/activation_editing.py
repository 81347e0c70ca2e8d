"""Activation-guided model editing — the "ours" defense (docs/method.md).

Reconstructed from the paper's supplement (Hsieh et al., "Mitigating Backdoor Attacks using
Activation-Guided Model Editing"); the main text is not available, so every choice that the
supplement does not pin down is marked *[reconstruction]* below and measured in
``benchmarks/ablation_activation_editing.py`` (results and reasoning in ``docs/method.md``).

Algorithm, one call:

1. Pick the edited layers (``layers``, see :func:`select_edited_layers`).
2. Forward the unlearning set D_U through the unedited model once per activation set that has a
   non-zero coefficient, with forward hooks that reduce each edited layer's output to a per-unit
   mean on the fly (a Linear unit, or a conv channel averaged over N, H, W). With backdoor
   knowledge (BDK) the sets are D_U (clean) and D_U with ``ctx.attack.apply`` stamped; without it
   there is only the clean set and the attack is never touched.
3. ``A = alpha·A_clean + beta·A_poisoned`` (supplement §B.4, Eq. 7; without BDK
   ``A_poisoned = A_clean``, §B.4). The final values alpha=0, beta=−1 are the supplement's (§B.4,
   Table 9): "the negative activation of D_U", and alpha=0 saves one activation set.
4. Per layer ``Â = lam + gamma·(A − mean(A)) / std(A)`` — activations rescaled to mean λ and
   standard deviation γ (§B.3, Figure 4: best λ=1.0, γ=0.5; γ=0 makes every factor λ).
   ``std`` is the population standard deviation over the layer's units *[reconstruction]*.
5. ``W[j] ← Â[j]·W[j]``, ``b[j] ← Â[j]·b[j]`` for every output unit j of every edited layer.

Batch-Norm moving averages are kept fixed (BN in eval mode) or updated from D_U (BN in train
mode) during the extraction passes (§B.3, Figure 4: fixed is better with BDK, updating without).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn

import bdtool
from bdtool.core.compute.modules import BATCHNORM_TYPES, preserve_modes, set_batchnorm_mode
from bdtool.core.errors import BdtoolError, DefenseInputError
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors

EDITABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose first weight dimension is the output unit (ConvTranspose is not: its weight is
(in, out, ...))."""

_ELEMENTWISE = BATCHNORM_TYPES + (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
                           nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity)
"""Modules that may sit between a layer and its "post-activation" output."""

_LAST_K = re.compile(r"^last(\d+)$")
LAYER_KEYWORDS = ("lastK", "classifier", "after-downsampling", "all")


@dataclass
class ActivationEditingParams:
    """Parameters of the "ours" defense. Defaults are the ones chosen by the ablation
    (``docs/method.md``); the supplement's own final values are noted per field."""

    layers: str = "last1"
    """Which layers to edit *[reconstruction; the supplement does not name them]*:

    - ``lastK`` (``last1``, ``last2``, ...): the last K Conv/Linear layers in module order, the
      classifier included; ``classifier`` = ``last1``.
    - ``after-downsampling``: every Conv/Linear that runs at the network's smallest convolutional
      resolution (i.e. after its last spatial downsampling) plus the Linear head.
    - ``all``: every Conv/Linear layer.
    - ``name1+name2+...``: explicit module names as in ``model.named_modules()``
      (``+`` separates items because ``,`` separates parameters on the CLI).

    Default ``last1`` (the classifier only): in the ablation it keeps ASR at 0 with 5 samples and
    costs the least clean accuracy (docs/method.md, "Edited layers")."""
    lam: float = param(1.0)  # any finite number
    """λ, the mean of the rescaled activations (supplement §B.3, Figure 4: best 1.0)."""
    gamma: float = param(0.5, ge=0)
    """γ, their standard deviation (§B.3, Figure 4: best 0.5); 0 leaves the weights unchanged."""
    alpha: float = param(0.0)  # any finite number
    """Weight of the clean activations in A (§B.4, Eq. 7, Table 9: final 0)."""
    beta: float = param(-1.0)  # any finite number
    """Weight of the poisoned activations in A (§B.4, Eq. 7, Table 9: final −1)."""
    bn: Literal["auto", "fixed", "update"] = "auto"
    """Batch-Norm moving averages during extraction (§B.3, Figure 4): ``fixed`` (eval mode),
    ``update`` (BN in train mode, running statistics move towards D_U), ``auto`` = fixed with BDK,
    update without — the supplement's finding."""
    activation: Literal["pre", "post"] = "pre"
    """Where a layer's activation is read *[reconstruction]*: ``pre`` = the layer's own output;
    ``post`` = after the BatchNorm/activation modules that directly follow it (for the classifier,
    the logits either way)."""
    nobdk_source: Literal["auto", "all", "target", "inferred"] = "auto"
    """Which clean samples form D_U without the trigger *[reconstruction, see docs/method.md
    "Threat model"]*: ``all`` = D_U as given (all classes); ``target`` = n pool samples of the
    target class (needs the target label: threat model ``target``); ``inferred`` = n pool samples
    of the class inferred from the model (``infer_by``). ``auto`` = ``target`` when the row knows
    the target label, ``all`` when it knows nothing: ``all`` is the supplement's literal setting
    and, unlike ``inferred``, does not fail outright at n = 5, where the inference picks the wrong
    class (docs/method.md, "Threat model"). Ignored with the trigger."""
    infer_by: Literal["weight-norm", "mean-logit"] = "mean-logit"
    """How ``nobdk_source=inferred`` finds the target class: the classifier row with the largest
    L2 norm, or the class with the highest mean logit over the clean D_U given."""
    batch_size: int = param(1024, ge=1)
    """Extraction batch size (memory only; with ``bn=update`` each batch is one BN update)."""

    def validate(self) -> None:
        parse_layer_spec(self.layers)


# --------------------------------------------------------------------------- layer selection


def parse_layer_spec(spec: str) -> tuple[str, int | tuple[str, ...]]:
    """``(kind, argument)`` for a ``layers`` string; ValueError on a malformed one."""
    text = str(spec).strip()
    if not text:
        raise ValueError(f"layers must be one of {', '.join(LAYER_KEYWORDS)} or module names joined by '+'")
    if text == "classifier":
        return "last", 1
    match = _LAST_K.match(text)
    if match:
        k = int(match.group(1))
        if k < 1:
            raise ValueError(f"layers={text}: K must be >= 1")
        return "last", k
    if text in ("after-downsampling", "all"):
        return text, 0
    names = tuple(part.strip() for part in text.split("+"))
    if any(not name for name in names):
        raise ValueError(f"layers={text!r}: empty module name between '+'")
    return "names", names


def editable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv/Linear layers in module (registration) order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, EDITABLE)]


def _trace(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, Tensor, Tensor]]:
    """Leaf modules in execution order with (input, output) shapes from one eval-mode forward of
    one sample (BN statistics untouched)."""
    order: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    handles = []
    names = {m: n for n, m in model.named_modules()}
    for module in model.modules():
        if len(list(module.children())) == 0:
            def hook(mod, inputs, output, _name=names[module]):
                first = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
                order.append((_name, mod, first, output if isinstance(output, Tensor) else None))
            handles.append(module.register_forward_hook(hook))
    try:
        with preserve_modes(model), torch.no_grad():
            model.eval()
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return order


def select_edited_layers(model: nn.Module, spec: str, sample: Tensor) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs ``spec`` selects, in module order; DefenseInputError if none."""
    kind, arg = parse_layer_spec(spec)
    layers = editable_layers(model)
    if not layers:
        raise DefenseInputError("ours: the model has no Conv/Linear layer to edit")
    if kind == "last":
        return layers[-int(arg):]  # type: ignore[arg-type]
    if kind == "all":
        return layers
    if kind == "names":
        by_name = dict(model.named_modules())
        chosen = []
        for name in arg:  # type: ignore[union-attr]
            if name not in by_name:
                close = difflib.get_close_matches(name, [n for n, _ in layers], n=3)
                hint = f" Closest: {', '.join(close)}." if close else ""
                raise DefenseInputError(
                    f"ours: layers: no module named '{name}'.{hint} Editable: {', '.join(n for n, _ in layers)}")
            if not isinstance(by_name[name], EDITABLE):
                raise DefenseInputError(
                    f"ours: layers: '{name}' is a {type(by_name[name]).__name__}, not a Conv/Linear layer")
            chosen.append((name, by_name[name]))
        return chosen
    # after-downsampling: convolutions at the smallest input resolution any convolution sees,
    # plus every Linear (the head), in execution order.
    order = _trace(model, sample)
    conv_res = [inp.shape[2:].numel() for _, m, inp, _ in order
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and inp is not None]
    smallest = min(conv_res) if conv_res else None
    seen: set[int] = set()
    chosen = []
    for name, m, inp, _ in order:
        if not isinstance(m, EDITABLE) or id(m) in seen:
            continue
        if isinstance(m, nn.Linear) or (inp is not None and inp.shape[2:].numel() == smallest):
            seen.add(id(m))
            chosen.append((name, m))
    return chosen


def _post_points(model: nn.Module, layers: list[tuple[str, nn.Module]], sample: Tensor) -> list[nn.Module]:
    """For each layer, the module whose output is its post-activation: the last of the BN /
    elementwise-activation modules that directly follow it in execution order (itself if none)."""
    order = _trace(model, sample)
    points = []
    for _, layer in layers:
        point = layer
        for i, (_, m, _, _) in enumerate(order):
            if m is layer:
                j = i + 1
                while j < len(order) and isinstance(order[j][1], _ELEMENTWISE):
                    point = order[j][1]
                    j += 1
                break
        points.append(point)
    return points


# --------------------------------------------------------------------------- activations


def _unit_dim(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


@torch.no_grad()
def mean_activations(model: nn.Module, points: list[nn.Module], units: list[int], x: Tensor,
                     device: torch.device, batch_size: int = 1024) -> list[Tensor]:
    """Per-unit mean output of each hooked module over ``x`` (float64, on ``device``).

    One forward pass in batches; the hooks reduce each output right away (sum over every
    dimension but the unit dimension), so nothing but one vector per layer is kept. The model's
    train/eval flags are used as they are (the caller sets the BN mode).
    """
    sums: list[Tensor | None] = [None] * len(points)
    counts = [0] * len(points)
    handles = []
    for i, (point, unit) in enumerate(zip(points, units)):
        def hook(mod, inputs, output, _i=i, _unit=unit):
            out = output.detach()
            dim = _unit % out.dim()
            flat = out.movedim(dim, -1).reshape(-1, out.shape[dim])
            s = flat.sum(0, dtype=torch.float64)
            sums[_i] = s if sums[_i] is None else sums[_i] + s
            counts[_i] += flat.shape[0]
        handles.append(point.register_forward_hook(hook))
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size].to(device, non_blocking=True))
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, s in enumerate(sums):
        if s is None:
            raise DefenseInputError(f"ours: edited layer #{i} never ran in the forward pass; choose other layers")
        out.append(s / counts[i])
    return out


def rescale(a: Tensor, lam: float, gamma: float, layer_name: str = "?") -> Tensor:
    """Â = λ + γ·(A − mean(A)) / std(A) (population std); γ=0 gives exactly λ everywhere.

    DefenseInputError when A has no spread (std 0, or below 1e-9 of its magnitude, where the
    quotient would be rounding noise) or is not finite: a NaN weight is never written.
    """
    if gamma == 0:
        return torch.full_like(a, float(lam))
    if not torch.isfinite(a).all():
        raise DefenseInputError(f"ours: the activations of layer '{layer_name}' are not finite (NaN/inf in the model?)")
    std = a.std(correction=0)
    scale = float(a.abs().max())
    if a.numel() < 2 or float(std) == 0.0 or float(std) <= 1e-9 * scale:
        raise DefenseInputError(
            f"ours: the activation A of layer '{layer_name}' has standard deviation 0 over its "
            f"{a.numel()} unit(s) (A = alpha·A_clean + beta·A_poisoned is constant, e.g. alpha=beta=0 "
            "or a single-unit layer), so it cannot be rescaled to std gamma; use other alpha/beta, "
            "other layers or gamma=0")
    return lam + gamma * (a - a.mean()) / std


@torch.no_grad()
def scale_units(layer: nn.Module, factors: Tensor) -> None:
    """W[j] ← Â[j]·W[j], b[j] ← Â[j]·b[j] (in place, one broadcast multiply per tensor)."""
    w = layer.weight
    f = factors.to(device=w.device, dtype=w.dtype)
    w.mul_(f.view(-1, *([1] * (w.dim() - 1))))
    if getattr(layer, "bias", None) is not None:
        layer.bias.mul_(f)


# --------------------------------------------------------------------------- target inference


def classifier_layer(model: nn.Module, num_classes: int) -> nn.Module:
    for _, m in reversed(editable_layers(model)):
        if m.weight.shape[0] == num_classes:
            return m
    raise DefenseInputError(f"ours: no Conv/Linear layer with {num_classes} outputs to read the classes from")


@torch.no_grad()
def infer_target_class(model: nn.Module, ctx: DefenseContext, method: str) -> tuple[int, Tensor]:
    """(class, per-class evidence) from the model and the clean D_U only — never the trigger or
    the evaluation half. ``weight-norm``: L2 norm of each classifier row; ``mean-logit``: mean
    logit of each class over the clean D_U (eval mode)."""
    if method == "weight-norm":
        w = classifier_layer(model, ctx.num_classes).weight
        evidence = w.detach().flatten(1).norm(dim=1).double().cpu()
    else:
        with preserve_modes(model):
            model.eval()
            total = None
            for xb, _ in ctx.unlearn.batches(1024):
                s = model(xb.to(ctx.device)).double().sum(0)
                total = s if total is None else total + s
        evidence = (total / len(ctx.unlearn)).cpu()
    return int(evidence.argmax()), evidence


# --------------------------------------------------------------------------- the defense


class ActivationEditing(Defense):
    """Activation-guided model editing (the paper's method; supplement §B, docs/method.md)."""

    name = "ours"
    label = "Ours"
    description = "activation-guided multiplicative editing of the last layers (Hsieh et al.)"
    requires_trigger = False
    accepts_trigger = True
    uses_attack_target = True  # the attack's target class, with the trigger: not on an all-to-all backdoor
    accepts_target_label = True
    Params = ActivationEditingParams
    default_rows = ("ours", "ours:knowledge=target", "ours:knowledge=none", "ours:repair=0.01")
    row_order = 0

    def unlearn_set(self, model: nn.Module, ctx: DefenseContext) -> LabeledTensors:
        """D_U for this run: as given with BDK or ``nobdk_source=all``; else target-class samples."""
        p: ActivationEditingParams = self.params
        source = p.nobdk_source
        if source == "auto":
            source = "target" if ctx.target_class is not None else "all"
        if ctx.bdk or source == "all":
            return ctx.unlearn
        if source == "target":
            if ctx.target_class is None or ctx.draw_unlearn is None:
                raise DefenseInputError(
                    "ours: nobdk_source=target needs the target label and the unseen pool "
                    "(ctx.target_class and ctx.draw_unlearn); use nobdk_source=inferred or all")
            cls = int(ctx.target_class)
        else:
            if ctx.draw_unlearn is None:
                raise DefenseInputError("ours: nobdk_source=inferred needs the unseen pool (ctx.draw_unlearn); "
                                        "use nobdk_source=all")
            cls, evidence = infer_target_class(model, ctx, p.infer_by)
            ctx.log_metric("ours.inferred_target", float(cls), None)
            top2 = evidence.topk(min(2, len(evidence))).values
            if len(top2) == 2 and float(top2[1]) != 0:
                ctx.log_metric("ours.inference_margin", float(top2[0] / top2[1]), None)
            if ctx.target_class is not None:  # bookkeeping only; never used to decide
                ctx.log_metric("ours.inferred_target_correct", float(cls == int(ctx.target_class)), None)
        try:
            return ctx.draw_unlearn(cls)
        except DefenseInputError:
            raise
        except BdtoolError as exc:  # e.g. the pool holds fewer than n images of that class
            raise DefenseInputError(f"ours: nobdk_source={source}: {exc}") from None

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        p: ActivationEditingParams = self.params
        data = self.unlearn_set(model, ctx)
        x = data.x
        layers = select_edited_layers(model, p.layers, x)
        points = [m for _, m in layers] if p.activation == "pre" else _post_points(model, layers, x)
        units = [_unit_dim(m) for _, m in layers]
        bn_mode = p.bn if p.bn != "auto" else ("fixed" if ctx.bdk else "update")

        # Activation sets with a non-zero coefficient (§B.4: alpha=0 "allows us to extract one
        # activation set less"). Without BDK A_poisoned = A_clean, so one clean set suffices.
        if ctx.bdk:
            sets: list[tuple[float, Callable[[], Tensor]]] = []
            if p.alpha != 0:
                sets.append((p.alpha, lambda: x))
            if p.beta != 0:
                sets.append((p.beta, lambda: ctx.attack.apply(x)))  # type: ignore[union-attr]
        else:
            coeff = p.alpha + p.beta
            sets = [(coeff, lambda: x)] if coeff != 0 else []

        with preserve_modes(model):
            model.eval()
            if bn_mode == "update":
                set_batchnorm_mode(model, True)
            total: list[Tensor] | None = None
            for coeff, make_x in sets:
                acts = mean_activations(model, points, units, make_x(), ctx.device, p.batch_size)
                total = [coeff * a for a in acts] if total is None else [t + coeff * a for t, a in zip(total, acts)]
        if total is None:  # alpha·A_clean + beta·A_poisoned is identically zero
            total = [torch.zeros(m.weight.shape[0], dtype=torch.float64, device=ctx.device) for _, m in layers]

        if p.gamma == 0 and p.lam == 1.0:
            return model  # every factor is exactly 1: nothing to write (BN stats may have moved)
        factors = [rescale(a, p.lam, p.gamma, name) for (name, _), a in zip(layers, total)]
        for (_, layer), f in zip(layers, factors):  # all checked before the first write
            scale_units(layer, f)
        ctx.log_metric("ours.layers_edited", float(len(layers)), None)
        ctx.log_metric("ours.samples_used", float(len(data)), None)
        return model


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(ActivationEditing)

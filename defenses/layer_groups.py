"""Which intermediate outputs NAD distils attention from ("layer groups").

NAD (Li et al., ICLR 2021) distils the attention maps at the ends of the residual groups of a
WideResNet. Our choices per built-in architecture:

- SmallCNN: the outputs of its two conv blocks (the last ReLU of each block, before pooling:
  ``features.5`` and ``features.12``).
- ResNet18: ``layer2``, ``layer3``, ``layer4`` (the residual stages, as in NAD).
- VGGSmall: the last three conv stages (the last ReLU before each pooling point in ``CFG``).
- Any other model: the last module producing each distinct 4-D output shape, in execution order,
  keeping the last ``fallback_count`` of them (the ends of the last few stages).

Outputs with a 1×1 spatial extent are dropped: a normalised attention map of one pixel is always
1, so distilling it does nothing (ResNet18's layer4 on 8×8 digits, VGG's last stages).
The user can name modules explicitly (``nad:layers=features.5+features.12``).
"""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from bdtool.core.compute.modules import ForwardCapture, preserve_modes
from bdtool.core.errors import DefenseInputError
from bdtool.plugins.builtin.models import ResNet18, SmallCNN, VGGSmall


def _stage_end_relus(features: nn.Sequential) -> list[str]:
    """Names (within ``features``) of the last ReLU before every MaxPool/AdaptiveAvgPool."""
    names: list[str] = []
    last_relu: str | None = None
    for name, module in features.named_children():
        if isinstance(module, nn.ReLU):
            last_relu = name
        elif isinstance(module, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)) and last_relu is not None:
            if not names or names[-1] != last_relu:
                names.append(last_relu)
    return names


def _vgg_stage_ends(model: VGGSmall) -> list[str]:
    """The last ReLU of each conv stage of ``VGGSmall.CFG`` (pooling may be skipped on small inputs)."""
    names: list[str] = []
    children = list(model.features.named_children())
    conv_seen = 0
    relu_positions: list[str] = []
    for name, module in children:
        if isinstance(module, nn.ReLU):
            relu_positions.append(name)
    for item in model.CFG:
        if item == "M":
            if conv_seen and (not names or names[-1] != relu_positions[conv_seen - 1]):
                names.append(relu_positions[conv_seen - 1])
        else:
            conv_seen += 1
    return names


def default_candidates(model: nn.Module) -> list[str] | None:
    """Named layer groups for the built-in architectures, or None for an unknown model."""
    if isinstance(model, SmallCNN):
        return [f"features.{n}" for n in _stage_end_relus(model.features)]
    if isinstance(model, ResNet18):
        return ["layer2", "layer3", "layer4"]
    if isinstance(model, VGGSmall):
        return [f"features.{n}" for n in _vgg_stage_ends(model)][-3:]
    return None


@torch.no_grad()
def probe_output_shapes(model: nn.Module, example: Tensor, names: list[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape of each named module (all leaf modules when ``names`` is None), in execution
    order, from one eval-mode forward pass of ``example`` (BN statistics are not touched)."""
    modules = dict(model.named_modules())
    wanted = names if names is not None else [n for n, m in modules.items() if n and not list(m.children())]
    with ForwardCapture(model, wanted, first_only=True) as capture, preserve_modes(model):
        model.eval()
        model(example)
    return {name: tuple(out.shape) for name, out in capture.outputs.items() if isinstance(out, Tensor)}


def _spatial(shape: tuple[int, ...]) -> int:
    return shape[2] * shape[3] if len(shape) == 4 else 0


def distillation_layers(model: nn.Module, example: Tensor, explicit: tuple[str, ...] | list[str] = (),
                        fallback_count: int = 3, owner: str = "nad") -> list[str]:
    """The module names whose outputs NAD distils (see the module docstring).

    Raises DefenseInputError for unknown names, names whose output is not a 4-D feature map, or a
    model without any usable 4-D output.
    """
    modules = dict(model.named_modules())
    if explicit:
        unknown = [n for n in explicit if n not in modules or n == ""]
        if unknown:
            known = [n for n in modules if n]
            hints = []
            for n in unknown:
                close = difflib.get_close_matches(n, known, n=3)
                hints.append(f"'{n}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise DefenseInputError(f"{owner}: unknown layer(s) {'; '.join(hints)}")
        shapes = probe_output_shapes(model, example, list(explicit))
        bad = [n for n in explicit if len(shapes.get(n, ())) != 4]
        if bad:
            raise DefenseInputError(
                f"{owner}: layer(s) {', '.join(bad)} do not produce a 4-D feature map (N,C,H,W); "
                "attention distillation needs convolutional outputs"
            )
        return list(explicit)
    candidates = default_candidates(model)
    if candidates is not None:
        shapes = probe_output_shapes(model, example, candidates)
        chosen = [n for n in candidates if _spatial(shapes.get(n, ())) > 1]
        if chosen:
            return chosen
    shapes = probe_output_shapes(model, example)
    last_by_shape: dict[tuple[int, ...], str] = {}
    for name, shape in shapes.items():  # execution order
        if _spatial(shape) > 1:
            last_by_shape.pop(shape[1:], None)
            last_by_shape[shape[1:]] = name
    chosen = list(last_by_shape.values())[-fallback_count:]
    if not chosen:
        raise DefenseInputError(
            f"{owner}: the model has no module producing a 4-D feature map larger than 1x1; "
            "name the layers with layers=... or use another defense"
        )
    return chosen

"""Trigger-free backdoor detection by universal perturbation search (docs/method.md, "Unknown
backdoor"): the model and D_U alone say whether a backdoor is there, which class it points at, and
give a stand-in trigger for ``ours-proj``'s edit.

The premise (Neural Cleanse's, Wang et al. 2019 §III; the targeted universal perturbation of
Moosavi-Dezfooli et al. 2017): a backdoor is a shortcut, so its target class is reached from
*every* class with a far smaller universal change of the input than any other class. Two families
of universal change are searched, because a backdoor's trigger need not be additive:

- ``additive``: x ↦ clamp(x + δ_c, 0, 1), one δ_c per class, its size ‖δ_c‖₂ relative to the
  mean ‖x‖₂ of D_U (patches and blended patterns: BadNets, Blend, SIG).
- ``warp``: x ↦ grid_sample(x, identity + flow_c), flow_c a smooth field upsampled (bicubic) from
  a ``grid`` × ``grid`` control grid, its size the RMS control displacement in grid units
  (image-warping triggers: WaNet, Nguyen & Tran 2021, whose own field is built the same way; an
  additive search does not find it: digits WaNet, its target needs the *largest* additive change).

For every class c the search is a projected gradient descent on the targeted cross-entropy of k
samples of D_U whose label is not c, inside an L2 ball whose radius grows geometrically each
step (``start``, ``growth``); c's radius ε_c is the first at which ``rate`` of them go to c. All
classes move in one batch; a class leaves the batch once it is reached, so the search costs at
most ``steps`` forward/backward passes of C·k images, and it stops as soon as the verdict is
settled (the second class reached).

Detection: per family, the gap g = ln(ε_(2)/ε_(1)) between the smallest and the second smallest
radius (a class never reached counts as the last radius tried). The score is g divided by the
family's threshold; a backdoor is reported when the larger of the two scores exceeds 1, pointing at
the class of ε_(1) in that family. The thresholds were set once, from clean victims' D_U
(docs/method.md, "Unknown backdoor", says how), and are the same on every data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdtool.core import interrupts
from bdtool.core.compute.modules import frozen_eval
from bdtool.plugins.builtin.attacks_wanet import WaNet, identity_grid

FAMILIES = ("additive", "warp")


@dataclass
class UniversalSearchParams:
    """The search's settings (module docstring); defaults chosen in docs/method.md, "Unknown backdoor"."""

    samples_per_class: int = 16
    """k: images of D_U (of another class) each class's perturbation must move."""
    steps: int = 40
    """Largest number of projected-gradient steps (each grows the radius by ``growth``)."""
    growth: float = 1.08
    rate: float = 0.9
    """Share of the k images that must reach the class for its radius to count."""
    additive_start: float = 0.1
    """First radius of the additive search, as a share of the mean ‖x‖₂ of D_U."""
    warp_start: float = 0.02
    """First RMS control displacement of the warp search (grid units: 1 = half the image)."""
    grid: int = 4
    """Control grid of the warp (``grid`` × ``grid``)."""
    additive_threshold: float = 0.2
    """Gap ln(ε_(2)/ε_(1)) above which the additive search reports a backdoor."""
    warp_threshold: float = 0.4
    """Gap above which the warp search reports a backdoor."""
    families: str = "additive+warp"
    """Which families to search, joined by ``+``."""

    def family_list(self) -> list[str]:
        return [f.strip() for f in str(self.families).split("+") if f.strip()]

    def validate(self) -> None:
        if self.samples_per_class < 1 or self.steps < 1 or self.grid < 2:
            raise ValueError("samples_per_class and steps must be >= 1 and grid >= 2")
        if not self.growth > 1.0:
            raise ValueError(f"growth must be > 1, got {self.growth}")
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        if not (self.additive_start > 0 and self.warp_start > 0):
            raise ValueError("additive_start and warp_start must be > 0")
        if not (self.additive_threshold > 0 and self.warp_threshold > 0):
            raise ValueError("additive_threshold and warp_threshold must be > 0")
        unknown = [f for f in self.family_list() if f not in FAMILIES]
        if unknown or not self.family_list():
            raise ValueError(f"families must be additive, warp or additive+warp, got {self.families!r}")


@dataclass
class FamilyResult:
    """One family's radii (per class; ``math.inf`` = not reached) and perturbations."""

    family: str
    radii: list[float]
    perturbations: Tensor
    """additive: C × ch × H × W deltas; warp: C × 2 × grid × grid control displacements."""
    last_radius: float
    threshold: float

    def gap(self, target: int | None = None) -> float:
        """ln(ε of the next class / ε of ``target``) (``target`` None: of the smallest); 0 when the
        class was not reached."""
        capped = [min(r, self.last_radius) for r in self.radii]
        c = min(range(len(capped)), key=lambda i: capped[i]) if target is None else target
        if not math.isfinite(self.radii[c]):
            return 0.0
        others = [r for i, r in enumerate(capped) if i != c]
        return math.log(min(others) / capped[c]) if others else 0.0

    def smallest(self) -> int:
        return min(range(len(self.radii)), key=lambda i: self.radii[i])


@dataclass
class Detection:
    """The verdict: whether a backdoor was found, its class, and the evidence."""

    detected: bool
    target: int
    """The suspected target (the smallest radius of the deciding family), reported even when not flagged."""
    family: str
    score: float
    """The deciding family's gap over its threshold; > 1 = backdoor."""
    threshold: float = 1.0
    families: dict[str, FamilyResult] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {"backdoor": self.detected, "target": self.target, "family": self.family, "score": self.score,
                "threshold": self.threshold,
                "gaps": {name: r.gap() for name, r in self.families.items()},
                "radii": {name: r.radii for name, r in self.families.items()}}


def warp_images(x: Tensor, control: Tensor) -> Tensor:
    """x (b × ch × H × W) warped by control displacements (b × 2 × g × g, or 1 × 2 × g × g): the flow
    upsampled as WaNet builds its field, sampled as WaNet warps (``plugins/builtin/attacks_wanet.py``)."""
    h, w = x.shape[-2:]
    flow = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return WaNet.warp(x, (identity_grid(h, w, x.device).unsqueeze(0) + flow).clamp(-1, 1))


def apply_perturbation(family: str, perturbation: Tensor, x: Tensor) -> Tensor:
    """One class's perturbation (additive: ch × H × W; warp: 2 × g × g) applied to every image of x."""
    p = perturbation.to(x.device, x.dtype)
    if family == "additive":
        return (x + p).clamp(0, 1)
    return warp_images(x, p.unsqueeze(0))


def _probe_sets(y: Tensor, num_classes: int, k: int, seed: int) -> Tensor:
    """C × k' indices into D_U: for every class, up to k samples of another class (k' the smallest count)."""
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for c in range(num_classes):
        idx = (y.cpu() != c).nonzero().flatten()
        sets.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    size = min(len(s) for s in sets)
    if size == 0:
        raise ValueError("the universal search needs samples of at least two classes in D_U")
    return torch.stack([s[:size] for s in sets])


def search_family(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, family: str,
                  p: UniversalSearchParams, device: torch.device, seed: int, target: int | None = None) -> FamilyResult:
    """The growing-radius search (module docstring) for one family; the model is not changed. It
    stops once the verdict is settled: two classes reached (``target`` None), or ``target`` and one
    other class; the classes not reached keep radius ``math.inf``."""
    probes = x[_probe_sets(y, num_classes, p.samples_per_class, seed)].to(device)  # C × k × ch × H × W
    k = probes.shape[1]
    if family == "additive":
        base = float(x.flatten(1).norm(dim=1).mean())
        shape: tuple[int, ...] = tuple(x.shape[1:])
        start = p.additive_start
    else:
        base = math.sqrt(2 * p.grid * p.grid)  # the RMS displacement times this is the L2 norm
        shape = (2, p.grid, p.grid)
        start = p.warp_start
    perturbation = torch.zeros(num_classes, *shape, device=device)
    radius = torch.full((num_classes,), start)
    radii = [math.inf] * num_classes
    active = list(range(num_classes))
    last = start
    with frozen_eval(model):
        for _ in range(p.steps):
            interrupts.check()
            reached = [c for c in range(num_classes) if math.isfinite(radii[c])]
            if not active or (len(reached) >= 2 and (target is None or target in reached)):
                break
            index = torch.tensor(active, device=device)
            delta = perturbation[index].clone().requires_grad_(True)
            images = probes[index].flatten(0, 1)
            if family == "additive":
                moved = (images.view(len(active), k, *shape) + delta.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
            else:
                moved = warp_images(images, delta.repeat_interleave(k, 0))
            labels = index.repeat_interleave(k)
            logits = model(moved)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            grad, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                hits = (logits.argmax(1) == labels).double().view(len(active), k).mean(1).cpu()
                ball = (radius[index.cpu()] * base).to(device).view(-1, *[1] * len(shape))
                norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(ball)
                step = delta - 0.25 * ball * grad / norms
                size = step.flatten(1).norm(dim=1).view_as(ball).clamp_min(1e-12)
                perturbation[index] = step * torch.clamp(ball / size, max=1.0)
                last = float(radius[index.cpu()].max())
                still = []
                for j, c in enumerate(active):
                    if float(hits[j]) >= p.rate:
                        radii[c] = float(radius[c])
                    else:
                        still.append(c)
                        radius[c] *= p.growth
                active = still
    threshold = p.additive_threshold if family == "additive" else p.warp_threshold
    return FamilyResult(family, radii, perturbation.detach().cpu(), last, threshold)


def detect_backdoor(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, p: UniversalSearchParams,
                    device: torch.device, seed: int, target: int | None = None,
                    progress=None) -> Detection:
    """Both families' searches and the verdict (module docstring). With ``target`` (the target label
    known) the verdict is about that class: the family with the larger gap for it decides."""
    results: dict[str, FamilyResult] = {}
    for i, family in enumerate(p.family_list()):
        results[family] = search_family(model, x, y, num_classes, family, p, device, seed, target)
        if progress is not None:
            progress("universal trigger search", i + 1, len(p.family_list()))
    scored = {name: r.gap(target) / r.threshold for name, r in results.items()}
    family = max(scored, key=lambda name: scored[name])
    chosen = results[family]
    suspect = chosen.smallest() if target is None else target
    score = scored[family]
    return Detection(detected=score > 1.0, target=suspect, family=family, score=score, families=results)

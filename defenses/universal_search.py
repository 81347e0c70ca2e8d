"""Trigger-free backdoor detection by universal perturbation search (docs/method.md, "Unknown
backdoor"): the model and D_U alone say whether a backdoor is there, which class it points at, and
give a stand-in trigger for ``ours-proj``'s edit.

The premise (Neural Cleanse's, Wang et al. 2019 §III; the targeted universal perturbation of
Moosavi-Dezfooli et al. 2017): a backdoor is a shortcut, so its target class is reached from
*every* class with a far smaller universal change of the input than any other class. Two families
of universal change are searched, because a backdoor's trigger need not be additive:

- ``additive``: x ↦ clamp(x + δ_c, 0, 1), one δ_c per class, its size ‖δ_c‖₂ relative to the
  mean ‖x‖₂ of D_U (patches and blended patterns: BadNets, Blend, SIG).
- ``patch``: x ↦ (1 − m_c)·x + m_c·p_c, a mask m_c ∈ [0, 1]^{H×W} and a pattern p_c ∈ [0, 1], its
  size ‖m_c‖₁ in pixels (Neural Cleanse's own trigger model, §IV-A; stamped patches: BadNets, whose
  2-pixel corner the L2 search misses on a third of digits victims, docs/method.md). The mask's
  search is not convex: it runs from ``patch_restarts`` random patterns (each on its own probe
  set), and a class's size is the smallest over its restarts.
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
family's threshold; a backdoor is reported when the largest of the scores exceeds 1, pointing at
the class of ε_(1) in that family. The thresholds come from clean victims of their own seeds only
(``benchmarks/calibrate_detection.py``: the largest clean gap plus one growth step; no backdoored
victim's gap enters them) and are the same on every data set (docs/method.md, "Unknown backdoor").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bdtool.core import interrupts
from bdtool.core.compute.modules import frozen_eval
from bdtool.core.params import param
from bdtool.plugins.builtin.attacks_wanet import WaNet, identity_grid

FAMILIES = ("additive", "warp", "patch")


@dataclass
class UniversalSearchParams:
    """The search's settings (module docstring); defaults chosen in docs/method.md, "Unknown backdoor"."""

    samples_per_class: int = param(16, ge=1)
    """k: images of D_U (of another class) each class's perturbation must move."""
    steps: int = param(40, ge=1)
    """Largest number of projected-gradient steps (each grows the radius by ``growth``)."""
    growth: float = param(1.08, gt=1)
    rate: float = param(0.9, gt=0, le=1)
    """Share of the k images that must reach the class for its radius to count."""
    additive_start: float = param(0.1, gt=0)
    """First radius of the additive search, as a share of the mean ‖x‖₂ of D_U."""
    warp_start: float = param(0.02, gt=0)
    """First RMS control displacement of the warp search (grid units: 1 = half the image)."""
    grid: int = param(4, ge=2)
    """Control grid of the warp (``grid`` × ``grid``)."""
    patch_start: float = param(1.0, gt=0)
    """First mask size of the patch search, in pixels."""
    patch_growth: float = param(1.12, gt=1)
    """Growth of the patch search's size per step (masks are counted in pixels: 1 px of 64 is coarse)."""
    patch_restarts: int = param(8, ge=1)
    """Random patterns the patch search starts from (module docstring)."""
    patch_halving: int = param(4, ge=1)
    """Every this many steps each class keeps the better half of its restarts (by their loss)."""
    additive_threshold: float = param(0.24, gt=0)
    """Gap ln(ε_(2)/ε_(1)) above which the additive search reports a backdoor."""
    warp_threshold: float = param(0.47, gt=0)
    """Gap above which the warp search reports a backdoor."""
    patch_threshold: float = param(0.57, gt=0)
    """Gap above which the patch search reports a backdoor."""
    families: str = "additive+warp+patch"
    """Which families to search, joined by ``+``."""

    def family_list(self) -> list[str]:
        return [f.strip() for f in str(self.families).split("+") if f.strip()]

    def validate(self) -> None:
        unknown = [f for f in self.family_list() if f not in FAMILIES]
        if unknown or not self.family_list():
            raise ValueError(f"families must be some of {', '.join(FAMILIES)} joined by '+', got {self.families!r}")

    def threshold(self, family: str) -> float:
        return {"additive": self.additive_threshold, "warp": self.warp_threshold, "patch": self.patch_threshold}[family]


@dataclass
class FamilyResult:
    """One family's radii (per class; ``math.inf`` = not reached) and perturbations."""

    family: str
    radii: list[float]
    perturbations: Tensor
    """additive: C × ch × H × W deltas; warp: C × 2 × grid × grid control displacements; patch: C ×
    (1 + ch) × H × W, the mask then the pattern."""
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
    if family == "patch":
        return stamp_patch(x, p[:1], p[1:])
    return warp_images(x, p.unsqueeze(0))


def stamp_patch(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """(1 − m)·x + m·p, mask and pattern broadcast over x."""
    return x * (1 - mask) + pattern * mask


def project_mask(mask: Tensor, budget: Tensor, iterations: int = 30) -> Tensor:
    """Each row of ``mask`` (rows × pixels) projected onto {m ∈ [0, 1]^pixels : Σm ≤ budget}: clamp(m − τ,
    0, 1) with the smallest τ ≥ 0 that meets the budget, found by bisection (the Euclidean projection
    onto a box intersected with an L1 half-space)."""
    clipped = mask.clamp(0, 1)
    over = clipped.sum(1) > budget
    if not bool(over.any()):
        return clipped
    low = torch.zeros_like(budget)
    high = mask.max(1).values.clamp_min(0)
    for _ in range(iterations):
        middle = (low + high) / 2
        too_big = (mask - middle[:, None]).clamp(0, 1).sum(1) > budget
        low = torch.where(too_big, middle, low)
        high = torch.where(too_big, high, middle)
    return torch.where(over[:, None], (mask - high[:, None]).clamp(0, 1), clipped)


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


def _start(family: str, x: Tensor, p: UniversalSearchParams) -> tuple[float, float, float, int]:
    """(first radius, growth, base, restarts): the ball's size is radius × base in the parameters' norm."""
    if family == "additive":
        return p.additive_start, p.growth, float(x.flatten(1).norm(dim=1).mean()), 1
    if family == "warp":
        return p.warp_start, p.growth, math.sqrt(2 * p.grid * p.grid), 1  # RMS displacement × base = L2 norm
    return p.patch_start, p.patch_growth, 1.0, p.patch_restarts


def _initial(family: str, rows: int, x: Tensor, p: UniversalSearchParams, seed: int, device: torch.device) -> Tensor:
    """The search's first parameters: no change (additive, warp); an empty mask over a random pattern (patch)."""
    if family == "additive":
        return torch.zeros(rows, *x.shape[1:], device=device)
    if family == "warp":
        return torch.zeros(rows, 2, p.grid, p.grid, device=device)
    pattern = torch.rand(rows, *x.shape[1:], generator=torch.Generator().manual_seed(seed)).to(device)
    return torch.cat([torch.zeros(rows, 1, *x.shape[2:], device=device), pattern], dim=1)


def _moved(family: str, images: Tensor, theta: Tensor) -> Tensor:
    """rows × k images, each row's own perturbation applied, flattened to (rows·k) images."""
    rows, k = images.shape[:2]
    if family == "additive":
        return (images + theta.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
    if family == "patch":
        return stamp_patch(images, theta[:, None, :1], theta[:, None, 1:]).flatten(0, 1)
    return warp_images(images.flatten(0, 1), theta.repeat_interleave(k, 0))


def _step(family: str, theta: Tensor, grad: Tensor, ball: Tensor) -> Tensor:
    """One projected step toward the class, inside each row's ball (size ``ball``, one per row)."""
    if family == "patch":  # the mask: a step of 1/2 on its steepest pixel, then the L1 box projection
        mask, pattern = theta[:, :1].flatten(1), theta[:, 1:]
        g_mask, g_pattern = grad[:, :1].flatten(1), grad[:, 1:]
        mask = mask - 0.5 * g_mask / g_mask.abs().max(1, keepdim=True).values.clamp_min(1e-12)
        mask = project_mask(mask, ball)
        pattern = (pattern - 0.25 * g_pattern.sign()).clamp(0, 1)
        return torch.cat([mask.view_as(theta[:, :1]), pattern], dim=1)
    ball = ball.view(-1, *[1] * (theta.dim() - 1))  # additive, warp: a normalised gradient step in the L2 ball
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(ball)
    step = theta - 0.25 * ball * grad / norms
    size = step.flatten(1).norm(dim=1).view_as(ball).clamp_min(1e-12)
    return step * torch.clamp(ball / size, max=1.0)


def search_family(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, family: str,
                  p: UniversalSearchParams, device: torch.device, seed: int, target: int | None = None) -> FamilyResult:
    """The growing-radius search (module docstring) for one family; the model is not changed. Every
    restart of every class is one row of the batch; a class's rows leave it once one of them reaches
    the class. It stops once the verdict is settled: two classes reached (``target`` None), or
    ``target`` and one other class; the classes not reached keep radius ``math.inf``."""
    start, growth, base, restarts = _start(family, x, p)
    probes = torch.cat([x[_probe_sets(y, num_classes, p.samples_per_class, seed + r)] for r in range(restarts)])
    probes = probes.to(device)  # (restarts·C) × k × ch × H × W; row i moves toward class i % C
    rows, k = probes.shape[:2]
    theta = _initial(family, rows, x, p, seed, device)
    radius = torch.full((num_classes,), start)
    radii = [math.inf] * num_classes
    active = list(range(num_classes))
    alive = {c: list(range(restarts)) for c in range(num_classes)}  # each class's restarts still searched
    last = start
    with frozen_eval(model):
        for step in range(p.steps):
            interrupts.check()
            reached = [c for c in range(num_classes) if math.isfinite(radii[c])]
            if not active or (len(reached) >= 2 and (target is None or target in reached)):
                break
            index = torch.tensor([c + r * num_classes for c in active for r in alive[c]], device=device)
            classes = index % num_classes
            current = theta[index].clone().requires_grad_(True)
            logits = model(_moved(family, probes[index], current))
            labels = classes.repeat_interleave(k)
            losses = F.cross_entropy(logits, labels, reduction="none").view(len(index), k).sum(1)
            grad, = torch.autograd.grad(losses.sum(), current)
            with torch.no_grad():
                hits = (logits.argmax(1) == labels).double().view(len(index), k).mean(1).cpu()
                ball = (radius[classes.cpu()] * base).to(device)
                theta[index] = _step(family, current.detach(), grad, ball)
                last = float(radius[active].max())
                hit = {int(c) for c, h in zip(classes.cpu(), hits) if float(h) >= p.rate}
                for c in active:
                    if c in hit:
                        radii[c] = float(radius[c])
                    else:
                        radius[c] *= growth
                active = [c for c in active if c not in hit]
                if (step + 1) % p.patch_halving == 0:  # successive halving: keep each class's better restarts
                    loss_of = {int(i): float(v) for i, v in zip(index.cpu(), losses.detach().cpu())}
                    for c in active:
                        ranked = sorted(alive[c], key=lambda r: loss_of[c + r * num_classes])
                        alive[c] = ranked[:max(1, (len(ranked) + 1) // 2)]
    perturbations = theta.detach().cpu().view(restarts, num_classes, *theta.shape[1:])
    # each class's perturbation: that of its restart (still searched) that moves the most probes to it
    best = torch.zeros(num_classes, dtype=torch.long)
    with frozen_eval(model), torch.no_grad():
        for c in range(num_classes):
            if len(alive[c]) > 1:
                rows_c = torch.tensor([c + r * num_classes for r in alive[c]])
                images = _moved(family, probes[rows_c.to(device)], perturbations[alive[c], c].to(device))
                rates = (model(images).argmax(1) == c).double().view(len(alive[c]), k).mean(1)
                best[c] = alive[c][int(rates.argmax())]
            else:
                best[c] = alive[c][0]
    chosen = perturbations[best, torch.arange(num_classes)]
    return FamilyResult(family, radii, chosen, last, p.threshold(family))


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

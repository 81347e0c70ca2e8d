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
3. The directions are measured against the clean spread: with Σ_γ the clean D_U's covariance
   shrunk toward its scaled identity (``shrinkage`` γ; with n < d, Σ alone is singular), the
   top-r right singular vectors V (d × r) of the whitened difference D·Σ_γ^{-1/2} are the
   directions in which the trigger moves the features most *relative to how clean inputs vary*.
   γ = 1 (no whitening) is the first release's plain SVD of D.
4. The edit W ← W·(I − s·A), A = Σ_γ^{1/2}·V·Vᵀ·Σ_γ^{-1/2}, takes the directions Σ_γ^{1/2}·V out
   of what the layer sees (s = 1) or shrinks them (s < 1). A is a projection (A² = A), oblique
   unless γ = 1, where it is V·Vᵀ; the edit is a multiplication of W by a matrix (the paper's
   diagonal per-unit factors generalised), and ``b ← b + s·W·A·μ`` (μ the clean D_U's mean
   input) puts the clean mean back into the removed directions, so clean inputs keep, on
   average, what those directions carried.
5. The rank r (``rank=auto``; the issue's "until the stamped D_U no longer goes to the
   target"): the smallest r ≤ ``max_rank`` for which at most ``tolerance`` of the stamped
   non-target D_U is still classified as the target (else the r with the lowest such share).
   With ``scale=search`` the strength s is searched the same way on the grid 1/steps, …, 1 (the
   smallest s for the smallest r); the default is s = 1. All candidates are scored in one extra
   forward pass of the stamped D_U: a hook on the edited layer returns its output for every
   (r, s) at once (the output is linear in s), so the layers after it see R·K·n rows.

Where the trigger comes from (the row's threat model, docs/method.md "Class-preserving edit"):

- ``trigger``: the attack stamps D_U.
- ``target`` (the target label only): Neural Cleanse's trigger search (``defenses/nc.py``, Wang et
  al. 2019 §IV-C) for that one class gives a mask and pattern; D_U stamped with it stands in for
  the real stamp.
- ``none``: the search runs for every class and NC's MAD test (anomaly index > 2) names the
  target; when no class is flagged the model is returned unchanged (``unflagged=keep``, NC's own
  rule) or the smallest-norm class is used (``unflagged=smallest``).

Cost: three forward passes over D_U and two thin SVDs of n × d matrices with the trigger (measured
against one forward pass in ``benchmarks/bench_activation_editing.py``); the trigger search, when
the trigger is unknown, is gradient descent on a mask (not on the model) and is logged apart as
``ours-proj.search_seconds``.
"""

from __future__ import annotations

import difflib
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn

import bdtool
from bdtool.core.compute.modules import preserve_modes
from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import Defense, DefenseContext, DetectionReport
from bdtool.core.params import param
from bdtool.defenses._trigger import stamp
from bdtool.defenses.nc import NeuralCleanseParams, mad_outliers, reverse_triggers
from bdtool.defenses.universal_search import FAMILIES, UniversalSearchParams, apply_perturbation, detect_backdoor


@dataclass
class SubspaceEditParams:
    """Parameters of ``ours-proj``; defaults chosen in docs/method.md, "Class-preserving edit"."""

    layer: str = "auto"
    """The Linear layer whose input is edited: ``auto`` = the first Linear in module order (the
    head's input, after the convolutional features), or a module name from ``named_modules()``."""
    rank: int | Literal["auto"] = param("auto", ge=0)
    """The trigger subspace's rank r (1 ≤ r ≤ min(n, d)); 0 = chosen by ``energy``; ``auto`` = the
    smallest r ≤ ``max_rank`` at which the stamped D_U no longer goes to the target (module
    docstring, step 5), found in one forward pass. One direction sufficed on digits but not on
    Fashion-MNIST Blend (whitened, s = 1: ASR 27–30 % at r = 1, 3.7–6.1 % at r = 2;
    docs/method.md, "Class-preserving edit")."""
    max_rank: int = param(8, ge=1)
    """With ``rank=auto``: the largest rank tried (capped at min(n, d))."""
    shrinkage: float = param(0.05, gt=0, le=1)
    """How the trigger's directions are measured (module docstring, step 3): against the clean D_U's
    covariance Σ shrunk toward its scaled identity, Σ_γ = (1 − γ)·Σ + γ·(tr Σ / d)·I. γ = 1 is the
    first release's orthogonal projection (no whitening); smaller γ removes the directions in which
    the trigger moves the features most *relative to the clean spread*, so the clean variation in
    them survives (Fashion-MNIST Blend, r = 2, s = 1: ASR 25–31 → 3.7–6.1 %, ACC 88–89 → 92 %;
    docs/method.md)."""
    energy: float = param(0.9, gt=0, le=1)
    """With ``rank=0``: the smallest r whose squared singular values hold this share of ‖D‖²
    (0 < energy ≤ 1)."""
    restore_mean: bool = True
    """Put the clean D_U's mean back into the removed directions (through the bias); false
    projects them to zero."""
    scale: str = "auto"
    """The edit's strength s in W·(I − s·A): a number in (0, 1] fixes it (1 = remove the
    directions entirely); ``search`` = the smallest s on the grid at which the stamped D_U no
    longer goes to the target (module docstring, step 5); ``auto`` = 1. With the whitening
    (``shrinkage`` < 1) the full edit kept ACC and CTCA on every victim measured and the search's
    smaller s only let more of the backdoor through (Fashion-MNIST Blend: ASR 8.3 % at the
    searched s = 0.95, 4.5 % at s = 1; docs/method.md); the search was the default when the edit
    was an orthogonal projection, where s = 1 cost a quarter of the target class."""
    scale_steps: int = param(20, ge=1)
    """With the search: the grid 1/steps, 2/steps, …, 1."""
    tolerance: float = param(0.0, ge=0, lt=1)
    """With the search: the share of the stamped non-target D_U allowed to still go to the target."""
    search: Literal["universal", "nc"] = "universal"
    """Without the trigger, where the stand-in trigger comes from: ``universal`` = the universal
    perturbation search (``defenses/universal_search.py``: additive and warp, every class at once,
    its own detection); ``nc`` = Neural Cleanse's mask search and MAD test (the previous release;
    docs/method.md, "Unknown backdoor", compares them)."""
    stand_in: Literal["all", "best"] = "all"
    """With ``search=universal``: the stand-in trigger the edit shrinks: ``all`` = the perturbation
    toward the suspected class of every family that reached it, ``best`` = only the deciding
    family's (docs/method.md, "Unknown backdoor")."""
    search_steps: int = param(40, ge=1)
    """With ``search=universal``: the search's largest number of steps (``UniversalSearchParams.steps``)."""
    search_epochs: int = param(80, ge=1)
    """With ``search=nc``: epochs of Neural Cleanse's trigger search per class (``nc``'s
    ``reverse_epochs``; its other search settings are NC's defaults)."""
    unflagged: Literal["keep", "smallest"] = "keep"
    """Under ``none``, when NC's MAD test flags no class: ``keep`` the model unchanged (NC's rule)
    or edit with the smallest-norm class's trigger."""
    batch_size: int = param(1024, ge=1)
    """Forward-pass batch size (memory only)."""

    def scale_value(self) -> float | None:
        """The fixed strength s (``auto`` = 1), or None for the search."""
        text = str(self.scale).strip().lower()
        if text == "auto":
            return 1.0
        return None if text == "search" else float(text)

    def validate(self) -> None:
        try:
            fixed = self.scale_value()
        except ValueError:
            raise ValueError(f"scale must be auto, search or a number in (0, 1], got {self.scale!r}") from None
        if fixed is not None and not 0.0 < fixed <= 1.0:
            raise ValueError(f"scale must be auto, search or a number in (0, 1], got {self.scale!r}")
        if self.search not in ("universal", "nc"):
            raise ValueError(f"search must be universal or nc, got {self.search!r}")
        if self.stand_in not in ("all", "best"):
            raise ValueError(f"stand_in must be all or best, got {self.stand_in!r}")
        if not str(self.layer).strip():
            raise ValueError("layer must be 'auto' or a Linear module's name")


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


@dataclass
class Whitening:
    """Σ_γ = (1 − γ)·Σ + γ·(tr Σ / d)·I for the clean D_U's layer inputs (module docstring, step 3),
    kept in low-rank form: eigenvalues ``values`` along the rows of ``basis`` (k × d, Σ's
    eigenvectors with a non-zero eigenvalue, k ≤ n − 1) and ``floor`` on the rest of the space."""

    basis: Tensor
    values: Tensor
    floor: float

    def times(self, m: Tensor, exponent: float) -> Tensor:
        """m·Σ_γ^exponent for m (… × d), without forming a d × d matrix."""
        scaled = self.floor ** exponent * m
        if not len(self.basis):
            return scaled
        return scaled + ((m @ self.basis.T) * (self.values.pow(exponent) - self.floor ** exponent)) @ self.basis

    def matrix(self, exponent: float) -> Tensor:
        """Σ_γ^exponent (d × d)."""
        d = self.basis.shape[1]
        return self.times(torch.eye(d, dtype=self.basis.dtype, device=self.basis.device), exponent)


def clean_whitening(clean: Tensor, shrinkage: float) -> Whitening:
    """Σ_γ for the clean D_U's layer inputs ``clean`` (n × d), Σ their covariance. γ = 1 gives a
    multiple of I (no whitening); with fewer samples than dimensions Σ is singular, and γ > 0 keeps
    Σ_γ invertible. From the thin SVD of the centred inputs, not a d × d eigendecomposition; an
    input without any spread gives Σ_γ = I."""
    n, d = clean.shape
    none = Whitening(clean.new_zeros(0, d), clean.new_zeros(0), 1.0)
    if n < 2:
        return none
    _, singular, vh = torch.linalg.svd(clean - clean.mean(0), full_matrices=False)
    spread = singular.square() / (n - 1)  # Σ's eigenvalues along the rows of vh
    level = float(spread.sum()) / d
    if not level > 0.0:  # every clean input the same: no spread to measure against
        return none
    floor = shrinkage * level
    return Whitening(vh, (1.0 - shrinkage) * spread + floor, floor)


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


def edit_directions(basis: Tensor, whitening: Whitening) -> tuple[Tensor, Tensor]:
    """(Σ_γ^{1/2}·V, Vᵀ·Σ_γ^{-1/2}): d × r and r × d; ``rank_operator`` makes an edit of them."""
    return whitening.times(basis.T, 0.5).T, whitening.times(basis.T, -0.5)


def rank_operator(left: Tensor, right: Tensor, rank: int) -> Tensor:
    """The rank-``rank`` edit's operator: the first ``rank`` columns of ``left`` times the first
    ``rank`` rows of ``right`` (``edit_directions``)."""
    return left[:, :rank] @ right[:rank]


def removal_operator(basis: Tensor, whitening: Whitening) -> Tensor:
    """A = Σ_γ^{1/2}·V·Vᵀ·Σ_γ^{-1/2} (d × d): the projection that takes out the directions
    Σ_γ^{1/2}·V (V found in the whitened space) and keeps the rest; with Σ_γ = c·I it is the
    orthogonal projection V·Vᵀ."""
    return rank_operator(*edit_directions(basis, whitening), basis.shape[1])


def edit_delta(layer: nn.Linear, operator: Tensor) -> Tensor:
    """W·A (out × d, float64): what the full edit takes out of the weights."""
    return layer.weight.double() @ operator


@torch.no_grad()
def project_out(layer: nn.Linear, operator: Tensor, clean_mean: Tensor | None, scale: float = 1.0) -> None:
    """W ← W·(I − s·A) and, with ``clean_mean`` μ, b ← b + s·W·A·μ (in place; float64 maths)."""
    removed = scale * edit_delta(layer, operator)
    if clean_mean is not None:
        shift = removed @ clean_mean
        if layer.bias is None:
            raise DefenseInputError("ours-proj: the edited Linear layer has no bias to restore the clean mean "
                                    "into; use restore_mean=false")
        layer.bias.add_(shift.to(layer.bias.dtype))
    layer.weight.copy_((layer.weight.double() - removed).to(layer.weight.dtype))


@torch.no_grad()
def predictions_per_edit(model: nn.Module, layer: nn.Linear, x: Tensor, left: Tensor, right: Tensor,
                         ranks: list[int], clean_mean: Tensor | None, scales: list[float], device: torch.device,
                         batch_size: int) -> Tensor:
    """The classes (R × K × len(x), on the CPU) the model edited at each rank of ``ranks`` (R;
    ``rank_operator``) and each strength s of
    ``scales`` (K) predicts for ``x`` — in one forward pass: a hook returns the layer's output for
    all R·K edits, stacked (R·K·b rows), which the per-sample layers after it carry through (the
    output is linear in s, and the rank-r change is a sum of r rank-one terms). A model whose later
    layers are not per-sample (the rows do not come back as R·K·b) is scored with one pass per edit."""
    weighted = layer.weight.double() @ left  # out × r_max: W·Σ^{1/2}·V
    picks = torch.tensor([r - 1 for r in ranks], device=weighted.device)
    r, k = len(ranks), len(scales)
    factors = torch.tensor(scales, dtype=torch.float64, device=weighted.device).view(1, k, 1, 1)

    def fork(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        a = inputs[0].double().flatten(1)
        moved = a - clean_mean if clean_mean is not None else a
        coords = moved @ right.T  # b × r_max
        terms = torch.einsum("bi,oi->ibo", coords, weighted)  # one rank-one term per direction
        change = terms.cumsum(0).index_select(0, picks)  # R × b × out: what s = 1 takes away, per rank
        edited = output.double().view(1, 1, *output.shape) - factors * change.unsqueeze(1)
        return edited.flatten(0, 2).to(output.dtype)

    chunks: list[Tensor] = []
    with preserve_modes(model):
        model.eval()
        handle = layer.register_forward_hook(fork)
        try:
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size].to(device, non_blocking=True)
                logits = model(xb)
                if logits.shape[0] != r * k * len(xb):
                    chunks = []
                    break
                chunks.append(logits.view(r, k, len(xb), -1).argmax(-1).cpu())
        finally:
            handle.remove()
        if chunks:
            return torch.cat(chunks, dim=2)
        original = (layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone())
        per_edit = []
        for rank in ranks:
            op = rank_operator(left, right, rank)
            for s in scales:
                project_out(layer, op, clean_mean, s)
                per_edit.append(torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu()
                                           for i in range(0, len(x), batch_size)]))
                layer.weight.copy_(original[0])
                if original[1] is not None:
                    layer.bias.copy_(original[1])
        return torch.stack(per_edit).view(r, k, len(x))


def chosen_edit(rates: Tensor, scales: list[float], tolerance: float) -> tuple[int, float, bool]:
    """From ``rates`` (R × K: the share of the stamped D_U still going to the target per candidate
    rank and strength), the smallest rank, then the smallest strength, within ``tolerance``:
    (rank index, strength, True). If no edit is: the rank with the lowest rate at the last (largest)
    strength, the smaller on a tie, and (index, that strength, False)."""
    for i in range(rates.shape[0]):
        for j, s in enumerate(scales):
            if float(rates[i, j]) <= tolerance + 1e-12:
                return i, s, True
    last = rates[:, -1]
    return int((last == last.min()).nonzero()[0]), scales[-1], False


@dataclass
class TriggerSource:
    """What stands in for the trigger: the stamped D_U and the target, and how they were found."""

    stamped: Tensor
    target: int
    source: str
    """``attack`` (the trigger was given), ``universal`` (the universal perturbation search) or
    ``reversed`` (Neural Cleanse's search)."""
    rows: Tensor | None = None
    """Which image of D_U each stamped image is (None: the i-th); several stand-ins stamp D_U once each."""

    def base(self, n: int) -> Tensor:
        return torch.arange(n) if self.rows is None else self.rows


def universal_trigger_source(model: nn.Module, ctx: DefenseContext, p: SubspaceEditParams) -> TriggerSource | None:
    """The universal perturbation search (``defenses/universal_search.py``): for the known target,
    or its own detection under ``none``. None = nothing detected and ``unflagged=keep``."""
    params = UniversalSearchParams(steps=p.search_steps)
    detection = detect_backdoor(model, ctx.unlearn.x, ctx.unlearn.y, ctx.num_classes, params, ctx.device, ctx.seed,
                                target=ctx.target_class, progress=ctx.progress)
    ctx.log_metric("ours-proj.detected", float(detection.detected), None)
    ctx.log_metric("ours-proj.detected_class", float(detection.target if detection.detected else -1), None)
    ctx.log_metric("ours-proj.suspected_class", float(detection.target), None)
    ctx.log_metric("ours-proj.detection_score", detection.score, None)
    ctx.log_metric("ours-proj.detection_threshold", detection.threshold, None)
    ctx.log_metric("ours-proj.detection_family", float(FAMILIES.index(detection.family)), None)
    for name, result in detection.families.items():
        ctx.log_metric(f"ours-proj.{name}_gap", result.gap(ctx.target_class), None)
    if ctx.target_class is None:  # a verdict only where the defense had to decide whether there is a backdoor
        ctx.report_detection(DetectionReport(detection.detected, detection.target, detection.score, detection.threshold))
    if ctx.target_class is None and not detection.detected and p.unflagged == "keep":
        return None
    x = ctx.unlearn.x
    if p.stand_in == "best":
        families = [detection.family]
    else:  # every family that reached the suspected class: the edit shrinks what each of them found
        families = [name for name, r in detection.families.items() if math.isfinite(r.radii[detection.target])]
    ctx.log_metric("ours-proj.stand_in_families", float(len(families)), None)
    stamped = torch.cat([apply_perturbation(name, detection.families[name].perturbations[detection.target], x)
                         for name in families])
    return TriggerSource(stamped=stamped, target=detection.target, source="universal",
                         rows=torch.arange(len(x)).repeat(len(families)))


def reversed_trigger_source(model: nn.Module, ctx: DefenseContext, p: SubspaceEditParams) -> TriggerSource | None:
    """Neural Cleanse's trigger search (module docstring): for the known target, or for every class
    and its MAD test under ``none``. None = no class flagged and ``unflagged=keep``."""
    params = NeuralCleanseParams(reverse_epochs=p.search_epochs)
    classes = [ctx.target_class] if ctx.target_class is not None else list(range(ctx.num_classes))
    triggers = reverse_triggers(model, ctx, classes, params, "ours-proj trigger search")
    if ctx.target_class is not None:
        chosen = triggers[0]
    else:
        detection = mad_outliers([t.l1 for t in triggers], params.anomaly_threshold)
        smallest = detection.smallest
        ctx.log_metric("ours-proj.detected_class", float(detection.detected if detection.detected is not None else -1), None)
        ctx.log_metric("ours-proj.anomaly_index", detection.anomaly_index[smallest], None)
        ctx.report_detection(detection.report(params.anomaly_threshold))
        if detection.detected is None and p.unflagged == "keep":
            return None
        chosen = triggers[detection.detected if detection.detected is not None else smallest]
    ctx.log_metric("ours-proj.trigger_l1", chosen.l1, None)
    ctx.log_metric("ours-proj.trigger_success", chosen.success, None)
    return TriggerSource(stamped=chosen.stamp(ctx.unlearn.x).clamp(0, 1), target=chosen.target, source="reversed")


class SubspaceEditing(Defense):
    """Shrink the trigger's activation subspace in one Linear layer's input; the trigger is given or
    reverse-engineered (Neural Cleanse's search) when only the target label, or nothing, is known."""

    name = "ours-proj"
    label = "Ours-proj"
    description = ("class-preserving activation-guided edit: shrink the trigger's activation subspace in the "
                   "head's input (the trigger given, or reverse-engineered without it)")
    requires_trigger = False
    accepts_trigger = True
    uses_attack_target = True  # the attack's target class, with the trigger: not on an all-to-all backdoor
    accepts_target_label = True
    Params = SubspaceEditParams
    default_rows = ("ours-proj", "ours-proj:knowledge=target", "ours-proj:knowledge=none")
    row_order = 1

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        p: SubspaceEditParams = self.params
        _, layer = edited_linear(model, str(p.layer).strip())
        x = ctx.unlearn.x
        if ctx.attack is not None:
            source: TriggerSource | None = TriggerSource(stamp(ctx.attack, x, self.name), ctx.attack.target_class, "attack")
        else:
            started = time.perf_counter()
            find = universal_trigger_source if p.search == "universal" else reversed_trigger_source
            source = find(model, ctx, p)
            ctx.log_metric("ours-proj.search_seconds", time.perf_counter() - started, None)
        if source is None:  # nothing flagged under `none`, unflagged=keep: no backdoor found, no edit
            ctx.log_metric("ours-proj.scale", 0.0, None)
            return model.eval()
        clean = layer_inputs(model, layer, x, ctx.device, p.batch_size)
        stamped = layer_inputs(model, layer, source.stamped, ctx.device, p.batch_size)
        rows = source.base(len(x))
        whitening = clean_whitening(clean, p.shrinkage)
        whitened = whitening.times(stamped - clean[rows.to(clean.device)], -0.5)
        if p.rank == "auto":
            top = min(p.max_rank, *whitened.shape)
            basis = trigger_subspace(whitened, p.energy, top)
            ranks = list(range(1, top + 1))
        else:
            basis = trigger_subspace(whitened, p.energy, p.rank)
            ranks = [basis.shape[1]]
        left, right = edit_directions(basis, whitening)
        mean = clean.mean(0) if p.restore_mean else None
        fixed = p.scale_value()
        scales = [(i + 1) / p.scale_steps for i in range(p.scale_steps)] if fixed is None else [fixed]
        chosen, scale = 0, scales[0]
        if len(ranks) > 1 or len(scales) > 1:
            others = ctx.unlearn.y.cpu()[rows] != source.target
            probe = source.stamped[others] if bool(others.any()) else source.stamped
            predicted = predictions_per_edit(model, layer, probe, left, right, ranks, mean, scales, ctx.device,
                                             p.batch_size)
            rates = (predicted == source.target).double().mean(2)
            chosen, scale, reached = chosen_edit(rates, scales, p.tolerance)
            ctx.log_metric("ours-proj.scale_reached", float(reached), None)
            ctx.log_metric("ours-proj.stamped_target_rate", float(rates[chosen, scales.index(scale)]), None)
        rank = ranks[chosen]
        project_out(layer, rank_operator(left, right, rank), mean, scale)
        ctx.log_metric("ours-proj.scale", scale, None)
        ctx.log_metric("ours-proj.target_class", float(source.target), None)
        ctx.log_metric("ours-proj.rank", float(rank), None)
        ctx.log_metric("ours-proj.input_dim", float(basis.shape[0]), None)
        return model.eval()


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(SubspaceEditing)

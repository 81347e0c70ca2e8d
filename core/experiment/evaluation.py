"""Evaluation and the Score (docs/architecture.md, "Metrics"; README "Metrics").

- ACC: clean accuracy on the evaluation half; CTCA: clean accuracy on its target-class images.
- ASR: share of non-target evaluation images, stamped with the trigger, classified as the target;
  for an all-to-all backdoor (``ALL_TO_ALL``), of every stamped image of class y classified as
  (y + 1) mod K, also per source class (``extra["asr_class_<y>"]``), and no CTCA (NaN).
- Per-class and minimum class accuracy (the supplement notes its Score misses a lost class, §B.1).
- Score = 100 · (ACC_after / ACC_before) · max(0, 1 − ASR_after / ASR_before) — reconstructed; it
  fits the supplement's Table 7 rows within about half a point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from bdtool.core.compute.modules import preserve_modes
from bdtool.core.interfaces import Attack, MetricProbe
from bdtool.core.results import EvalResult
from bdtool.core.tensors import LabeledTensors

if TYPE_CHECKING:
    from bdtool.core.compute.training import TrainConfig
    from bdtool.core.experiment.splits import ExperimentData


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    preds = []
    with preserve_modes(model):
        model.eval()
        for start in range(0, len(x), batch_size):
            preds.append(model(x[start : start + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: LabeledTensors, device: torch.device) -> float:
    """Clean accuracy of ``model`` on ``data`` (e.g. D_U), in eval mode; the model's train/eval
    modes are left as they were."""
    if len(data) == 0:
        return float("nan")
    return float((predict(model, data.x, device) == data.y.cpu()).float().mean())


def evaluate(model: nn.Module, data: LabeledTensors, attack: Attack | None, num_classes: int,
             device: torch.device, target: int | None = None) -> EvalResult:
    """ACC, CTCA, per-class accuracy and ASR of ``model`` on ``data`` (the evaluation half, or
    ``bdtool defend``'s held-out part). Without an ``attack`` (defend given no trigger) ASR is NaN
    and CTCA is that of ``target`` (NaN when None too): the one evaluation of both pipelines."""
    y = data.y.cpu()
    clean_pred = predict(model, data.x, device)
    correct = clean_pred == y
    per_class = []
    for c in range(num_classes):
        members = y == c
        per_class.append(float(correct[members].float().mean()) if members.any() else float("nan"))
    if attack is not None and attack.all_to_all:
        return _all_to_all_result(model, data, attack, num_classes, device, correct, per_class)
    asr = float("nan")
    if attack is not None:
        target = attack.target_class
        non_target = y != target
        if non_target.any():
            stamped = attack.apply(data.x[non_target])
            asr = float((predict(model, stamped, device) == target).float().mean())
    if target is None:
        target = -1
    return EvalResult(
        acc=float(correct.float().mean()),
        asr=asr,
        ctca=per_class[target] if 0 <= target < num_classes else float("nan"),
        per_class_acc=per_class,
        n_eval=len(y),
        target_class=target,
    )


def _all_to_all_result(model: nn.Module, data: LabeledTensors, attack: Attack, num_classes: int,
                       device: torch.device, correct: torch.Tensor, per_class: list[float]) -> EvalResult:
    """An all-to-all backdoor's evaluation: ASR per source class y (the share of its stamped images
    classified as (y + 1) mod K, in ``extra["asr_class_<y>"]``) and overall (of every stamped image);
    CTCA is NaN: there is no target class."""
    y = data.y.cpu()
    hits = predict(model, attack.apply(data.x), device) == attack.target_labels(y, num_classes)
    extra = {f"asr_class_{c}": float(hits[y == c].float().mean()) for c in range(num_classes) if (y == c).any()}
    return EvalResult(acc=float(correct.float().mean()), asr=float(hits.float().mean()) if len(y) else float("nan"),
                      ctca=float("nan"), per_class_acc=per_class, n_eval=len(y), target_class=attack.target_class,
                      extra=extra)


def score(after: EvalResult, before: EvalResult) -> float:
    """The Score of the module docstring (reference = the victim before defense)."""
    if before.acc <= 0 or before.asr <= 0:
        return float("nan")
    return 100.0 * (after.acc / before.acc) * max(0.0, 1.0 - after.asr / before.asr)


def _mlflow_scales(metric_classes: Iterable[Any]) -> dict[str, float]:
    """Metric name -> ``Metric.mlflow_scale`` (registry entries or Metric classes)."""
    classes = [getattr(m, "obj", m) for m in metric_classes]
    return {cls.name: getattr(cls, "mlflow_scale", 1.0) for cls in classes}


def to_mlflow_units(metric_classes: Iterable[Any], values: dict[str, float]) -> dict[str, float]:
    """``values`` (metric name -> value, as computed) in MLflow's units (``Metric.mlflow_scale``);
    keys that are no metric's (times, per-class accuracies) unchanged."""
    scale = _mlflow_scales(metric_classes)
    return {k: v * scale.get(k, 1.0) for k, v in values.items()}


def from_mlflow_units(metric_classes: Iterable[Any], values: dict[str, float]) -> dict[str, float]:
    """The inverse of :func:`to_mlflow_units` (a run's metrics read back, ``--resume``)."""
    scale = _mlflow_scales(metric_classes)
    return {k: v / scale.get(k, 1.0) for k, v in values.items()}


class MetricRangeError(AssertionError):
    """A metric gave a value outside its ``value_range``: a bug, never a result."""


def check_metric_range(metric: Any, value: float, reference: EvalResult | None) -> float:
    """``value`` when NaN or within ``metric.value_range(reference)``, else MetricRangeError (1e-9 of slack
    for float rounding)."""
    bounds = metric.value_range(reference) if hasattr(metric, "value_range") else None
    if bounds is not None and value == value and not bounds[0] - 1e-9 <= value <= bounds[1] + 1e-9:
        raise MetricRangeError(f"{value:g} is outside its range [{bounds[0]:g}, {bounds[1]:g}]: a bug in the metric "
                               "or in what it was given, not a result")
    return value


def metric_probe(data: "ExperimentData", attack: Attack, train_recipe: "TrainConfig | None", seed: int,
                 device: torch.device) -> MetricProbe:
    """The :class:`MetricProbe` of one run: the attack, the unseen pool, the victim's recipe, and
    the evaluation half only behind ``asr``/``acc`` (a metric gets numbers of it, never images)."""
    evaluation = data.evaluation

    def asr(model: nn.Module) -> float:
        return evaluate(model, evaluation, attack, data.num_classes, device).asr

    def acc(model: nn.Module) -> float:
        return accuracy(model, evaluation, device)

    return MetricProbe(attack=attack, pool=data.pool, num_classes=data.num_classes, device=device, seed=seed,
                       asr=asr, acc=acc, train_recipe=train_recipe)


def measure_model_metrics(metrics: Iterable[Any], model: nn.Module, probe: MetricProbe) -> tuple[dict[str, float], list[str]]:
    """``measure`` of every metric of ``metrics`` that ``needs_model``, on the defended ``model``:
    ``(values by name, errors)``; a metric that raises gives NaN and an error message, as in
    :func:`compute_metrics`. The values go into ``EvalResult.extra``, where ``compute`` reads them."""
    values: dict[str, float] = {}
    errors: list[str] = []
    for item in metrics:
        cls = getattr(item, "obj", item)
        if not getattr(cls, "needs_model", False):
            continue
        try:
            values[cls.name] = float(cls().measure(model, probe))
        except Exception as exc:  # noqa: BLE001 - a plugin's metric must not sink the run
            values[cls.name] = float("nan")
            errors.append(f"metric '{cls.name}' failed: {type(exc).__name__}: {exc}")
    return values, errors


def selected_metrics(metric_classes: Iterable[Any], named: Iterable[str]) -> list[Any]:
    """The metrics a comparison computes: every one of ``metric_classes`` but the ``opt_in`` ones
    it does not name (``--metric NAME``)."""
    names = set(named)
    return [m for m in metric_classes if not getattr(getattr(m, "obj", m), "opt_in", False)
            or getattr(m, "obj", m).name in names]


def compute_metrics(metrics: Iterable[Any], result: EvalResult, reference: EvalResult | None,
                    backdoored: bool = True) -> tuple[dict[str, float], list[str]]:
    """Every metric of ``metrics`` (registry entries or Metric classes) on ``result``, relative to
    ``reference`` (the victim). A metric that raises, or needs a reference that is missing, gives
    NaN and an error message instead of failing the run: ``(values, errors)``. On a victim without
    a backdoor (``backdoored`` False) the metrics that measure its removal (``measures_removal``)
    are NaN: there is nothing to remove."""
    values: dict[str, float] = {}
    errors: list[str] = []
    for item in metrics:
        cls = getattr(item, "obj", item)
        if (cls.relative and reference is None) or (getattr(cls, "measures_removal", False) and not backdoored):
            values[cls.name] = float("nan")
            continue
        try:
            metric = cls()
            values[cls.name] = check_metric_range(metric, float(metric.compute(result, reference)), reference)
        except Exception as exc:  # noqa: BLE001 - a plugin's metric must not sink the run
            values[cls.name] = float("nan")
            errors.append(f"metric '{cls.name}' failed: {type(exc).__name__}: {exc}")
    return values, errors

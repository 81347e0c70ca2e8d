import math

import pytest
import torch
from torch import nn

from bdtool.plugins.builtin.attacks import BadNets, BadNetsParams, Blend, BlendParams
from bdtool.core.experiment.evaluation import evaluate, score
from bdtool.core.results import EvalResult
from bdtool.core.tensors import LabeledTensors


def test_badnets_stamps_only_the_patch():
    x = torch.zeros(2, 1, 8, 8)
    out = BadNets(0, BadNetsParams(size=2)).apply(x)
    assert out[:, :, 6:, 6:].eq(1).all()
    assert out.sum() == 2 * 4
    assert x.sum() == 0  # input not modified


def test_badnets_checkerboard_top_left_with_margin():
    x = torch.full((1, 3, 10, 10), 0.5)
    out = BadNets(0, BadNetsParams(size=3, position="top-left", margin=1, pattern="checkerboard")).apply(x)
    patch = out[0, 0, 1:4, 1:4]
    assert set(patch.flatten().tolist()) == {0.0, 1.0}
    assert out[0, :, 0, :].eq(0.5).all() and out[0, :, 5:, :].eq(0.5).all()


def test_blend_is_fixed_and_seeded():
    x = torch.zeros(3, 1, 8, 8)
    a = Blend(1, BlendParams(alpha=0.5, pattern_seed=7)).apply(x)
    b = Blend(1, BlendParams(alpha=0.5, pattern_seed=7)).apply(torch.zeros(1, 1, 8, 8))
    assert torch.equal(a[0], a[2]) and torch.equal(a[0], b[0])
    assert a.max() <= 0.5 and a.min() >= 0


class FixedPredictor(nn.Module):
    """Predicts the label stored in pixel (0,0); triggered images (bottom-right pixel = 1) -> class 0."""

    def forward(self, x):
        labels = (x[:, 0, 0, 0] * 10).round().long()
        labels = torch.where(x[:, 0, -1, -1] == 1, torch.zeros_like(labels), labels)
        return nn.functional.one_hot(labels, 3).float()


def test_metrics_on_a_hand_made_case():
    # 6 images: labels 0,0,1,1,2,2; the model predicts 0,1,1,1,2,0 on clean images.
    preds = [0, 1, 1, 1, 2, 0]
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.zeros(6, 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.float) / 10
    attack = BadNets(0, BadNetsParams(size=1))
    # Non-target images are 4; half of the trigger applications hit the target only where the
    # bottom-right pixel becomes 1 -- always with BadNets, so ASR = 1.
    result = evaluate(FixedPredictor(), LabeledTensors(x, y), attack, 3, torch.device("cpu"))
    assert result.acc == pytest.approx(4 / 6)
    assert result.per_class_acc == pytest.approx([0.5, 1.0, 0.5])
    assert result.ctca == pytest.approx(0.5)
    assert result.min_class_acc == pytest.approx(0.5)
    assert result.asr == pytest.approx(1.0)


def result(acc: float, asr: float) -> EvalResult:
    return EvalResult(acc=acc, asr=asr, ctca=0.5, per_class_acc=[0.5], n_eval=1, target_class=0)


VICTIM = result(acc=0.8, asr=0.9)


def test_score_is_100_for_a_perfect_defense():
    assert score(result(acc=0.8, asr=0.0), VICTIM) == pytest.approx(100.0)


def test_score_is_0_when_the_asr_does_not_drop():
    assert score(result(acc=0.8, asr=0.9), VICTIM) == 0.0
    assert score(result(acc=0.95, asr=0.9), VICTIM) == 0.0  # a better ACC does not help


def test_score_clamps_at_0_when_the_asr_rises():
    assert score(result(acc=0.8, asr=1.0), VICTIM) == 0.0
    assert score(result(acc=0.5, asr=0.99), VICTIM) == 0.0


def test_score_hand_computed_cases():
    # 100 · (0.6 / 0.8) · (1 − 0.45 / 0.9) = 100 · 0.75 · 0.5
    assert score(result(acc=0.6, asr=0.45), VICTIM) == pytest.approx(37.5)
    # 100 · (0.4 / 0.8) · (1 − 0) : the ACC ratio alone
    assert score(result(acc=0.4, asr=0.0), VICTIM) == pytest.approx(50.0)
    # 100 · 1 · (1 − 0.09 / 0.9)
    assert score(result(acc=0.8, asr=0.09), VICTIM) == pytest.approx(90.0)
    # A model that collapsed to one class has no accuracy left: Score 0 whatever its ASR.
    assert score(result(acc=0.0, asr=0.0), VICTIM) == 0.0


def test_score_scales_with_the_acc_ratio():
    base = score(result(acc=0.4, asr=0.3), VICTIM)
    assert base > 0
    for factor in (0.25, 0.5, 1.5, 2.0):
        assert score(result(acc=0.4 * factor, asr=0.3), VICTIM) == pytest.approx(base * factor)
    # Halving the victim's ACC doubles the Score of the same defended model.
    assert score(result(acc=0.4, asr=0.3), result(acc=0.4, asr=0.9)) == pytest.approx(2 * base)


def test_score_falls_as_the_asr_rises():
    values = [score(result(acc=0.7, asr=a), VICTIM) for a in (0.0, 0.1, 0.3, 0.6, 0.9)]
    assert values == sorted(values, reverse=True) and len(set(values)) == len(values)


def test_score_is_nan_without_a_reference_asr_or_acc():
    after = result(acc=0.7, asr=0.0)
    assert math.isnan(score(after, result(acc=0.8, asr=0.0)))
    assert math.isnan(score(after, result(acc=0.0, asr=0.9)))


def test_a_metric_outside_its_range_is_an_error_not_a_result():
    """A value outside ``value_range`` (a fraction above 1, a Score above 100/ACC_before) is caught in
    ``compute_metrics``: NaN (shown "-") and the error, never the number."""
    from bdtool.core.experiment.evaluation import compute_metrics
    from bdtool.core.interfaces import Metric

    class Broken(Metric):
        name = "broken"
        percent = True

        def compute(self, result, reference=None):
            return 1.7

    class Unchecked(Metric):
        name = "unchecked"

        def compute(self, result, reference=None):
            return 1e6

    values, errors = compute_metrics([Broken, Unchecked], result(0.9, 0.0), result(0.9, 1.0))
    assert values["broken"] != values["broken"] and values["unchecked"] == 1e6
    assert errors == ["metric 'broken' failed: MetricRangeError: 1.7 is outside its range [0, 1]: a bug in the "
                      "metric or in what it was given, not a result"]


@pytest.mark.parametrize("before_acc, after_acc", [(0.99, 1.0), (0.5, 1.0), (0.99, 0.99)])
def test_score_range_allows_a_raised_accuracy_and_nothing_beyond(before_acc, after_acc):
    from bdtool.plugins.builtin.metrics import Score, score_range

    before, after = result(before_acc, 1.0), result(after_acc, 0.0)
    value = Score().compute(after, before)
    low, high = score_range(before)
    assert low <= value <= high and high == pytest.approx(100 / before_acc)
    assert score_range(result(0.0, 1.0)) is None

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


def test_score_formula_matches_supplement_rows():
    before = EvalResult(acc=0.7050, asr=0.9453, ctca=0.6, per_class_acc=[0.6], n_eval=1, target_class=0)
    # Table 7, Ours(BDK) n=5: ASR 0, ACC 65.37 -> Score 92.51 (reported), formula gives 92.7.
    after = EvalResult(acc=0.6537, asr=0.0, ctca=0.0, per_class_acc=[0.0], n_eval=1, target_class=0)
    assert score(after, before) == pytest.approx(92.51, abs=0.5)
    # Table 7, actFT n=5000: ASR 5.28, ACC 69.64 -> Score 92.95.
    after = EvalResult(acc=0.6964, asr=0.0528, ctca=0.58, per_class_acc=[0.58], n_eval=1, target_class=0)
    assert score(after, before) == pytest.approx(92.95, abs=0.5)
    # An ASR above the victim's clamps to 0.
    worse = EvalResult(acc=0.7, asr=0.99, ctca=0.6, per_class_acc=[0.6], n_eval=1, target_class=0)
    assert score(worse, before) == 0.0
    assert math.isnan(score(after, EvalResult(0.7, 0.0, 0.6, [0.6], 1, 0)))

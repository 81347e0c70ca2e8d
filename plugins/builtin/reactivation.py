"""Re-activation: does a removed backdoor come back when the defended model is fine-tuned on a
handful of poisoned samples? (The retuning attack of Min et al., "Uncovering, Explaining, and
Mitigating the Superficial Safety of Backdoor Defense", NeurIPS 2024: a superficially purified
model regains its ASR after a few steps on a few poisoned samples, a truly purified one does not.)

The retuning (``retuned_copy``), on a *copy* of the defended model:

- ``k`` samples (5 by default) drawn with the run's seed from the **unseen pool's** non-target
  images (the pool D_U comes from; never the evaluation half, which a ``MetricProbe`` does not
  even hold), stamped with the attack's trigger (``Attack.apply``) and labelled with the target
  ((y + 1) mod K for an all-to-all backdoor), plus ``clean`` (45) other pool images with their own
  labels: a D_U-sized retuning set of 50 with 5 poisoned. Without the clean ones the retuning
  teaches even a clean model to answer the target for everything (measured on digits at the
  victim's rate: ACC 10 %).
- ``steps`` full-batch SGD steps (10) with the victim's optimiser (SGD with its recipe's momentum
  and weight decay, ``DatasetSource.victim_recipe``) at ``LR_FACTOR`` (0.2) of its learning rate,
  constant, BatchNorm frozen (50 images give no usable batch statistics; the running ones are
  kept). k = 0 retunes on the clean samples alone: the baseline of what fine-tuning itself does.

The metrics: ``reactivation`` is the ASR on the evaluation half after the retuning, to be read
beside ``asr`` (after the defense); ``reactivation_acc`` the clean accuracy after it, which says
whether a high re-activated ASR is the backdoor or a model that now answers the target for
everything. Both are opt-in (``--metric reactivation``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bdtool.core.compute.modules import set_batchnorm_mode
from bdtool.core.compute.training import SGDParams, train_loop
from bdtool.core.interfaces import MetricProbe
from bdtool.core.tensors import LabeledTensors

DEFAULT_K = 5
"""Poisoned samples the retuning uses (the issue's k = 5)."""
DEFAULT_STEPS = 10
"""Full-batch SGD steps of the retuning ("a few steps")."""
LR_FACTOR = 0.2
"""The retuning's learning rate as a share of the victim's (0.05 → 0.01, bdtool's fine-tuning rate:
basicFT, the repair); at the victim's own initial rate ten steps on 50 samples wrecked even the
clean digits model (ACC 17–99 % for k = 0 to 10, measured)."""
DEFAULT_CLEAN = 45
"""Clean pool samples beside the poisoned ones (k = 5 of 50, a D_U-sized retuning set with 10 %
poisoned), without which the retuning teaches even a clean model to answer the target for
everything (measured: ACC 10 % after 10 steps on 5 poisoned samples alone)."""


def retuning_set(probe: MetricProbe, k: int, clean: int = DEFAULT_CLEAN) -> LabeledTensors:
    """``k`` non-target images of the unseen pool, stamped with the trigger and labelled with the
    target (all-to-all: any images, each labelled (y + 1) mod K), and ``clean`` other pool images with their own labels, drawn with ``probe.seed``
    (fewer when the pool holds fewer)."""
    pool = probe.pool
    gen = torch.Generator().manual_seed(probe.seed)
    order = torch.randperm(len(pool), generator=gen)
    allowed = torch.zeros(len(pool), dtype=torch.bool)
    allowed[probe.attack.trigger_candidates(pool.y)] = True  # non-target images; every image when all-to-all
    poisoned = order[allowed[order]][:k]
    rest = torch.ones(len(pool), dtype=torch.bool)
    rest[poisoned] = False
    kept = order[rest[order]][:clean]
    x = torch.cat([probe.attack.apply(pool.x[poisoned]), pool.x[kept]])
    y = torch.cat([probe.attack.target_labels(pool.y[poisoned], probe.num_classes), pool.y[kept]])
    return LabeledTensors(x, y)


def retuned_copy(model: nn.Module, probe: MetricProbe, k: int = DEFAULT_K, steps: int = DEFAULT_STEPS,
                 clean: int = DEFAULT_CLEAN) -> nn.Module:
    """A copy of ``model`` fine-tuned on :func:`retuning_set` (module docstring); ``model`` is not
    changed. Cached in ``probe.cache`` per (k, steps), so two metrics of one run retune once."""
    key = ("retuned", id(model), k, steps, clean)
    if key in probe.cache:
        return probe.cache[key]
    work = copy.deepcopy(model).to(probe.device).eval()
    samples = retuning_set(probe, k, clean)
    if len(samples) >= 2 and steps > 0:
        recipe = probe.train_recipe or SGDParams()
        config = SGDParams(epochs=steps, lr=recipe.lr * LR_FACTOR, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           batch_size=len(samples), schedule="constant")
        train_loop(work, samples, config, probe.device, probe.seed,
                   before_step=lambda net: set_batchnorm_mode(net, False), label="re-activation")
    work.eval()
    probe.cache[key] = work
    return work


def reactivated_asr(model: nn.Module, probe: MetricProbe, k: int = DEFAULT_K, steps: int = DEFAULT_STEPS,
                    clean: int = DEFAULT_CLEAN) -> float:
    """The ASR on the evaluation half after retuning a copy of ``model`` on ``k`` poisoned samples."""
    return probe.asr(retuned_copy(model, probe, k, steps, clean))


def reactivated_acc(model: nn.Module, probe: MetricProbe, k: int = DEFAULT_K, steps: int = DEFAULT_STEPS,
                    clean: int = DEFAULT_CLEAN) -> float:
    """The clean accuracy on the evaluation half after the same retuning."""
    return probe.acc(retuned_copy(model, probe, k, steps, clean))

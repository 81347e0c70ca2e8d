"""The one SGD loop (core/compute/training.py), its hyper-parameters (SGDParams) and the
model-inspection helpers (core/compute/modules.py), on tiny synthetic models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from bdtool.core.compute.modules import (
    ForwardCapture,
    check_finite,
    is_batchnorm,
    preserve_modes,
    set_batchnorm_mode,
)
from bdtool.core.compute.training import (
    LoopState,
    SGDParams,
    TrainConfig,
    cross_entropy_loss,
    metric_logger,
    train_loop,
    train_supervised,
)
from bdtool.core.errors import InvalidParameterError
from bdtool.core.params import build_params
from bdtool.core.tensors import LabeledTensors
from bdtool.defenses.baeraser import BaEraserParams
from bdtool.defenses.basicft import FineTuneParams
from bdtool.defenses.finetune_repair import FinetuneRepairParams
from bdtool.defenses.nad import NADParams

CPU = torch.device("cpu")


def toy_data(n: int = 40, seed: int = 0) -> LabeledTensors:
    gen = torch.Generator().manual_seed(seed)
    return LabeledTensors(torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen))


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def config(**overrides) -> SGDParams:
    return dataclasses.replace(SGDParams(epochs=3, lr=0.1, batch_size=10, schedule="constant"), **overrides)


def record_lrs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The learning rate of every optimiser step."""
    lrs: list[float] = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return lrs


# --------------------------------------------------------------------------- the loop


def test_plugged_loss_is_called_every_step_and_its_terms_are_averaged_per_epoch():
    calls: list[int] = []

    def loss(model: nn.Module, xb: Tensor, yb: Tensor):
        calls.append(len(yb))
        value, _ = cross_entropy_loss(model, xb, yb)
        return value, {"ce": value, "const": value.new_tensor(float(len(yb)))}

    epochs: list[tuple[int, dict[str, float]]] = []
    state = train_loop(toy_model(), toy_data(40), config(), CPU, seed=0, loss=loss,
                       on_epoch=lambda epoch, means: epochs.append((epoch, means)))
    assert calls == [10] * 12  # 40 samples / batch 10 = 4 steps x 3 epochs
    assert state.step == 12 and state.epochs_run == 3 and not state.stopped
    assert [e for e, _ in epochs] == [1, 2, 3]
    assert all(set(means) == {"ce", "const"} for _, means in epochs)
    assert epochs[0][1]["const"] == 10.0  # per-sample mean over the epoch


def test_epoch_means_are_weighted_by_samples():
    # 25 samples, batch 10: batches of 10, 10 and 5; the term is the batch size itself.
    means: list[float] = []

    def loss(model, xb, yb):
        value, _ = cross_entropy_loss(model, xb, yb)
        return value, {"size": value.new_tensor(float(len(yb)))}

    train_loop(toy_model(), toy_data(25), config(epochs=1), CPU, seed=0, loss=loss,
               on_epoch=lambda epoch, m: means.append(m["size"]))
    assert means == [pytest.approx((10 * 10 + 10 * 10 + 5 * 5) / 25)]


def test_stop_condition_ends_training_early_and_closes_the_progress_line():
    asked: list[tuple[int, int, bool]] = []

    def stop(state: LoopState) -> bool:
        asked.append((state.epoch, state.step, state.epoch_end))
        return state.step == 6

    progress: list[tuple[str, int, int]] = []
    model = toy_model()
    state = train_loop(model, toy_data(40), config(epochs=5), CPU, seed=0, stop=stop,
                       progress=lambda label, done, total: progress.append((label, done, total)))
    assert state.stopped and state.step == 6 and state.epochs_run == 2
    assert asked[0] == (0, 0, True)  # before the first step
    assert asked[1:5] == [(1, 1, False), (1, 2, False), (1, 3, False), (1, 4, False)]
    assert (1, 4, True) in asked  # after every epoch
    assert asked[-1] == (2, 6, True)  # the epoch it stopped in still ends
    assert progress == [("train", 1, 5), ("train", 2, 5), ("train", 5, 5)]
    assert not model.training


def test_stop_before_the_first_step_trains_nothing():
    model = toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = train_loop(model, toy_data(), config(), CPU, seed=0, stop=lambda s: True)
    assert state.stopped and state.step == 0 and state.epochs_run == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_step_schedule_divides_lr_by_ten_after_lr_drop_epoch(monkeypatch):
    lrs = record_lrs(monkeypatch)
    train_loop(toy_model(), toy_data(40), config(epochs=4, schedule="step"), CPU, seed=0, lr_drop_epoch=2)
    assert lrs[:8] == [0.1] * 8
    assert lrs[8:] == [pytest.approx(0.01)] * 8


def test_step_schedule_needs_lr_drop_epoch():
    with pytest.raises(ValueError, match="lr_drop_epoch"):
        train_loop(toy_model(), toy_data(), config(schedule="step"), CPU, seed=0)


def test_constant_and_cosine_schedules(monkeypatch):
    lrs = record_lrs(monkeypatch)
    train_loop(toy_model(), toy_data(40), config(epochs=2), CPU, seed=0)
    assert lrs == [0.1] * 8
    lrs.clear()
    train_loop(toy_model(), toy_data(40), config(epochs=2, schedule="cosine"), CPU, seed=0)
    assert lrs[0] == 0.1 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0


def test_nesterov_and_weight_decay_reach_the_optimiser(monkeypatch):
    seen: list[dict] = []
    real_init = torch.optim.SGD.__init__

    def init(self, params, **kwargs):
        seen.append(kwargs)
        real_init(self, params, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "__init__", init)
    train_loop(toy_model(), toy_data(), config(epochs=1, weight_decay=1e-3), CPU, seed=0, nesterov=True)
    train_loop(toy_model(), toy_data(), config(epochs=1, momentum=0.0), CPU, seed=0, nesterov=True)
    assert seen[0]["nesterov"] is True and seen[0]["weight_decay"] == 1e-3
    assert seen[1]["nesterov"] is False  # torch refuses Nesterov without momentum


def test_before_step_runs_in_train_mode_before_every_step():
    modes: list[tuple[bool, bool]] = []

    def freeze(model: nn.Module) -> None:
        set_batchnorm_mode(model, False)
        modes.append((model.training, model[1].training))

    model = toy_model()
    model.eval()
    train_loop(model, toy_data(40), config(epochs=1), CPU, seed=0, before_step=freeze)
    assert modes == [(True, False)] * 4


def test_frozen_batchnorm_keeps_its_running_statistics():
    model = toy_model()
    stats = model[1].running_mean.clone()
    train_loop(model, toy_data(), config(epochs=1), CPU, seed=0, before_step=lambda m: set_batchnorm_mode(m, False))
    assert torch.equal(model[1].running_mean, stats)
    train_loop(model, toy_data(), config(epochs=1), CPU, seed=0)
    assert not torch.equal(model[1].running_mean, stats)


def test_same_seed_same_weights_and_train_supervised_is_the_plain_loop():
    a, b, c = toy_model(), toy_model(), toy_model()
    train_loop(a, toy_data(), config(), CPU, seed=5)
    losses: list[tuple[int, float]] = []
    returned = train_supervised(b, toy_data(), config(), CPU, seed=5, on_epoch=lambda e, l: losses.append((e, l)))
    train_loop(c, toy_data(), config(), CPU, seed=6)
    assert returned is b
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert any(not torch.equal(a.state_dict()[k], v) for k, v in c.state_dict().items())
    assert [e for e, _ in losses] == [1, 2, 3] and all(isinstance(l, float) for _, l in losses)


def test_metric_logger_names_each_term():
    logged: list[tuple[str, float, int | None]] = []
    metric_logger(lambda k, v, s=None: logged.append((k, v, s)), "nad.teacher_{}")(3, {"loss": 0.5})
    metric_logger(lambda k, v, s=None: logged.append((k, v, s)), "baeraser.{}")(1, {"ce": 1.0, "l1": 2.0})
    assert logged == [("nad.teacher_loss", 0.5, 3), ("baeraser.ce", 1.0, 1), ("baeraser.l1", 2.0, 1)]


# --------------------------------------------------------------------------- SGDParams


@pytest.mark.parametrize("bad, message", [
    ({"epochs": "0"}, "epochs must be >= 1"),
    ({"lr": "0"}, "lr must be > 0"),
    ({"lr": "-0.1"}, "lr must be > 0"),
    ({"momentum": "1"}, r"momentum must be in \[0, 1\)"),
    ({"weight_decay": "-1e-4"}, "weight_decay must be >= 0"),
    ({"batch_size": "0"}, "batch_size must be >= 1"),
    ({"schedule": "step"}, "schedule must be cosine or constant"),
])
@pytest.mark.parametrize("params_cls", [SGDParams, FineTuneParams, BaEraserParams, FinetuneRepairParams])
def test_sgd_params_reject_bad_values_with_a_clear_message(params_cls, bad, message):
    with pytest.raises(InvalidParameterError, match=f"owner: {message}"):
        build_params(params_cls, bad, owner="owner")


def test_nad_accepts_the_step_schedule_and_checks_the_teacher():
    assert build_params(NADParams, {"schedule": "step"}, owner="nad").schedule == "step"
    with pytest.raises(InvalidParameterError, match="teacher_lr must be > 0"):
        build_params(NADParams, {"teacher_lr": "0"}, owner="nad")
    with pytest.raises(InvalidParameterError, match="schedule='linear' is not one of"):
        build_params(NADParams, {"schedule": "linear"}, owner="nad")


def test_each_defense_keeps_its_own_sgd_defaults():
    fields = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "schedule")
    values = {cls.__name__: tuple(getattr(cls(), f) for f in fields)
              for cls in (SGDParams, FineTuneParams, NADParams, BaEraserParams, FinetuneRepairParams)}
    assert values == {
        "SGDParams": (10, 0.05, 0.9, 5e-4, 128, "cosine"),  # victim training
        "FineTuneParams": (10, 0.01, 0.9, 1e-4, 64, "constant"),  # NAD's fine-tuning step
        "NADParams": (20, 0.1, 0.9, 1e-4, 64, "step"),
        "BaEraserParams": (20, 0.01, 0.9, 0.0, 64, "constant"),
        "FinetuneRepairParams": (1, 1e-2, 0.9, 5e-4, 64, "constant"),
    }
    nad = NADParams()
    assert (nad.lr_drop_epoch, nad.teacher_epochs, nad.teacher_lr) == (2, 10, 0.01)
    teacher = nad.teacher_config()
    assert (teacher.epochs, teacher.lr, teacher.schedule, teacher.weight_decay) == (10, 0.01, "constant", 1e-4)


def test_train_config_is_plain_sgd_params_and_victim_recipes_keep_their_fields():
    cfg = NADParams().train_config()
    assert type(cfg) is SGDParams
    assert TrainConfig is SGDParams
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [
        "epochs", "lr", "momentum", "weight_decay", "batch_size", "schedule"]  # hashed into victims' cache keys


# --------------------------------------------------------------------------- model inspection


def test_preserve_modes_restores_mixed_modes():
    model = toy_model()
    model.train()
    model[1].eval()
    model[3].eval()
    with preserve_modes(model):
        model.train()
        assert model[1].training
    assert [m.training for m in model.modules()] == [True, True, False, True, False]
    with pytest.raises(RuntimeError), preserve_modes(model):
        model.eval()
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, True, False, True, False]


def test_batchnorm_detection_and_mode():
    for bn in (nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2), nn.LazyBatchNorm1d()):
        assert is_batchnorm(bn)
    for other in (nn.InstanceNorm2d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2), nn.Linear(2, 2)):
        assert not is_batchnorm(other)
    model = toy_model().train()
    set_batchnorm_mode(model, False)
    assert [m.training for m in model.modules()] == [True, True, False, True, True]


def test_check_finite_names_the_tensor():
    model = toy_model()
    check_finite(model, "x")
    with torch.no_grad():
        model[3].bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"owner: training diverged \(3.bias"):
        check_finite(model, "owner")


def test_forward_capture_keeps_outputs_and_removes_its_hooks():
    model = toy_model().eval()
    x = torch.randn(5, 4)
    with ForwardCapture(model, ["2", "0"]) as capture:
        out = model(x)
        assert list(capture.outputs) == ["0", "2"]  # execution order
        assert capture.outputs["2"].shape == (5, 8)
        assert torch.equal(model[3](capture.outputs["2"]), out)
    model(torch.randn(2, 4))
    assert capture.outputs["2"].shape == (5, 8)  # hooks removed on exit


def test_forward_capture_first_only_keeps_the_first_call():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 6), relu, nn.Linear(6, 2), relu)
    with ForwardCapture(model, ["1"], first_only=True) as first, ForwardCapture(model, ["1"]) as last:
        model(torch.randn(3, 4))
    assert first.outputs["1"].shape == (3, 6) and last.outputs["1"].shape == (3, 2)

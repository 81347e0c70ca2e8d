"""All-to-all backdoors (``--target all-to-all``: class y → (y + 1) mod K): the poisoned labels,
the per-source-class ASR, the metrics that have no meaning there (CTCA, ClassScore: NaN), the
rows that need a target label refused in one line, and a comparison that runs end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bdtool.cli import main
from bdtool.core.errors import BdtoolError, InvalidParameterError
from bdtool.core.experiment.evaluation import compute_metrics, evaluate, metric_probe
from bdtool.core.experiment.rows import default_rows_under, parse_rows
from bdtool.core.experiment.splits import poison_training_set
from bdtool.core.interfaces import ALL_TO_ALL, Knowledge
from bdtool.core.tensors import LabeledTensors
from bdtool.plugins import get_registries
from bdtool.plugins.builtin.attacks import BadNets, BadNetsParams
from bdtool.plugins.builtin.reactivation import retuning_set


@pytest.fixture(scope="module")
def digits(run_env):
    return run_env.registries.datasets.get("digits")().load()


def make(name: str, **options):
    cls = get_registries().attacks.get(name)
    attack = cls(target_class=ALL_TO_ALL, params=cls.make_params(options))
    attack.num_classes = 10
    return attack


@pytest.mark.parametrize("name", ["badnets", "blend", "wanet", "adap-blend", "adap-patch", "proj-aware"])
def test_poisoned_labels_are_the_next_class(name, digits):
    data = digits.train
    out = poison_training_set(data, make(name), 0.1, 0)
    idx = out.poisoned_indices
    assert len(idx) == round(0.1 * len(data))
    assert torch.equal(out.data.y[idx], (data.y[idx] + 1) % 10)
    assert len(set(data.y[idx].tolist())) == 10  # drawn from every class, the target's own included
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(out.data.y[rest], data.y[rest])


@pytest.mark.parametrize("name", ["sig", "lc"])
def test_clean_label_attacks_refuse_all_to_all(name, digits):
    with pytest.raises(BdtoolError, match="cannot be all-to-all"):
        make(name).target_class_share(digits.train, 0.5, torch.Generator().manual_seed(0))


class NextClassOnTrigger(nn.Module):
    """Predicts the label stored in pixel (0, 0); with the BadNets patch (bottom-right pixel 1) it
    predicts the next class, except for class 2 (a source class the backdoor misses)."""

    def forward(self, x):
        labels = (x[:, 0, 0, 0] * 10).round().long()
        triggered = x[:, 0, -1, -1] == 1
        shifted = torch.where(labels == 2, labels, (labels + 1) % 3)
        return nn.functional.one_hot(torch.where(triggered, shifted, labels), 3).float()


def test_asr_is_per_source_class_and_ctca_has_no_meaning():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.zeros(6, 1, 4, 4)
    x[:, 0, 0, 0] = y.float() / 10
    attack = BadNets(ALL_TO_ALL, BadNetsParams(size=1))
    result = evaluate(NextClassOnTrigger(), LabeledTensors(x, y), attack, 3, torch.device("cpu"))
    assert result.acc == 1.0
    assert result.extra == {"asr_class_0": 1.0, "asr_class_1": 1.0, "asr_class_2": 0.0}
    assert result.asr == pytest.approx(4 / 6)  # every stamped image, the target's own class included
    assert math.isnan(result.ctca) and result.target_class == ALL_TO_ALL
    metrics = [e.obj for e in get_registries().metrics if not e.obj.opt_in]
    values, errors = compute_metrics(metrics, result, result)
    assert not errors
    assert math.isnan(values["ctca"]) and math.isnan(values["class_score"])
    assert values["asr"] == pytest.approx(4 / 6) and values["acc"] == 1.0


def test_rows_that_need_a_target_label_are_refused_in_one_line():
    regs = get_registries()
    for text, match in (("suppress-target", "needs the target label"), ("ours-proj:knowledge=target", "knowledge=target"),
                        ("ours-proj", "single target"), ("baeraser", "single target")):
        with pytest.raises(InvalidParameterError, match=match) as info:
            parse_rows([text], Knowledge.TRIGGER, regs, all_to_all=True)
        assert "\n" not in str(info.value)
    rows = parse_rows(["ours-proj:knowledge=none", "actft", "basicft"], Knowledge.TRIGGER, regs, all_to_all=True)
    assert [r.knowledge for r in rows] == [Knowledge.NONE, Knowledge.TRIGGER, Knowledge.NONE]
    parse_rows(["suppress-target", "ours-proj"], Knowledge.TRIGGER, regs)  # a single target: both run
    kept, skipped = default_rows_under(Knowledge.TRIGGER, regs, all_to_all=True)
    assert "suppress-target" not in kept and any(t == "suppress-target" for t, _ in skipped)  # no null row
    assert kept and all(parse_rows([t], Knowledge.TRIGGER, regs, all_to_all=True) for t in kept)


def test_reactivation_retunes_toward_the_next_class(digits, run_env):
    from bdtool.core.experiment.splits import prepare_experiment

    attack = make("badnets")
    data = prepare_experiment(digits, attack, 0.0, 0)
    probe = metric_probe(data, attack, None, 0, torch.device("cpu"))
    retune = retuning_set(probe, 5)
    stamped_pool = attack.apply(data.pool.x)
    for img, label in zip(retune.x[:5], retune.y[:5]):
        matches = (stamped_pool == img).flatten(1).all(1)
        assert matches.any()  # a pool image, stamped
        assert int(label) in set(((data.pool.y[matches] + 1) % 10).tolist())  # labelled with its next class
    assert len(set(retune.y[:5].tolist())) >= 2  # not one target


def test_a_comparison_on_an_all_to_all_victim_runs(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    result = CliRunner().invoke(main, [
        "compare", "--device", "cpu", "--experiment", "all-to-all", "--target", "all-to-all", "--poison-rate", "0.1",
        "--defense", "basicft:epochs=1", "--defense", "actft:epochs=1", "--samples", "10", "--seeds", "1",
        "--no-log-models", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["meta"]["target"] == ALL_TO_ALL and "all-to-all" in payload["title"]
    assert payload["before"]["asr_mean"] > 0.5  # the victim learned y -> y+1
    assert payload["before"]["ctca_mean"] is None and all(r["ctca_mean"] is None for r in payload["rows"])
    refused = CliRunner().invoke(main, ["compare", "--device", "cpu", "--target", "all-to-all",
                                        "--defense", "suppress-target", "--dry-run"])
    assert refused.exit_code != 0 and "needs the target label" in refused.output
    assert "Traceback" not in refused.output
    clean_label = CliRunner().invoke(main, ["compare", "--device", "cpu", "--target", "all-to-all", "--attack", "sig",
                                            "--defense", "basicft", "--dry-run"])
    assert clean_label.exit_code != 0 and "cannot be all-to-all" in clean_label.output


def test_found_counts_any_flagged_class_on_an_all_to_all_victim():
    from types import SimpleNamespace

    from bdtool.core.experiment.report import detection_share
    from bdtool.core.experiment.victim_spec import VictimSpec

    outcomes = [SimpleNamespace(detection={"detected": True, "target": 3}),
                SimpleNamespace(detection={"detected": False, "target": 5})]
    column, share = detection_share(outcomes, VictimSpec(target=ALL_TO_ALL))
    assert column.key == "found" and share.mean == 0.5  # class 3 is a target too
    _, single = detection_share(outcomes, VictimSpec(target=0))
    assert single.mean == 0.0  # a single-target victim: only its target counts

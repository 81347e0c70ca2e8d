"""Your own model, really (docs/own-models.md, "Any architecture"): ``--model MODULE:CALLABLE`` with
``--model-arg``, ``--normalize``, the ImageFolder class order, ``classes=`` and non-square
``size=HxW`` folders. Real modules written to disk, real folders, real MLflow stores."""

from __future__ import annotations

import copy
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bdtool.cli import main
from bdtool.core.compute.normalization import PRESETS, input_normalization, parse_normalization
from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.components import build_model
from bdtool.core.experiment.model_source import model_arg_values, parse_model_args
from bdtool.core.tensors import LabeledTensors
from bdtool.plugins import get_registries
from bdtool.plugins.builtin.image_folder import load_folder

USER_NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    """A model written outside bdtool: its own names, no BatchNorm."""

    def __init__(self, in_channels=1, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.body(x))


def build(classes=10):
    return Net(num_classes=classes)


def not_a_model():
    return "a string"


def broken():
    raise RuntimeError("the user's code failed")
'''


def bundle(channels: int = 1, shape: tuple[int, int] = (8, 8), classes: int = 10) -> DataBundle:
    x = torch.rand(20, channels, *shape)
    y = torch.arange(20) % classes
    return DataBundle("synthetic", LabeledTensors(x, y), LabeledTensors(x, y), classes)


@pytest.fixture
def nets_file(tmp_path: Path) -> Path:
    path = tmp_path / "usernets.py"
    path.write_text(textwrap.dedent(USER_NETS))
    return path


def test_a_callable_from_a_file_is_built_and_called_with_its_arguments(nets_file):
    registries = get_registries()
    model = build_model(registries, f"{nets_file}:Net", bundle(), parse_model_args(["width=4"]))
    assert type(model).__name__ == "Net" and model.body[0].out_channels == 4
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    factory = build_model(registries, f"{nets_file}:build", bundle(classes=4), parse_model_args(["classes=4"]))
    assert factory.head[-1].out_features == 4


def test_a_module_on_the_path_is_imported_by_name(nets_file, monkeypatch):
    monkeypatch.chdir(nets_file.parent)  # bdtool run from the folder that holds usernets.py
    model = build_model(get_registries(), "usernets:Net", bundle())
    assert type(model).__module__ == "usernets"


def test_torchvision_models_are_callables_like_any_other():
    model = build_model(get_registries(), "torchvision.models:resnet18", bundle(channels=3, shape=(32, 32)),
                        parse_model_args(["num_classes=10"]))
    assert type(model).__name__ == "ResNet"


@pytest.mark.parametrize("name, args, data, says", [
    ("nosuchmodule_xyz:Net", [], bundle(), "no module named 'nosuchmodule_xyz'"),
    ("{file}:Nett", [], bundle(), "has no 'Nett' (it has Net"),
    ("{file}:Net", ["widthh=3"], bundle(), "its signature is (in_channels=1, num_classes=10, width=8)"),
    ("{file}:Net", ["num_classes=7"], bundle(), "gives 7 outputs; the data set has 10 classes"),
    ("{file}:Net", [], bundle(channels=3), "fails on a 1×3×8×8 batch"),
    ("{file}:not_a_model", [], bundle(), "returned a str, not a torch.nn.Module"),
    ("{file}:broken", [], bundle(), "RuntimeError: the user's code failed"),
    ("small-cnn", ["num_classes=7"], bundle(), "drop --model-arg"),
    ("nothere.py:Net", [], bundle(), "no such file"),
])
def test_a_model_that_cannot_be_used_is_one_line(nets_file, name, args, data, says):
    with pytest.raises(BdtoolError) as err:
        build_model(get_registries(), name.format(file=nets_file), data, parse_model_args(args))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_model_arg_values_are_python_literals_or_text():
    args = parse_model_args(["b=0.5", "a=10", "c=True", "d=(3, 3)", "e=relu", "f=None"])
    assert [k for k, _ in args] == ["a", "b", "c", "d", "e", "f"]
    assert model_arg_values(args) == {"a": 10, "b": 0.5, "c": True, "d": (3, 3), "e": "relu", "f": None}
    for bad, says in (("width", "not key=value"), ("1x=2", "not key=value")):
        with pytest.raises(BdtoolError, match=says):
            parse_model_args([bad])
    with pytest.raises(BdtoolError, match="given twice"):
        parse_model_args(["a=1", "a=2"])


# --- --normalize ---------------------------------------------------------------------------------

def test_normalization_forms_and_presets():
    assert parse_normalization("0.5,0.25").mean == (0.5,) and parse_normalization("0.5,0.25").std == (0.25,)
    three = parse_normalization("0.1,0.2,0.3,0.4,0.5,0.6")
    assert three == parse_normalization("0.1,0.2,0.3/0.4,0.5,0.6") and three.std == (0.4, 0.5, 0.6)
    assert parse_normalization("ImageNet") == parse_normalization(",".join(map(str, sum(PRESETS["imagenet"], ()))))
    for bad, says in (("0.5,0.5,0.5", r"3 value\(s\)"), ("a,b", "not numbers"), ("0.5,0", "std must be > 0"),
                      ("0.5,nan", "finite")):
        with pytest.raises(ValueError, match=says):
            parse_normalization(bad)
    with pytest.raises(ValueError, match="give 1 or 3"):
        parse_normalization("0.1,0.2,0.4,0.5", channels=3)


def test_normalize_wraps_the_input_and_nothing_else(nets_file):
    """The model sees (x - mean) / std; its state dict, module names and a deep copy are the user's."""
    registries = get_registries()
    data = bundle(channels=3, shape=(8, 8))
    args = parse_model_args(["in_channels=3"])
    torch.manual_seed(0)
    plain = build_model(registries, f"{nets_file}:Net", data, args)
    wrapped = build_model(registries, f"{nets_file}:Net", data, args, normalize="imagenet")
    wrapped.load_state_dict(plain.state_dict())
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in wrapped.named_modules()] == [n for n, _ in plain.named_modules()]
    x = torch.rand(4, 3, 8, 8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in PRESETS["imagenet"])
    torch.testing.assert_close(wrapped(x), plain((x - mean) / std))
    assert not torch.allclose(wrapped(x), plain(x))
    copied = copy.deepcopy(wrapped)
    torch.testing.assert_close(copied(x), wrapped(x))
    assert input_normalization(copied) == parse_normalization("imagenet")
    with pytest.raises(BdtoolError, match="--normalize 'imagenet' gives 3 value"):
        build_model(registries, "small-cnn", bundle(channels=1), normalize="imagenet")


# --- folders: ImageFolder's order, classes=, size=HxW ---------------------------------------------

def write_folder(root: Path, names: list[str], per_class: int = 5, size: tuple[int, int] = (8, 8)) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_the_class_order_is_torchvisions_imagefolder(tmp_path):
    """Folders 0 … 10: label 2 is folder 10, as torchvision's ImageFolder numbers them."""
    from torchvision.datasets import ImageFolder

    names = [str(i) for i in range(11)]
    write_folder(tmp_path / "f", names)
    (tmp_path / "f" / "10" / "marker.png").write_bytes((tmp_path / "f" / "10" / "0.png").read_bytes())
    ours = load_folder(str(tmp_path / "f") + ":test=0.5")
    theirs = ImageFolder(str(tmp_path / "f"))
    assert ours.class_names == theirs.classes and ours.class_names[2] == "10"
    assert {name: i for i, name in enumerate(ours.class_names)} == theirs.class_to_idx
    # every image carries torchvision's label for its file
    labels = {Path(p).name + "@" + Path(p).parent.name: y for p, y in theirs.samples}
    counts = np.bincount(torch.cat([ours.train.y, ours.test.y]).numpy(), minlength=11)
    assert counts[theirs.class_to_idx["10"]] == 6 == sum(1 for k in labels if k.endswith("@10"))


def test_classes_gives_another_order_from_the_option_or_a_file(tmp_path):
    write_folder(tmp_path / "f", ["cat", "dog", "bird"])
    assert load_folder(str(tmp_path / "f")).class_names == ["bird", "cat", "dog"]
    assert load_folder(f"{tmp_path / 'f'}:classes=dog+cat+bird").class_names == ["dog", "cat", "bird"]
    (tmp_path / "names.txt").write_text("cat\n\ndog\nbird\n")
    assert load_folder(f"{tmp_path / 'f'}:classes={tmp_path / 'names.txt'}").class_names == ["cat", "dog", "bird"]
    for bad, says in (("dog+cat", "folder(s) bird not named"), ("dog+cat+bird+fish", "no folder for fish"),
                      ("dog+dog+cat+bird", "more than once")):
        with pytest.raises(BdtoolError, match=says.replace("(", r"\(").replace(")", r"\)")):
            load_folder(f"{tmp_path / 'f'}:classes={bad}")


def test_a_non_square_folder_loads_at_its_size_or_the_one_given(tmp_path):
    write_folder(tmp_path / "f", ["a", "b"], size=(6, 10))  # numpy (rows, cols): 10 wide, 6 high
    data = load_folder(str(tmp_path / "f"))
    assert data.image_shape == (6, 10) and tuple(data.train.x.shape[1:]) == (1, 6, 10)
    assert load_folder(f"{tmp_path / 'f'}:size=12x16").image_shape == (12, 16)
    assert load_folder(f"{tmp_path / 'f'}:size=9").image_shape == (9, 9)
    for bad in ("12x", "0x4", "1x2x3", "big"):
        with pytest.raises(BdtoolError):
            load_folder(f"{tmp_path / 'f'}:size={bad}")
    model = build_model(get_registries(), "small-cnn", data)
    assert model(data.train.x[:2]).shape == (2, 2)


def test_a_folder_of_two_sizes_is_refused_from_the_headers(tmp_path):
    write_folder(tmp_path / "f", ["a", "b"])
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "f" / "b" / "odd.png")
    with pytest.raises(BdtoolError, match="odd.png is 9×9.*make them one size"):
        load_folder(str(tmp_path / "f"))


# --- the CLI, end to end -------------------------------------------------------------------------

def test_compare_trains_and_defends_a_model_given_as_a_callable(nets_file, mlflow_store, tmp_path):
    """A victim of the user's architecture is trained, logged with its arguments and defended."""
    from mlflow.tracking import MlflowClient

    experiment = f"any-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(main, [
        "compare", "--model", f"{nets_file}:Net", "--model-arg", "width=4", "--normalize", "0.5,0.5",
        "--defense", "ours-proj", "--samples", "20", "--seeds", "1", "--epochs", "3", "--no-log-models",
        "--device", "cpu", "--tracking-uri", mlflow_store, "--experiment", experiment, "--json"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("bdtool.kind") == "comparison")
    assert parent.data.params["model"] == f"{nets_file}:Net"
    assert parent.data.params["model_args"] == "width=4" and parent.data.params["normalize"] == "0.5,0.5"


def test_compare_refuses_a_model_it_cannot_import_in_one_line(mlflow_store):
    result = CliRunner().invoke(main, ["compare", "--model", "nosuchmodule_xyz:Net", "--dry-run",
                                       "--tracking-uri", mlflow_store])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no module named 'nosuchmodule_xyz'" in result.stderr


def test_the_worked_example_of_docs_own_models_runs(tmp_path, mlflow_store):
    """docs/examples/own-model/run.sh as docs/own-models.md shows it, smaller (2 epochs, 1 seed,
    two rows): a model class written outside bdtool, trained with plain PyTorch behind Normalize on
    its own trigger, saved as safetensors, compared and defended by bdtool."""
    import os
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file

    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "own-model"
    work = tmp_path / "own-model"
    shutil.copytree(example, work)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "EPOCHS": "2", "SEEDS": "1", "DEFENSES": "ours-proj actft", "MLFLOW_TRACKING_URI": mlflow_store,
           "BDTOOL_EXPERIMENT": f"example-{uuid.uuid4().hex[:8]}", "BDTOOL_DEVICE": "cpu"}
    done = subprocess.run(["bash", "run.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "digits / mymod:Net / image (target 3)" in done.stdout
    assert "Ours-proj (trigger)" in done.stdout and "actFT (trigger)" in done.stdout
    assert "defended model written to" in done.stdout
    trained, defended = load_file(work / "mine.safetensors"), load_file(work / "mine.defended.safetensors")
    assert list(defended) == list(trained)  # the user's own architecture, keys unchanged
    assert any(not torch.equal(defended[k], trained[k]) for k in trained)


DEEP_NET = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv_a, self.norm_a = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv_b, self.norm_b = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.norm_b(self.conv_b(torch.relu(self.norm_a(self.conv_a(x))))))


class Net(nn.Module):
    """Residual, BatchNorm, module names of its own: nothing bdtool knows by name."""

    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = Block(width)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.stage2 = Block(2 * width)
        self.out = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.out(torch.flatten(nn.functional.adaptive_avg_pool2d(self.stage2(self.down(self.stage1(self.stem(x)))), 1), 1))
'''


@pytest.fixture(scope="module")
def deep_victim(run_env, tmp_path_factory):
    from bdtool.core.experiment.victim import get_victim
    from bdtool.core.experiment.victim_spec import VictimSpec

    path = tmp_path_factory.mktemp("deep") / "deepnet.py"
    path.write_text(textwrap.dedent(DEEP_NET))
    return get_victim(VictimSpec(model=f"{path}:Net", epochs=4), run_env)


@pytest.mark.parametrize("name", [e.name for e in get_registries().defenses])
def test_every_defense_runs_on_an_architecture_it_does_not_know(deep_victim, name):
    """Every registered defense finds its layers on a model of the user's own (ours' and
    ours-proj's edited layers, NAD's attention layers, fp's last conv, anp's norms, ...) and gives
    back a finite model of the same architecture, or refuses in one line naming what to set."""
    from bdtool.core.errors import DefenseInputError
    from bdtool.core.experiment.context import defense_context
    from bdtool.core.interfaces import Knowledge

    cls = get_registries().defenses.get(name)
    ctx = defense_context(deep_victim, cls, 20, 0, torch.device("cpu"),
                          trigger=cls.required_knowledge() is Knowledge.TRIGGER)
    if cls.needs_training_set:
        import dataclasses

        ctx = dataclasses.replace(ctx, train=deep_victim.data.clean_train(), train_recipe=deep_victim.train_config)
    try:
        defended = cls(cls.make_params({})).defend(deep_victim.fresh_copy(), ctx)
    except DefenseInputError as exc:
        assert "\n" not in str(exc) and "=" in str(exc), str(exc)  # names the parameter to set
        return
    assert type(defended).__name__ == "Net" and list(defended.state_dict()) == list(deep_victim.model.state_dict())
    assert all(torch.isfinite(v).all() for v in defended.state_dict().values() if v.is_floating_point())
    assert defended(deep_victim.data.evaluation.x[:4]).shape == (4, 10)


def test_anp_refuses_a_model_without_batchnorm_in_one_line_naming_what_runs(run_env, nets_file):
    from bdtool.core.errors import DefenseInputError
    from bdtool.core.experiment.context import defense_context
    from bdtool.core.experiment.victim import get_victim
    from bdtool.core.experiment.victim_spec import VictimSpec

    victim = get_victim(VictimSpec(model=f"{nets_file}:Net", epochs=1), run_env)
    cls = get_registries().defenses.get("anp")
    ctx = defense_context(victim, cls, 10, 0, torch.device("cpu"), trigger=False)
    with pytest.raises(DefenseInputError, match="no BatchNorm layer.*use fp, nc or ibau"):
        cls(cls.make_params({})).defend(victim.fresh_copy(), ctx)

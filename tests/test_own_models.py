"""Bring your own model and data (docs/own-models.md): ``--victim SOURCE``, ``bdtool defend``,
``--dataset folder:PATH``, and hostile inputs, each refused in one line with exit != 0 and no run
left RUNNING. Real files, the session's real digits victim and real MLflow stores."""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from bdtool.cli import main
from bdtool.core import tracking
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.components import build_model
from bdtool.core.tracking.tags import SOURCE_SHA256_TAG, SOURCE_TAG
from bdtool.core.tracking.serialization import file_sha256, load_safetensors, save_safetensors
from bdtool.plugins import get_registries
from bdtool.plugins.builtin.attacks import BadNets, ImageTrigger, ImageTriggerParams

COMPARE = ["compare", "--defense", "suppress-target", "--samples", "5", "--seeds", "1", "--no-log-models",
           "--device", "cpu", "--json"]


def new_experiment() -> str:
    return f"own-{uuid.uuid4().hex[:8]}"


def runs_in(uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def compare(uri: str, experiment: str, *args: str):
    return CliRunner().invoke(main, [*COMPARE, "--tracking-uri", uri, "--experiment", experiment, *args])


def assert_one_line(result, *needles: str) -> str:
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def exported(mlflow_store, digits_victim, tmp_path_factory) -> Path:
    """The victim's ``model/state_dict.pt``, exported from its MLflow run as a user would."""
    import mlflow

    tracking.setup_tracking(mlflow_store)
    folder = tmp_path_factory.mktemp("export")
    path = mlflow.artifacts.download_artifacts(run_id=digits_victim.run_id, artifact_path="model/state_dict.pt",
                                               dst_path=str(folder))
    return Path(path)


# --- --victim -----------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["state_dict.pt", "safetensors", "runs:/", "models:/"])
def test_exported_victim_given_back_has_the_same_before_metrics(mlflow_store, digits_victim, exported, tmp_path,
                                                                form):
    if form == "safetensors":
        source = str(save_safetensors(digits_victim.fresh_copy(), tmp_path / "victim.safetensors"))
    elif form == "runs:/":
        source = f"runs:/{digits_victim.run_id}/model"
    elif form == "models:/":  # the victim's MLflow model registered (a pickle: its run's state dict is read)
        import mlflow

        tracking.setup_tracking(mlflow_store)
        logged = f"victim-{digits_victim.spec.victim_kind()}-{digits_victim.config_hash[:12]}"  # its LoggedModel
        version = mlflow.register_model(f"runs:/{digits_victim.run_id}/{logged}", f"victim-{uuid.uuid4().hex[:6]}")
        source = f"models:/{version.name}/{version.version}"
    else:
        source = str(exported)
    experiment = new_experiment()
    result = compare(mlflow_store, experiment, "--victim", source)
    assert result.exit_code == 0, result.output
    before = json.loads(result.stdout)["before"]
    assert (before["acc_mean"], before["asr_mean"], before["ctca_mean"], before["min_class_acc_mean"]) == \
        pytest.approx((digits_victim.before.acc, digits_victim.before.asr, digits_victim.before.ctca,
                       digits_victim.before.min_class_acc), abs=1e-9)
    assert before["asr_mean"] > 0.9  # a backdoored victim: the round trip has something to keep
    client = MlflowClient(tracking_uri=mlflow_store)
    parent = next(r for r in runs_in(mlflow_store, experiment) if r.data.tags["bdtool.kind"] == "comparison")
    victim_run = client.get_run(parent.data.tags["bdtool.victim_run_id"])
    assert victim_run.info.run_id != digits_victim.run_id and victim_run.info.status == "FINISHED"
    # the same bytes are one victim: runs:/ reuses the run the exported file (the same bytes) made
    assert victim_run.data.tags[SOURCE_TAG] in ((source,) if form.endswith(".pt") or form == "safetensors"
                                                else (source, str(exported)))
    expected_file = exported if form != "safetensors" else Path(source)
    assert victim_run.data.tags[SOURCE_SHA256_TAG] == file_sha256(expected_file)
    assert victim_run.data.params["source_sha256"] == file_sha256(expected_file)


def test_the_same_file_again_reuses_its_victim_run(mlflow_store, digits_victim, exported):
    ids = []
    for _ in range(2):
        experiment = new_experiment()
        result = compare(mlflow_store, experiment, "--victim", str(exported))
        assert result.exit_code == 0, result.output
        parent = next(r for r in runs_in(mlflow_store, experiment) if r.data.tags["bdtool.kind"] == "comparison")
        ids.append(parent.data.tags["bdtool.victim_run_id"])
    assert ids[0] == ids[1]


class Plant:
    """Unpickling this creates the file ``path``: what a hostile model file would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def hostile_files(tmp_path: Path, exported: Path) -> dict[str, tuple[Path, str, Path | None]]:
    """name -> (file, what the one line says, the file its unpickling would create)."""
    made: dict[str, tuple[Path, str, Path | None]] = {}
    marker = tmp_path / "pwned-torch"
    torch.save({"weight": torch.zeros(2), "payload": Plant(str(marker))}, tmp_path / "evil.pt")
    made["torch pickle payload"] = (tmp_path / "evil.pt", "would need unpickling", marker)
    marker2 = tmp_path / "pwned-raw"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"weight": Plant(str(marker2))}))
    made["raw pickle payload"] = (tmp_path / "evil.pkl", "refusing to load", marker2)
    marker3 = tmp_path / "pwned-st"
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Plant(str(marker3))))
    made["pickle named .safetensors"] = (tmp_path / "evil.safetensors", "not a valid safetensors file", marker3)
    data = exported.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    made["truncated state dict"] = (tmp_path / "truncated.pt", "truncated?", None)
    st = Path(tmp_path / "whole.safetensors")
    save_safetensors(build_model(get_registries(), "small-cnn", _digits_shape()), st)
    st_bytes = st.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(st_bytes[: len(st_bytes) - 1000])
    made["truncated safetensors"] = (tmp_path / "truncated.safetensors", "not a valid safetensors file", None)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    made["a tensor, not a dict"] = (tmp_path / "tensor.pt", "not a dict of tensors", None)
    return made


def _digits_shape():
    from bdtool.core.data import DataBundle
    from bdtool.core.tensors import LabeledTensors

    x = torch.zeros(2, 1, 8, 8)
    return DataBundle("digits", LabeledTensors(x, torch.zeros(2, dtype=torch.long)),
                      LabeledTensors(x, torch.zeros(2, dtype=torch.long)), 10)


HOSTILE = ["torch pickle payload", "raw pickle payload", "pickle named .safetensors", "truncated state dict",
           "truncated safetensors", "a tensor, not a dict"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_victim_file_is_one_line_and_never_unpickled(mlflow_store, digits_victim, exported, tmp_path, name):
    path, says, marker = hostile_files(tmp_path, exported)[name]
    if marker is not None and name == "torch pickle payload":
        # the payload is real: an unsafe load would plant the file (so this test can fail)
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()
    experiment = new_experiment()
    result = compare(mlflow_store, experiment, "--victim", str(path))
    assert_one_line(result, str(path), says)
    if marker is not None:
        assert not marker.exists()
    assert runs_in(mlflow_store, experiment) == []  # refused before any run


def test_raw_pickle_payload_would_run_when_unpickled(tmp_path, exported):
    """The raw-pickle case above is a real payload too."""
    path, _, marker = hostile_files(tmp_path, exported)["raw pickle payload"]
    pickle.loads(path.read_bytes())
    assert marker is not None and marker.exists()


@pytest.mark.parametrize("args, says", [
    (["--model", "resnet18"], "does not fit --model resnet18"),
    (["--model", "vgg"], "does not fit --model vgg"),
])
def test_victim_of_another_architecture_is_one_line(mlflow_store, digits_victim, exported, args, says):
    experiment = new_experiment()
    result = compare(mlflow_store, experiment, "--victim", str(exported), *args)
    assert_one_line(result, says, "missing")
    assert runs_in(mlflow_store, experiment) == []


def test_victim_with_wrong_shapes_is_one_line(mlflow_store, digits_victim, tmp_path):
    state = dict(digits_victim.model.state_dict())
    state["classifier.3.weight"] = torch.zeros(12, 128)
    state["classifier.3.bias"] = torch.zeros(12)
    torch.save(state, tmp_path / "twelve.pt")
    experiment = new_experiment()
    result = compare(mlflow_store, experiment, "--victim", str(tmp_path / "twelve.pt"))
    assert_one_line(result, "classifier.3.weight is 12×128 in the file, 10×128 in small-cnn")
    assert runs_in(mlflow_store, experiment) == []


@pytest.mark.parametrize("spoil, says", [
    (lambda t: t.fill_(float("nan")), "hold NaN or inf (features.0.weight)"),
    (lambda t: t.fill_(float("inf")), "hold NaN or inf (features.0.weight)"),
    (lambda t: t.to(torch.int8), "not floating point (features.0.weight is int8)"),
])
def test_victim_with_weights_it_cannot_be_scored_on_is_one_line(mlflow_store, digits_victim, tmp_path, spoil, says):
    """NaN, inf or integer weights would be scored (ACC 10 %, a Score above 100): refused before any run."""
    state = {k: v.clone() for k, v in digits_victim.model.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    assert first == "features.0.weight"
    state[first] = spoil(state[first])
    torch.save(state, tmp_path / "spoiled.pt")
    experiment = new_experiment()
    assert_one_line(compare(mlflow_store, experiment, "--victim", str(tmp_path / "spoiled.pt")), says)
    assert runs_in(mlflow_store, experiment) == []


def test_missing_victim_and_unknown_run_are_one_line(mlflow_store, digits_victim, tmp_path):
    assert_one_line(compare(mlflow_store, new_experiment(), "--victim", str(tmp_path / "nope.pt")), "no such file")
    assert_one_line(compare(mlflow_store, new_experiment(), "--victim", "runs:/0123456789abcdef/model"),
                    "cannot be read from the tracking store")


# --- corrupted store ----------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_store_is_one_line_before_any_work(tmp_path, damage):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    if damage == "garbage":
        db.write_bytes(np.random.default_rng(0).bytes(20000))
    else:
        # a real MLflow store, cut short
        tracking.setup_tracking(uri)
        tracking.ensure_experiment("x", uri)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(main, [*COMPARE, "--tracking-uri", uri])
    line = assert_one_line(result, str(db))
    assert ("not an SQLite database" if damage == "garbage" else "truncated") in line
    assert not list(tmp_path.glob("artifacts/*"))  # nothing done: no victim trained


# --- folder data sets -----------------------------------------------------------------------------

def write_digits_folder(folder: Path, split) -> None:
    """``split`` (LabeledTensors of 8×8 digits in [0,1]) as PNG files, one folder per class."""
    for i, (x, y) in enumerate(zip(split.x, split.y)):
        (folder / str(int(y))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(x[0].numpy() * 255).astype(np.uint8)).save(folder / str(int(y)) / f"{i:04d}.png")


def write_trigger(folder: Path) -> tuple[Path, Path]:
    """BadNets' digits trigger (a 2-px white patch, bottom right) as an image and a mask."""
    patch = np.zeros((8, 8), np.uint8)
    patch[6:, 6:] = 255
    Image.fromarray(patch).save(folder / "trigger.png")
    Image.fromarray(patch).save(folder / "mask.png")
    return folder / "trigger.png", folder / "mask.png"


def test_image_trigger_stamps_what_badnets_stamps(digits_victim, tmp_path):
    trigger, mask = write_trigger(tmp_path)
    attack = ImageTrigger(0, ImageTriggerParams(trigger=str(trigger), mask=str(mask)))
    x = digits_victim.data.evaluation.x[:20]
    assert torch.equal(attack.apply(x), BadNets(0).apply(x))
    assert not torch.equal(attack.apply(x), x)


@pytest.fixture(scope="module")
def digits_folder(digits_victim, tmp_path_factory) -> Path:
    """The digits the victim never trained on, less the evaluation half (so that scoring on it after
    ``bdtool defend`` is on unseen images), as PNG class folders: the user's clean images."""
    folder = tmp_path_factory.mktemp("images") / "digits"
    write_digits_folder(folder, digits_victim.data.pool)
    return folder


def test_folder_data_set_reads_the_images_and_splits_them(digits_folder):
    from bdtool.plugins.builtin.image_folder import load_folder

    bundle = load_folder(str(digits_folder))
    assert (bundle.channels, bundle.image_size, bundle.num_classes) == (1, 8, 10)
    assert len(bundle.train) + len(bundle.test) == 270 and len(bundle.test) == 81
    assert bundle.class_names == [str(i) for i in range(10)]
    resized = load_folder(f"{digits_folder}:size=16,channels=3")
    assert tuple(resized.train.x.shape[1:]) == (3, 16, 16)
    assert bundle.fingerprint and resized.fingerprint != bundle.fingerprint


def test_folder_with_train_and_test_and_colour_images(tmp_path):
    from bdtool.plugins.builtin.image_folder import load_folder

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    bundle = load_folder(str(tmp_path))
    assert (len(bundle.train), len(bundle.test), bundle.channels, bundle.class_names) == (12, 6, 3, ["cat", "dog"])
    assert 0.0 <= float(bundle.train.x.min()) and float(bundle.train.x.max()) <= 1.0


def defend(uri: str, experiment: str, model_file: Path, data: str, *args: str):
    return CliRunner().invoke(main, ["defend", str(model_file), "--data", data, "--device", "cpu", "--tracking-uri",
                                     uri, "--experiment", experiment, *args])


@pytest.mark.parametrize("fault", ["non-image", "zero-byte", "cut image", "empty class", "mixed sizes", "one class",
                                   "no folder"])
def test_bad_folder_is_one_line_naming_the_file(mlflow_store, digits_victim, exported, digits_folder, tmp_path,
                                                fault):
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(digits_folder, folder)
    if fault == "non-image":
        bad = folder / "3" / "notes.png"
        bad.write_text("not an image")
        needles = [str(bad), "not a readable image"]
    elif fault == "zero-byte":
        bad = folder / "3" / "empty.png"
        bad.write_bytes(b"")
        needles = [str(bad), "not a readable image"]
    elif fault == "cut image":
        good = next((folder / "3").iterdir())
        bad = folder / "3" / "cut.png"
        bad.write_bytes(good.read_bytes()[:40])
        needles = [str(bad), "not a readable image"]
    elif fault == "empty class":
        bad = folder / "10"
        bad.mkdir()
        needles = [str(bad), "holds no images"]
    elif fault == "mixed sizes":
        bad = folder / "5" / "big.png"
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(bad)
        needles = [str(bad), "9×9", "8×8"]
    elif fault == "one class":
        for cls in range(1, 10):
            shutil.rmtree(folder / str(cls))
        needles = ["one class"]
    else:
        folder = tmp_path / "missing"
        needles = [str(folder), "no such folder"]
    experiment = new_experiment()
    result = defend(mlflow_store, experiment, exported, str(folder), "--output", str(tmp_path / "out.safetensors"))
    assert_one_line(result, *needles)
    assert runs_in(mlflow_store, experiment) == [] and not (tmp_path / "out.safetensors").exists()


# --- bdtool defend --------------------------------------------------------------------------------

def test_defend_writes_a_safetensors_that_reloads_without_the_backdoor(mlflow_store, digits_victim, exported,
                                                                       digits_folder, tmp_path):
    trigger, mask = write_trigger(tmp_path)
    out = tmp_path / "defended" / "victim.safetensors"
    experiment = new_experiment()
    result = defend(mlflow_store, experiment, exported, str(digits_folder), "--defense", "ours", "--target-label",
                    "0", "--trigger-image", str(trigger), "--trigger-mask", str(mask), "--output", str(out), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["knowledge"] == "trigger" and payload["n_unlearn"] == 189 and payload["n_holdout"] == 81
    assert payload["before"]["asr"] > 0.9 and payload["after"]["asr"] <= 0.02
    # the file reloads into the architecture, and the backdoor is gone on the digits evaluation half
    model = build_model(get_registries(), "small-cnn", digits_victim.bundle)
    model.load_state_dict(load_safetensors(out))
    after = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    assert digits_victim.before.asr > 0.9 and after.asr <= 0.02
    (run,) = runs_in(mlflow_store, experiment)
    assert run.info.status == "FINISHED" and run.data.tags["bdtool.kind"] == "defend"
    assert run.data.params["source_sha256"] == file_sha256(exported) and run.data.params["knowledge"] == "trigger"
    assert {"acc", "asr", "before_acc", "before_asr", "defense_time_s", "time_total_s"} <= set(run.data.metrics)
    client = MlflowClient(tracking_uri=mlflow_store)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "defended")] == ["defended/victim.safetensors"]


def test_defend_gives_the_defense_only_what_the_user_supplied(mlflow_store, digits_victim, exported, digits_folder,
                                                              tmp_path):
    experiment = new_experiment()
    args = ["--output", str(tmp_path / "d.safetensors")]
    assert_one_line(defend(mlflow_store, experiment, exported, str(digits_folder), "--defense", "actft",
                           "--target-label", "0", *args), "needs the trigger", "--trigger-image")
    assert_one_line(defend(mlflow_store, experiment, exported, str(digits_folder), "--defense",
                           "ours:knowledge=target", *args), "needs the target label")
    assert_one_line(defend(mlflow_store, experiment, exported, str(digits_folder), "--defense", "retrain", *args),
                    "training set")
    assert runs_in(mlflow_store, experiment) == []
    result = defend(mlflow_store, experiment, exported, str(digits_folder), "--defense", "ours", "--samples", "20",
                    "--no-log-models", *args, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["knowledge"] == "none"
    (run,) = runs_in(mlflow_store, experiment)
    assert run.data.params["knowledge"] == "none" and run.data.params["target"] == ""


def test_defend_refuses_a_hostile_model_file(mlflow_store, digits_victim, exported, digits_folder, tmp_path):
    path, says, marker = hostile_files(tmp_path, exported)["torch pickle payload"]
    experiment = new_experiment()
    result = defend(mlflow_store, experiment, path, str(digits_folder), "--output", str(tmp_path / "o.safetensors"))
    assert_one_line(result, says)
    assert marker is not None and not marker.exists() and runs_in(mlflow_store, experiment) == []


# --- a store that fails mid-comparison ------------------------------------------------------------

DRIVER = '''
import shutil, sys
from pathlib import Path
from bdtool.cli import main
from bdtool.core.interfaces import Defense
from bdtool.plugins import get_registries


class BreakStore(Defense):
    """Returns the model unchanged after damaging the store's database in place (a backup first)."""

    name = "break-store"
    label = "BreakStore"

    def apply(self, model, ctx):
        db = Path(sys.argv[1])
        shutil.copyfile(db, db.with_name("backup.db"))
        size = db.stat().st_size
        with open(db, "r+b") as f:
            f.write(b"garbage!" * (size // 8))
        return model


get_registries().defenses.register("break-store", BreakStore, source="test")
main(sys.argv[2:])
'''


@pytest.mark.slow  # a real bdtool process: ~12 s here
def test_store_failing_mid_comparison_loses_no_result(digits_victim, exported, tmp_path):
    import subprocess
    import sys

    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    out = tmp_path / "out"
    args = ["compare", "--victim", str(exported), "--defense", "suppress-target", "--defense", "break-store",
            "--defense", "ours", "--samples", "5", "--seeds", "1", "--device", "cpu", "--tracking-uri", uri,
            "--output", str(out), "--json"]
    done = subprocess.run([sys.executable, "-c", DRIVER, str(db), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("the tracking store failed during the comparison (") and str(out) in last, last
    assert "2 of 3 runs and the summary could not be logged" in last, last
    payload = json.loads(done.stdout)
    assert [r["label"] for r in payload["rows"]] == ["Null: suppress target (target label)", "BreakStore (none)",
                                                     "Ours (trigger)"]
    assert all(r["status"] == "ok" and r["asr_mean"] is not None for r in payload["rows"])
    assert payload["rows"][2]["asr_mean"] == 0.0 and payload["rows"][1]["asr_mean"] > 0.9
    written = json.loads((out / "summary.json").read_text())
    assert [r["asr_mean"] for r in written["rows"]] == [r["asr_mean"] for r in payload["rows"]]
    # Back on the store as it was when it failed: the runs its process left open are marked KILLED
    # by the next command, none is left RUNNING.
    (tmp_path / "store" / "backup.db").replace(db)
    from bdtool.core.tracking.orphans import mark_orphans

    report = mark_orphans(uri)
    assert len(report.killed) == 2  # the comparison and BreakStore's run
    client = MlflowClient(tracking_uri=uri)
    statuses = [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]
    assert "RUNNING" not in statuses and statuses.count("FINISHED") == 2  # the victim and the null row


def test_sweep_takes_a_victim_and_refuses_one_over_targets(mlflow_store, digits_victim, exported):
    experiment = new_experiment()
    base = ["sweep", "--victim", str(exported), "--samples", "5", "--seeds", "1", "--no-log-models", "--device", "cpu",
            "--tracking-uri", mlflow_store, "--experiment", experiment]
    refused = CliRunner().invoke(main, [*base[:1], "table10", *base[1:]])
    assert_one_line(refused, "one victim per target class", "--victim")
    assert runs_in(mlflow_store, experiment) == []
    result = CliRunner().invoke(main, [*base[:1], "class-preserving", *base[1:], "--json"])
    assert result.exit_code == 0, result.output
    (comparison,) = json.loads(result.stdout)["comparisons"]
    assert comparison["before"]["asr_mean"] == pytest.approx(digits_victim.before.asr)
    parent = next(r for r in runs_in(mlflow_store, experiment) if r.data.tags["bdtool.kind"] == "comparison")
    assert parent.data.params["victim_source"] == str(exported)


def test_a_folder_with_symlink_loops_loads_its_images_and_ends(digits_folder, tmp_path):
    """A link to itself and a link to its own folder are not followed (no endless walk): the data set
    is the same as without them."""
    import os
    import shutil

    from bdtool.plugins.builtin.image_folder import load_folder

    folder = tmp_path / "images"
    shutil.copytree(digits_folder, folder)
    plain = load_folder(str(folder))
    os.symlink("self", folder / "3" / "self")
    os.symlink(".", folder / "3" / "here")
    os.symlink(str(folder), folder / "4" / "root")
    looped = load_folder(str(folder))
    assert torch.equal(plain.train.x, looped.train.x) and torch.equal(plain.test.y, looped.test.y)


def test_more_images_than_open_files_allowed(tmp_path):
    """1,200 GIFs under an open-file limit of 256: each image is closed once read (Pillow keeps a
    GIF open to seek its frames; a folder of them used to fail with "Too many open files")."""
    import resource

    from bdtool.plugins.builtin.image_folder import load_folder

    for cls in range(2):
        (tmp_path / str(cls)).mkdir()
        for i in range(600):
            Image.fromarray(np.full((8, 8), 40 * cls + i % 7, np.uint8)).save(tmp_path / str(cls) / f"{i}.gif")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        bundle = load_folder(str(tmp_path))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(bundle.train) + len(bundle.test) == 1200 and bundle.num_classes == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_of_another_float_type_are_copied_into_the_model(digits_victim, dtype):
    """A half- or double-precision state dict is converted to the model's float32 on load, and scores
    as the victim does (to the precision of its type)."""
    from bdtool.core.experiment.weights import fit_weights

    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in digits_victim.model.state_dict().items()}
    model = digits_victim.fresh_copy()
    fit_weights(model, state, "half.safetensors", "small-cnn")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    data = digits_victim.data.evaluation
    acc = evaluate(model.eval(), data, digits_victim.attack, 10, torch.device("cpu")).acc
    assert abs(acc - digits_victim.before.acc) <= 0.02


def test_defend_register_makes_a_tagged_version_that_loads_back_by_alias(mlflow_store, digits_victim, exported,
                                                                         digits_folder, tmp_path):
    """--register NAME@ALIAS: a registered model version of the defended weights (no pickle), tagged
    with the defense, knowledge, source digest and metrics, loaded back with --victim models:/NAME@ALIAS
    as the same weights."""
    name = f"defended-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "d.safetensors"
    result = defend(mlflow_store, new_experiment(), exported, str(digits_folder), "--defense", "ours-proj:knowledge=none",
                    "--output", str(out), "--register", f"{name}@prod", "--no-log-models", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["registered"] == f"models:/{name}@prod (version 1)"
    client = MlflowClient(tracking_uri=mlflow_store)
    version = client.get_model_version_by_alias(name, "prod")
    assert version.run_id == payload["run_id"] and version.source.endswith("/defended")
    assert version.tags["bdtool.defense"] == "ours-proj" and version.tags["bdtool.knowledge"] == "none"
    assert version.tags["bdtool.source_sha256"] == file_sha256(exported)
    assert float(version.tags["bdtool.acc"]) == pytest.approx(payload["after"]["acc"])
    import mlflow

    from bdtool.core.experiment.weights import read_weights  # the loader --victim uses

    mlflow.set_tracking_uri(mlflow_store)
    state = read_weights(f"models:/{name}@prod").state
    assert all(torch.equal(state[k], v) for k, v in load_safetensors(out).items())
    again = compare(mlflow_store, new_experiment(), "--victim", f"models:/{name}@prod")
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("args, says", [
    (("--register-best", "x", "--no-log-models"), "drop --no-log-models"),
    (("--register-best", "x@latest"), "is not one MLflow accepts"),
    (("--register-best", "x", "--poison-rate", "0"), "a clean victim"),
])
def test_register_best_refusals_are_one_line_before_any_run(mlflow_store, digits_victim, args, says):
    experiment = new_experiment()
    assert_one_line(logged_compare(mlflow_store, experiment, "--defense", "ours", *args), says)
    assert runs_in(mlflow_store, experiment) == []


def logged_compare(uri: str, experiment: str, *args: str):
    return CliRunner().invoke(main, ["compare", "--device", "cpu", "--json", "--tracking-uri", uri, "--experiment",
                                     experiment, *args])


def test_compare_register_best_registers_the_best_rows_best_seed(mlflow_store, digits_victim):
    """The row with the highest mean ClassScore (ours-proj with the trigger, above the null row's 0),
    then its seed with the highest ClassScore, the lowest seed on a tie."""
    name = f"best-{uuid.uuid4().hex[:6]}"
    result = logged_compare(mlflow_store, new_experiment(), "--defense", "suppress-target", "--defense", "ours-proj",
                            "--samples", "50", "--seeds", "2", "--register-best", name)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    means = {r["label"]: r["class_score_mean"] for r in payload["rows"]}
    assert means["Ours-proj (trigger)"] > means["Null: suppress target (target label)"]
    runs = [r for r in payload["runs"] if r["label"] == "Ours-proj (trigger)"]
    best = max(runs, key=lambda r: (r["metrics"]["class_score"], -r["seed"]))
    version = MlflowClient(tracking_uri=mlflow_store).get_model_version_by_alias(name, "best")
    assert version.run_id == best["run_id"] and version.tags["bdtool.row"] == "Ours-proj (trigger)"
    assert version.tags["bdtool.victim_hash"] == digits_victim.config_hash
    assert float(version.tags["bdtool.class_score"]) == pytest.approx(best["metrics"]["class_score"] / 100)
    assert payload["registered"] == (f"models:/{name}@best (version 1: Ours-proj (trigger) n=50 seed "
                                     f"{best['seed']})")


def test_best_run_choice_and_its_refusals():
    from bdtool.core.errors import BdtoolError
    from bdtool.core.tracking.registry import best_run

    def run(label, seed, value):
        return {"label": label, "n": 50, "seed": seed, "run_id": f"{label}{seed}", "metrics": {"class_score": value}}

    payload = {"rows": [{"label": "a", "n": 50, "class_score_mean": 40.0}, {"label": "b", "n": 50, "class_score_mean": 90.0}],
               "runs": [run("a", 0, 80.0), run("b", 0, 85.0), run("b", 1, 95.0), run("b", 2, 95.0)]}
    assert best_run(payload)["run_id"] == "b1"
    with pytest.raises(BdtoolError, match="above 0"):
        best_run({"rows": [{"label": "a", "n": 50, "class_score_mean": 0.0}], "runs": [run("a", 0, 0.0)]})
    with pytest.raises(BdtoolError, match="a clean victim has none"):
        best_run({"rows": [{"label": "a", "n": 50, "class_score_mean": None}], "runs": []})

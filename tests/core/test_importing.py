"""`zoo import` and the safe checkpoint reader, with a toy importer registered like a third party's."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import textwrap

import pytest
import torch

from tests.conftest import ROOT, zoo_command
from zoo import api
from zoo.checkpoint_files import CheckpointError, Stub, load_checkpoint
from zoo.errors import RunError
from zoo.registry import reset_registry

TOY_IMPORTER = textwrap.dedent("""
    import zoo
    from zoo.checkpoint_files import load_checkpoint, tensors_in
    from tests.core.toy_plugin import ToyPlugin

    class Toy(ToyPlugin):
        presets = {"base": {"steps": 3}, "long": {"steps": 50}}
        default_preset = "base"

    class ToyImporter(zoo.Importer):
        model = "toy"
        format = "official"
        description = "toy.pth: the toy generator as its authors saved it (gen.* keys)"

        def convert(self, files):
            tensors = tensors_in(load_checkpoint(files[0]), "toy", files[0])
            steps = int(tensors.pop("meta.steps"))
            renamed = {key.replace("gen.", "generator."): value for key, value in tensors.items()}
            return zoo.Converted(config={"steps": steps}, tensors=renamed, stages=["regress"],
                                 notes=["meta.steps becomes the config field steps"])

    @zoo.hookimpl
    def zoo_register_models():
        return [Toy()]

    @zoo.hookimpl
    def zoo_register_importers():
        return [ToyImporter()]
""")


@pytest.fixture
def toy_registry(tmp_path, monkeypatch):
    (tmp_path / "toy_import.py").write_text(TOY_IMPORTER)
    registry = tmp_path / "registry.yaml"
    registry.write_text("plugins: [toy_import.py]\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    reset_registry()
    yield registry
    reset_registry()


def official_toy_file(path, steps=3, hidden=16):
    torch.manual_seed(5)
    state = {
        "gen.0.weight": torch.randn(hidden, 4),
        "gen.0.bias": torch.randn(hidden),
        "gen.3.weight": torch.randn(1, hidden),
        "gen.3.bias": torch.randn(1),
        "meta.steps": torch.tensor(steps),
    }
    torch.save(state, path)
    return state


# --- reading files without running them -----------------------------------------------------------


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": RunsCode(marker)}, tmp_path / "evil.ckpt")
    loaded = load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    assert isinstance(loaded["callbacks"], Stub)
    assert "system" in repr(loaded["callbacks"])
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))  # the weights still arrive


def test_a_plain_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointError, match="evil.pth is not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_legacy_format_checkpoint_that_would_run_code_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    state = {"state_dict": {"w": torch.ones(3)}, "callbacks": RunsCode(marker)}
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # torch < 1.6 files, e.g. vqvae_560.pt
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert not marker.exists()
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(3))


def test_unknown_classes_are_never_imported(tmp_path):
    class Callback:  # stands for a Lightning class that is not installed where the file is read
        pass

    Callback.__module__, Callback.__qualname__ = "not_installed_anywhere.callbacks", "ModelCheckpoint"
    import sys
    import types

    fake = types.ModuleType("not_installed_anywhere.callbacks")
    fake.ModelCheckpoint = Callback
    sys.modules["not_installed_anywhere"] = types.ModuleType("not_installed_anywhere")
    sys.modules["not_installed_anywhere.callbacks"] = fake
    try:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": {Callback: {"best": 1.0}}}, tmp_path / "l.ckpt")
    finally:
        del sys.modules["not_installed_anywhere.callbacks"], sys.modules["not_installed_anywhere"]
    loaded = load_checkpoint(tmp_path / "l.ckpt")
    [key] = loaded["callbacks"]
    assert issubclass(key, Stub)
    assert key.qualname == "ModelCheckpoint"
    assert "not_installed_anywhere" not in sys.modules


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    official_toy_file(tmp_path / "toy.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "toy.pth").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.pth is not a readable torch checkpoint.*download complete"):
        load_checkpoint(tmp_path / "cut.pth")


# --- the import process ---------------------------------------------------------------------------


def test_import_writes_an_ordinary_run_directory(toy_registry, tmp_path):
    state = official_toy_file(tmp_path / "toy.pth")
    imported = api.import_checkpoint("toy", [tmp_path / "toy.pth"], tmp_path / "run")
    assert imported.preset == "base"
    assert imported.config.steps == 3
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["completed"] == ["regress"]
    [source] = record["imported"]["files"]
    assert source["name"] == "toy.pth"
    assert source["bytes"] == (tmp_path / "toy.pth").stat().st_size
    assert len(source["sha256"]) == 64
    assert record["imported"]["format"] == "official"
    run = api.load_run(tmp_path / "run")
    assert torch.equal(run.model.generator[0].weight, state["gen.0.weight"])
    assert torch.equal(run.model.generator[3].bias, state["gen.3.bias"])


def test_the_inferred_config_must_match_a_named_preset(toy_registry, tmp_path):
    official_toy_file(tmp_path / "toy.pth", steps=3)
    with pytest.raises(CheckpointError, match="do not match preset 'long': steps is 3 in the files, 50 in the preset"):
        api.import_checkpoint("toy", [tmp_path / "toy.pth"], tmp_path / "run", preset="long")
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".run*"))


def test_files_that_fit_no_model_are_one_line_and_write_nothing(toy_registry, tmp_path):
    official_toy_file(tmp_path / "toy.pth", hidden=32)
    with pytest.raises(CheckpointError, match=r"generator.0.weight has shape \(32, 4\) in the files, \(16, 4\)"):
        api.import_checkpoint("toy", [tmp_path / "toy.pth"], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_refuses_an_existing_run_directory(toy_registry, tmp_path):
    official_toy_file(tmp_path / "toy.pth")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists"):
        api.import_checkpoint("toy", [tmp_path / "toy.pth"], tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_zoo_import_cli(toy_registry, tmp_path):
    official_toy_file(tmp_path / "toy.pth")
    env = {**os.environ, "ZOO_REGISTRY": str(toy_registry), "ZOO_LOAD_PLUGINS": "", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        zoo_command("import", "toy", str(tmp_path / "toy.pth"), "--out", str(tmp_path / "run")),
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "matches preset 'base'" in result.stdout
    assert f"run directory: {tmp_path / 'run'}" in result.stdout
    missing = subprocess.run(
        zoo_command("import", "toy", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "r2")),
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 1, missing.stderr
    assert missing.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pth'} does not exist"

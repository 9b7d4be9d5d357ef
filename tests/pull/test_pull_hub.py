"""`zoo pull` through huggingface_hub's real code path, offline (HF_HUB_OFFLINE=1), over a
Hugging Face cache laid out from the VAR parity fixtures; and the real catalogue."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from safetensors.torch import load_file

import zoo
from tests.conftest import ROOT, cli, zoo_command
from tests.pull.conftest import TRANSFORMER, VAE, cache_in_hub, sha256
from zoo.downloads import DownloadError
from zoo.errors import RunError, UnknownNameError

REPO = "zoo-test/var-fixture"


def hub_entry(name="var-fixture", **sha: str) -> dict:
    files = [{"filename": path.name, "repo": REPO, "sha256": sha.get(path.stem)} for path in (VAE, TRANSFORMER)]
    return {"name": name, "files": files, "figure": "none"}


def test_pull_imports_the_cached_hub_files_offline(declare, hub_cache, tmp_path):
    commit = cache_in_hub(hub_cache, REPO, [VAE, TRANSFORMER])
    declare([hub_entry(vae_qsr4=sha256(VAE))])  # one published hash, one not
    pulled = zoo.pull("var-fixture", tmp_path / "pulled")
    imported = zoo.import_checkpoint("var", [VAE, TRANSFORMER], tmp_path / "imported", format="fixture")

    assert [(f.source, f.sha256, f.checked) for f in pulled.files] == [
        (f"hf://{REPO}@{commit}/vae_qsr4.pth", sha256(VAE), True),
        (f"hf://{REPO}@{commit}/var_saln0.pth", sha256(TRANSFORMER), False),
    ]
    assert all(f.path.is_relative_to(hub_cache) for f in pulled.files)
    # the same run as `zoo import` of the same files, plus where they came from
    ours, theirs = (load_file(run / "model.safetensors") for run in (pulled.imported.run_dir, imported.run_dir))
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    record = json.loads((tmp_path / "pulled" / "config.json").read_text())["imported"]
    assert [f["sha256"] for f in record["files"]] == [sha256(VAE), sha256(TRANSFORMER)]
    assert record["published"]["name"] == "var-fixture"
    assert [f["sha256"] for f in record["published"]["files"]] == [
        "checked against the published value",
        "none published: recorded",
    ]


def test_a_wrong_published_hash_fails_and_writes_nothing(declare, hub_cache, tmp_path):
    cache_in_hub(hub_cache, REPO, [VAE, TRANSFORMER])
    declare([hub_entry(var_saln0="0" * 64)])
    with pytest.raises(DownloadError) as caught:
        zoo.pull("var-fixture", tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message
    assert f"hf://{REPO}/var_saln0.pth has sha256 {sha256(TRANSFORMER)}, not the published {'0' * 64}" in message
    assert not (tmp_path / "run").exists()


def test_offline_with_nothing_cached_is_one_line(declare, hub_cache, tmp_path):
    declare([hub_entry()])
    with pytest.raises(DownloadError) as caught:
        zoo.pull("var-fixture", tmp_path / "run")
    assert str(caught.value) == (
        f"hf://{REPO}/vae_qsr4.pth is not in the Hugging Face cache and HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE"
    )
    assert not (tmp_path / "run").exists()


def test_unknown_names_and_used_run_directories_fail_before_any_download(declare, hub_cache, tmp_path):
    declare([hub_entry()])  # nothing cached: a download would fail differently
    with pytest.raises(UnknownNameError, match="Did you mean 'var-fixture'"):
        zoo.pull("var-fixtur", tmp_path / "run")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists"):
        zoo.pull("var-fixture", tmp_path / "used")
    assert os.listdir(tmp_path / "used") == ["mine.txt"]


def test_zoo_pull_cli_offline(declare, hub_cache, tmp_path):
    """The command as a user runs it, huggingface_hub reading HF_HUB_OFFLINE from the environment."""
    commit = cache_in_hub(hub_cache, REPO, [VAE, TRANSFORMER])
    declare([hub_entry(), hub_entry("var-not-cached") | {"files": [{"filename": "var_d16.pth", "repo": REPO}]}])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(zoo_command("pull", *args), capture_output=True, text=True, env=env, cwd=tmp_path)

    pulled = run("var-fixture", "--out", "runs/var-fixture")
    assert pulled.returncode == 0, pulled.stderr
    assert f"hf://{REPO}@{commit}/var_saln0.pth -> " in pulled.stdout
    assert "no sha256 published; recorded in the run" in pulled.stdout
    assert "run directory: runs/var-fixture" in pulled.stdout
    assert (tmp_path / "runs" / "var-fixture" / "model.safetensors").is_file()

    missing = run("var-not-cached", "--out", "runs/other")
    assert missing.returncode == 1
    assert missing.stderr == (
        f"error: hf://{REPO}/var_d16.pth is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
        "unset HF_HUB_OFFLINE\n"
    )
    assert not (tmp_path / "runs" / "other").exists()


def test_zoo_pull_downloads_from_hf_endpoint_into_the_hub_cache(declare, server, tmp_path):
    """The real download path: huggingface_hub reads HF_ENDPOINT (a Hub stand-in on 127.0.0.1)."""
    for path in (VAE, TRANSFORMER):
        server.files[f"/{REPO}/resolve/main/{path.name}"] = path.read_bytes()
    declare([hub_entry(), hub_entry("var-moved") | {"files": [{"filename": "var_d16.pth", "repo": REPO}]}])
    cache = tmp_path / "hf-cache"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_ENDPOINT": server.url(),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(zoo_command("pull", *args), capture_output=True, text=True, env=env, cwd=tmp_path)

    pulled = run("var-fixture", "--out", "run", "--json")
    assert pulled.returncode == 0, pulled.stderr
    files = json.loads(pulled.stdout)["files"]
    assert [f["source"] for f in files] == [f"hf://{REPO}@{server.commit}/{p.name}" for p in (VAE, TRANSFORMER)]
    blobs = cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == sorted([sha256(VAE), sha256(TRANSFORMER)])
    assert (tmp_path / "run" / "model.safetensors").is_file()

    moved = run("var-moved", "--out", "moved")
    assert moved.returncode == 1
    assert moved.stderr == f"error: hf://{REPO}/var_d16.pth: no such file in the repo (404); the publisher moved it\n"
    assert not (tmp_path / "moved").exists()


# -- the real catalogue ---------------------------------------------------------------------------


def test_the_catalogue_lists_the_official_var_release_and_fits_its_presets(capsys, monkeypatch):
    from zoo.pulling import catalogue
    from zoo.registry import get_registry, reset_registry

    monkeypatch.delenv("ZOO_REGISTRY", raising=False)
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "zoo_var,zoo_quantart,zoo_vqvae2_pixelcnn")
    reset_registry()
    listed = catalogue()
    for name, entry in listed.items():
        if entry.checkpoint.preset is not None:
            assert entry.checkpoint.preset in get_registry().presets(entry.model), name
    var = {name: [f.source for f in entry.checkpoint.files] for name, entry in listed.items() if entry.model == "var"}
    vae = "hf://FoundationVision/var/vae_ch160v4096z32.pth"
    assert var == {
        "var-tokenizer": [vae],
        **{f"var-d{d}": [vae, f"hf://FoundationVision/var/var_d{d}.pth"] for d in (16, 20, 24, 30, 36)},
    }
    assert listed["var-d36"].checkpoint.preset == "d36"
    assert not any(entry.model == "vqvae2_pixelcnn" for entry in listed.values())  # Google Drive only

    code, out, _ = cli(capsys, "pull", "--list", "--json")
    assert code == 0
    assert {row["name"] for row in json.loads(out)} == set(listed)
    reset_registry()

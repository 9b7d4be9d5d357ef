"""The base install is torch-free: a fresh venv gets `pip install .` (no `train` extra) and
runs `zoo run` and `zoo serve` on an export that the full install made; the commands
that need torch answer with one line naming the install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

import zoo.runtime
from tests.conftest import ROOT
from tests.serve.conftest import free_port, running_server, serve_command
from tests.serve.test_api import png_array

# What `pip install .` reads: the package sources and the files pyproject names.
SOURCES = ["pyproject.toml", "README.md", "constraints.txt", "zoo", "plugins", "exporters"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A venv with only the base install, built from a copy of the sources (so that the
    build leaves nothing in the checkout)."""
    work = tmp_path_factory.mktemp("torch_free")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=IGNORED)
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "-c", "constraints.txt", "."]
    result = subprocess.run(install, cwd=source, capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def clean_env() -> dict[str, str]:
    """This environment without the PYTHONPATH that puts the checkout (and its imports) first."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}


def in_venv(venv: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )


@pytest.mark.slow
def test_the_base_install_runs_and_serves_exports_without_torch(runtime_venv, var_export, tmp_path):
    probe = in_venv(
        runtime_venv, "python", "-c", "import importlib.util as u; print(u.find_spec('torch'))", cwd=tmp_path
    )
    assert probe.stdout.strip() == "None", "torch is installed in the runtime-only venv"
    assert in_venv(runtime_venv, "python", "-c", "import zoo, zoo.runtime.serve", cwd=tmp_path).returncode == 0
    assert in_venv(runtime_venv, "zoo", "--help", cwd=tmp_path).returncode == 0

    options = {"classes": [6], "n": 2, "seed": 3}
    expected = zoo.runtime.load(var_export).sample(options)
    ran = in_venv(runtime_venv, "zoo", "run", str(var_export), "--class", "6", "--n", "2", "--seed", "3", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    np.testing.assert_array_equal(png_array((tmp_path / "var_run.png").read_bytes()), np.asarray(expected.grid()))

    trained = in_venv(runtime_venv, "zoo", "train", "var", cwd=tmp_path)
    assert trained.returncode == 1, trained.stderr
    (line,) = trained.stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: zoo train needs the training install (torch, ")
    assert line.endswith("not installed): pip install 'zoo[train]'")
    listed = in_venv(runtime_venv, "zoo", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "runtime-only install" in listed.stdout
    assert "var" in listed.stdout

    command = serve_command(var_export, port=free_port())
    command[:3] = [str(runtime_venv / "bin" / "zoo")]  # the venv's `zoo`, not this interpreter's
    with running_server(command, tmp_path / "serve.log", clean_env()) as url:
        response = httpx.post(f"{url}/v1/models/var/sample", json=options, params={"format": "png"}, timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(png_array(response.content), np.asarray(expected.grid()))

"""`zoo eval --metrics` failures, each one line: these need no torch-fidelity."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import TINY_VAR, cli
from zoo.metrics import weights


@pytest.fixture
def var_run(tmp_path):
    """An untrained tiny VAR run directory: the failures come before any sampling."""
    from zoo.api import create_model
    from zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, atomic_write_json, run_record, save_weights

    plugin, config, model = create_model("var", preset="digits", **TINY_VAR)
    run_dir = tmp_path / "run"
    save_weights(model, run_dir / WEIGHTS_FILE)
    atomic_write_json(
        run_dir / CONFIG_FILE, run_record("var", plugin.version, "digits", config.model_dump(mode="json"))
    )
    return run_dir


def one_line_error(capsys, *args):
    code, out, err = cli(capsys, *args)
    assert code != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_no_weights_and_no_network_is_one_line(capsys, var_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.ENV, raising=False)
    monkeypatch.setattr(weights, "URL", "http://127.0.0.1:9/" + weights.FILE_NAME)
    line = one_line_error(capsys, "eval", "var", "--run", str(var_run), "--metrics", "fid", "--ref", "digits")
    assert "--inception-weights" in line and weights.ENV in line
    assert not (var_run / "metric_samples").exists()  # nothing drawn before the weights are there


def test_unknown_metric_is_one_line(capsys, var_run):
    line = one_line_error(capsys, "eval", "var", "--run", str(var_run), "--metrics", "fid,fdi")
    assert "'fdi'" in line and "fid,isc,kid,prc,rfid" in line


def test_missing_torch_fidelity_names_the_install(capsys, var_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as where it is not installed
    given = tmp_path / "inception.pth"
    given.write_bytes(b"x")
    monkeypatch.setattr(weights, "SHA256_PREFIX", weights.sha256_of(given)[:8])
    line = one_line_error(
        capsys, "eval", "var", "--run", str(var_run), "--metrics", "isc", "--inception-weights", str(given)
    )
    assert "zoo[metrics]" in line and "torchvision==" in line


def test_a_request_that_would_fail_after_drawing_is_refused_first(capsys, var_run):
    line = one_line_error(capsys, "eval", "var", "--run", str(var_run), "--metrics", "fid,isc")
    assert "give --ref" in line
    line = one_line_error(capsys, "eval", "var", "--run", str(var_run), "--metrics", "isc", "--option", "cfg=-1")
    assert "cfg" in line
    assert not (var_run / "metric_samples").exists()

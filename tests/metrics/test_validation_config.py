"""The config's validation metrics (`validation.metrics`): every failure is one line when
training starts, before any step or run directory. These need no torch-fidelity."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import TINY_VAR, cli
from zoo.metrics import weights

TRAINING = {
    "tokenizer_training": {"steps": 1, "batch_size": 4},
    "transformer_training": {"steps": 2, "batch_size": 4, "validate_every": 1},
}


def train_line(capsys, tmp_path, *sets: str, extra: tuple[str, ...] = ()) -> str:
    """`zoo train var` with TINY_VAR and `sets`: the one line it fails with; nothing is written."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_VAR, **TRAINING}))
    out = tmp_path / "run"
    args = ["train", "var", "--config", str(config), "--out", str(out), "--device", "cpu", "--quiet"]
    code, _, err = cli(capsys, *args, *[f"--set={item}" for item in sets], *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in err and len(lines) == 1, err
    assert not (out / "config.json").exists()  # refused before the run directory is claimed
    return lines[0]


def test_an_unknown_metric_is_one_line(capsys, tmp_path):
    line = train_line(capsys, tmp_path, "validation.metrics=[fdi]")
    assert "validation.metrics" in line and "'fdi'" in line and "'rfid'" in line


def test_too_few_samples_is_one_line(capsys, tmp_path):
    line = train_line(capsys, tmp_path, "validation.metrics=[fid]", "validation.samples=3")
    assert "validation.samples" in line


def test_a_metric_of_a_stage_without_validation_is_refused(capsys, tmp_path):
    """VAR's tokenizer has no validation: its rfid could never be logged."""
    line = train_line(capsys, tmp_path, "validation.metrics=[rfid]")
    assert "rfid" in line and "tokenizer" in line and "no validation" in line


def test_a_model_without_the_set_is_refused(capsys, tmp_path):
    from zoo.api import create_model
    from zoo.errors import ConfigError
    from zoo.metrics.validation import plan

    plugin, config, _ = create_model("multimodal_caption")
    config = config.model_copy(update={"validation": config.validation.model_copy(update={"metrics": ["fid"]})})
    with pytest.raises(ConfigError, match="no sample set"):
        plan(plugin, config, plugin.stages(config))


def test_missing_weights_are_one_line_naming_both_ways(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.ENV, raising=False)
    monkeypatch.setattr(weights, "URL", "http://127.0.0.1:9/" + weights.FILE_NAME)
    line = train_line(capsys, tmp_path, "validation.metrics=[fid]")
    assert "--inception-weights" in line and weights.ENV in line
    line = train_line(capsys, tmp_path, "validation.metrics=[fid]", extra=("--inception-weights", "nowhere.pth"))
    assert "nowhere.pth" in line


def test_weights_that_are_not_the_published_ones_are_refused(capsys, tmp_path):
    given = tmp_path / "inception.pth"
    given.write_bytes(b"not the weights")
    line = train_line(capsys, tmp_path, "validation.metrics=[fid]", extra=("--inception-weights", str(given)))
    assert "sha256" in line and weights.SHA256_PREFIX in line


def test_missing_torch_fidelity_is_one_line_at_the_start(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as where it is not installed
    given = tmp_path / "inception.pth"
    given.write_bytes(b"x")
    monkeypatch.setattr(weights, "SHA256_PREFIX", weights.sha256_of(given)[:8])
    line = train_line(capsys, tmp_path, "validation.metrics=[isc]", extra=("--inception-weights", str(given)))
    assert "zoo[metrics]" in line and "torchvision==" in line


def test_the_report_shows_validation_metrics_and_what_they_were_measured_on(tmp_path):
    """Each logged distribution metric gets its own panel; the measured-on table and the
    eval.json section keep N, the reference and the weights' sha256."""
    from zoo.checkpoint import CONFIG_FILE, METRICS_FILE, atomic_write_json, run_record
    from zoo.metrics import MEASURED_ON_FILE
    from zoo.report import write_report

    run = tmp_path / "run"
    atomic_write_json(run / CONFIG_FILE, run_record("var", "0", "digits", {"seed": 0}))
    rows = [{"stage": "transformer", "step": step, "val_loss": 2.0 / step, "val_fid": 300.0 / step} for step in (1, 2)]
    (run / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    sha = "ab" * 32
    about = {"samples": 20, "reference": "tokenizer's held-out images (20)", "inception_sha256": sha}
    atomic_write_json(run / MEASURED_ON_FILE, {"val_fid": about})
    atomic_write_json(
        run / "eval.json", {"fid": 12.5, "samples": 50000, "reference": "ADM ref.npz", "inception_sha256": sha}
    )
    write_report([run], run / "report.html")
    page = (run / "report.html").read_text()
    assert 'data-title="val_fid"' in page and 'data-title="validation"' in page
    assert page.count(sha) == 2 and "held-out images (20)" in page and "ADM ref.npz" in page and "50000" in page

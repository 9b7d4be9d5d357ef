"""FID at the validations of a tiny training run, logged and plotted by `zoo report`, with a
random-weight Inception file (tests/metrics/conftest.py). The `vision` lane."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_VAR
from zoo.metrics import MEASURED_ON_FILE, weights
from zoo.metrics.fidelity import InceptionFeatures

pytestmark = pytest.mark.vision
pytest.importorskip("torch_fidelity", reason="needs torch-fidelity and a torchvision matching torch")


def test_validation_fid_is_logged_at_each_validation_and_plotted(tmp_path, inception_weights, monkeypatch):
    import zoo.api
    from zoo.report import write_report

    monkeypatch.setattr(weights, "SHA256_PREFIX", weights.sha256_of(inception_weights)[:8])
    images = []
    call = InceptionFeatures.__call__

    def counting(self, batches):
        features = call(self, batches)
        images.append(features.count)
        return features

    monkeypatch.setattr(InceptionFeatures, "__call__", counting)
    overrides = {
        **TINY_VAR,
        "tokenizer_training": {"steps": 1, "batch_size": 4},
        "transformer_training": {"steps": 2, "batch_size": 4, "validate_every": 1},
        "validation": {"metrics": ["fid", "isc"], "samples": 10},
    }
    run = zoo.api.train(
        "var", overrides=overrides, run_dir=tmp_path / "run", device="cpu", inception_weights=inception_weights
    )
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "val_fid" in row]
    assert [row["step"] for row in logged] == [1, 2] and all(row["stage"] == "transformer" for row in logged)
    assert all(row["val_fid"] > 0 and row["val_isc_mean"] > 0 and "val_loss" in row for row in logged)
    # 10 samples per validation; the held-out reference (10 images) extracted at the first only.
    assert images == [10, 10, 10]
    measured = json.loads((run.run_dir / MEASURED_ON_FILE).read_text())
    assert measured["val_fid"]["samples"] == 10 and "held-out images (10)" in measured["val_fid"]["reference"]
    assert measured["val_fid"]["inception_sha256"] == weights.sha256_of(inception_weights)
    assert measured["val_isc_mean"]["reference"] is None

    write_report([run.run_dir], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert 'data-title="val_fid"' in page and 'data-title="val_isc_mean"' in page
    assert measured["val_fid"]["inception_sha256"] in page

"""`zoo data pack | info`, and training that reads a folder in worker processes and reports
its unreadable files once."""

from __future__ import annotations

import json

import pytest

from tests.core.test_cli import cli
from tests.core.test_data_shards import truncated_png, write_folder
from tests.faults.test_data_faults import VAR_TINY
from zoo import api
from zoo.data import pack


def test_pack_then_info_on_the_command_line(capsys, tmp_path):
    folder = write_folder(tmp_path / "folder")
    (folder / "class0" / "zz.png").write_bytes(b"text, not an image")
    code, stdout, stderr = cli(
        capsys, "data", "pack", str(folder), "--out", str(tmp_path / "shards"), "--shard-size", "8"
    )
    assert code == 0
    assert "wrote 4 shards" in stdout
    assert "train 18, test 3" in stdout
    assert "skipped 1 file (first: class0/zz.png" in stdout
    assert stderr.splitlines()[-1] == "read 22 of 22 files, packed 21"  # the corrupt file is not counted as packed
    code, stdout, _ = cli(capsys, "data", "info", str(tmp_path / "shards"), "--verify")
    assert code == 0
    assert "21 items (train 18, test 3)" in stdout
    assert "sha256: all match" in stdout
    code, stdout, _ = cli(capsys, "data", "info", str(folder), "--json")
    assert code == 0
    assert json.loads(stdout)["splits"] == {"train": 19, "test": 3}
    code, _, stderr = cli(capsys, "data", "info", str(tmp_path / "shards" / "train-{000000..000009}.tar"))
    assert code == 1
    assert stderr.count("\n") == 1
    assert "train-000003.tar cannot be opened" in stderr
    code, _, stderr = cli(capsys, "data", "pack", str(folder), "--out", str(folder / "inside"))
    assert code == 1
    assert "inside the folder it packs" in stderr


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "shards"])
def test_training_reads_files_in_workers_and_reports_skips_once(capsys, tmp_path, source):
    folder = write_folder(tmp_path / "folder", classes=2, per_class=8)
    for label in range(2):
        (folder / f"class{label}" / "zz_cut.png").write_bytes(truncated_png())
    data = folder
    if source == "shards":
        pack(folder, tmp_path / "shards")
        data = tmp_path / "shards"
    tiny = {**VAR_TINY, "tokenizer_training": {"steps": 6, "batch_size": 6}, "loader": {"workers": 2}}
    api.train(
        "var", overrides=tiny, assignments=[f"data={data}"], run_dir=tmp_path / "run", device="cpu", progress="json"
    )
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    skips = [m["text"] for m in messages if m.get("event") == "message" and "skipped" in m["text"]]
    assert len(skips) == 1
    assert skips[0].startswith("tokenizer: ")
    assert "unreadable image" in skips[0], skips


def test_info_shows_the_loader_and_the_papers_augmentation(capsys):
    code, stdout, _ = cli(capsys, "info", "var", "--preset", "d16")
    line = next(line for line in stdout.splitlines() if line.startswith("data (loader, augment):"))
    assert code == 0
    assert "workers auto" in line
    assert "augment shorter side x1.125 (lanczos), random crop" in line
    code, stdout, _ = cli(capsys, "info", "var", "--preset", "digits")
    assert code == 0
    assert "augment none (centre square, bicubic)" in stdout

"""zoo.data.cache: codes of a frozen encoder, encoded once per weights, data and view count into
parts of the run's cache (split over the processes), read memory-mapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

import zoo.data.cache as cache
from tests.conftest import ROOT
from zoo import temporary
from zoo.data.cache import EncodedSet, code_array, code_dtype, encoded_set, weights_fingerprint
from zoo.errors import RunError

CODEBOOK = 300


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


class Points(Dataset):
    """Items {"image": (3,), "label": int, "index": int}; `noise` > 0 adds torch-RNG noise (an augmentation)."""

    def __init__(self, count: int, noise: float = 0.0) -> None:
        self.count, self.noise = count, noise

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        point = torch.tensor([index, index % 3, 1.0]) / 4
        return {"image": point + self.noise * torch.rand(3), "label": index % 5, "index": index}


class Encoding:
    """What `encoded_set` is given, recording which items it encoded and in which mode."""

    def __init__(self, encoder: nn.Module, fail_from: int | None = None) -> None:
        self.encoder, self.fail_from = encoder, fail_from
        self.indices: list[int] = []
        self.training: list[bool] = []

    def __call__(self, batch: dict) -> dict:
        if self.fail_from is not None and int(batch["index"].max()) >= self.fail_from:
            raise KeyboardInterrupt("killed")  # what a kill leaves: the parts written before it
        self.indices += batch["index"].tolist()
        self.training.append(self.encoder.training)
        codes = (self.encoder(batch["image"]) * 50).round().long().abs() % CODEBOOK  # (B, 2)
        return {"codes": code_array(codes, CODEBOOK), "label": batch["label"].numpy()}


def encode_points(tmp_path: Path, encoding: Encoding, count: int = 10, **options) -> EncodedSet:
    options = {"source": "points", "part_items": 4, "batch_size": 3, **options}
    noise = options.pop("noise", 0.0)
    return encoded_set(
        tmp_path, "codes-train", encoding.encoder, lambda view: Points(count, noise), encoding, **options
    )


def rows(encoded: EncodedSet) -> list[tuple[list[int], int]]:
    return [(item["codes"].tolist(), item["label"]) for item in (encoded[i] for i in range(len(encoded)))]


def parts_of(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("codes-train-*/part-*.safetensors"))


def test_the_set_is_encoded_once_per_weights_and_again_for_changed_ones(tmp_path):
    encoder = _encoder().train()
    first = Encoding(encoder)
    encoded = encode_points(tmp_path, first)
    assert sorted(first.indices) == list(range(10)) and not any(first.training) and encoder.training
    again = Encoding(encoder)
    assert rows(encode_points(tmp_path, again)) == rows(encoded) and again.indices == []

    with torch.no_grad():
        encoder[1].running_mean += 1  # a buffer changes the encoder too
    changed = Encoding(encoder)
    assert rows(encode_points(tmp_path, changed)) != rows(encoded) and len(changed.indices) == 10
    assert len(list(tmp_path.glob("codes-train-*"))) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_items_are_int64_tensors_and_int_labels_and_views_sit_side_by_side(tmp_path):
    encoded = encode_points(tmp_path, Encoding(_encoder()), count=10, views=2, noise=1.0)
    assert len(encoded) == 20 and len(parts_of(tmp_path)) == 3  # 4 + 4 + 2 items
    item = encoded[5]  # item 2, view 1
    assert item["codes"].dtype == torch.int64 and item["codes"].shape == (2,) and item["label"] == 2
    views = [encoded[2 * i]["codes"] for i in range(10)], [encoded[2 * i + 1]["codes"] for i in range(10)]
    assert any(not torch.equal(a, b) for a, b in zip(*views, strict=True))  # differently augmented
    with pytest.raises(IndexError):
        encoded[20]
    plain = encode_points(tmp_path / "plain", Encoding(_encoder()), count=10)
    assert len(plain) == 10 and plain[9]["label"] == 4


def test_codes_are_uint16_when_the_codebook_allows_and_int32_above():
    assert code_dtype(2) == code_dtype(65536) == np.uint16 and code_dtype(65537) == np.int32
    codes = torch.tensor([0, 65535])
    assert code_array(codes, 65536).dtype == np.uint16 and code_array(codes, 65536).tolist() == [0, 65535]
    assert code_array(torch.tensor([70000]), 80000).tolist() == [70000]


def test_parts_are_uint16_memory_maps_and_are_mapped_again_after_pickling(tmp_path):
    import pickle

    encoded = encode_points(tmp_path, Encoding(_encoder()))
    part = encoded.part(0)
    assert isinstance(part["codes"], np.memmap) and part["codes"].dtype == np.uint16 and part["codes"].shape == (4, 2)
    assert part["label"].dtype == np.int64
    copy = pickle.loads(pickle.dumps(encoded))  # what a DataLoader worker receives under spawn
    assert len(pickle.dumps(encoded)) < 2000 and rows(copy) == rows(encoded)


def _memory() -> dict[str, int]:
    """This process's resident memory in kB: anonymous (its own) and file-backed (the page cache)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) for name in ("RssAnon", "RssFile")}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status (Linux)")
def test_reading_every_item_does_not_grow_resident_memory_by_the_data(tmp_path):
    items, length = 3000, 4096  # 3,000 items of 4,096 uint16 codes: 24 MB on disk, 98 MB as int64

    def encode(batch: dict) -> dict:
        index = batch["index"].numpy()[:, None]
        return {"codes": ((index * 7 + np.arange(length)) % CODEBOOK).astype(np.uint16), "label": index[:, 0]}

    encoder = nn.Linear(1, 1)
    encoded_set(tmp_path, "big", encoder, lambda view: Points(items), encode, source="big", part_items=1000)
    before = _memory()
    reopened = encoded_set(tmp_path, "big", encoder, lambda view: Points(items), encode, source="big", part_items=1000)
    checksum = sum(int(reopened[i]["codes"][i % length]) for i in range(items))  # touches every row
    after = _memory()
    assert checksum == sum((i * 7 + i % length) % CODEBOOK for i in range(items))
    assert after["RssAnon"] - before["RssAnon"] < 8_000  # kB: not the 24 MB of codes
    assert after["RssFile"] - before["RssFile"] < 40_000  # the mapped pages: reclaimable file cache


def test_a_killed_encoding_keeps_its_complete_parts_and_redoes_the_rest(tmp_path):
    encoder = _encoder()
    with pytest.raises(KeyboardInterrupt):
        encode_points(tmp_path, Encoding(encoder, fail_from=8))  # parts 0 and 1 written, part 2 not
    written = parts_of(tmp_path)
    assert [path.name for path in written] == ["part-00000.safetensors", "part-00001.safetensors"]
    leftover = written[0].parent / temporary.new_name(".part-00002.safetensors")  # a write the kill cut short
    temporary.record(leftover.parent, leftover.name)
    leftover.mkdir()
    (leftover / "part-00002.safetensors").write_bytes(b"half")
    lookalike = written[0].parent / ".part-00002.safetensors.x1y2.tmp"  # not recorded: not zoo's to delete
    lookalike.write_bytes(b"someone's")
    written[1].write_bytes(written[1].read_bytes()[:-3])  # truncated: redone
    untouched = written[0].stat().st_mtime_ns

    resumed = Encoding(encoder)
    encoded = encode_points(tmp_path, resumed)
    assert sorted(resumed.indices) == [4, 5, 6, 7, 8, 9]  # parts 1 and 2 only
    assert written[0].stat().st_mtime_ns == untouched and not leftover.exists() and lookalike.exists()
    assert rows(encoded) == rows(encode_points(tmp_path / "fresh", Encoding(encoder)))


def test_another_source_or_view_count_is_another_set(tmp_path):
    encoder = _encoder()
    encode_points(tmp_path, Encoding(encoder))
    for options in ({"source": "other points"}, {"views": 2}):
        encoding = Encoding(encoder)
        encode_points(tmp_path, encoding, **options)
        assert len(encoding.indices) == 10 * options.get("views", 1)
    assert len(list(tmp_path.glob("codes-train-*"))) == 3
    assert len({path.name.rsplit("-", 1)[0] for path in tmp_path.glob("codes-train-*")}) == 1  # one fingerprint


def test_the_fingerprint_sees_names_values_and_dtypes():
    encoder = _encoder()
    base = weights_fingerprint(encoder)
    assert weights_fingerprint(_encoder()) == base
    with torch.no_grad():
        encoder[0].weight[0, 0] += 1e-6
    assert weights_fingerprint(encoder) != base
    assert weights_fingerprint(_encoder().double()) != base
    renamed = nn.Sequential()
    renamed.add_module("first", _encoder()[0])
    renamed.add_module("1", _encoder()[1])
    assert weights_fingerprint(renamed) != base


def test_parts_go_through_the_atomic_writer(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(cache, "atomic_save_tensors", lambda path, tensors, metadata=None: written.append(path))
    with pytest.raises(RunError, match="missing or unreadable after encoding"):
        encode_points(tmp_path, Encoding(_encoder()))
    assert [path.name for path in written] == [f"part-0000{i}.safetensors" for i in range(3)]
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing was written behind the writer's back


SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from tests.core.test_frozen_cache import Encoding, _encoder, encode_points
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    encoding = Encoding(_encoder())
    encoded = encode_points(Path(sys.argv[1]), encoding, count=11, views=2, noise=1.0, seed=7)
    rank = dist.get_rank() if dist.is_initialized() else 0
    Path(sys.argv[1], f"rank{{rank}}.json").write_text(json.dumps(
        {{"encoded": encoding.indices, "items": [encoded[i]["codes"].tolist() for i in range(len(encoded))]}}))
    if dist.is_initialized():
        dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_processes_write_the_set_one_process_writes(tmp_path):
    script = tmp_path / "encode.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, timeout=120, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    subprocess.run([*torchrun, str(script), str(tmp_path / "two")], check=True, timeout=240, env=env)

    one, two = parts_of(tmp_path / "one"), parts_of(tmp_path / "two")
    assert [path.name for path in one] == [path.name for path in two] and len(one) == 3
    for a, b in zip(one, two, strict=True):  # the same arrays and headers (safetensors orders its JSON at random)
        with safe_open(a, "np") as file_a, safe_open(b, "np") as file_b:
            assert file_a.metadata() == file_b.metadata() and sorted(file_a.keys()) == sorted(file_b.keys())
            for key in file_a.keys():
                array_a, array_b = file_a.get_tensor(key), file_b.get_tensor(key)
                assert array_a.dtype == array_b.dtype and np.array_equal(array_a, array_b)
    reports = [json.loads((tmp_path / "two" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(reports[0]["encoded"]) == [0, 0, 1, 1, 2, 2, 3, 3, 8, 8, 9, 9, 10, 10]  # parts 0 and 2, 2 views
    assert sorted(reports[1]["encoded"]) == [4, 4, 5, 5, 6, 6, 7, 7]  # part 1
    assert (
        reports[0]["items"] == reports[1]["items"] == json.loads((tmp_path / "one" / "rank0.json").read_text())["items"]
    )

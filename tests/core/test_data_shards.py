"""zoo.data.shards: packing a folder into WebDataset shards, describing it, and reading
shards by index like a folder (same items, same splits), with bad members skipped."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset.writer import TarWriter

from zoo.data import caption_set, image_folder, info, load_images, pack
from zoo.data.packing import describe
from zoo.data.shards import INDEX_FILE, ShardSet, scan_shard
from zoo.errors import DataError
from zoo.runtime.manifest import sha256_file

torch.set_num_threads(1)


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (10, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]  # the header reads, the pixels do not


def write_folder(root, classes: int = 3, per_class: int = 7):
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(per_class):
            (root / f"class{label}" / f"{index:02d}.png").write_bytes(png_bytes((40 * label, 30 * index, 7)))
    return root


def read_all(dataset) -> list[dict]:
    return [dataset[index] for index in range(len(dataset))]


def test_pack_writes_the_folders_splits_as_shards_with_an_index(tmp_path):
    folder = write_folder(tmp_path / "folder")
    (folder / "class1" / "99.png").write_bytes(b"not an image")  # fails the header check: not packed
    report = pack(folder, tmp_path / "shards", shard_size=4)
    index = json.loads((tmp_path / "shards" / INDEX_FILE).read_text())
    train, test = image_folder(folder, 8, "train"), image_folder(folder, 8, "test")
    assert report.items == {"train": len(train) - 1, "test": len(test)} == index["zoo"]["items"]
    assert [path for path, _ in report.skipped] == ["class1/99.png"]
    assert index["__kind__"] == "wids-shard-index-v1"
    assert index["zoo"]["classes"] == ["class0", "class1", "class2"]
    for entry in index["shardlist"]:
        shard = tmp_path / "shards" / entry["url"]
        assert entry["sha256"] == sha256_file(shard)
        assert entry["filesize"] == shard.stat().st_size
        assert entry["nsamples"] == len(scan_shard(shard)[0]) <= 4
        assert entry["url"].startswith(entry["split"] + "-")
    assert sum(entry["nsamples"] for entry in index["shardlist"]) == sum(report.items.values())
    # the image bytes as stored, the label as text
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as archive:
        names = archive.getnames()
        assert names[:2] == ["000000000.cls", "000000000.png"]
        assert archive.extractfile("000000000.png").read() == (folder / train.paths[0]).read_bytes()
    # packing is deterministic: the same folder gives the same shards
    pack(folder, tmp_path / "again", shard_size=4)
    again = json.loads((tmp_path / "again" / INDEX_FILE).read_text())
    assert [e["sha256"] for e in again["shardlist"]] == [e["sha256"] for e in index["shardlist"]]


def test_shards_read_the_items_of_the_folder_in_each_split(tmp_path):
    folder = write_folder(tmp_path / "folder")
    pack(folder, tmp_path / "shards", shard_size=5)
    from_folder = {split: read_all(image_folder(folder, 8, split)) for split in ("train", "test")}
    from_folder["all"] = from_folder["train"] + from_folder["test"]  # the shards hold train, then test
    for split, expected in from_folder.items():
        shards = load_images(str(tmp_path / "shards"), 8, split)
        assert isinstance(shards, ShardSet)
        assert shards.class_names == ["class0", "class1", "class2"]
        found = read_all(shards)
        assert [item["label"] for item in found] == [item["label"] for item in expected]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(found, expected, strict=True))


def test_caption_sets_pack_one_sample_per_caption_line(tmp_path):
    folder = tmp_path / "captions"
    folder.mkdir()
    lines = []
    for index in range(6):
        (folder / f"{index}.png").write_bytes(png_bytes((index * 40, 0, 0)))
        lines += [{"image": f"{index}.png", "caption": f"picture {index}"}] * (2 if index == 0 else 1)
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    pack(folder, tmp_path / "shards")
    for split in ("train", "test"):
        shards, captions = load_images(str(tmp_path / "shards"), 8, split), caption_set(folder, 8, split)
        assert [item["caption"] for item in read_all(shards)] == list(captions.captions)
        assert list(shards.captions) == list(captions.captions)  # what a tokenizer trains on, no image decoded
        assert "label" not in shards[0]
    assert load_images(str(tmp_path / "shards"), 8).__class__ is ShardSet
    assert write_folder(tmp_path / "labelled")
    assert pack(tmp_path / "labelled", tmp_path / "labelled_shards")
    assert load_images(str(tmp_path / "labelled_shards"), 8).captions is None


def test_a_brace_pattern_names_shards_and_keeps_the_held_out_ones(tmp_path):
    pack(write_folder(tmp_path / "folder"), tmp_path / "shards", shard_size=5)
    train_shards = sorted(p.name for p in (tmp_path / "shards").glob("train-*.tar"))
    assert train_shards == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar"]
    directory = load_images(str(tmp_path / "shards"), 8, "train")
    pattern = str(tmp_path / "shards" / "train-{000000..000003}.tar")
    assert len(load_images(pattern, 8, "train")) == len(directory)
    assert len(load_images(pattern, 8, "test")) == len(load_images(str(tmp_path / "shards"), 8, "test"))
    assert len(load_images(str(tmp_path / "shards" / "train-{000000..000001}.tar"), 8, "train")) == 10


def test_shards_without_an_index_are_counted_and_split_like_a_folder(tmp_path):
    (tmp_path / "foreign").mkdir()
    for shard in range(2):
        with (tmp_path / "foreign" / f"part-{shard}.tar").open("wb") as stream:
            writer = TarWriter(stream)
            for index in range(10):
                key = f"sample{shard * 10 + index:04d}"
                writer.write({"__key__": key, "jpg": png_bytes((index * 20, 0, 0)), "cls": shard * 10 + index})
            writer.close()
    everything = load_images(str(tmp_path / "foreign"), 8, "all")
    train, test = (load_images(str(tmp_path / "foreign"), 8, split) for split in ("train", "test"))
    assert len(everything) == 20
    assert len(train) == 18
    assert len(test) == 2
    assert everything.class_names == []
    labels = {item["label"] for item in read_all(train)} | {item["label"] for item in read_all(test)}
    assert labels == set(range(20))
    facts = info(tmp_path / "foreign")
    assert facts["items"] == 20
    assert facts["splits"] == {"unsplit": 20}
    assert not facts["index"]


def test_bad_members_are_skipped_and_counted_when_read(tmp_path):
    folder = write_folder(tmp_path / "folder", classes=2, per_class=6)
    (folder / "class0" / "03.png").write_bytes(truncated_png())  # passes pack's header check
    pack(folder, tmp_path / "shards", shard_size=20)
    shard = tmp_path / "shards" / "train-000000.tar"
    with tarfile.open(shard) as archive:  # sample 7 without its image
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with shard.open("wb") as stream:
        with tarfile.open(fileobj=stream, mode="w") as archive:
            for member, data in members:
                if member.name != "000000007.png":
                    archive.addfile(member, io.BytesIO(data))
    dataset = load_images(str(tmp_path / "shards"), 8, "all")
    items = read_all(dataset)
    assert len(items) == len(dataset) == 12
    assert dataset.skipped == 2
    reasons = dict(dataset.skipped_files)
    assert any("truncated" in reason for reason in reasons.values())
    assert any("no image member" in reason for reason in reasons.values())
    assert "skipped 2 unreadable images" in dataset.summary()


def test_a_shard_cut_short_loses_its_tail_items_not_the_run(tmp_path):
    pack(write_folder(tmp_path / "folder", classes=1, per_class=12), tmp_path / "shards", shard_size=20)
    shard = tmp_path / "shards" / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: 4 * 1024 + 100])  # four samples and a bit
    dataset = load_images(str(tmp_path / "shards"), 8, "train")
    items = read_all(dataset)
    assert len(items) == 11
    assert dataset.skipped >= 6
    assert "cut short" in dict(dataset.skipped_files)[f"{shard.name} sample 10"]


def test_shards_that_cannot_be_opened_are_named(tmp_path):
    pack(write_folder(tmp_path / "folder", classes=1, per_class=6), tmp_path / "shards", shard_size=2)
    with pytest.raises(DataError, match="train-000003.tar cannot be opened .No such file"):
        load_images(str(tmp_path / "shards" / "train-{000000..000009}.tar"), 8)
    (tmp_path / "shards" / "train-000001.tar").write_text("not a tar file at all" * 40)
    with pytest.raises(DataError, match=r"shard .*train-000001.tar is not a tar file"):
        load_images(str(tmp_path / "shards"), 8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / INDEX_FILE).write_text(json.dumps({"shardlist": []}))
    with pytest.raises(DataError, match="no shards in"):
        load_images(str(tmp_path / "empty"), 8)
    with pytest.raises(DataError, match="brace pattern"):
        load_images(str(tmp_path / "shards" / "train-*.tar"), 8)


def test_info_describes_folders_and_shards_and_verifies_hashes(tmp_path):
    folder = write_folder(tmp_path / "folder")
    folder_facts = info(folder)
    assert folder_facts["kind"] == "image folder"
    assert folder_facts["items"] == 21
    assert folder_facts["splits"] == {"train": 18, "test": 3} and folder_facts["classes"] == [
        "class0",
        "class1",
        "class2",
    ]
    pack(folder, tmp_path / "shards", shard_size=8)
    facts = info(tmp_path / "shards", verify=True)
    assert facts["kind"] == "shards"
    assert facts["items"] == 21
    assert facts["splits"] == {"train": 18, "test": 3}
    assert facts["shards"] == 4
    assert facts["mismatched"] == []
    assert facts["captions"] is False
    lines = describe(facts)
    assert lines[0].endswith("21 items (train 18, test 3)")
    assert "sha256: all match" in lines[-1]
    shard = tmp_path / "shards" / "test-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1] + b"!")
    assert info(tmp_path / "shards", verify=True)["mismatched"] == [str(shard.resolve())]

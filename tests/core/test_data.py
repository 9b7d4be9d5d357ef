"""zoo.data: embedded sets, user folders, load_images and the digit classifier."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.tolerances import EPS32
from zoo.data import (
    DigitsClassifier,
    caption_set,
    digits,
    image_folder,
    load_images,
    photos,
    shapes,
    shapes_vocabulary,
    split_indices,
    textures,
)
from zoo.data.embedded import split_region
from zoo.data.shapes import COLORS, SIZES
from zoo.errors import DataError, UnknownNameError

torch.set_num_threads(1)


def stack(dataset, count: int) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in range(count)])


# --- splits -------------------------------------------------------------------------------


def test_split_indices_are_disjoint_stratified_and_fixed():
    labels = np.repeat(np.arange(4), 20)
    train, test = split_indices(len(labels), 0.1, seed=3, labels=labels)
    assert len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == 80
    assert np.bincount(labels[test]).tolist() == [2, 2, 2, 2]
    again, _ = split_indices(len(labels), 0.1, seed=3, labels=labels)
    assert np.array_equal(train, again)
    assert len(split_indices(2, 0.1)[1]) == 1  # a tiny set still has a test image


# --- digits ---------------------------------------------------------------------------------


def test_digits_shapes_range_and_fixed_heldout_split():
    train, test = digits(size=16, split="train"), digits(size=16, split="test", seed=5)
    assert len(train) + len(test) == 1797
    assert 170 <= len(test) <= 185
    item = train[0]
    assert item["image"].shape == (3, 16, 16)
    assert item["image"].dtype == torch.float32
    assert isinstance(item["label"], int)
    images = train.images
    assert images.min() >= -1.0
    assert images.max() <= 1.0
    assert images[:, :, 0, 0].mean() < -0.9  # dark background, bright strokes
    assert images.amax(dim=(1, 2, 3)).min() > 0.5
    assert sorted(set(test.labels.tolist())) == list(range(10))
    # the test split does not depend on the seed, and shares no image with train
    assert torch.equal(digits(16, "test", seed=0).images, test.images)
    flat_train = {tuple(row) for row in train.images.flatten(1).numpy().round(4)}
    shared = sum(tuple(row) in flat_train for row in test.images.flatten(1).numpy().round(4))
    assert shared <= 2  # sklearn's digits hold a couple of exact duplicates, no more


# --- photos and textures ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [photos, textures])
def test_crops_are_deterministic_and_seed_dependent(make):
    first = stack(make(size=24, count=6, seed=1), 6)
    assert first.shape == (6, 3, 24, 24)
    assert first.min() >= -1.0
    assert first.max() <= 1.0
    assert first.std() > 0.1
    assert torch.equal(first, stack(make(size=24, count=6, seed=1), 6))
    assert not torch.equal(first, stack(make(size=24, count=6, seed=2), 6))
    # train and test crops come from different images regions, so they differ
    test = stack(make(size=24, count=6, split="test", seed=1), 6)
    assert (first[:, None] - test[None]).abs().flatten(2).amax(-1).min() > 0.1
    with pytest.raises(IndexError):
        make(size=24, count=6)[6]


@pytest.mark.parametrize("width,height", [(640, 427), (300, 451), (512, 512)])
def test_train_and_test_regions_do_not_overlap(width, height):
    train, test = split_region(width, height, "train"), split_region(width, height, "test")
    overlap_x = min(train[2], test[2]) - max(train[0], test[0])
    overlap_y = min(train[3], test[3]) - max(train[1], test[1])
    assert overlap_x <= 0 or overlap_y <= 0
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    assert area(train) + area(test) == width * height


def test_textures_include_colour_and_grayscale():
    images = stack(textures(size=16, count=60), 60)
    channel_spread = (images.amax(dim=1) - images.amin(dim=1)).flatten(1).mean(1)  # 0 for gray images
    assert (channel_spread == 0).any()  # gray: one value copied to the three channels
    assert (channel_spread > 0.1).any()


# --- shapes ---------------------------------------------------------------------------------


def test_shapes_captions_match_the_drawing():
    dataset = shapes(size=32, count=40, seed=0)
    for index in range(40):
        item = dataset[index]
        attributes, image = item["attributes"], item["image"]
        words = item["caption"].split()
        assert {attributes["color"], attributes["shape"], attributes["size"], attributes["position"]} <= set(words)
        assert set(words) <= set(shapes_vocabulary(1))
        # the object's pixels: far from the dark plain background
        pixels = (image + 1) * 127.5  # (3, H, W) in 0..255
        contrast = (pixels - pixels[:, :1, :1]).abs().amax(0)
        mask = contrast > 60
        colour = pixels.flatten(1)[:, contrast.argmax()]  # an inner pixel, not an anti-aliased edge
        # the fill is the named colour jittered by at most 15 a channel (zoo/data/shapes.py);
        # half a level more for the round trip through [-1, 1] in float32
        expected = torch.tensor(COLORS[attributes["color"]], dtype=torch.float32)
        assert torch.allclose(colour, expected, rtol=0, atol=15.5), (colour, expected)
        rows, cols = torch.nonzero(mask, as_tuple=True)
        x, y = cols.float().mean() / 32, rows.float().mean() / 32
        expected = {
            "left": x < 0.4,
            "right": x > 0.6,
            "top": y < 0.4,
            "bottom": y > 0.6,
            "center": abs(x - 0.5) < 0.1 and abs(y - 0.5) < 0.1,
        }[attributes["position"]]
        assert expected, (item["caption"], float(x), float(y))
        radius = (mask.sum().item() / np.pi) ** 0.5 / 32
        assert (radius > 0.12) == (attributes["size"] == "large"), (item["caption"], radius)


def test_shapes_deterministic_split_and_collate():
    train = shapes(size=16, count=30, seed=4, max_objects=3)
    again = shapes(size=16, count=30, seed=4, max_objects=3)
    test = shapes(size=16, count=30, split="test", seed=4, max_objects=3)
    assert [train[i]["caption"] for i in range(30)] == [again[i]["caption"] for i in range(30)]
    assert torch.equal(stack(train, 30), stack(again, 30))
    train_images = stack(train, 30)
    assert (train_images[:, None] - stack(test, 30)[None]).abs().flatten(2).amax(-1).min() > 0
    assert {train[i]["attributes"]["count"] for i in range(30)} == {"one", "two", "three"}
    assert any(train[i]["caption"].startswith("two ") for i in range(30))
    batch = next(iter(DataLoader(train, batch_size=5)))
    assert batch["image"].shape == (5, 3, 16, 16)
    assert len(batch["caption"]) == 5
    assert isinstance(batch["attributes"]["color"], list)
    assert len(batch["attributes"]["shape"]) == 5
    assert set(SIZES) == {"small", "large"}


# --- user folders ---------------------------------------------------------------------------


def write_mixed_folder(root):
    """Two classes; every unusual PNG mode; one corrupt file; a text file to ignore."""
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "deeper").mkdir(parents=True)
    Image.new("L", (20, 10), 200).save(root / "cats" / "gray.png")
    rgba = Image.new("RGBA", (12, 12), (255, 0, 0, 0))  # fully transparent -> white
    rgba.save(root / "cats" / "rgba.png")
    palette = Image.new("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 1 is blue
    palette.save(root / "dogs" / "palette.png")
    Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16)).save(root / "dogs" / "deeper" / "sixteen.png")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "dogs" / "notes.txt").write_text("not an image")


def test_image_folder_converts_modes_and_skips_corrupt_when_read(tmp_path):
    write_mixed_folder(tmp_path)
    assert Image.open(tmp_path / "dogs" / "deeper" / "sixteen.png").mode.startswith("I;16")
    dataset = image_folder(tmp_path, size=8)
    assert dataset.class_names == ["cats", "dogs"]
    assert len(dataset) == 5  # listed: the corrupt file too
    items = {path: dataset[i] for i, path in enumerate(dataset.paths)}
    assert dataset.skipped == 1
    assert dataset.skipped_files[0][0] == "dogs/broken.png"
    assert "skipped 1 unreadable image (first: dogs/broken.png" in dataset.summary()
    # the corrupt file's item is the next readable one's
    assert torch.equal(items["dogs/broken.png"]["image"], items["dogs/deeper/sixteen.png"]["image"])
    assert items["cats/gray.png"]["label"] == 0
    assert items["dogs/palette.png"]["label"] == 1
    assert items["dogs/deeper/sixteen.png"]["label"] == 1  # deeper folders belong to their class
    for item in items.values():
        assert item["image"].shape == (3, 8, 8)
    assert torch.allclose(items["cats/rgba.png"]["image"], torch.ones(3, 8, 8))  # composited on white
    assert torch.allclose(items["cats/gray.png"]["image"], torch.full((3, 8, 8), 200 / 127.5 - 1))
    assert torch.allclose(items["dogs/palette.png"]["image"][:, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    assert torch.allclose(items["dogs/deeper/sixteen.png"]["image"], torch.ones(3, 8, 8))  # 65535 -> white


def test_image_folder_without_classes_and_splits(tmp_path):
    for index in range(10):
        Image.new("RGB", (16, 16), (index * 20, 0, 0)).save(tmp_path / f"{index}.jpg")
    everything = image_folder(tmp_path, size=4)
    assert everything.class_names == []
    assert {everything[i]["label"] for i in range(10)} == {0}
    train, test = image_folder(tmp_path, 4, "train"), image_folder(tmp_path, 4, "test")
    assert len(train) == 9
    assert len(test) == 1
    assert not set(train.paths) & set(test.paths)


def test_empty_or_unreadable_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no readable images"):
        image_folder(tmp_path, size=8)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="skipped 1 .first: bad.png"):
        image_folder(tmp_path, size=8)
    with pytest.raises(DataError, match="not a directory"):
        image_folder(tmp_path / "missing", size=8)


def write_caption_images(root):
    for name, colour in [("a.png", (255, 0, 0)), ("b.png", (0, 255, 0))]:
        Image.new("RGB", (10, 10), colour).save(root / name)
    (root / "sub").mkdir()
    Image.new("LA", (10, 10), (0, 255)).save(root / "sub" / "c.png")


def test_caption_set_from_jsonl_skips_missing_and_bad_lines(tmp_path, caplog):
    write_caption_images(tmp_path)
    lines = [
        {"image": "a.png", "caption": "a red square"},
        {"image": "a.png", "caption": "something red"},
        {"image": "sub/c.png", "caption": "black"},
        {"image": "missing.png", "caption": "nothing"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    (tmp_path / "captions.jsonl").write_text(text)
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        dataset = caption_set(tmp_path, size=4)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert dataset.skipped == 2
    assert len(dataset) == 3
    assert [dataset[i]["caption"] for i in range(3)] == ["a red square", "something red", "black"]
    assert torch.allclose(dataset[0]["image"][:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(dataset[2]["image"], -torch.ones(3, 4, 4))
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 4, 4)
    assert batch["caption"][2] == "black"


def test_caption_set_from_csv_and_through_load_images(tmp_path):
    write_caption_images(tmp_path)
    (tmp_path / "captions.csv").write_text('image,caption\na.png,"red, bright"\nb.png,green\n')
    dataset = load_images(str(tmp_path), size=4, split="all")
    assert [dataset[i]["caption"] for i in range(len(dataset))] == ["red, bright", "green"]
    (tmp_path / "captions.csv").write_text("file,text\na.png,red\n")
    with pytest.raises(DataError, match="image,caption"):
        caption_set(tmp_path, size=4)


# --- load_images ------------------------------------------------------------------------------


def test_load_images_names_folders_and_unknown_specs(tmp_path):
    assert len(load_images("shapes", 16, count=7)) == 7
    assert load_images("photos", 16, count=3)[2]["image"].shape == (3, 16, 16)
    subset = load_images("digits", 8, split="test", count=20, seed=1)
    assert len(subset) == 20
    assert subset.class_names[3] == "3"
    write_mixed_folder(tmp_path)
    folder = load_images(str(tmp_path), 8, split="all")
    [folder[i] for i in range(len(folder))]  # unreadable files are found when read
    assert folder.class_names == ["cats", "dogs"]
    assert folder.skipped == 1
    with pytest.raises(UnknownNameError, match="Did you mean 'digits'"):
        load_images("digit", 8)
    with pytest.raises(DataError, match="is a file"):
        load_images(str(tmp_path / "cats" / "gray.png"), 8)


# --- the digit classifier ------------------------------------------------------------------------


def test_digits_classifier_is_accurate_confident_and_rejects_non_digits():
    classifier = DigitsClassifier()
    assert classifier.accuracy_on_real_test(size=32) >= 0.95
    test = digits(size=24, split="test")
    images = test.images.expand(-1, 3, -1, -1).numpy()  # numpy input works too
    probabilities = classifier.predict_proba(images)
    assert probabilities.shape == (len(test), 10)
    # ten probabilities add up to 1 but for ten float32 roundings at most
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=0, atol=10 * EPS32)
    assert (probabilities.max(1) >= 0.8).mean() >= 0.85
    assert (probabilities.argmax(1) == test.labels.numpy()).mean() >= 0.95
    blank = -torch.ones(4, 3, 32, 32)
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for not_digits in (blank, noise, stack(shapes(size=32, count=4), 4)):
        assert classifier.predict_proba(not_digits).max() < 0.5
    metrics = classifier.score(images, labels=test.labels.numpy())
    assert metrics["class_accuracy"] >= 0.95
    assert metrics["classes_covered"] == 10

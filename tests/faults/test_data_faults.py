"""Bad training data: unreadable files are skipped and counted when they are read (their
items are the next readable ones), a source or split with nothing readable is one
DataError before training, and a finished QuantArt run samples and exports without its
training data."""

from __future__ import annotations

import io
import json
import logging
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_VAR
from zoo import api
from zoo.data import caption_set, folders, image_folder, load_images, split_indices
from zoo.errors import DataError

torch.set_num_threads(1)

BAD_FILES = ("truncated.png", "text.png", "empty.jpg", "huge.png")


@pytest.fixture(scope="module")
def bad_file_bytes() -> dict[str, bytes]:
    """The contents of BAD_FILES: a PNG cut in half, text named .png, a zero-byte .jpg, and a
    12000 x 12000 PNG (144 megapixels, a few kilobytes: past Pillow's bomb warning)."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    png, huge = io.BytesIO(), io.BytesIO()
    noise.save(png, format="PNG")
    Image.new("1", (12000, 12000)).save(huge, format="PNG")
    return {
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "text.png": b"not an image\n",
        "empty.jpg": b"",
        "huge.png": huge.getvalue(),
    }


def write_good(folder, count: int, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(start, start + count):
        Image.new("RGB", (12, 12), (20 * index % 256, 100, 50)).save(folder / f"good{index}.png")
        names.append(f"good{index}.png")
    return names


def write_bad(folder, contents: dict[str, bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return list(contents)


def write_captions(root, names: list[str], kind: str) -> None:
    if kind == "jsonl":
        lines = [json.dumps({"image": name, "caption": f"picture {name}"}) for name in names]
        (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    else:
        (root / "captions.csv").write_text("image,caption\n" + "".join(f"{name},picture {name}\n" for name in names))


def one_line_data_error(call) -> str:
    with pytest.raises(DataError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


# --- image folders and caption sets -----------------------------------------------------------


def read_all(dataset) -> list[dict]:
    return [dataset[index] for index in range(len(dataset))]


def test_bad_files_are_skipped_counted_and_raise_no_pillow_warning(tmp_path, bad_file_bytes):
    write_good(tmp_path / "cats", 5)
    write_bad(tmp_path / "cats", bad_file_bytes)
    write_good(tmp_path / "dogs", 5, start=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not reach the user
        dataset = image_folder(tmp_path, size=8)
        items = read_all(dataset)
    assert len(dataset) == len(items) == 14
    assert dataset.skipped == len(BAD_FILES)
    assert {path for path, _ in dataset.skipped_files} == {f"cats/{name}" for name in BAD_FILES}
    reasons = dict(dataset.skipped_files)
    assert "12000x12000" in reasons["cats/huge.png"]
    summary = dataset.summary()
    assert "\n" not in summary
    assert "14 images in 2 classes" in summary
    assert f"skipped {len(BAD_FILES)}" in summary
    read_all(dataset)  # a file read again is not counted again
    assert dataset.skipped == len(BAD_FILES)


def test_pixel_limit_follows_the_runtime_setting(tmp_path, monkeypatch):
    write_good(tmp_path, 2)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "1000")  # 40 x 40 = 1600 is over it
    dataset = image_folder(tmp_path, size=8)
    read_all(dataset)
    assert list(dataset.paths) == ["big.png", "good0.png", "good1.png"]
    assert [path for path, _ in dataset.skipped_files] == ["big.png"]


@pytest.mark.parametrize("layout", ["flat", "jsonl"])
def test_a_split_of_unreadable_files_is_one_data_error_and_the_other_reads(tmp_path, bad_file_bytes, layout):
    # One readable image among bad ones: the split is made over the listed files (nothing
    # is decoded to list them), so the held-out file is a bad one or the good one.
    names = write_good(tmp_path, 1) + write_bad(tmp_path, bad_file_bytes)
    if layout == "jsonl":
        write_captions(tmp_path, names, "jsonl")
    listed = names if layout == "jsonl" else sorted(names)  # the caption file's order, the folder's sorted
    held_out = listed[int(split_indices(len(names))[1][0])]
    reader = caption_set if layout == "jsonl" else image_folder
    good_split, bad_split = ("test", "train") if held_out == "good0.png" else ("train", "test")
    message = one_line_data_error(lambda: reader(tmp_path, 8, bad_split))
    assert "no readable images" in message
    assert f"({bad_split} split)" in message
    assert "skipped" in message
    colour = torch.tensor([0.0, 100.0, 50.0]) / 127.5 - 1  # good0.png's one colour
    for item in read_all(reader(tmp_path, 8, good_split)):
        assert torch.allclose(item["image"], colour[:, None, None].expand(3, 8, 8))


def test_splits_of_listed_files_are_disjoint_and_every_class_is_held_out(tmp_path, bad_file_bytes):
    for label in ("a", "b"):
        write_good(tmp_path / label, 3)
        write_bad(tmp_path / label, bad_file_bytes)
    train, test = image_folder(tmp_path, 8, "train"), image_folder(tmp_path, 8, "test")
    assert len(train) == 12
    assert len(test) == 2
    assert not set(train.paths) & set(test.paths)
    assert sorted(test.labels.tolist()) == [0, 1]


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_caption_set_skips_bad_images_and_paths_outside_the_folder(tmp_path, bad_file_bytes, kind):
    root = tmp_path / "set"
    good = write_good(root, 4)
    bad = write_bad(root, bad_file_bytes)
    write_good(tmp_path, 1, start=9)  # readable, but outside the caption folder
    outside = ["../good9.png", str(tmp_path / "good9.png")]
    write_captions(root, good + bad + outside, kind)
    dataset = caption_set(root, size=8)
    assert sorted(dataset.paths) == sorted(good + bad)
    assert len(dataset) == len(good + bad)
    assert dataset.skipped == len(outside)  # left out by the listing
    captions = {item["caption"] for item in read_all(dataset)}
    assert captions == {f"picture {name}" for name in good}  # a bad image's item is the next good one's
    assert dataset.skipped == len(bad) + len(outside)
    reasons = [reason for _, reason in dataset.skipped_files]
    assert sum("outside the caption folder" in reason for reason in reasons) == len(outside)
    assert "\n" not in dataset.summary()
    assert f"skipped {len(bad) + len(outside)}" in dataset.summary()


def test_symbolic_links_in_a_caption_folder_that_lead_outside_it_are_skipped_and_counted(tmp_path):
    root = tmp_path / "set"
    good = write_good(root, 3)
    write_good(tmp_path / "elsewhere", 1, start=9)
    (root / "link.png").symlink_to(tmp_path / "elsewhere" / "good9.png")  # a file outside
    (root / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a folder outside
    (root / "inside.png").symlink_to(root / good[0])  # stays inside: read
    write_captions(root, [*good, "link.png", "sub/good9.png", "inside.png"], "jsonl")
    dataset = caption_set(root, size=8)
    assert sorted(dataset.paths) == sorted([*good, "inside.png"])
    reasons = dict(dataset.skipped_files)
    assert reasons["link.png"] == reasons["sub/good9.png"] == "a symbolic link that leads outside the caption folder"
    assert dataset.skipped == 2
    assert "skipped 2" in dataset.summary()


@pytest.mark.parametrize("layout", ["classes", "flat", "jsonl", "csv"])
def test_a_folder_with_no_readable_image_is_one_data_error(tmp_path, bad_file_bytes, layout):
    folder = tmp_path / "cats" if layout == "classes" else tmp_path
    names = write_bad(folder, bad_file_bytes)
    if layout in ("jsonl", "csv"):
        write_captions(tmp_path, names, layout)
    message = one_line_data_error(lambda: load_images(str(tmp_path), 8, "train"))
    assert "no readable images" in message
    assert "skipped 3" in message  # the train split's three


def test_listing_decodes_one_image_warns_once_and_sees_changes(tmp_path, caplog, monkeypatch):
    write_good(tmp_path / "cats", 3)
    write_good(tmp_path, 1, start=7)  # next to the class folders: left out, with one warning
    decoded = []
    original = folders.read_rgb
    monkeypatch.setattr(folders, "read_rgb", lambda path, limit: decoded.append(path) or original(path, limit))
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        image_folder(tmp_path, 8, "train")
        image_folder(tmp_path, 8, "test")
        assert len(caplog.records) == 1
        assert "outside the class folders" in caplog.records[0].getMessage()
    assert len(decoded) == 2  # each split read its first item, nothing more
    write_good(tmp_path / "cats", 1, start=3)
    assert len(image_folder(tmp_path, 8, "all")) == 4


# --- every plugin's data inputs: nothing readable stops training before a step --------------

VAR_TINY = {
    "tokenizer": TINY_VAR["tokenizer"],
    "transformer": {"depth": 1, "width": 16, "heads": 1, "num_classes": 2},
    "tokenizer_training": {"steps": 2, "batch_size": 2},
    "transformer_training": {"steps": 2, "batch_size": 2, "validate_every": 1},
}
VQVAE2_TINY = {
    "image_size": 16,
    "vqvae": {"channels": 8, "res_blocks": 0, "res_channels": 4, "code_dim": 4, "top_codes": 4, "bottom_codes": 4},
    "prior_top": {"channels": 4, "blocks": 1, "condition_channels": 4},
    "prior_bottom": {"channels": 4, "blocks": 1, "condition_channels": 4, "condition_blocks": 0},
    "training": {stage: {"steps": 2, "batch_size": 2} for stage in ("vqvae", "prior_top", "prior_bottom")},
}
CAPTION_TINY = {
    "image": {"size": 16, "channels": [4]},
    "latent_dim": 4,
    "text": {
        "vocab_size": 32,
        "max_length": 8,
        "embedding_dim": 8,
        "encoder_layers": 1,
        "encoder_heads": 1,
        "decoder_layers": 1,
        "decoder_heads": 1,
        "feedforward_dim": 8,
    },
    "training": {"steps": 2, "batch_size": 2, "validation_every": 1},
}
QUANTART_TINY = {
    "image_size": 16,
    "vqgan": {
        "ch": 4,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "z_channels": 4,
        "code_dim": 4,
        "codebook_size": 8,
    },
    "discriminator": {"base_channels": 4, "num_layers": 1},
    "transfer": {"block_num": 1, "discriminator_channels": 4},
    "training": {stage: {"steps": 2, "batch_size": 2} for stage in ("vqgan_photo", "vqgan_art", "transfer")},
    "data": {"count": 8, "eval_pairs": 2, "sample_images": 2},
}


def unreadable_folder(root, contents: dict[str, bytes], captions: bool = False):
    names = write_bad(root, contents)
    if captions:
        write_captions(root, names, "jsonl")
    return root


@pytest.mark.parametrize(
    "model,tiny,data_field,captions",
    [
        ("var", VAR_TINY, "data", False),
        ("vqvae2_pixelcnn", VQVAE2_TINY, "data", False),
        ("multimodal_caption", CAPTION_TINY, "data.source", True),
        ("quantart", QUANTART_TINY, "data.content", False),
        ("quantart", QUANTART_TINY, "data.style", False),
    ],
)
def test_training_on_an_unreadable_folder_stops_before_any_step(
    tmp_path, bad_file_bytes, model, tiny, data_field, captions
):
    folder = unreadable_folder(tmp_path / "data", bad_file_bytes, captions)
    run_dir = tmp_path / "run"
    message = one_line_data_error(
        lambda: api.train(model, overrides=tiny, assignments=[f"{data_field}={folder}"], run_dir=run_dir, device="cpu")
    )
    assert "no readable images" in message
    assert not (run_dir / "model.safetensors").exists()


@pytest.mark.parametrize("role", ["content", "style"])
def test_quantart_checks_both_image_sets_up_front(tmp_path, bad_file_bytes, role):
    # The style set is first read by the second stage: check_data reads it before the first.
    folder = unreadable_folder(tmp_path / role, bad_file_bytes)
    plugin, _, config = api.resolve_config("quantart", overrides=QUANTART_TINY, assignments=[f"data.{role}={folder}"])
    assert "no readable images" in one_line_data_error(lambda: plugin.check_data(config))
    good = api.resolve_config("quantart", overrides=QUANTART_TINY)[2]
    assert plugin.check_data(good) is None


def test_finished_quantart_run_samples_and_exports_without_its_data(tmp_path, bad_file_bytes, caplog):
    """Sampling and export ship held-out images; when the training folders can no longer be
    read (deleted, or now all bad) the embedded sets' held-out images stand in. Evaluation
    needs the held-out data: its error is one line."""
    content, style = tmp_path / "content", tmp_path / "style"
    for folder in (content, style):
        write_good(folder, 3)
    overrides = {**QUANTART_TINY, "data": {**QUANTART_TINY["data"], "content": str(content), "style": str(style)}}
    plugin, config, model = api.create_model("quantart", **overrides)
    shipped = plugin.export_assets(model, config).arrays
    assert shipped["content_images"].shape == (1, 16, 16, 3)  # the held-out one of three

    shutil.rmtree(content)
    for path in style.iterdir():
        path.unlink()
    unreadable_folder(style, bad_file_bytes)
    with caplog.at_level(logging.WARNING, logger="zoo.quantart"):
        arrays = plugin.export_assets(model, config).arrays
    assert arrays["content_images"].shape == arrays["style_images"].shape == (2, 16, 16, 3)
    assert len(caplog.records) == 2
    assert "held-out photos" in caplog.records[0].getMessage()
    output = plugin.sample(model, config, plugin.SampleOptions(), torch.device("cpu"))
    assert output.images is not None
    assert len(output.images) > 0
    assert "does not exist" in one_line_data_error(lambda: plugin.evaluate(model, config, torch.device("cpu")))

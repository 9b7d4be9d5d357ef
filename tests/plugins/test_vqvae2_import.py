"""Importing rosinality's published VQ-VAE-2 (vqvae_560.pt), proven equal to the official code.

The fixtures in tests/fixtures/vqvae2/ were made by the official code outside this repository
(see its README.md): a tiny official state dict, the outputs of the code the published file
was trained with (in-place ReLU, `out_inplace`) and of the HEAD code (`out_head`) on the same
weights, and the key list of the published file.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from tests.tolerances import depth_of, rounding_bound
from zoo.checkpoint_files import CheckpointError
from zoo.config import validate
from zoo_vqvae2_pixelcnn.config import VQVAE2Config
from zoo_vqvae2_pixelcnn.importer import RosinalityVQVAEImporter
from zoo_vqvae2_pixelcnn.model import VQVAE2PixelCNN
from zoo_vqvae2_pixelcnn.vqvae import VQVAE2

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vqvae2"
CHECKPOINT = FIXTURES / "vqvae.pt"
VAR_VAE = Path(__file__).resolve().parent.parent / "fixtures" / "var" / "vae_qsr4.pth"
BETA = 0.25  # zoo's latent loss is beta * the official `diff`


def official_outputs(variant: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / f"out_{variant}.safetensors")


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqvae2") / "run"
    result = zoo.import_checkpoint("vqvae2_pixelcnn", [CHECKPOINT], out)
    return result, zoo.load_run(out, device="cpu")


def vqvae_with_switch(run, relu_skip: bool) -> VQVAE2:
    """The imported autoencoder, built again with `residual_relu_skip` set as asked."""
    config = run.config.vqvae.model_copy(update={"residual_relu_skip": relu_skip})
    vqvae = VQVAE2(config).eval()
    vqvae.load_state_dict(run.model.vqvae.state_dict())
    return vqvae


def assert_equal_to_official(vqvae: VQVAE2, official: dict[str, torch.Tensor]) -> None:
    """Codes identical, every float output within rounding of the official one
    (tests.tolerances, through every layer of the autoencoder: the safe side)."""
    images = official["input"]
    errors = {}
    with torch.no_grad():
        bottom_features, top_in = vqvae.features(images)
        top = vqvae.quantizer_top(top_in)
        assert torch.equal(top.indices, official["id_t"])
        bottom = vqvae.quantizer_bottom(vqvae.bottom_input(bottom_features, top.quantized))
        assert torch.equal(bottom.indices, official["id_b"])
        top_codes, bottom_codes = vqvae.encode_codes(images)  # the export path: same codes
        assert torch.equal(top_codes, official["id_t"])
        assert torch.equal(bottom_codes, official["id_b"])
        errors["quant_t"] = max_error(top.quantized, official["quant_t"])
        errors["quant_b"] = max_error(bottom.quantized, official["quant_b"])
        errors["decode"] = max_error(vqvae.decode(official["quant_t"], official["quant_b"]), official["decode"])
        from_codes = vqvae.decode(vqvae.quantizer_top.lookup(top_codes), vqvae.quantizer_bottom.lookup(bottom_codes))
        errors["decode_code"] = max_error(from_codes, official["decode_code"])
        errors["decode_codes_clamped"] = max_error(
            vqvae.decode_codes(top_codes, bottom_codes), official["decode_code"].clamp(-1, 1)
        )
        forward = vqvae(images)
        errors["forward_dec"] = max_error(forward.reconstruction, official["forward_dec"])
        errors["forward_diff"] = max_error(forward.latent_loss.reshape(1) / BETA, official["forward_diff"])
    depth = depth_of(vqvae)
    for name, error in errors.items():
        reference = official["decode_code" if name == "decode_codes_clamped" else name]
        bound = rounding_bound(reference, depth)
        assert error < bound, (name, error, bound)


# -- the run directory ------------------------------------------------------------------------


def test_import_infers_the_config_and_records_the_file(imported):
    result, run = imported
    vqvae = run.config.vqvae
    assert (vqvae.channels, vqvae.res_blocks, vqvae.res_channels, vqvae.code_dim) == (16, 2, 8, 8)
    assert (vqvae.top_codebook_size, vqvae.bottom_codebook_size) == (16, 16)
    assert (vqvae.bottom_downsample, vqvae.top_downsample, vqvae.ema_decay) == (4, 2, 0.99)
    assert vqvae.residual_relu_skip is True
    assert run.config.image_size == 256  # not in the file: the published model's
    assert result.preset is None
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["completed"] == ["vqvae"]  # the priors are zoo's to train
    assert record["imported"]["format"] == "rosinality"
    [described] = record["imported"]["files"]
    assert described["name"] == "vqvae.pt"
    assert described["sha256"] == hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    notes = " ".join(record["imported"]["notes"])
    assert "residual_relu_skip" in notes
    assert "image_size" in notes
    assert "usage" in notes
    assert "prior" in notes


def test_imported_weights_are_the_official_ones(imported):
    _, run = imported
    official = torch.load(CHECKPOINT, weights_only=True)
    state = run.model.vqvae.state_dict()
    for level, name in (("t", "top"), ("b", "bottom")):
        assert torch.equal(state[f"quantizer_{name}.codebook"], official[f"quantize_{level}.embed"].t())
        assert torch.equal(state[f"quantizer_{name}.cluster_sum"], official[f"quantize_{level}.embed_avg"].t())
        assert torch.equal(state[f"quantizer_{name}.cluster_size"], official[f"quantize_{level}.cluster_size"])
        assert torch.equal(state[f"quantizer_{name}.usage"], official[f"quantize_{level}.cluster_size"])
    assert torch.equal(state["encoder_bottom.layers.5.conv.3.weight"], official["enc_b.blocks.5.conv.3.weight"])
    assert torch.equal(state["bottom_in.weight"], official["quantize_conv_b.weight"])
    assert torch.equal(state["upsample_top.0.weight"], official["upsample_t.weight"])
    assert torch.equal(state["decoder.layers.6.bias"], official["dec.blocks.6.bias"])


# -- parity with the official outputs ------------------------------------------------------------


def test_codes_and_images_equal_the_code_the_published_file_was_trained_with(imported):
    _, run = imported
    assert_equal_to_official(run.model.vqvae.eval(), official_outputs("inplace"))


def test_the_switch_off_equals_the_head_code(imported):
    _, run = imported
    head, inplace = official_outputs("head"), official_outputs("inplace")
    assert not torch.equal(head["id_b"], inplace["id_b"])  # the fixtures tell the two apart
    assert_equal_to_official(vqvae_with_switch(run, relu_skip=False), head)
    with torch.no_grad():  # ... and the switch is what tells them apart
        codes = run.model.vqvae.eval().encode_codes(head["input"])
    assert not torch.equal(codes[1], head["id_b"])


def test_the_switch_is_off_by_default():
    assert VQVAE2Config().vqvae.residual_relu_skip is False


# -- the published file, from its key list -------------------------------------------------------


def meta_state_dict() -> dict[str, torch.Tensor]:
    """Shape-only official tensors (meta device) from a `key<TAB>shape<TAB>dtype` list."""
    tensors = {}
    for line in (FIXTURES / "keys_vqvae_560.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        tensors[key] = torch.empty([int(n) for n in shape.split(",") if n], dtype=getattr(torch, dtype), device="meta")
    return tensors


def test_the_published_file_converts_key_for_key():
    official = meta_state_dict()
    converted = RosinalityVQVAEImporter().convert_state_dict(Path("vqvae_560.pt"), official)
    vqvae = converted.config["vqvae"]
    assert (vqvae["channels"], vqvae["res_blocks"], vqvae["res_channels"], vqvae["code_dim"]) == (128, 2, 32, 64)
    assert (vqvae["top_codebook_size"], vqvae["bottom_codebook_size"]) == (512, 512)
    assert converted.config["image_size"] == 256
    assert vqvae["residual_relu_skip"] is True
    assert converted.stages == ["vqvae"]
    with torch.device("meta"):
        model = VQVAE2PixelCNN(validate(VQVAE2Config, converted.config))
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items() if key.startswith("vqvae.")}
    assert {key: tuple(t.shape) for key, t in converted.tensors.items()} == expected
    assert len(official) == 64
    assert len(converted.tensors) == 66  # every key, + usage of both levels


# -- training the priors on an imported autoencoder ------------------------------------------------


def test_a_prior_trains_on_an_imported_run(imported, tmp_path):
    result, source = imported
    config = source.config.model_dump(mode="json")
    config["image_size"] = 32  # the digits' size; the priors' weights do not depend on it
    config["training"]["prior_top"] = {"steps": 2, "batch_size": 4}
    started = time.monotonic()
    run = zoo.train(
        "vqvae2_pixelcnn",
        run_dir=tmp_path / "priors",
        from_run=result.run_dir,
        stage="prior_top",
        overrides=config,
        device="cpu",
    )
    assert time.monotonic() - started < 60
    imported_state = source.model.vqvae.state_dict()
    for key, tensor in run.model.vqvae.state_dict().items():
        assert torch.equal(tensor.cpu(), imported_state[key]), key  # the autoencoder stays as imported
    before = source.model.prior_top.state_dict()
    assert any(not torch.equal(t.cpu(), before[k]) for k, t in run.model.prior_top.state_dict().items())  # it trained
    record = json.loads((tmp_path / "priors" / "config.json").read_text())
    assert record["completed"][:2] == ["vqvae", "prior_top"]


# -- bad input ----------------------------------------------------------------------------------


def assert_one_line_error(path: Path, out: Path, *expected: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        zoo.import_checkpoint("vqvae2_pixelcnn", [path], out)
    message = str(caught.value)
    assert "\n" not in message
    for part in (str(path), *expected):
        assert part in message, message
    assert not out.exists()
    assert not any(entry.name.startswith(f".{out.name}") for entry in out.parent.iterdir())  # no staging left


def saved(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_another_models_checkpoint_is_refused(tmp_path):
    first = next(iter(torch.load(VAR_VAE, weights_only=True)))
    assert_one_line_error(VAR_VAE, tmp_path / "run", first, "maps to nothing")


def test_a_pixelsnail_prior_is_refused(tmp_path):
    path = saved(
        {"ce_loss.weight": torch.zeros(4), "horizontal.conv.weight_g": torch.zeros(4, 1, 1, 1)}, tmp_path / "p.pt"
    )
    assert_one_line_error(path, tmp_path / "run", "ce_loss.weight")


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "vqvae_560.pt"
    path.write_bytes(CHECKPOINT.read_bytes()[: CHECKPOINT.stat().st_size // 2])
    assert_one_line_error(path, tmp_path / "run", "not a readable torch checkpoint")


def test_shapes_that_fit_no_config_are_refused(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)
    state["dec_t.blocks.1.conv.1.weight"] = state["dec_t.blocks.1.conv.1.weight"][:4]  # 4 hidden, the rest 8
    path = saved(state, tmp_path / "vqvae.pt")
    assert_one_line_error(path, tmp_path / "run", "dec_t.blocks.1.conv.1.weight", "(4, 16, 3, 3)")


def test_codebooks_of_other_code_dims_are_refused(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)
    for name in ("embed", "embed_avg"):
        state[f"quantize_b.{name}"] = state[f"quantize_b.{name}"][:4]
    path = saved(state, tmp_path / "vqvae.pt")
    assert_one_line_error(path, tmp_path / "run", "quantize_b.embed", "(4, 16)")


def test_a_file_missing_a_layer_is_refused(tmp_path):
    state = torch.load(CHECKPOINT, weights_only=True)
    del state["upsample_t.weight"]
    path = saved(state, tmp_path / "vqvae.pt")
    assert_one_line_error(path, tmp_path / "run", "vqvae.upsample_top.0.weight")

"""Importing taming-transformers VQGAN checkpoints into QuantArt, proven equal to the official code.

The fixtures in tests/fixtures/quantart/ were made by the official code outside this
repository (see its README.md): a tiny VQGAN in the official Lightning layout, the official
outputs on a fixed input, and the key/shape lists of the published f16 files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from tests.tolerances import depth_of, rounding_bound
from zoo.checkpoint_files import CheckpointError, load_checkpoint
from zoo.config import validate
from zoo_quantart.config import PRESETS, QuantArtConfig
from zoo_quantart.importer import OfficialQuantArtImporter, TamingVQGANImporter
from zoo_quantart.model import QuantArt

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "quantart"
VQGAN = FIXTURES / "vqgan_tiny.ckpt"
VAR_VAE = FIXTURES.parent / "var" / "vae_qsr4.pth"


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def official_state() -> dict[str, torch.Tensor]:
    """The fixture's state dict, read the way the importer reads it (a Lightning file)."""
    return dict(load_checkpoint(VQGAN)["state_dict"])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("quantart") / "run"
    result = zoo.import_checkpoint("quantart", [VQGAN], out, format="taming")
    run = zoo.load_run(out, device="cpu")
    run.model.eval()
    return result, run, load_file(FIXTURES / "out_vqgan_tiny.safetensors")


# -- the run directory ------------------------------------------------------------------------


def test_import_infers_the_config_and_records_the_file(imported):
    result, run, _ = imported
    config = run.config
    vqgan, disc = config.vqgan, config.discriminator
    assert config.image_size == 32
    assert (vqgan.ch, vqgan.ch_mult, vqgan.num_res_blocks, vqgan.attn_resolutions) == (32, [1, 2], 1, [16])
    assert (vqgan.z_channels, vqgan.code_dim, vqgan.codebook_size, vqgan.legacy) == (8, 8, 32, True)
    assert (disc.base_channels, disc.num_layers) == (8, 2)
    assert result.preset is None  # the tiny fixture matches no preset

    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["model"] == "quantart"
    assert record["completed"] == ["vqgan_photo", "vqgan_art"]
    (recorded,) = record["imported"]["files"]
    assert recorded["name"] == VQGAN.name
    assert recorded["sha256"] == hashlib.sha256(VQGAN.read_bytes()).hexdigest()
    notes = " ".join(record["imported"]["notes"])
    assert "5 LPIPS tensors (loss.perceptual_loss.*)" in notes
    assert "skipped loss.logvar" in notes
    assert "loss.discriminator.main.<i>.*" in notes
    assert "photo.discriminator.main.<i>.*" in notes


def test_imported_weights_are_the_official_ones(imported):
    _, run, _ = imported
    official = official_state()
    state = run.model.state_dict()
    for domain in ("photo", "art"):
        assert torch.equal(state[f"{domain}.quantizer.codebook"], official["quantize.embedding.weight"])
        assert torch.equal(
            state[f"{domain}.encoder.down.1.attn.0.k.weight"], official["encoder.down.1.attn.0.k.weight"]
        )
        assert torch.equal(
            state[f"{domain}.decoder.up.0.block.0.nin_shortcut.weight"],
            official["decoder.up.0.block.0.nin_shortcut.weight"],
        )
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(
                state[f"{domain}.discriminator.main.6.{name}"], official[f"loss.discriminator.main.6.{name}"]
            )


def test_the_transfer_module_keeps_its_initialisation(imported):
    _, run, _ = imported
    torch.manual_seed(run.config.seed)  # as zoo.import_checkpoint builds the model
    fresh = QuantArt(run.config).state_dict()
    state = run.model.state_dict()
    for key in fresh:
        if key.startswith(("transfer.", "latent_discriminator.")):
            assert torch.equal(state[key], fresh[key]), key
    assert not torch.equal(state["photo.quant_conv.weight"], fresh["photo.quant_conv.weight"])


# -- parity with the official outputs ------------------------------------------------------------


@pytest.mark.parametrize("domain", ["photo", "art"])
def test_codes_and_reconstruction_equal_the_official(imported, domain):
    _, run, official = imported
    vqgan = run.model.vqgan(domain)
    images = official["input"]
    with torch.no_grad():
        z = vqgan.quant_conv(vqgan.encoder(images))
        quantized = vqgan.quantizer(z)
        codes = vqgan.encode_codes(images)
        decoded = vqgan.decode(quantized.quantized)
        decoded_from_indices = vqgan.decode(vqgan.quantizer.lookup(official["indices"]))
    # tests.tolerances: rounding through the layers on the way, scaled by each output
    encoder = depth_of(vqgan.encoder, vqgan.quant_conv)
    decoder = depth_of(vqgan.post_quant_conv, vqgan.decoder)
    assert max_error(z, official["z"]) < rounding_bound(official["z"], encoder)
    assert torch.equal(quantized.indices, official["indices"])
    assert torch.equal(quantized.indices.flatten(), official["indices_flat"])
    assert max_error(quantized.quantized, official["quant"]) < rounding_bound(official["quant"], encoder)
    assert max_error(codes, official["quant"]) < rounding_bound(official["quant"], encoder)
    # taming's legacy beta placement
    assert max_error(quantized.loss, official["emb_loss"]) < rounding_bound(official["emb_loss"], encoder)
    assert max_error(decoded, official["decode"]) < rounding_bound(official["decode"], decoder)
    bound = rounding_bound(official["decode_from_indices"], decoder)
    assert max_error(decoded_from_indices, official["decode_from_indices"]) < bound


@pytest.mark.parametrize("domain", ["photo", "art"])
def test_discriminator_logits_equal_the_official(imported, domain):
    _, run, official = imported
    discriminator = run.model.vqgan(domain).discriminator
    with torch.no_grad():
        logits = discriminator(official["input"])
    assert max_error(logits, official["disc_logits"]) < rounding_bound(official["disc_logits"], depth_of(discriminator))


# -- the published sizes, from the official key lists -------------------------------------------


def meta_state_dict(key_list: str) -> dict[str, torch.Tensor]:
    """Shape-only official tensors (meta device) from a `key<TAB>shape<TAB>dtype` list."""
    tensors = {}
    for line in (FIXTURES / key_list).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        tensors[key] = torch.empty([int(n) for n in shape.split(",") if n], dtype=getattr(torch, dtype), device="meta")
    return tensors


@pytest.mark.parametrize("codebook_size", [1024, 16384])
def test_published_checkpoints_convert_key_for_key(codebook_size):
    name = f"vqgan_imagenet_f16_{codebook_size}.ckpt"
    official = meta_state_dict(f"keys_vqgan_f16_{codebook_size}.txt")
    converted = TamingVQGANImporter().convert_state_dict(Path(name), official)
    config = validate(QuantArtConfig, converted.config)
    with torch.device("meta"):
        expected = QuantArt(config).state_dict()
    vqgan_keys = {
        key: tuple(t.shape)
        for key, t in expected.items()
        if key.startswith(("photo.", "art.")) and not key.endswith("quantizer.usage")
    }
    assert {key: tuple(t.shape) for key, t in converted.tensors.items()} == vqgan_keys
    # every official tensor but LPIPS has gone somewhere, once per VQGAN
    kept = [key for key in official if not key.startswith("loss.perceptual_loss.")]
    assert len(converted.tensors) == 2 * len(kept)
    # configs/imagenet_vqgan.yaml is the paper preset's VQGAN (f16, 256 px, PatchGAN ndf 64, 3 layers)
    paper = validate(QuantArtConfig, PRESETS["paper"]).model_dump(mode="json")
    assert converted.config["image_size"] == paper["image_size"] == 256
    for section in ("vqgan", "discriminator"):
        for field, value in converted.config[section].items():
            if field == "codebook_size":
                assert value == codebook_size
            else:
                assert paper[section][field] == value, f"{section}.{field}"


# -- bad input ----------------------------------------------------------------------------------


def assert_one_line_error(files, out: Path, *expected: str, format: str = "taming") -> None:
    with pytest.raises(CheckpointError) as caught:
        zoo.import_checkpoint("quantart", files, out, format=format)
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    assert not out.exists()
    assert not any(path.name.startswith(f".{out.name}") for path in out.parent.iterdir())  # no staging left


def test_another_models_checkpoint_is_refused(tmp_path):
    # the official VAR VQVAE: taming's encoder names, but phi convolutions and fused qkv attention
    assert_one_line_error([VAR_VAE], tmp_path / "run", str(VAR_VAE), "encoder.down.4.attn.0.qkv.weight")


def test_a_quantart_checkpoint_is_refused_with_a_hint(tmp_path):
    state = {key.replace("quantize.", "quantize_enc.", 1): tensor for key, tensor in official_state().items()}
    path = tmp_path / "quantart.ckpt"
    torch.save({"state_dict": state}, path)
    assert_one_line_error([path], tmp_path / "run", str(path), "encoder.conv_in.weight", "QuantArt VQModel_Ref")


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "vqgan_imagenet_f16_1024.ckpt"
    path.write_bytes(VQGAN.read_bytes()[: VQGAN.stat().st_size // 2])
    assert_one_line_error([path], tmp_path / "run", str(path))


def test_a_checkpoint_whose_shapes_fit_no_config_is_refused(tmp_path):
    state = official_state()
    state["post_quant_conv.weight"] = torch.zeros(8, 8, 3, 3)  # taming's is 1x1
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": state}, path)
    assert_one_line_error([path], tmp_path / "run", str(path), "post_quant_conv.weight", "(8, 8, 3, 3)", "(8, 8, 1, 1)")


def test_a_checkpoint_missing_a_layer_is_refused(tmp_path):
    state = official_state()
    del state["decoder.up.1.attn.1.proj_out.bias"]
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": state}, path)
    assert_one_line_error([path], tmp_path / "run", str(path), "decoder.up.1.attn.1.proj_out.bias", "is missing")


def test_two_files_are_refused(tmp_path):
    assert_one_line_error([VQGAN, VQGAN], tmp_path / "run", "one VQGAN .ckpt")


# -- the command line --------------------------------------------------------------------------------


def test_cli_import_writes_a_run_and_refuses_bad_files_in_one_line(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "run"
    main(["import", "quantart", str(VQGAN), "--format", "taming", "--out", str(out), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["vqgan"]["codebook_size"] == 32
    run = zoo.load_run(out, device="cpu")
    assert torch.equal(run.model.art.quantizer.codebook, official_state()["quantize.embedding.weight"])
    with pytest.raises(SystemExit) as exit_:
        main(["import", "quantart", str(VAR_VAE), "--format", "taming", "--out", str(tmp_path / "bad")])
    assert exit_.value.code != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "encoder.down.4.attn.0.qkv.weight" in error
    assert not (tmp_path / "bad").exists()


# -- the official QuantArt checkpoint ----------------------------------------------------------------

PARITY = FIXTURES  # the official QuantArt checkpoint and its outputs sit beside the taming fixture


def photo_vqgan_for(quantart: Path, path: Path) -> Path:
    """A taming VQGAN file as QuantArt's checkpoint_encoder would be: its photo encoder side,
    and (the tiny fixture has no photo decoder) the art decoder's tensors standing in for one."""
    state = load_checkpoint(quantart)["state_dict"]
    donor = {
        k: v for k, v in state.items() if k.startswith(("encoder.", "quant_conv.", "decoder.", "post_quant_conv."))
    }
    donor["quantize.embedding.weight"] = state["quantize_enc.embedding.weight"]
    torch.save({"state_dict": donor, "global_step": 1}, path)
    return path


def test_official_quantart_stylises_as_the_official_code(tmp_path):
    quantart = PARITY / "quantart_tiny.ckpt"
    photo = photo_vqgan_for(quantart, tmp_path / "vqgan_photo.ckpt")
    result = zoo.import_checkpoint("quantart", [photo, quantart], tmp_path / "run", format="official")  # either order
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["completed"] == ["vqgan_photo", "vqgan_art", "transfer"]
    assert (result.config.vqgan.code_dim, result.config.vqgan.ch_mult, result.config.transfer.block_num) == (
        32,
        [1, 1],
        6,
    )
    model = zoo.load_run(result.run_dir, device="cpu").model.eval()
    official = load_file(PARITY / "out_quantart_tiny.safetensors")
    ones = torch.ones(2)
    with torch.no_grad():
        content = model.photo.quantizer(model.photo.quant_conv(model.photo.encoder(official["content"])))
        reference = model.art.quantizer(model.art.quant_conv(model.art.encoder(official["ref"])))
        transferred = model.transfer(content.quantized, reference.quantized)
        quantized = model.art.quantizer(transferred)
        stylized = model.stylize(official["content"], official["ref"], ones, ones)
        latent_logits = model.latent_discriminator(official["quant_y"])
        photo_decoded = model.photo.decode(official["quant_ref"])
    assert torch.equal(content.indices, official["indices_x"])
    assert torch.equal(reference.indices, official["indices_ref"])
    assert torch.equal(quantized.indices, official["indices_y"])
    # tests.tolerances: rounding through the layers on the way, scaled by each output
    encoders = depth_of(model.photo.encoder, model.photo.quant_conv, model.art.encoder, model.art.quant_conv)
    transfer = encoders + depth_of(model.transfer)
    decoder = depth_of(model.art.post_quant_conv, model.art.decoder)
    assert max_error(transferred, official["h_x"]) < rounding_bound(official["h_x"], transfer)
    assert max_error(quantized.quantized, official["quant_y"]) < rounding_bound(official["quant_y"], transfer)
    assert max_error(quantized.loss, official["diff_x2y"]) < rounding_bound(official["diff_x2y"], transfer)
    assert max_error(stylized, official["stylized"]) < rounding_bound(official["stylized"], transfer + decoder)
    latent = official["latent_disc_logits_quant_y"]
    assert max_error(latent_logits, latent) < rounding_bound(latent, depth_of(model.latent_discriminator))
    # the photo decoder is the one of the taming file (here: the art decoder's tensors)
    bound = rounding_bound(
        official["ref_recon_art_decoder"], depth_of(model.photo.post_quant_conv, model.photo.decoder)
    )
    assert max_error(photo_decoded, official["ref_recon_art_decoder"]) < bound


def test_official_quantart_without_its_photo_vqgan_is_refused(tmp_path):
    assert_one_line_error(
        [PARITY / "quantart_tiny.ckpt"], tmp_path / "run", "quantart_tiny.ckpt", "taming VQGAN", format="official"
    )


def test_published_quantart_checkpoint_converts_to_the_paper_preset():
    quantart = meta_state_dict("keys_quantart_landscape2art.txt")
    taming = meta_state_dict("keys_vqgan_f16_1024.txt")
    converted = OfficialQuantArtImporter().convert_state_dicts(
        {Path("vqgan_imagenet_f16_1024.ckpt"): taming, Path("landscape2art.ckpt"): quantart}
    )
    paper = validate(QuantArtConfig, PRESETS["paper"])
    with torch.device("meta"):
        expected = QuantArt(paper).state_dict()
    assert {key: tuple(t.shape) for key, t in converted.tensors.items()} == {
        key: tuple(t.shape)
        for key, t in expected.items()
        if not key.endswith("quantizer.usage") and not key.startswith("art.discriminator.")
    }
    values = paper.model_dump(mode="json")
    for section in ("vqgan", "discriminator", "transfer"):
        for field, value in converted.config[section].items():
            assert values[section][field] == value, f"{section}.{field}"
    assert converted.config["image_size"] == 256
    assert converted.stages == ["vqgan_photo", "vqgan_art", "transfer"]


def test_official_quantart_needs_both_files():
    with pytest.raises(CheckpointError, match="got 1 QuantArt and 0 taming files"):
        OfficialQuantArtImporter().convert_state_dicts(
            {Path("landscape2art.ckpt"): meta_state_dict("keys_quantart_landscape2art.txt")}
        )

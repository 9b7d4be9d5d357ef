"""QuantArt plugin: training, freezing, sampling and export (its shared GAN and perceptual
layers are tested in tests/core/test_nn_gan.py).

One micro model is trained once per module (three short stages) and shared by the tests
of training, freezing, sampling and export.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.tolerances import assert_within_rounding, depth_of, rounding_bound
from zoo import api
from zoo.config import parse_overrides
from zoo.errors import DataError
from zoo.plugin import StageContext
from zoo_quantart.config import PRESETS, QuantArtConfig, QuantArtSampleOptions
from zoo_quantart.model import QuantArt

torch.set_num_threads(1)

MICRO = {
    "image_size": 32,
    "vqgan": {
        "ch": 8,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [16],
        "z_channels": 8,
        "code_dim": 8,
        "codebook_size": 32,
    },
    "discriminator": {"base_channels": 8, "num_layers": 1, "disc_start": 10},
    "transfer": {"block_num": 2, "discriminator_channels": 8},
    "training": {
        stage: {"steps": 30, "batch_size": 4, "lr": 2e-3} for stage in ("vqgan_photo", "vqgan_art", "transfer")
    },
    "data": {"count": 48, "eval_pairs": 4, "sample_images": 2},
}
STAGES = ("vqgan_photo", "vqgan_art", "transfer")


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The micro model trained stage by stage: the Run, the state dicts before the transfer
    stage, the logged rows, and evaluate() of the untrained and the trained model."""
    plugin, config, untrained = api.create_model("quantart", **MICRO)
    with torch.no_grad():
        initial_metrics = plugin.evaluate(untrained, config, torch.device("cpu"))
    run_dir = tmp_path_factory.mktemp("quantart") / "run"
    for stage in STAGES[:2]:
        api.train("quantart", overrides=MICRO, run_dir=run_dir, stage=stage, device="cpu", log_every=1)
    before = api.load_run(run_dir, device="cpu").model
    before_transfer = {
        name: _state(getattr(before, name)) for name in ("photo", "art", "transfer", "latent_discriminator")
    }
    run = api.train("quantart", overrides=MICRO, run_dir=run_dir, stage="transfer", device="cpu", log_every=1)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "run": run,
        "before_transfer": before_transfer,
        "metrics": [r for r in rows if "event" not in r],
        "initial_metrics": initial_metrics,
        "final_metrics": run.evaluate(),
    }


def _series(rows: list[dict], stage: str, key: str) -> list[float]:
    return [row[key] for row in rows if row["stage"] == stage and key in row]


# --- config and architecture ----------------------------------------------------------------


def test_paper_preset_maps_256_pixels_to_16x16_codes():
    config = QuantArtConfig(**PRESETS["paper"])
    assert config.vqgan.codebook_size == 1024
    assert config.vqgan.code_dim == 256
    with torch.device("meta"):
        model = QuantArt(config)
        images = torch.empty(1, 3, 256, 256)
        codes = model.photo.quant_conv(model.photo.encoder(images))
        assert codes.shape == (1, 256, 16, 16)
        assert model.art.decode(codes).shape == (1, 3, 256, 256)
        assert model.transfer(codes, codes).shape == (1, 256, 16, 16)
        assert model.latent_discriminator(codes).shape[:2] == (1, 1)
    assert model.art.quantizer.codebook.shape == (1024, 256)
    assert len(model.transfer.blocks) == 6


def test_config_reads_the_old_codebook_field_names_with_a_warning():
    """Run directories written before zoo 0.2 name the codebook fields embed_dim and num_codes."""
    saved = QuantArtConfig(**MICRO).model_dump(mode="json")
    vqgan = dict(saved["vqgan"])
    vqgan["embed_dim"], vqgan["num_codes"] = vqgan.pop("code_dim"), vqgan.pop("codebook_size")
    with pytest.warns(FutureWarning) as caught:
        config = QuantArtConfig.model_validate({**saved, "vqgan": vqgan})
    assert sorted(str(w.message).split("'")[1:4:2] for w in caught) == [
        ["embed_dim", "code_dim"],
        ["num_codes", "codebook_size"],
    ]
    assert (config.vqgan.code_dim, config.vqgan.codebook_size) == (8, 32)
    assert config.model_dump(mode="json") == saved
    with pytest.warns(FutureWarning):  # --set vqgan.num_codes=64
        assert (
            QuantArtConfig.model_validate(parse_overrides(QuantArtConfig, ["vqgan.num_codes=64"])).vqgan.codebook_size
            == 64
        )


def test_config_rejects_unknown_fields():
    with pytest.raises(Exception, match="extra"):
        QuantArtConfig(vqgan={"channels": 3})


# --- training --------------------------------------------------------------------------------


def test_vqgan_stages_reduce_reconstruction_loss_and_switch_on_the_gan(trained):
    rows, initial, final = trained["metrics"], trained["initial_metrics"], trained["final_metrics"]
    start = MICRO["discriminator"]["disc_start"]
    for domain in ("photo", "art"):
        stage = f"vqgan_{domain}"
        # held-out reconstruction (per-step L1 on 4 random crops is too noisy to compare)
        assert final[f"{domain}_psnr"] > initial[f"{domain}_psnr"] + 1.0, (initial, final)
        if domain == "photo":  # the art VQGAN starts from the photo weights: its L1 starts near its floor
            l1 = _series(rows, stage, "generator/l1")
            assert np.mean(l1[-10:]) < np.mean(l1[:10]), (stage, l1)
        weights = _series(rows, stage, "generator/adaptive_weight")
        assert all(w == 0.0 for w in weights[:start])  # logged per step: steps 1..disc_start are off
        assert all(np.isfinite(w) and w > 0 for w in weights[start:])
        assert len(_series(rows, stage, "discriminator/loss")) == len(weights) - start


def test_art_vqgan_starts_from_the_photo_vqgan(tmp_path):
    plugin, config, model = api.create_model("quantart", **MICRO)
    art_stage = plugin.stages(config)[1]
    assert art_stage.name == "vqgan_art"
    art_stage.on_start(model, StageContext(model, config, tmp_path, torch.device("cpu")))
    photo = model.photo.state_dict()
    assert all(torch.equal(value, photo[key]) for key, value in model.art.state_dict().items())


def test_transfer_stage_reduces_its_loss(trained):
    losses = _series(trained["metrics"], "transfer", "transfer/loss")
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    # the latent discriminator is on from step 0, its term scaled by the adaptive weight
    weights = _series(trained["metrics"], "transfer", "transfer/adaptive_weight")
    assert len(weights) == len(losses)
    assert all(np.isfinite(w) and w > 0 for w in weights)


def test_transfer_stage_trains_only_the_transfer_module_and_latent_discriminator(trained):
    model, before = trained["run"].model, trained["before_transfer"]
    for name in ("photo", "art"):
        for key, value in _state(getattr(model, name)).items():
            assert torch.equal(value, before[name][key]), f"{name}.{key} changed in the transfer stage"
    for name in ("transfer", "latent_discriminator"):
        after = _state(getattr(model, name))
        assert any(not torch.equal(after[k], before[name][k]) for k in after), f"{name} did not train"


def test_evaluate_reports_style_content_and_reconstruction_metrics(trained):
    metrics = trained["final_metrics"]
    for key in (
        "style_distance_ratio",
        "gram_distance_ratio",
        "content_ssim",
        "content_ssim_rgb",
        "photo_psnr",
        "art_psnr",
        "photo_codebook_usage",
        "art_codebook_usage",
        "stylized_codebook_usage",
    ):
        assert np.isfinite(metrics[key]), key
    assert 0 < metrics["photo_codebook_usage"] <= 1
    # Content SSIM against computed bounds: the trained transfer keeps more of each content image's
    # structure than the untrained model did and than an unrelated test photo shares with it,
    # and it is no copy of the content (SSIM 1).
    from zoo_quantart.data import content_images, stack_images
    from zoo_quantart.evaluation import ssim

    count = trained["run"].config.data.eval_pairs
    contents = stack_images(content_images(trained["run"].config, "test", count), count)
    unrelated = ssim(contents, contents.roll(1, dims=0)).mean()
    assert max(unrelated, trained["initial_metrics"]["content_ssim"]) < metrics["content_ssim"] < 0.9
    assert metrics["style_distance_ratio"] == pytest.approx(
        metrics["style_distance_output"] / metrics["style_distance_content"]
    )


@pytest.mark.parametrize("luma", [True, False])
def test_ssim_is_one_for_identical_images_and_low_for_noise(luma):
    from zoo_quantart.evaluation import ssim

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert ssim(images, images, luma=luma) == pytest.approx([1.0, 1.0])
    assert (ssim(noise, images, luma=luma) < 0.2).all()


# --- sampling --------------------------------------------------------------------------------


def _write_images(folder, count, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_sample_grids_single_pairs_and_sweeps(trained, tmp_path):
    run = trained["run"]
    contents, styles = _write_images(tmp_path / "c", 2, 0), _write_images(tmp_path / "s", 3, 1)
    grid = run.sample(content=str(contents), style=str(styles))
    assert grid.images.shape == (3 * 4, 32, 32, 3)
    assert grid.columns == 4  # header row + 2 rows of 3 styles
    single = run.sample(content=str(contents / "0.png"), style=str(styles / "1.png"))
    assert single.images.shape == (1, 32, 32, 3)
    sweep = run.sample(content=str(contents / "0.png"), style=str(styles / "1.png"), sweep=True)
    assert sweep.images.shape == (25, 32, 32, 3)
    assert sweep.columns == 5
    # the sweep's (1, 1) corner is the plain single-pair result
    # one item of a batch of 25 against a batch of one: other kernel blockings (tests.tolerances)
    depth = depth_of(run.model)
    assert_within_rounding(sweep.extras["stylized"][-1], single.extras["stylized"][0], depth)
    default = run.sample()  # held-out embedded photos x textures
    assert default.images.shape == (3 * 3, 32, 32, 3)
    with pytest.raises(DataError):
        run.sample(content=str(tmp_path / "nowhere"), style=str(styles))


def test_balances_zero_bypass_the_transfer_module(trained):
    model = trained["run"].model
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        content_codes = model.photo.encode_codes(images)
        zeros, ones = torch.zeros(2), torch.ones(2)
        reference = model.art.encode_codes(images.flip(0))
        unchanged = model.stylize_codes(content_codes, reference, zeros, zeros)
        assert torch.equal(unchanged, content_codes)
        quantized = model.stylize_codes(content_codes, reference, ones, ones)
        codebook = model.art.quantizer.codebook
        # every stylised vector is an art codebook entry at fidelity 1
        flat = quantized.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
        # up to rounding: the straight-through z + (q - z) (tests.tolerances), summed over code_dim
        bound = rounding_bound(codebook, depth=1) * codebook.shape[1]
        assert (flat[:, None] - codebook[None]).abs().sum(-1).min(1).values.max() < bound


def test_stylize_graph_matches_the_component_chain(trained):
    plugin, run = trained["run"].plugin, trained["run"]
    components = {c.name: c for c in plugin.export_components(run.model, run.config)}
    assert set(components) == {"photo_encoder", "art_encoder", "transfer", "art_decoder", "stylize"}
    inputs = components["stylize"].make_inputs(1)
    with torch.no_grad():
        whole = components["stylize"].module(*inputs.values())
        content_codes = components["photo_encoder"].module(inputs["content"])
        reference_codes = components["art_encoder"].module(inputs["style"])
        codes = components["transfer"].module(
            content_codes, reference_codes, inputs["content_style_balance"], inputs["fidelity_balance"]
        )
        chained = components["art_decoder"].module(codes)
    torch.testing.assert_close(whole, chained)


# --- export ------------------------------------------------------------------------------------


def test_onnx_export_matches_torch_sampling(trained, tmp_path):
    zoo_onnx = pytest.importorskip("zoo_onnx", reason="the ONNX exporter is not available")
    from zoo.runtime import load

    run = trained["run"]
    export_dir = tmp_path / "export"
    # the four graphs the sampling loop runs; `stylize` (all of them in one graph) is checked
    # against them in torch above and exported by the benchmark, to keep this test short
    graphs = ["photo_encoder", "art_encoder", "transfer", "art_decoder"]
    manifest = zoo_onnx.export_model(run.plugin, run.model, run.config, export_dir, components=graphs)
    assert set(manifest["components"]) == set(graphs)
    exported = load(export_dir)
    for options in (dict(sweep=True), dict(size=48, content_style_balance=0.5, fidelity_balance=0.3)):
        torch_output = run.sample(**options)
        onnx_output = exported.sample(QuantArtSampleOptions(**options))
        # onnxruntime's kernels against torch's (tests.tolerances)
        assert_within_rounding(onnx_output.extras["stylized"], torch_output.extras["stylized"], depth_of(run.model))
        assert np.abs(onnx_output.images.astype(int) - torch_output.images.astype(int)).max() <= 1

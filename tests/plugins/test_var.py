"""The var plugin: quantiser, transformer wiring and sampling cache, training, paper sizes, export, editing.
(The attention layers, masks and cache layout are tested in tests/core/test_nn_attention.py.)"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import TINY_VAR
from tests.tolerances import assert_within_rounding, depth_of, rounding_bound
from zoo.config import resolve, validate
from zoo.errors import ConfigError, ZooError
from zoo_var.config import PRESETS, VARConfig, VARSampleOptions
from zoo_var.model import VARModel
from zoo_var.plugin import VARPlugin
from zoo_var.runtime import Geometry
from zoo_var.scales import area_matrix
from zoo_var.vqvae import bicubic_matrix, phi_index_per_scale, resample

TINY = {
    **TINY_VAR,
    "tokenizer_training": {"steps": 60, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5},
    "transformer_training": {
        "steps": 200,
        "batch_size": 32,
        "lr_per_256": 2e-2,
        "warmup_steps": 10,
        "validate_every": 100,
    },
}


def tiny_config(**overrides) -> VARConfig:
    return resolve(VARConfig, PRESETS["digits"], overrides={**TINY, **overrides})


def randomised_model(config: VARConfig, seed: int = 0) -> VARModel:
    """A model whose blocks are not near the identity (the official init starts the gates at ~0)."""
    torch.manual_seed(seed)
    model = VARModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def scale_logits(model: VARModel, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    quantizer = model.quantizer
    with torch.no_grad():
        return model.transformer(labels, quantizer.teacher_forcing_input(quantizer.split_scales(tokens)))


# -- tokenizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [1, 2, 3, 5, 6, 8, 10, 13])
def test_resampling_matrices_are_torch_interpolate(side):
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    area = torch.from_numpy(area_matrix(16, side))
    # float64, sums of at most 16 x 16 terms of |x| < 6 (area) or 4 x 4 (bicubic):
    # rounding stays below 256 * 6 * 2**-52 = 3.4e-13
    assert torch.allclose(resample(x, area), F.interpolate(x, size=(side, side), mode="area"), atol=1e-12)
    y = torch.randn(2, 3, side, side, dtype=torch.float64)
    expected = F.interpolate(y, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.allclose(resample(y, bicubic_matrix(side, 16)), expected, atol=1e-12)


def test_phi_selection_follows_the_official_ticks():
    # partially shared (4 convs, ticks linspace(1/12, 11/12, 4)) over the paper's 10 scales
    assert phi_index_per_scale(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert phi_index_per_scale(10, 0) == list(range(10))  # non-shared
    assert phi_index_per_scale(10, 1) == [0] * 10  # fully shared


def test_quantizer_paths_agree_and_gradients_pass_straight_through():
    config = tiny_config()
    torch.manual_seed(0)
    model = VARModel(config)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    model.train()
    out = model.tokenizer(images)  # training mode: dead codes are restarted from the data
    (F.mse_loss(out.reconstruction, images) + out.vq_loss).backward()
    assert model.tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert model.quantizer.codebook.grad.abs().sum() > 0  # codebook learns from the quantiser loss
    assert model.quantizer.usage_fraction() > 0

    model.eval()
    quantizer = model.quantizer
    with torch.no_grad():
        features = model.tokenizer.features(images)
        forward = quantizer(features)
        tokens = model.tokenizer.encode_indices(images)
        scales = quantizer.split_scales(tokens)
        assert all(torch.equal(a, b) for a, b in zip(scales, forward.indices, strict=True))
        # the same sums in other orders: rounding through the quantizer (tests.tolerances)
        depth = depth_of(quantizer)
        assert_within_rounding(quantizer.fhat_from_indices(scales), forward.quantized, depth)
        # the teacher-forcing input of training is what the sampling steps feed forward
        f_hat = torch.zeros_like(features)
        next_inputs = []
        for k, scale_tokens in enumerate(scales):
            f_hat, *next_input = quantizer.add_scale(k, quantizer.lookup(scale_tokens), f_hat)
            next_inputs += next_input  # none after the last scale
        assert_within_rounding(torch.cat(next_inputs, 1), quantizer.teacher_forcing_input(scales), depth)
        assert_within_rounding(f_hat, forward.quantized, depth)


def test_dead_codes_are_restarted_from_data():
    config = tiny_config()
    model = VARModel(config).train()
    quantizer = model.quantizer
    quantizer.codebook.data.zero_()  # every code collapsed onto one vector
    quantizer.usage.fill_(1.0)
    quantizer.usage[1:] = 0.0  # all but code 0 look dead
    with torch.no_grad():
        quantizer(torch.randn(4, 8, 4, 4))
    assert torch.unique(quantizer.codebook.data, dim=0).shape[0] > 16


# -- transformer ----------------------------------------------------------------------------


def test_a_token_changes_no_logits_of_its_own_or_earlier_scales():
    config = tiny_config()
    model = randomised_model(config)
    starts = model.quantizer.scale_starts  # [0, 1, 5, 14, 30]
    tokens = torch.randint(0, 32, (2, starts[-1]))
    labels = torch.tensor([3, 10])
    before = scale_logits(model, tokens, labels)
    for k in range(3):
        changed = tokens.clone()
        changed[:, starts[k]] = (changed[:, starts[k]] + 1) % 32
        after = scale_logits(model, changed, labels)
        difference = (after - before).abs().amax(dim=(0, 2))  # per position
        assert difference[: starts[k + 1]].max() == 0  # scales <= k untouched
        assert difference[starts[k + 1] :].max() > rounding_bound(
            before, depth_of(model.transformer)
        )  # later scales see it


def test_kv_cache_sampling_equals_full_recompute():
    config = tiny_config()
    model = randomised_model(config)
    plugin = VARPlugin()
    options = dict(classes=[0, 7], n=2, top_k=1, cfg=1.5)
    cached = plugin.sample(model, config, VARSampleOptions(**options), torch.device("cpu"))
    full = plugin.sample(model, config, VARSampleOptions(**options, kv_cache=False), torch.device("cpu"))
    assert cached.extras["tokens"].shape == (4, 30)
    np.testing.assert_array_equal(cached.extras["tokens"], full.extras["tokens"])
    assert len(np.unique(cached.extras["tokens"])) > 3  # not a degenerate constant sample
    np.testing.assert_array_equal(cached.images, full.images)


def test_top_p_zero_still_means_off_for_one_release():
    with pytest.warns(FutureWarning, match="--top-p 1"):
        assert VARSampleOptions(top_p=0).top_p == 1.0  # 1.0 is "off" in every plugin (zoo.runtime.sampling)
    assert VARSampleOptions(top_p=0.5).top_p == 0.5


def test_geometry_reads_the_resolved_width_and_heads():
    config = resolve(
        VARConfig, PRESETS["digits"], overrides={"transformer": {"depth": 3, "width": None, "heads": None}}
    )
    geometry = Geometry.from_config(config.model_dump(mode="json"))
    assert (geometry.depth, geometry.heads, geometry.head_dim) == (3, 3, 64)  # width 64 * depth, heads = depth


@pytest.mark.parametrize("label", [10, 10 + 5])
def test_sample_options_reject_unknown_classes(label):
    config = tiny_config()
    assert config.transformer.num_classes == 10  # label 10 is the null class, not a class one may ask for
    with pytest.raises(ZooError, match="out of range"):
        VARPlugin().sample(VARModel(config), config, VARSampleOptions(classes=[label]), torch.device("cpu"))


# -- config and paper sizes -------------------------------------------------------------------


def test_patch_nums_must_end_at_the_latent_side():
    with pytest.raises(ConfigError, match="latent side"):
        resolve(VARConfig, PRESETS["digits"], overrides={"tokenizer": {"patch_nums": [1, 2, 3]}})


def test_run_directories_with_the_old_field_names_still_load():
    # config.json of runs made before codebook_size / code_dim: read, with a warning, for a release
    record = tiny_config().model_dump(mode="json")
    tokenizer = record["tokenizer"]
    tokenizer["vocab_size"], tokenizer["latent_channels"] = tokenizer.pop("codebook_size"), tokenizer.pop("code_dim")
    with pytest.warns(FutureWarning, match="'vocab_size' is now called 'codebook_size'"):
        config = validate(VARConfig, record)
    assert (config.tokenizer.codebook_size, config.tokenizer.code_dim) == (32, 8)
    assert config == tiny_config()
    assert "vocab_size" not in config.model_dump()["tokenizer"]  # written back with the new names


@pytest.mark.parametrize("preset", ["d16", "digits"])
def test_old_field_names_work_in_set_flags(preset, recwarn):
    config = resolve(VARConfig, PRESETS[preset], assignments=["tokenizer.vocab_size=64", "tokenizer.latent_channels=4"])
    assert (config.tokenizer.codebook_size, config.tokenizer.code_dim) == (64, 4)
    warned = [str(warning.message) for warning in recwarn if warning.category is FutureWarning]
    assert any("'latent_channels' is now called 'code_dim'" in message for message in warned)


def test_a_field_given_by_both_names_is_an_error():
    with pytest.raises(ConfigError, match="give only 'codebook_size'"):
        validate(VARConfig, {"tokenizer": {"vocab_size": 64, "codebook_size": 64}})


@pytest.mark.parametrize("preset, paper", [("d16", 310e6), ("d20", 600e6), ("d24", 1.03e9), ("d30", 2.0e9)])
def test_paper_presets_have_the_paper_sizes(preset, paper):
    config = resolve(VARConfig, PRESETS[preset])
    with torch.device("meta"):
        model = VARPlugin().build(config)
    count = model.transformer_parameter_count()
    assert abs(count - paper) / paper < 0.02, (
        f"{preset}: {count / 1e6:.1f}M parameters, the paper says {paper / 1e6:.0f}M"
    )
    assert config.transformer.resolved_width == 64 * config.transformer.depth
    assert config.tokenizer.codebook_size == 4096
    assert config.tokenizer.code_dim == 32


# -- training, export and editing ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import zoo.api

    run_dir = tmp_path_factory.mktemp("var") / "run"
    run = zoo.api.train("var", overrides=TINY, run_dir=run_dir, device="cpu", log_every=10)
    return run


def test_both_stages_train_and_the_losses_go_down(trained_run):
    rows = [json.loads(line) for line in (trained_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    tokenizer = [r for r in rows if r.get("stage") == "tokenizer" and "reconstruction" in r]
    transformer = [r for r in rows if r.get("stage") == "transformer" and "loss" in r]
    assert tokenizer[-1]["reconstruction"] < 0.5 * tokenizer[0]["reconstruction"]
    assert transformer[-1]["loss"] < transformer[0]["loss"] - 0.5  # nats per token
    assert len(list((trained_run.run_dir / "cache").glob("var-tokens-train-*/part-*.safetensors"))) == 1
    assert (trained_run.run_dir / "samples" / "transformer.png").is_file()


def test_tokens_on_disk_are_uint16_memory_maps_and_on_the_fly_give_the_same_loss(trained_run):
    from torch.utils.data import default_collate

    from zoo.plugin import StageContext, StepContext
    from zoo_var.data import image_dataset, token_set
    from zoo_var.losses import TransformerLoss

    model, config, cpu = trained_run.model.eval(), trained_run.config, torch.device("cpu")
    tokens = token_set(StageContext(model, config, trained_run.run_dir / "cache", cpu), "train")
    assert isinstance(tokens.part(0)["tokens"], np.memmap) and tokens.part(0)["tokens"].dtype == np.uint16
    indices = [0, 3, 99, 1616]
    from_disk = default_collate([tokens[i] for i in indices])
    from_images = default_collate([image_dataset(config, "train")[i] for i in indices])
    loss = TransformerLoss(label_smoothing=0.1)
    on_the_fly = loss(model, from_images, StepContext(0, 1, cpu))
    assert torch.equal(on_the_fly["loss"], loss(model, from_disk, StepContext(0, 1, cpu))["loss"])


def test_other_augmentation_is_other_tokens_on_disk(trained_run, tmp_path):
    from zoo.plugin import StageContext
    from zoo_var.data import token_set

    model, cpu = trained_run.model.eval(), torch.device("cpu")
    flipped = trained_run.config.model_copy(
        update={"augment": trained_run.config.augment.model_copy(update={"flip": True})}
    )
    token_set(StageContext(model, trained_run.config, tmp_path, cpu), "train")
    token_set(StageContext(model, flipped, tmp_path, cpu), "train")
    assert len(list(tmp_path.glob("var-tokens-train-*"))) == 2  # the flipped codes are not read from the plain ones


def test_the_transformer_trains_on_tokens_made_on_the_fly(trained_run, tmp_path):
    import zoo.api

    overrides = {
        **TINY,
        "codes": {"mode": "on_the_fly"},
        "transformer_training": {**TINY["transformer_training"], "steps": 12, "validate_every": 6},
    }
    run = zoo.api.train(
        "var",
        overrides=overrides,
        run_dir=tmp_path / "run",
        stage="transformer",
        from_run=trained_run.run_dir,
        device="cpu",
        log_every=3,
    )
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert len([row for row in rows if "val_loss" in row]) == 2  # held-out images, tokenized too
    assert not list((run.run_dir / "cache").glob("var-tokens-*"))  # nothing encoded to disk


def test_paper_presets_tokenize_on_the_fly_and_the_digits_once():
    assert all(
        resolve(VARConfig, PRESETS[name]).codes.mode == "on_the_fly" for name in ("d16", "d20", "d24", "d30", "d36")
    )
    assert resolve(VARConfig, PRESETS["digits"]).codes.mode == "disk"
    with pytest.raises(ConfigError, match="codes.views applies to codes.mode=disk"):
        resolve(VARConfig, PRESETS["d16"], overrides={"codes": {"views": 2}})


def test_optional_gan_term_trains_a_discriminator(tmp_path):
    import zoo.api

    overrides = {
        **TINY,
        "tokenizer_training": {**TINY["tokenizer_training"], "steps": 6, "gan_weight": 0.1, "gan_start": 2},
    }
    zoo.api.train("var", overrides=overrides, run_dir=tmp_path / "run", stage="tokenizer", device="cpu", log_every=1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "discriminator/loss" not in rows[1]
    assert "discriminator/loss" in rows[2]  # from gan_start on
    assert all(np.isfinite(r["tokenizer/adversarial"]) for r in rows[2:] if "tokenizer/adversarial" in r)


def test_perceptual_loss_without_weights_is_a_clear_error(tmp_path):
    import zoo.api

    overrides = {**TINY, "tokenizer_training": {**TINY["tokenizer_training"], "steps": 2, "perceptual_weight": 1.0}}
    with pytest.raises(ZooError, match="perceptual_weights"):
        zoo.api.train("var", overrides=overrides, run_dir=tmp_path / "run", stage="tokenizer", device="cpu")


def test_evaluate_reports_the_issue_metrics(trained_run):
    metrics = trained_run.plugin.evaluate(trained_run.model, trained_run.config, torch.device("cpu"))
    for key in (
        "tokenizer_psnr",
        "codebook_usage",
        "token_accuracy",
        "token_nll",
        "sample_accuracy",
        "sample_accuracy_9",
    ):
        assert key in metrics
    assert metrics["tokenizer_psnr"] > 10
    assert 0 < metrics["codebook_usage"] <= 1
    assert metrics["token_nll"] < np.log(32)  # better than uniform over the codebook


def test_greedy_onnx_sampling_gives_the_torch_tokens(trained_run, tmp_path):
    import zoo.runtime
    from zoo_onnx import export_model

    # every graph sampling needs (the encoder, used only for editing, is left out for time)
    sampling = ["transformer_step", "embed_0", "embed_1", "embed_2", "embed_3", "decoder"]
    manifest = export_model(
        trained_run.plugin, trained_run.model, trained_run.config, tmp_path / "export", components=sampling
    )
    assert sorted(manifest["components"]) == sorted(sampling)
    options = VARSampleOptions(classes=[2, 5], n=2, top_k=1)
    torch_output = trained_run.plugin.sample(trained_run.model, trained_run.config, options, torch.device("cpu"))
    onnx_output = zoo.runtime.load(tmp_path / "export").sample(options)
    np.testing.assert_array_equal(onnx_output.extras["tokens"], torch_output.extras["tokens"])
    assert np.abs(onnx_output.images.astype(int) - torch_output.images.astype(int)).max() <= 1


def var_transfers(patch_nums: list[int], progress: bool = False) -> Counter[tuple[str, str]]:
    """The host transfers of one greedy sample with the cache: per scale the transformer's
    small inputs go in and its logits come back, each embed_k takes its codes and returns the
    next scale's input; the cache and f_hat go in once each, as the zeros they start from;
    the decoder returns images (one per scale with a progress callback) and takes f_hat from
    the device."""
    scales = len(patch_nums)
    counts = Counter({("transformer_step", "cache"): 1, ("embed_0", "f_hat"): 1})
    counts.update({("transformer_step", name): scales for name in ("labels", "scale_inputs", "positions", "logits")})
    counts.update({(f"embed_{k}", "codes"): 1 for k in range(scales)})
    counts.update({(f"embed_{k}", "next_input"): 1 for k in range(scales - 1)})
    counts[("decoder", "image")] = scales if progress else 1
    return counts


def test_sampling_keeps_the_cache_and_f_hat_on_the_device(tmp_path):
    import zoo.runtime
    from zoo.runtime.loop import sampling_progress
    from zoo_onnx import export_model

    config = tiny_config()
    model = randomised_model(config)
    plugin = VARPlugin()
    sampling = ["transformer_step", *(f"embed_{k}" for k in range(4)), "decoder"]
    export_model(plugin, model, config, tmp_path / "export", components=sampling)
    loaded = zoo.runtime.load(tmp_path / "export", provider="cpu", verify=False)
    torch_runtime = plugin.runtime_for(model, config, torch.device("cpu"))
    options = VARSampleOptions(classes=[1, 7], n=2, cfg=1.5, top_k=1)
    onnx_tokens = loaded.runtime.sample(options).extras["tokens"]
    torch_tokens = torch_runtime.sample(options).extras["tokens"]
    np.testing.assert_array_equal(onnx_tokens, torch_tokens)
    expected = var_transfers(config.tokenizer.patch_nums)
    assert loaded.components.host_transfers == expected
    assert torch_runtime.components.inner.host_transfers == expected

    loaded.components.host_transfers.clear()
    images = []
    with sampling_progress(images.append):  # the decoder takes each scale's f_hat where it is
        loaded.runtime.sample(options)
    assert len(images) == 4
    assert loaded.components.host_transfers == var_transfers(config.tokenizer.patch_nums, progress=True)


def test_editing_keeps_the_tokens_outside_the_mask(trained_run, tmp_path):
    from zoo.data import digits

    config = trained_run.config
    image = digits(16, split="test")[0]["image"]
    Image.fromarray(((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(tmp_path / "edit.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 255  # regenerate the right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    options = VARSampleOptions(classes=[7], n=3, edit=tmp_path / "edit.png", mask=tmp_path / "mask.png", seed=1)
    output = trained_run.plugin.sample(trained_run.model, config, options, torch.device("cpu"))

    with torch.no_grad():
        edited = torch.from_numpy(np.asarray(Image.open(tmp_path / "edit.png"), np.float32)).permute(2, 0, 1)[None]
        source = trained_run.model.tokenizer.encode_indices(edited / 127.5 - 1).numpy()[0]
    tokens = output.extras["tokens"]  # (3, 30)
    last = tokens[:, 14:].reshape(3, 4, 4)
    np.testing.assert_array_equal(last[:, :, :2], np.broadcast_to(source[14:].reshape(4, 4)[:, :2], (3, 4, 2)))
    assert tokens[:, 0].tolist() == [source[0]] * 3  # the 1x1 scale always comes from the image
    assert (last[:, :, 2:] != source[14:].reshape(4, 4)[None, :, 2:]).any()  # the right half was regenerated


def test_zoo_train_var_into_a_file_shows_plain_lines_grids_and_a_report(tmp_path):
    """`zoo train var > log.txt` on a tiny config: plain progress lines, every stage's grid,
    the in-training grids, then `zoo report` on the run."""
    import os
    import re
    import subprocess

    from tests.conftest import zoo_command

    config = tmp_path / "tiny.json"
    tiny = {**TINY, "tokenizer_training": {**TINY["tokenizer_training"], "steps": 20}}
    tiny["transformer_training"] = {**TINY["transformer_training"], "steps": 20, "validate_every": 10}
    config.write_text(json.dumps({**tiny, "sample_every": 10}))
    run, log = tmp_path / "run", tmp_path / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ZOO_LOAD_PLUGINS": "zoo_var"}
    command = ["train", "var", "--config", str(config), "--out", str(run), "--device", "cpu"]
    with open(log, "w") as file:
        result = subprocess.run(
            zoo_command(*command, "--log-every-seconds", "0.001"),
            stdout=file,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    for stage in ("tokenizer", "transformer"):
        assert re.search(rf"^{stage} 20/20 \(100%\) \d+ img/s ETA 0s loss ", text, re.MULTILINE), text
        assert re.search(rf"^{stage}: done in \S+: loss ", text, re.MULTILINE), text
    assert "val_loss" in text
    assert "\x1b[" not in text
    assert f"  zoo report {run} --out {run}/report.html" in text
    samples = run / "samples"
    assert Image.open(samples / "tokenizer.png").size == (8 * 66 + 2, 2 * 66 + 2)  # 8 images over 8 reconstructions
    assert Image.open(samples / "transformer.png").size == (4 * 66 + 2, 10 * 66 + 2)  # n=4 per class, 10 classes
    assert (samples / "tokenizer" / "step_10.png").is_file()
    assert (samples / "transformer" / "step_10.png").is_file()

    report = subprocess.run(zoo_command("report", str(run)), capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr
    page = (run / "report.html").read_text()
    assert page.count("<svg") >= 8
    assert page.count("data:image/png;base64,") == 4
    assert "stage tokenizer" in page
    assert "stage transformer" in page
    assert 'data-title="validation"' in page

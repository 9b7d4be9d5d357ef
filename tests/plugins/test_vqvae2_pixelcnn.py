"""The vqvae2_pixelcnn plugin: causal masks, fast == naive sampling, training, codes cache, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tolerances import assert_within_rounding, depth_of
from zoo.config import deep_merge, resolve, validate
from zoo.errors import ConfigError
from zoo_vqvae2_pixelcnn.config import VQVAE2Config, VQVAE2SampleOptions
from zoo_vqvae2_pixelcnn.data import code_set, image_set
from zoo_vqvae2_pixelcnn.pixelcnn import PixelCNNPrior
from zoo_vqvae2_pixelcnn.plugin import VQVAE2PixelCNNPlugin

torch.set_num_threads(1)

TINY = {
    "data": "digits",
    "image_size": 16,
    "class_conditional": True,
    "eval_samples": 8,
    "vqvae": {
        "channels": 16,
        "res_blocks": 1,
        "res_channels": 8,
        "code_dim": 8,
        "top_codebook_size": 16,
        "bottom_codebook_size": 16,
        "dead_code_threshold": 0.1,
    },
    "prior_top": {"channels": 16, "blocks": 1, "condition_channels": 8, "dropout": 0.0},
    "prior_bottom": {"channels": 16, "blocks": 1, "condition_channels": 8, "condition_blocks": 1, "dropout": 0.0},
    "training": {
        "vqvae": {"steps": 60, "batch_size": 16, "lr": 5e-3},
        "prior_top": {"steps": 30, "batch_size": 32, "lr": 3e-3},
        "prior_bottom": {"steps": 30, "batch_size": 32, "lr": 3e-3},
    },
}
PLUGIN = VQVAE2PixelCNNPlugin()
CPU = torch.device("cpu")


def tiny_model(variant: str = "gated", **changes) -> tuple[VQVAE2Config, torch.nn.Module]:
    prior = {"variant": variant}
    config = resolve(VQVAE2Config, deep_merge(TINY, {"prior_top": prior, "prior_bottom": prior, **changes}))
    torch.manual_seed(0)
    return config, PLUGIN.build(config).eval()


def receptive_field(prior: PixelCNNPrior, condition: torch.Tensor, row: int, col: int) -> np.ndarray:
    """(H, W) bool: which input positions the logits at (row, col) depend on."""
    side = prior.side
    embedded = torch.randn(1, prior.embedding.embedding_dim, side, side, requires_grad=True)
    prior.logits(embedded, condition)[0, :, row, col].sum().backward()
    return (embedded.grad[0].abs().sum(0) > 0).numpy()


def bottom_condition(prior: PixelCNNPrior) -> torch.Tensor:
    with torch.no_grad():
        return prior.condition(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, dtype=torch.long))


def raster_order(side: int) -> np.ndarray:
    return np.arange(side * side).reshape(side, side)


# -- masks -----------------------------------------------------------------------------------


def deep_bottom_prior(variant: str) -> PixelCNNPrior:
    """A 6x6 bottom map, a 3x3 first layer and 3 blocks: deep enough for a blind spot, small
    enough to check every position."""
    config, model = tiny_model(
        variant, image_size=24, prior_bottom={"variant": variant, "blocks": 3, "first_kernel": 3}
    )
    return model.prior_bottom


@pytest.mark.parametrize("variant", ["gated", "masked"])
def test_logits_never_see_the_current_or_a_later_position(variant):
    prior = deep_bottom_prior(variant)
    condition = bottom_condition(prior)
    order = raster_order(prior.side)
    for row in range(prior.side):
        for col in range(prior.side):
            seen = receptive_field(prior, condition, row, col)
            assert not seen[order >= order[row, col]].any(), (row, col)


def test_the_gated_stacks_see_every_earlier_position_and_the_plain_masks_do_not():
    blind_spots = {}
    for variant in ("gated", "masked"):
        prior = deep_bottom_prior(variant)
        condition = bottom_condition(prior)
        order, rows, cols = raster_order(prior.side), *np.indices((prior.side, prior.side))
        reach = 1 + 3  # the first layer's reach plus one per block, up and to either side
        missed = 0
        for row in range(prior.side):
            for col in range(prior.side):
                seen = receptive_field(prior, condition, row, col)
                in_reach = (order < order[row, col]) & (row - rows <= reach) & (np.abs(cols - col) <= reach)
                missed += int((in_reach & ~seen).sum())
        blind_spots[variant] = missed
    assert blind_spots["gated"] == 0
    # ... the plain masks miss positions up and to the right (the blind spot), e.g. (row-1, col+2).
    assert blind_spots["masked"] > 0


# -- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["gated", "masked"])
def test_the_fast_step_gives_the_full_forward_logits(variant):
    config, model = tiny_model(variant)
    for name, prior in model.priors().items():
        settings, side, batch = getattr(config, name), prior.side, 3
        codes = torch.randint(0, prior.codebook_size, (batch, side, side))
        labels = torch.randint(0, 10, (batch,))
        top = torch.randint(0, config.vqvae.top_codebook_size, (batch, config.top_side, config.top_side))
        with torch.no_grad():
            condition = prior.condition(labels) if name == "prior_top" else prior.condition(top, labels)
            full = prior.logits(prior.embed(codes), condition)  # (B, K, H, W)
            vertical = torch.zeros(batch, *settings.vertical_cache_shape(side))
            horizontal = torch.zeros(batch, *settings.horizontal_cache_shape(side))
            for row in range(side):
                row_index = torch.tensor([row])
                row_bias, vertical = prior.row(codes, row_index, vertical, horizontal, condition)
                horizontal = torch.zeros_like(horizontal)
                for col in range(side):
                    logits, horizontal = prior.step(codes, row_index, torch.tensor([col]), row_bias, horizontal)
                    # the cached step sums the same products in other groupings (tests.tolerances)
                    assert_within_rounding(logits, full[:, :, row, col], depth_of(prior))


@pytest.mark.parametrize("variant", ["gated", "masked"])
def test_fast_sampling_draws_the_same_codes_as_naive_sampling(variant):
    config, model = tiny_model(variant)
    options = {"n": 2, "classes": [1, 5], "seed": 3, "temperature": 1.0}
    fast = PLUGIN.sample(model, config, VQVAE2SampleOptions(**options), CPU)
    naive = PLUGIN.sample(model, config, VQVAE2SampleOptions(**options, naive=True), CPU)
    for key in ("top_codes", "bottom_codes"):
        np.testing.assert_array_equal(fast.extras[key], naive.extras[key])
    assert fast.images.shape == (4, 16, 16, 3)
    assert fast.images.dtype == np.uint8
    # Untrained priors are close to uniform: different seeds give different codes.
    other = PLUGIN.sample(model, config, VQVAE2SampleOptions(**{**options, "seed": 4}), CPU)
    assert (other.extras["bottom_codes"] != fast.extras["bottom_codes"]).any()


def test_sample_options_classes_top_k_and_errors():
    config, model = tiny_model()
    # n is images per class, as in every model: one grid row per class
    output = PLUGIN.sample(model, config, VQVAE2SampleOptions(n=3, classes=[3, 7]), CPU)
    np.testing.assert_array_equal(output.extras["labels"], [3, 3, 3, 7, 7, 7])
    assert output.columns == 3
    assert len(output.images) == 6
    default = VQVAE2SampleOptions(n=1)
    np.testing.assert_array_equal(PLUGIN.sample(model, config, default, CPU).extras["labels"], range(10))
    with pytest.raises(ConfigError, match="at most 256"):  # 26 x 10 classes, refused before sampling
        PLUGIN.sample(model, config, VQVAE2SampleOptions(n=26), CPU)
    with pytest.raises(ConfigError, match="at most 256"):
        validate(VQVAE2SampleOptions, {"n": 129, "classes": [0, 1]}, what="sample option")
    greedy = [PLUGIN.sample(model, config, VQVAE2SampleOptions(n=2, seed=seed, top_k=1), CPU) for seed in (0, 1)]
    np.testing.assert_array_equal(greedy[0].extras["bottom_codes"], greedy[1].extras["bottom_codes"])
    with pytest.raises(ConfigError, match="out of range"):
        PLUGIN.sample(model, config, VQVAE2SampleOptions(n=1, classes=[10]), CPU)
    unconditional, model = tiny_model(class_conditional=False)
    with pytest.raises(ConfigError, match="class-conditional"):
        PLUGIN.sample(model, unconditional, VQVAE2SampleOptions(n=1, classes=[1]), CPU)


def test_the_exported_components_are_the_documented_ones():
    config, model = tiny_model()
    priors = [
        f"{prior}_{part}" for prior in ("prior_top", "prior_bottom") for part in ("condition", "logits", "row", "step")
    ]
    components = PLUGIN.export_components(model, config)
    assert (
        [component.name for component in components]
        == ["encoder", "decoder", *priors]
        == PLUGIN.component_names(config)
    )
    inputs = {component.name: component.input_names for component in components}
    assert inputs["prior_bottom_condition"] == ["top_codes", "labels"]
    assert inputs["prior_top_condition"] == ["labels"]
    assert inputs["prior_top_step"] == ["codes", "row", "col", "row_bias", "horizontal_cache"]


def test_run_directories_with_the_old_codebook_names_still_load():
    old = deep_merge(TINY, {"vqvae": {"top_codes": 24, "bottom_codes": 12}})
    del old["vqvae"]["top_codebook_size"], old["vqvae"]["bottom_codebook_size"]
    with pytest.warns(FutureWarning, match="'top_codes' is now called 'top_codebook_size'"):
        config = VQVAE2Config.model_validate(old)  # what loading a run's config.json does
    assert (config.vqvae.top_codebook_size, config.vqvae.bottom_codebook_size) == (24, 12)
    with pytest.warns(FutureWarning, match="'bottom_codes' is now called"):  # `--set` takes the old name too
        assert resolve(VQVAE2Config, assignments=["vqvae.bottom_codes=20"]).vqvae.bottom_codebook_size == 20
    with pytest.raises(ConfigError, match="give only 'top_codebook_size'"):
        resolve(VQVAE2Config, deep_merge(TINY, {"vqvae": {"top_codes": 24}}))


def test_config_sizes_follow_the_strides():
    config = resolve(VQVAE2Config, PLUGIN.presets["cifar32"])
    assert (config.bottom_side, config.top_side) == (8, 4)
    assert config.vqvae.top_codebook_size == config.vqvae.bottom_codebook_size == 512
    assert config.prior_top.blocks == 15
    assert resolve(VQVAE2Config, {"image_size": 64}).bottom_side == 16
    with pytest.raises(ConfigError, match="multiple of"):
        resolve(VQVAE2Config, {"image_size": 36})


# -- training, codes cache, evaluation, export ----------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import zoo.api

    run_dir = tmp_path_factory.mktemp("vqvae2") / "run"
    return zoo.api.train("vqvae2_pixelcnn", overrides=TINY, run_dir=run_dir, device="cpu", log_every=5)


def test_every_stage_trains_and_its_loss_goes_down(trained_run):
    rows = [json.loads(line) for line in (trained_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {
        stage: [r["loss"] for r in rows if r.get("stage") == stage and "loss" in r]
        for stage in ("vqvae", "prior_top", "prior_bottom")
    }
    assert all(len(values) >= 5 for values in losses.values())
    assert losses["vqvae"][-1] < 0.7 * losses["vqvae"][0]
    for prior in ("prior_top", "prior_bottom"):
        assert losses[prior][-1] < losses[prior][0] - 0.3, (prior, losses[prior])  # nats per code
    assert (trained_run.run_dir / "samples" / "prior_bottom.png").is_file()


def test_codes_are_extracted_once_into_the_run_and_read_memory_mapped(trained_run, monkeypatch):
    import zoo.data.cache as cache_module
    from zoo.plugin import StageContext

    parts = list((trained_run.run_dir / "cache").glob("vqvae2-codes-train-*/part-*.safetensors"))
    assert len(parts) == 1  # 1,617 digits: one part
    monkeypatch.setattr(cache_module, "_encode_part", lambda *args: pytest.fail("codes were extracted again"))
    context = StageContext(trained_run.model, trained_run.config, trained_run.run_dir / "cache", CPU)
    codes = code_set(context, "train")
    assert (
        codes[0]["top"].shape == (2, 2) and codes[0]["bottom"].shape == (4, 4) and codes[0]["top"].dtype == torch.int64
    )
    assert isinstance(codes.part(0)["bottom"], np.memmap) and codes.part(0)["bottom"].dtype == np.uint16


def test_codes_on_the_fly_give_the_losses_of_the_codes_on_disk(trained_run):
    from torch.utils.data import default_collate

    from zoo.plugin import StageContext, StepContext
    from zoo_vqvae2_pixelcnn.losses import PRIOR_LOSSES

    model, config = trained_run.model.eval(), trained_run.config
    codes = code_set(StageContext(model, config, trained_run.run_dir / "cache", CPU), "train")
    images = image_set(config, "train")
    indices = [0, 5, 17, 400, 1616]
    from_disk = default_collate([codes[i] for i in indices])
    from_images = default_collate([images[i] for i in indices])
    for name, loss in PRIOR_LOSSES.items():
        on_the_fly = loss(model, from_images, StepContext(0, 1, CPU))["loss"]
        assert torch.equal(on_the_fly, loss(model, from_disk, StepContext(0, 1, CPU))["loss"]), name


def test_the_priors_train_on_codes_made_on_the_fly(trained_run, tmp_path):
    import zoo.api

    overrides = deep_merge(TINY, {"codes": {"mode": "on_the_fly"}, "training": {"prior_top": {"steps": 12}}})
    run = zoo.api.train(
        "vqvae2_pixelcnn",
        overrides=overrides,
        run_dir=tmp_path / "run",
        stage="prior_top",
        from_run=trained_run.run_dir,
        device="cpu",
        log_every=3,
    )
    losses = [json.loads(line)["loss"] for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()[:-1]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert not list((run.run_dir / "cache").glob("vqvae2-codes-*"))  # nothing encoded to disk


def test_evaluate_reports_reconstruction_codebooks_bits_and_samples(trained_run):
    metrics = trained_run.evaluate()
    assert 10 < metrics["recon_psnr"] < 60
    assert metrics["recon_mse"] > 0
    for level, codes in (("top", 16), ("bottom", 16)):
        assert 0 < metrics[f"{level}_codebook_usage"] <= 1
        assert 1 <= metrics[f"{level}_perplexity"] <= codes
    # Trained priors beat a uniform guess over their codebooks (4 bits).
    assert metrics["prior_top_bits_per_code"] < 4
    assert metrics["prior_bottom_bits_per_code"] < 4
    # The sample scores, recomputed from the same seed-0 samples: the fraction is a count over
    # `eval_samples` (0 for this tiny model), pinned together with the mean confidence it thresholds.
    from zoo.data.classifier import CONFIDENT, DigitsClassifier
    from zoo_vqvae2_pixelcnn.evaluation import eval_sample_options

    samples = trained_run.sample(**eval_sample_options(trained_run.config).model_dump()).images  # (N, H, W, 3)
    top = DigitsClassifier().predict_proba(torch.from_numpy(samples).permute(0, 3, 1, 2) / 127.5 - 1.0).max(axis=1)
    assert metrics["sample_confident_fraction"] == np.count_nonzero(top >= CONFIDENT) / len(samples)
    assert metrics["sample_digit_confidence"] == pytest.approx(top.mean())


def test_the_codebooks_can_also_learn_from_the_loss():
    from zoo_vqvae2_pixelcnn.losses import vqvae_loss

    config, model = tiny_model(vqvae={**TINY["vqvae"], "ema_decay": None})
    model.train()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    vqvae_loss(model, {"image": images}, None)["loss"].backward()
    for quantizer in (model.vqvae.quantizer_top, model.vqvae.quantizer_bottom):
        assert isinstance(quantizer.codebook, torch.nn.Parameter)
        assert quantizer.codebook.grad.abs().sum() > 0


def test_greedy_onnx_sampling_gives_the_torch_codes(trained_run, tmp_path):
    import zoo.runtime
    from zoo_onnx import export_model

    # The fast path's graphs (the naive `_logits` graphs and the encoder export the same way).
    fast_path = ["decoder"] + [
        f"{prior}_{part}" for prior in ("prior_top", "prior_bottom") for part in ("condition", "row", "step")
    ]
    export_model(trained_run.plugin, trained_run.model, trained_run.config, tmp_path / "export", components=fast_path)
    options = VQVAE2SampleOptions(n=3, classes=[1, 4, 9], top_k=1)
    torch_output = trained_run.plugin.sample(trained_run.model, trained_run.config, options, CPU)
    onnx_output = zoo.runtime.load(tmp_path / "export", provider="cpu").sample(options)
    for key in ("top_codes", "bottom_codes"):
        np.testing.assert_array_equal(onnx_output.extras[key], torch_output.extras[key])
    assert np.abs(onnx_output.images.astype(int) - torch_output.images.astype(int)).max() <= 1


def test_sampling_keeps_the_priors_caches_on_the_device(tmp_path):
    import zoo.runtime
    from zoo_onnx import export_model

    config, model = tiny_model()
    fast_path = ["decoder"] + [
        f"{prior}_{part}" for prior in ("prior_top", "prior_bottom") for part in ("condition", "row", "step")
    ]
    export_model(PLUGIN, model, config, tmp_path / "export", components=fast_path)
    loaded = zoo.runtime.load(tmp_path / "export", provider="cpu", verify=False)
    torch_runtime = PLUGIN.runtime_for(model, config, CPU)
    options = VQVAE2SampleOptions(n=2, classes=[1, 4], top_k=1)
    onnx_output, torch_output = loaded.runtime.sample(options), torch_runtime.sample(options)
    for key in ("top_codes", "bottom_codes"):
        np.testing.assert_array_equal(onnx_output.extras[key], torch_output.extras[key])
    transfers = loaded.components.host_transfers
    assert torch_runtime.components.inner.host_transfers == transfers  # one loop, one contract
    for prior, side in (("prior_top", config.top_side), ("prior_bottom", config.bottom_side)):
        on_device = [
            (f"{prior}_condition", "condition"),
            (f"{prior}_row", "condition"),
            (f"{prior}_row", "row_bias"),
            (f"{prior}_row", "new_vertical_cache"),
            (f"{prior}_step", "row_bias"),
            (f"{prior}_step", "new_horizontal_cache"),
        ]
        assert {key: transfers[key] for key in on_device} == dict.fromkeys(on_device, 0)
        # the caches' zeros: the vertical one's once, the horizontal one's at each row's start
        assert transfers[(f"{prior}_row", "vertical_cache")] == 1
        assert transfers[(f"{prior}_row", "previous_row")] == 1
        assert transfers[(f"{prior}_step", "horizontal_cache")] == side
        # what the loop reads and writes: logits out and the code map in, at every position
        assert transfers[(f"{prior}_step", "logits")] == side * side
        assert transfers[(f"{prior}_step", "codes")] == side * side

"""multimodal_caption: training, sampling with and without the cache, decoding, presets, export.
(The attention layers, causal mask and cache layout are tested in tests/core/test_nn_attention.py.)"""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import zoo
import zoo_multimodal_caption.evaluation
from tests.tolerances import depth_of, rounding_bound
from zoo.config import validate
from zoo.errors import ConfigError, ZooError
from zoo.plugin import StageContext
from zoo_multimodal_caption.config import PRESETS, CaptionConfig, CaptionSampleOptions, parameter_counts
from zoo_multimodal_caption.data import captioned_images, captions_of, parse_shapes_caption
from zoo_multimodal_caption.evaluation import evaluate_captions, retrieval_recall
from zoo_multimodal_caption.plugin import MultimodalCaptionPlugin
from zoo_multimodal_caption.text_tokenizer import BOS_ID, EOS_ID, PAD_ID, decode, encode, train_tokenizer

TINY = {
    "image": {"size": 32, "channels": [8, 16]},
    "latent_dim": 16,
    "text": {
        "vocab_size": 128,
        "max_length": 24,
        "embedding_dim": 32,
        "encoder_layers": 1,
        "encoder_heads": 2,
        "decoder_layers": 2,
        "decoder_heads": 2,
        "feedforward_dim": 64,
    },
    "data": {"train_count": 256, "test_count": 32, "eval_count": 32},
    "training": {"steps": 40, "batch_size": 16, "lr": 3e-3, "validation_every": 20},
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def plugin() -> MultimodalCaptionPlugin:
    return MultimodalCaptionPlugin()


@pytest.fixture(scope="module")
def config() -> CaptionConfig:
    return CaptionConfig.model_validate(TINY)


@pytest.fixture(scope="module")
def model(plugin, config):
    """Untrained weights (random logits tell decoding paths apart best) with a trained tokenizer."""
    torch.manual_seed(0)
    model = plugin.build(config).eval()
    text = config.text
    model.set_tokenizer(
        train_tokenizer(captions_of(captioned_images(config, "train")), text.vocab_size, text.max_length)
    )
    return model


def test_tokenizer_is_deterministic_and_round_trips(config):
    captions = captions_of(captioned_images(config, "train"))
    first = train_tokenizer(captions, 128, 24)
    assert first.to_str() == train_tokenizer(captions, 128, 24).to_str()
    assert 4 < first.get_vocab_size() <= 128
    tokens = encode(first, ["two small red circles on the left", "a star"])
    assert tokens.shape[0] == 2
    assert tokens[0, 0] == BOS_ID
    assert tokens[1, 3] == EOS_ID
    assert tokens[1, -1] == PAD_ID
    assert decode(first, tokens[0, 1:]) == "two small red circles on the left"
    long = encode(first, ["a red circle " * 20])
    assert long.shape == (1, 24)
    assert long[0, -1] == EOS_ID  # cut to max_length, [EOS] kept


def test_shapes_captions_parse_back_to_their_attributes(config):
    dataset = captioned_images(config, "test")
    for index in range(len(dataset)):
        item = dataset[index]
        assert parse_shapes_caption(item["caption"]) == item["attributes"]
    assert parse_shapes_caption("a red blob")["shape"] is None


def test_training_lowers_the_loss_and_the_run_reloads(tmp_path):
    run = zoo.train("multimodal_caption", overrides=TINY, run_dir=tmp_path / "run", device="cpu", log_every=5)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.7 * losses[0]
    assert any("val_loss" in r for r in records)
    assert (tmp_path / "run" / "cache" / "tokenizer.json").is_file()

    # the tokenizer travels inside model.safetensors: a reloaded run captions identically
    reloaded = zoo.load_run(tmp_path / "run", device="cpu")
    assert reloaded.model.tokenizer_json == run.model.tokenizer_json
    options = {"n": 4, "max_length": 10}
    assert reloaded.sample(**options).texts == run.sample(**options).texts
    metrics = reloaded.evaluate()
    for key in (
        "exact_match",
        "bleu",
        "image_to_text_recall@5",
        "text_to_image_recall@1",
        "reconstruction_psnr",
        "attribute_accuracy/color",
    ):
        assert np.isfinite(metrics[key])


def test_sampling_with_the_cache_equals_the_full_recompute(model, config, plugin):
    for decoding in ("greedy", "beam"):
        with_cache = plugin.sample(model, config, CaptionSampleOptions(n=4, max_length=12, decoding=decoding), CPU)
        without = plugin.sample(
            model, config, CaptionSampleOptions(n=4, max_length=12, decoding=decoding, kv_cache=False), CPU
        )
        np.testing.assert_array_equal(with_cache.extras["tokens"], without.extras["tokens"])


def test_beam_width_one_equals_greedy_and_wider_beams_score_higher(model, config, plugin):
    greedy = plugin.sample(model, config, CaptionSampleOptions(n=6, max_length=12), CPU)
    beam = plugin.sample(model, config, CaptionSampleOptions(n=6, max_length=12, decoding="beam", beam_width=1), CPU)
    np.testing.assert_array_equal(beam.extras["tokens"], greedy.extras["tokens"])
    assert beam.texts == greedy.texts
    assert len(greedy.texts) == 6
    assert greedy.images.shape == (6, 32, 32, 3)
    wide = plugin.sample(model, config, CaptionSampleOptions(n=6, max_length=12, decoding="beam", beam_width=4), CPU)
    greedy_log_prob = _log_prob(model, config, greedy.extras["tokens"])
    # up to rounding (tests.tolerances): a wide beam may find the greedy captions themselves
    assert _log_prob(model, config, wide.extras["tokens"]) >= greedy_log_prob - rounding_bound(
        greedy_log_prob, depth_of(model)
    )


def _log_prob(model, config, generated: np.ndarray) -> float:
    """Total log-probability of generated captions of the first examples (up to [EOS])."""
    runtime = MultimodalCaptionPlugin().runtime_for(model, config, CPU)
    images = runtime.arrays["example_images"][: len(generated)]
    latents = torch.from_numpy(runtime.encode_images((images.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)))
    tokens = torch.from_numpy(np.concatenate([np.full((len(generated), 1), BOS_ID), generated], 1))
    with torch.no_grad():
        logits, _ = model.text_decoder(tokens[:, :-1], latents)
    log_probs = logits.log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return float(log_probs[tokens[:, 1:] != PAD_ID].sum())


def test_sampling_is_seeded_and_top_k_one_is_greedy(model, config, plugin):
    options = {"n": 4, "max_length": 12, "decoding": "sample", "temperature": 1.5}
    first = plugin.sample(model, config, CaptionSampleOptions(**options, seed=3), CPU).extras["tokens"]
    again = plugin.sample(model, config, CaptionSampleOptions(**options, seed=3), CPU).extras["tokens"]
    other = plugin.sample(model, config, CaptionSampleOptions(**options, seed=4), CPU).extras["tokens"]
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or (first != other).any()
    top_one = plugin.sample(model, config, CaptionSampleOptions(**{**options, "top_k": 1}), CPU).extras["tokens"]
    greedy = plugin.sample(model, config, CaptionSampleOptions(n=4, max_length=12), CPU).extras["tokens"]
    np.testing.assert_array_equal(top_one, greedy)


def test_image_files_captions_and_retrieval(model, config, plugin, tmp_path):
    paths = []
    for index in range(2):
        path = tmp_path / f"shape{index}.png"
        item = captioned_images(config, "test")[index]
        Image.fromarray(((item["image"].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)).resize((48, 40)).save(
            path
        )
        paths.append(str(path))
    captioned = plugin.sample(model, config, CaptionSampleOptions(image=paths, max_length=8), CPU)
    assert len(captioned.texts) == 2
    assert captioned.images.shape == (2, 32, 32, 3)
    drawn = plugin.sample(model, config, CaptionSampleOptions(caption="a red circle in the center"), CPU)
    assert drawn.images.shape == (1, 32, 32, 3)
    assert drawn.texts == ["a red circle in the center"]
    scores = plugin.sample(
        model, config, CaptionSampleOptions(image=paths, caption=["a red star", "two blue squares"]), CPU
    )
    assert scores.extras["similarity"].shape == (2, 2)
    # cosine similarities: one dot product of unit vectors, 1 at most but for rounding
    assert np.abs(scores.extras["similarity"]).max() <= 1 + rounding_bound(1.0, depth=1)
    with pytest.raises(ZooError, match="no such file"):
        plugin.sample(model, config, CaptionSampleOptions(image=str(tmp_path / "missing.png")), CPU)


class StubCaptionRuntime:
    """Stands in for the sampling loop in evaluate_captions: fixed captions, latents whose
    similarities are chosen, and decoded images a known distance from the targets."""

    tokenizer = SimpleNamespace(normalizer=SimpleNamespace(normalize_str=str))

    def __init__(self, captions: list[str], targets: np.ndarray) -> None:
        self.captions, self.targets = captions, targets
        self.image_latents = np.array([[0.9, 0.1], [0.8, 0.2]])  # both images are nearest caption 0
        self.text_latents = np.eye(2)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        np.testing.assert_array_equal(images, self.targets)
        return self.image_latents

    def caption_latents(self, latents: np.ndarray) -> tuple[list[str], None]:
        return self.captions, None

    def encode_captions(self, captions: list[str]) -> np.ndarray:
        return self.text_latents

    def similarity(self, image_latents: np.ndarray, text_latents: np.ndarray) -> np.ndarray:
        return image_latents @ text_latents.T

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        return self.targets + (0.1 if latents is self.image_latents else 0.2)  # MSE 0.01 or 0.04


def test_caption_metrics_of_a_hand_computed_case(monkeypatch):
    references = ["a red circle in the center", "a blue square on the left"]
    items = [
        {"image": torch.zeros(3, 4, 4), "caption": caption, "attributes": parse_shapes_caption(caption)}
        for caption in references
    ]
    monkeypatch.setattr(zoo_multimodal_caption.evaluation, "captioned_images", lambda config, split: items)
    captions = ["a red circle in the center", "a green square on the left"]  # the second: one word wrong
    runtime = StubCaptionRuntime(captions, np.zeros((2, 3, 4, 4), np.float32))
    metrics = evaluate_captions(runtime, CaptionConfig())
    # BLEU over the corpus, both 6 words (no brevity penalty): n-gram matches of the two captions
    # 1-grams 6 + 5 of 12, 2-grams 5 + 3 of 10, 3-grams 4 + 2 of 8, 4-grams 3 + 1 of 6
    bleu = 100 * (11 / 12 * 8 / 10 * 6 / 8 * 4 / 6) ** (1 / 4)
    assert metrics == pytest.approx(
        {
            "exact_match": 0.5,
            "bleu": bleu,  # 77.8
            # image 1 is nearest caption 0: a miss; each caption is nearest its own image
            "image_to_text_recall@1": 0.5,
            "image_to_text_recall@5": 1.0,
            "text_to_image_recall@1": 1.0,
            "text_to_image_recall@5": 1.0,
            "reconstruction_psnr": 10 * math.log10(4 / 0.01),  # 26.0 dB
            "caption_to_image_psnr": 10 * math.log10(4 / 0.04),  # 20.0 dB
            "attribute_accuracy/count": 1.0,
            "attribute_accuracy/size": 1.0,
            "attribute_accuracy/color": 0.5,
            "attribute_accuracy/shape": 1.0,
            "attribute_accuracy/position": 1.0,
            "attribute_accuracy": 0.9,
        },
        rel=rounding_bound(1.0, depth=1),  # float32 PSNR (tests.tolerances); the rest is exact
    )


def test_retrieval_recall_counts_identical_captions_as_hits():
    similarity = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.0, 0.7, 0.3]])
    metrics = retrieval_recall(similarity, ["a", "b", "c"], ks=(1, 2))
    assert metrics["image_to_text_recall@1"] == pytest.approx(1 / 3)
    assert metrics["image_to_text_recall@2"] == pytest.approx(2 / 3)
    # image 1 retrieves caption 2, which is worded like its own: a hit
    assert retrieval_recall(similarity, ["a", "b", "b"], ks=(1,))["image_to_text_recall@1"] == pytest.approx(1.0)


def test_engravings_preset_parameters_and_shapes(plugin):
    config = CaptionConfig.model_validate(PRESETS["engravings"])
    with torch.device("meta"):
        model = plugin.build(config)
        latent = model.image_encoder(torch.empty(2, 3, 512, 512))
        image = model.image_decoder(latent)
        logits, cache = model.text_decoder(torch.zeros(2, 100, dtype=torch.long), latent)
        text_latent = model.text_encoder(torch.zeros(2, 100, dtype=torch.long))
    assert latent.shape == (2, 1024)
    assert text_latent.shape == (2, 1024)
    assert image.shape == (2, 3, 512, 512)
    assert logits.shape == (2, 100, 8000)
    assert cache.shape == (2, 3, 2, 8, 100, 64)  # (B, layers, keys/values, heads, positions, head_dim)
    counts = parameter_counts(config)
    for part, expected in counts.items():
        assert sum(p.numel() for p in getattr(model, part).parameters()) == expected, part
    stem = model.image_decoder.stem
    assert stem.weight.shape == (512 * 32 * 32, 1024)
    assert stem.weight.numel() + stem.bias.numel() == 537_395_200
    assert sum(p.numel() for p in model.parameters()) == sum(counts.values()) > 575_000_000
    assert f"engravings {sum(counts.values()) / 1e6:.1f}M" in plugin.description


def test_timm_encoder_failure_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    config = CaptionConfig.model_validate({**TINY, "image": {**TINY["image"], "encoder": "timm:resnet18"}})
    with pytest.raises(ZooError, match="needs timm"):
        MultimodalCaptionPlugin().build(config)
    with pytest.raises(ConfigError, match="timm:<model name>"):
        validate(CaptionConfig, {"image": {"encoder": "resnet18"}})


def test_image_encoder_weights_come_from_a_local_file(plugin, config, tmp_path):
    torch.manual_seed(1)
    source = plugin.build(config).image_encoder.backbone
    path = tmp_path / "encoder.safetensors"
    save_file({**source.state_dict(), "head.weight": torch.zeros(3)}, str(path))  # extra keys are ignored
    loaded = plugin.build(
        config.model_copy(update={"image": config.image.model_copy(update={"encoder_weights": path})})
    )
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.image_encoder.backbone.state_dict()[key], value)
    save_file({"0.weight": torch.zeros(8, 3, 4, 4)}, str(path))
    with pytest.raises(ConfigError, match="lacks"):
        plugin.build(config.model_copy(update={"image": config.image.model_copy(update={"encoder_weights": path})}))


def test_onnx_export_matches_torch_sampling(model, config, plugin, tmp_path):
    import zoo.runtime
    from zoo_onnx import export_model

    manifest = export_model(plugin, model, config, tmp_path / "export")
    assert list(manifest["components"]) == plugin.component_names(config)
    loaded = zoo.runtime.load(tmp_path / "export", provider="cpu")
    for options in ({"n": 6, "max_length": 16}, {"n": 6, "max_length": 16, "decoding": "beam", "beam_width": 3}):
        loaded.components.host_transfers.clear()
        exported = loaded.sample(options)
        eager = plugin.sample(model, config, CaptionSampleOptions(**options), CPU)
        np.testing.assert_array_equal(exported.extras["tokens"], eager.extras["tokens"])
        assert exported.texts == eager.texts
        transfers = loaded.components.host_transfers
        cache_transfers = (transfers[("text_decoder_step", "cache")], transfers[("text_decoder_step", "new_cache")])
        steps = transfers[("text_decoder_step", "logits")]
        # greedy: the cache stays on the device (in once, as the empty cache, never out);
        # beam search reorders its rows in numpy, so it goes out and in at every step
        assert cache_transfers == ((steps, steps) if options.get("decoding") == "beam" else (1, 0)), options
    caption = {"caption": ["two large blue stars at the top"]}
    exported_image = loaded.sample(caption).images.astype(int)
    eager_image = plugin.sample(model, config, CaptionSampleOptions(**caption), CPU).images.astype(int)
    assert np.abs(exported_image - eager_image).max() <= 1


def test_a_user_caption_set_trains_its_own_tokenizer(plugin, tmp_path):
    folder = tmp_path / "captions"
    folder.mkdir()
    records = []
    for index, (color, word) in enumerate(
        [((200, 30, 30), "red"), ((30, 200, 30), "green"), ((30, 30, 200), "blue")] * 4
    ):
        Image.new("RGB", (40, 30), color).save(folder / f"{index}.png")
        records.append(json.dumps({"image": f"{index}.png", "caption": f"A {word.upper()} field, number {index}"}))
    (folder / "captions.jsonl").write_text("\n".join(records) + "\n")
    config = CaptionConfig.model_validate({**TINY, "data": {"source": str(folder)}})
    model = plugin.build(config)
    context = StageContext(model, config, tmp_path / "cache", CPU)
    dataset = plugin.stages(config)[0].dataset(context)
    assert len(dataset) == 11
    assert (tmp_path / "cache" / "tokenizer.json").is_file()  # one of 12 images held out
    decoded = {decode(model.tokenizer, item["tokens"][1:].tolist()) for item in dataset}
    assert {f"a red field, number {index}" for index in (0, 3, 6, 9)} & decoded
    assert dataset[0]["image"].shape == (3, 32, 32)
    (folder / "captions.jsonl").unlink()
    with pytest.raises(ZooError, match="caption set"):
        captioned_images(config, "train")

"""The multimodal_caption plugin: build, train stage, evaluate, export components."""

from __future__ import annotations

import numpy as np
import torch

import zoo
from zoo.outputs import to_uint8
from zoo.plugin import Component, ExportAssets, ModelPlugin, Optimizer, Stage, StageContext, StepContext, Validation
from zoo.torch_components import TorchComponents
from zoo_multimodal_caption.config import PRESETS, CaptionConfig, CaptionSampleOptions, parameter_counts
from zoo_multimodal_caption.data import captioned_images, parse_shapes_caption, stage_tokenizer, tokenized, tokenizer_for
from zoo_multimodal_caption.model import CaptionModel, caption_losses
from zoo_multimodal_caption.runtime import EXAMPLES_ARRAY, TOKENIZER_FILE, CaptionRuntime
from zoo_multimodal_caption.tokenizer import BOS_ID, EOS_ID, PAD_ID, normalize

EXAMPLE_COUNT = 16  # held-out images shipped for `zoo sample` / `zoo run` without --image or --caption


def _millions(preset: str) -> str:
    return f"{sum(parameter_counts(CaptionConfig.model_validate(PRESETS[preset])).values()) / 1e6:.1f}M"


def _description() -> str:
    engravings = CaptionConfig.model_validate(PRESETS["engravings"])
    stem_outputs = engravings.image.channels[-1] * (engravings.image.size // 2 ** len(engravings.image.channels)) ** 2
    stem = (engravings.latent_dim + 1) * stem_outputs  # weights and biases of Linear(latent -> 512*32*32)
    sizes = ", ".join(f"{name} {_millions(name)}" for name in PRESETS)
    return (
        "Image autoencoder and captioner sharing one latent: image -> caption (greedy/beam/top-k/top-p, KV cache), "
        f"caption -> image, image/caption retrieval. Parameters: {sizes}. The reference calls `engravings` "
        f"~50M; its 512 px decoder stem Linear(1024 -> 512*32*32) alone is {stem / 1e6:.0f}M."
    )


class MultimodalCaptionPlugin(ModelPlugin):
    name = "multimodal_caption"
    description = _description()
    version = "0.1.0"
    Config = CaptionConfig
    SampleOptions = CaptionSampleOptions
    presets = PRESETS
    default_preset = "shapes"
    runtime = "zoo_multimodal_caption.runtime:CaptionRuntime"
    components = ("image_encoder", "image_decoder", "text_encoder", "text_decoder_step")

    def build(self, config: CaptionConfig) -> CaptionModel:
        return CaptionModel(config)

    def stages(self, config: CaptionConfig) -> list[Stage]:
        training = config.training

        def loss(model: CaptionModel, batch: dict, context: StepContext) -> dict[str, torch.Tensor]:
            return caption_losses(model, batch["image"], batch["tokens"], config.loss)

        def train_data(context: StageContext) -> torch.utils.data.Dataset:
            return tokenized(config, "train", stage_tokenizer(context))

        validation_sets: dict[str, torch.utils.data.Dataset] = {}

        def validation_data(context: StageContext) -> torch.utils.data.Dataset:
            # built once per tokenizer: the trainer asks for it at every validation
            tokenizer = tokenizer_for(context.model, config)
            key = context.model.tokenizer_json
            if key not in validation_sets:
                validation_sets.clear()
                validation_sets[key] = tokenized(config, "test", tokenizer)
            return validation_sets[key]

        optimizer = Optimizer(
            name="joint", modules=lambda model: [model], loss=loss, lr=training.lr, algorithm="adam",
            weight_decay=training.weight_decay, clip_grad_norm=training.grad_clip, schedule=training.schedule,
            warmup_steps=training.warmup_steps,
        )
        return [Stage(
            name="joint", optimizers=[optimizer], steps=training.steps, batch_size=training.batch_size,
            dataset=train_data, validation=Validation(validation_data, training.validation_every, training.patience),
            sample_options={"n": 8},
        )]

    # -- inference ------------------------------------------------------------------------

    def runtime_for(self, model: CaptionModel, config: CaptionConfig, device: torch.device) -> CaptionRuntime:
        """The sampling loop on the torch modules (what `sample` uses, and `evaluate`)."""
        components = TorchComponents(self.export_components(model, config), device)
        assets = self.export_assets(model, config)
        return CaptionRuntime(components, config.model_dump(mode="json"), assets.arrays, assets.files)

    def export_components(self, model: CaptionModel, config: CaptionConfig) -> list[Component]:
        text, size, latent_dim = config.text, config.image.size, config.latent_dim
        decoder = model.text_decoder
        generator = torch.Generator().manual_seed(config.seed)

        def caption_tokens(batch: int, length: int) -> torch.Tensor:
            """[BOS] words [EOS] [PAD]...: row i has i pads (length >= 2 + batch), so lengths differ."""
            tokens = torch.randint(4, text.vocab_size, (batch, length), generator=generator)
            tokens[:, 0] = BOS_ID
            for row in range(batch):
                real = max(2, length - row)
                tokens[row, real - 1] = EOS_ID
                tokens[row, real:] = PAD_ID
            return tokens

        def images(size_index: int) -> dict[str, torch.Tensor]:
            return {"image": torch.rand(2 + size_index, 3, size, size, generator=generator) * 2 - 1}

        def latents(size_index: int) -> dict[str, torch.Tensor]:
            return {"latent": torch.randn(2 + size_index, latent_dim, generator=generator)}

        def captions(size_index: int) -> dict[str, torch.Tensor]:
            return {"tokens": caption_tokens(2 + size_index, 5 + 2 * size_index)}

        def decoder_step(size_index: int) -> dict[str, torch.Tensor]:
            # traced with every dynamic axis >= 2; validated at (batch, new, past) = (1, 1, 5) and (3, 3, 0):
            # one cached step and the first step from an empty cache
            batch, new, past = [(2, 2, 3), (1, 1, 5), (3, 3, 0)][size_index]
            cache = torch.randn(batch, decoder.layers, 2, decoder.heads, past, decoder.head_dim, generator=generator)
            return {"tokens": torch.randint(0, text.vocab_size, (batch, new), generator=generator), "latent": torch.randn(batch, latent_dim, generator=generator),
                    "cache": cache}

        batch_axis = {0: "batch"}
        return [
            Component("image_encoder", model.image_encoder, images, ["image"], ["latent"],
                      {"image": batch_axis, "latent": batch_axis}),
            Component("image_decoder", model.image_decoder, latents, ["latent"], ["image"],
                      {"latent": batch_axis, "image": batch_axis}),
            Component("text_encoder", model.text_encoder, captions, ["tokens"], ["latent"],
                      {"tokens": {0: "batch", 1: "tokens"}, "latent": batch_axis}),
            Component("text_decoder_step", decoder, decoder_step, ["tokens", "latent", "cache"], ["logits", "new_cache"],
                      {"tokens": {0: "batch", 1: "tokens"}, "latent": batch_axis, "cache": {0: "batch", 4: "past"},
                       "logits": {0: "batch", 1: "tokens"}, "new_cache": {0: "batch", 4: "past_and_tokens"}}),
        ]

    def export_assets(self, model: CaptionModel, config: CaptionConfig) -> ExportAssets:
        examples = captioned_images(config, "test")
        count = min(EXAMPLE_COUNT, len(examples))
        images = torch.stack([examples[index]["image"] for index in range(count)]).numpy()
        return ExportAssets(arrays={EXAMPLES_ARRAY: to_uint8(images)},
                            files={TOKENIZER_FILE: tokenizer_for(model, config).to_str().encode()})

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(self, model: CaptionModel, config: CaptionConfig, device: torch.device) -> dict[str, float]:
        """Greedy captions of held-out images against their captions; retrieval both ways
        (an identical caption counts as a hit: small caption languages repeat captions);
        reconstruction PSNR from the image latent and from the caption's latent."""
        import sacrebleu

        runtime = self.runtime_for(model, config, device)
        tokenizer = runtime.tokenizer
        dataset = captioned_images(config, "test")
        items = [dataset[index] for index in range(min(config.data.eval_count, len(dataset)))]
        images = torch.stack([item["image"] for item in items]).numpy()
        references = [normalize(tokenizer, item["caption"]) for item in items]

        image_latents = runtime.encode_images(images)
        captions, _ = runtime.caption_latents(image_latents)
        text_latents = runtime.encode_captions([item["caption"] for item in items])
        metrics = {
            "exact_match": float(np.mean([c == r for c, r in zip(captions, references, strict=True)])),
            "bleu": sacrebleu.corpus_bleu(captions, [references]).score,
            **retrieval_recall(runtime.similarity(image_latents, text_latents), references),
            "reconstruction_psnr": psnr(runtime.decode_latents(image_latents), images),
            "caption_to_image_psnr": psnr(runtime.decode_latents(text_latents), images),
        }
        if "attributes" in items[0]:
            metrics.update(attribute_accuracy(captions, [item["attributes"] for item in items]))
        return metrics


def psnr(images: np.ndarray, targets: np.ndarray) -> float:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    errors = ((images - targets) ** 2).reshape(len(images), -1).mean(1)
    return float(np.mean(10 * np.log10(4.0 / np.maximum(errors, 1e-10))))


def retrieval_recall(similarity: np.ndarray, references: list[str], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """similarity (N images, N captions) of matching pairs -> recall@k image->text and text->image."""
    ids = np.unique(references, return_inverse=True)[1]
    metrics = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranked = np.argsort(-scores, axis=1, kind="stable")
        hits = ids[ranked] == ids[:, None]  # (N, N): does rank j hold the right caption (image)?
        for k in ks:
            metrics[f"{direction}_recall@{k}"] = float(hits[:, :k].any(1).mean())
    return metrics


def attribute_accuracy(captions: list[str], attributes: list[dict[str, str]]) -> dict[str, float]:
    """Share of each attribute a generated caption states correctly, and their mean."""
    parsed = [parse_shapes_caption(caption) for caption in captions]
    metrics = {f"attribute_accuracy/{key}": float(np.mean([p[key] == a[key] for p, a in zip(parsed, attributes)]))
               for key in attributes[0]}
    metrics["attribute_accuracy"] = float(np.mean(list(metrics.values())))
    return metrics


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [MultimodalCaptionPlugin()]

"""The caption model's export: the graphs its sampling loop runs, the text tokenizer and
the held-out images it captions by default.

    image_encoder      image (B, 3, S, S) -> latent (B, L)                     ImageEncoder.forward
    image_decoder      latent (B, L) -> image (B, 3, S, S)                     ImageDecoder.forward
    text_encoder       tokens (B, T) -> latent (B, L)                          TextEncoder.forward
    text_decoder_step  tokens (B, T), latent, cache (B, layers, 2, heads, P, head_dim)
                       -> logits (B, T, vocab), new_cache (..., P + T, ...)    TextDecoder.forward

L is `latent_dim`, vocab is `text.vocab_size`.
"""

from __future__ import annotations

import torch

from zoo.data.base import dataset_length
from zoo.outputs import to_uint8
from zoo.plugin import Component, ExportAssets
from zoo.torch_components import method_component
from zoo_multimodal_caption.config import CaptionConfig
from zoo_multimodal_caption.data import captioned_images, tokenizer_for
from zoo_multimodal_caption.model import CaptionModel
from zoo_multimodal_caption.runtime import EXAMPLES_ARRAY, TOKENIZER_FILE
from zoo_multimodal_caption.text_tokenizer import BOS_ID, EOS_ID, PAD_ID

EXAMPLE_COUNT = 16  # held-out images shipped for `zoo sample` / `zoo run` without --image or --caption


def export_components(model: CaptionModel, config: CaptionConfig) -> list[Component]:
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
        return {
            "tokens": torch.randint(0, text.vocab_size, (batch, new), generator=generator),
            "latent": torch.randn(batch, latent_dim, generator=generator),
            "cache": cache,
        }

    batch_axis = {0: "batch"}
    return [
        method_component(
            "image_encoder",
            model.image_encoder,
            "forward",
            images,
            ["latent"],
            {"image": batch_axis, "latent": batch_axis},
        ),
        method_component(
            "image_decoder",
            model.image_decoder,
            "forward",
            latents,
            ["image"],
            {"latent": batch_axis, "image": batch_axis},
        ),
        method_component(
            "text_encoder",
            model.text_encoder,
            "forward",
            captions,
            ["latent"],
            {"tokens": {0: "batch", 1: "tokens"}, "latent": batch_axis},
        ),
        method_component(
            "text_decoder_step",
            decoder,
            "forward",
            decoder_step,
            ["logits", "new_cache"],
            {
                "tokens": {0: "batch", 1: "tokens"},
                "latent": batch_axis,
                "cache": {0: "batch", 4: "past"},
                "logits": {0: "batch", 1: "tokens"},
                "new_cache": {0: "batch", 4: "past_and_tokens"},
            },
        ),
    ]


def export_assets(model: CaptionModel, config: CaptionConfig) -> ExportAssets:
    """The text tokenizer (`tokenizer.json`) and the held-out images captioned by default."""
    examples = captioned_images(config, "test")
    count = min(EXAMPLE_COUNT, dataset_length(examples))
    images = torch.stack([examples[index]["image"] for index in range(count)]).numpy()
    return ExportAssets(
        arrays={EXAMPLES_ARRAY: to_uint8(images)},
        files={TOKENIZER_FILE: tokenizer_for(model, config).to_str().encode()},
    )

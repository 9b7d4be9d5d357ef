"""The caption model's config, presets and sample options (pydantic only, no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from zoo.config import (
    IMAGE_INPUT,
    MAX_BATCH,
    MAX_CODES,
    MAX_DEPTH,
    MAX_FACTOR,
    MAX_IMAGE_SIDE,
    MAX_ITEMS,
    MAX_SAMPLES,
    MAX_STEPS,
    MAX_WIDTH,
    ConfigSection,
    SampleOptionsBase,
    ZooConfig,
    temperature_option,
    top_k_option,
    top_p_option,
)


class ImageConfig(ConfigSection):
    """The image autoencoder: strided convs -> pool -> latent -> linear -> transposed convs."""

    size: int = Field(64, ge=16, le=MAX_IMAGE_SIDE, description="image side in pixels; a multiple of 2^len(channels)")
    channels: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        [32, 64, 128, 256],
        min_length=1,
        description="encoder widths (k4 s2 p1 convs, each halves the side); the decoder mirrors them",
    )
    pool_size: int = Field(
        2,
        ge=1,
        le=MAX_DEPTH,
        description="side of the adaptive average pool before the linear to the latent (1 averages away where things are)",
    )
    encoder: str = Field(
        "conv", description="'conv' (the strided convs above) or 'timm:<model name>' for a timm backbone"
    )
    encoder_weights: Path | None = Field(
        None,
        description="safetensors file with weights for the image encoder's backbone (conv or timm); null: random init",
    )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        if value != "conv" and not (value.startswith("timm:") and len(value) > len("timm:")):
            raise ValueError("must be 'conv' or 'timm:<model name>', e.g. 'timm:resnet18'")
        return value

    @model_validator(mode="after")
    def _size_fits_depth(self) -> ImageConfig:
        stride = 2 ** len(self.channels)
        if self.size % stride:
            raise ValueError(f"size {self.size} is not a multiple of 2^len(channels) = {stride}")
        return self


class TextConfig(ConfigSection):
    """Tokenizer, text encoder (for the contrastive term and caption -> image) and caption decoder."""

    vocab_size: int = Field(
        256,
        ge=8,
        le=MAX_CODES,
        description="output size of the caption decoder and target size of the BPE tokenizer trained on the "
        "captions (a small caption set yields fewer tokens; the ids above it are never produced)",
    )
    max_length: int = Field(
        100, ge=4, le=MAX_WIDTH, description="tokens per caption including [BOS] and [EOS]; longer captions are cut"
    )
    lowercase: bool = Field(
        True, description="the tokenizer lowercases captions (and evaluation compares lowercased text)"
    )
    embedding_dim: int = Field(
        128, ge=8, le=MAX_WIDTH, description="token embedding width = width of the text encoder and decoder"
    )
    encoder_layers: int = Field(2, ge=1, le=MAX_DEPTH, description="transformer layers of the text encoder")
    encoder_heads: int = Field(4, ge=1, le=MAX_DEPTH, description="attention heads of the text encoder")
    decoder_layers: int = Field(3, ge=1, le=MAX_DEPTH, description="transformer layers of the caption decoder")
    decoder_heads: int = Field(4, ge=1, le=MAX_DEPTH, description="attention heads of the caption decoder")
    feedforward_dim: int = Field(
        512, ge=8, le=MAX_WIDTH, description="hidden width of every transformer feed-forward block"
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout in the text encoder and decoder")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TextConfig:
        for heads in (self.encoder_heads, self.decoder_heads):
            if self.embedding_dim % heads:
                raise ValueError(f"embedding_dim {self.embedding_dim} is not divisible by {heads} heads")
        return self


class LossConfig(ConfigSection):
    reconstruction_weight: float = Field(1.0, ge=0, le=MAX_FACTOR, description="weight of the image reconstruction MSE")
    caption_weight: float = Field(
        2.0, ge=0, le=MAX_FACTOR, description="weight of the caption cross-entropy (teacher forcing, pad ignored)"
    )
    contrastive_weight: float = Field(0.5, ge=0, le=MAX_FACTOR, description="weight of the image/text InfoNCE term")
    temperature: float = Field(0.07, gt=0, le=MAX_FACTOR, description="InfoNCE temperature")
    caption_to_image_weight: float = Field(
        0.0,
        ge=0,
        le=MAX_FACTOR,
        description="weight of the MSE of images decoded from the caption's latent (not in the reference; "
        "sharpens caption -> image)",
    )


class TrainingConfig(ConfigSection):
    steps: int = Field(
        800, ge=1, le=MAX_STEPS, description="optimizer steps of the `joint` stage (early stopping may end it sooner)"
    )
    batch_size: int = Field(
        64, ge=2, le=MAX_BATCH, description="image/caption pairs per step (InfoNCE needs at least 2)"
    )
    lr: float = Field(1e-3, gt=0, le=MAX_FACTOR, description="Adam learning rate")
    weight_decay: float = Field(1e-5, ge=0, le=MAX_FACTOR, description="Adam weight decay (not on biases and norms)")
    grad_clip: float = Field(1.0, gt=0, le=MAX_FACTOR, description="gradient norm clip")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="learning-rate schedule")
    warmup_steps: int = Field(50, ge=0, le=MAX_STEPS, description="linear warm-up steps")
    validation_every: int = Field(100, ge=1, le=MAX_STEPS, description="steps between validation losses")
    patience: int | None = Field(
        10, ge=1, le=MAX_STEPS, description="validations without improvement before stopping; null never stops"
    )


class DataConfig(ConfigSection):
    source: str = Field(
        "shapes",
        description="'shapes' (embedded captioned shapes), a caption-set directory (images + captions.jsonl/.csv) "
        "or shards packed from one",
    )
    max_objects: int = Field(
        3, ge=1, le=3, description="shapes only: up to this many shapes per image (the caption counts them)"
    )
    train_count: int = Field(20000, ge=1, le=MAX_ITEMS, description="generated training images (shapes only)")
    test_count: int = Field(1000, ge=1, le=MAX_ITEMS, description="generated held-out images (shapes only)")
    eval_count: int = Field(
        500, ge=1, le=MAX_ITEMS, description="held-out images scored by evaluate (at most the test split)"
    )


class CaptionConfig(ZooConfig):
    image: ImageConfig = Field(default_factory=ImageConfig, description="image encoder and decoder")
    latent_dim: int = Field(128, ge=2, le=MAX_WIDTH, description="size of the latent shared by images and captions")
    text: TextConfig = Field(default_factory=TextConfig, description="tokenizer, text encoder and caption decoder")
    loss: LossConfig = Field(default_factory=LossConfig, description="loss weights")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="optimisation of the `joint` stage")
    data: DataConfig = Field(default_factory=DataConfig, description="caption data")


def parameter_counts(config: CaptionConfig) -> dict[str, int]:
    """Parameters per part, computed from the layer shapes alone (conv image encoder)."""
    image, text, latent = config.image, config.text, config.latent_dim
    width, hidden, vocab = text.embedding_dim, text.feedforward_dim, text.vocab_size

    def convs(pairs: list[tuple[int, int]]) -> int:  # 4x4 kernels with bias
        return sum(16 * c_in * c_out + c_out for c_in, c_out in pairs)

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + n_out

    attention = linear(width, width) + linear(width, 2 * width) + linear(width, width)
    feedforward = linear(width, hidden) + linear(hidden, width)
    norm = 2 * width
    embeddings = vocab * width + text.max_length * width
    channels, stem_side = image.channels, image.size // 2 ** len(image.channels)
    return {
        "image_encoder": convs(list(zip([3, *channels[:-1]], channels, strict=True)))
        + linear(channels[-1] * image.pool_size**2, latent),
        "image_decoder": linear(latent, channels[-1] * stem_side**2)
        + convs(list(zip(channels[::-1], [*channels[-2::-1], 3], strict=True))),
        "text_encoder": embeddings
        + text.encoder_layers * (2 * norm + attention + feedforward)
        + norm
        + linear(width, latent),
        "text_decoder": embeddings
        + linear(latent, width)
        + text.decoder_layers * (3 * norm + 2 * attention + feedforward)
        + norm
        + linear(width, vocab),
    }


def _reference(image_size: int, latent: int, embedding: int, vocab: int) -> dict:
    """The reference architecture: convs 64..512, a 1x1 pool, a 3-layer decoder with feed-forward 4x width."""
    return {
        "image": {"size": image_size, "channels": [64, 128, 256, 512], "pool_size": 1},
        "latent_dim": latent,
        "text": {
            "vocab_size": vocab,
            "max_length": 100,
            "embedding_dim": embedding,
            "encoder_layers": 2,
            "encoder_heads": 8,
            "decoder_layers": 3,
            "decoder_heads": 8,
            "feedforward_dim": 4 * embedding,
            "dropout": 0.1,
        },
        "training": {
            "steps": 100_000,
            "batch_size": 8,
            "lr": 1e-4,
            "schedule": "constant",
            "warmup_steps": 0,
            "validation_every": 1000,
            "patience": 10,
        },
    }


PRESETS: dict[str, dict] = {
    # The defaults: 64 px embedded shapes, narrower than the reference, a 2x2 pool (keeps where
    # the shapes are), lr 1e-3 with warm-up and cosine decay: 800 steps in ~12 min on one CPU thread.
    "shapes": {"sample_every": 200},
    # the reference's own size recomputes each block's activations in the backward pass
    "engravings": {**_reference(512, 1024, 512, 8000), "scale": {"activation_checkpointing": True}},
    "small": _reference(512, 256, 128, 4000),
    "medium": _reference(512, 512, 256, 5000),
    "xl": _reference(512, 2048, 768, 12000),
}


MAX_BEAMS = 64  # each beam is one more sequence per image in every decoder step


class CaptionSampleOptions(SampleOptionsBase):
    image: list[str] | None = Field(
        None,
        max_length=MAX_SAMPLES,
        description="image file(s) to caption; with --caption too, prints image/caption retrieval scores",
        json_schema_extra=IMAGE_INPUT,
    )
    caption: list[str] | None = Field(None, max_length=MAX_SAMPLES, description="caption(s) to turn into images")
    decoding: Literal["greedy", "beam", "sample"] = Field("greedy", description="caption decoding")
    beam_width: int = Field(4, ge=1, le=MAX_BEAMS, description="beams of beam search")
    length_penalty: float = Field(0.0, ge=0, le=10, description="beam search ranks by log-prob / length^length_penalty")
    top_k: int = top_k_option(0)  # with --decoding sample
    top_p: float = top_p_option(1.0)
    temperature: float = temperature_option(1.0)
    max_length: int | None = Field(
        None, ge=1, description="tokens to generate at most; default: the model's max_length - 1"
    )
    kv_cache: bool = Field(
        True, description="reuse keys/values of earlier tokens (off: recompute the prefix every step)"
    )
    n: int = Field(
        8,
        ge=1,
        le=MAX_SAMPLES,
        description="held-out images captioned (images in all: this model has no classes) "
        "when neither --image nor --caption is given",
    )

    @field_validator("image", "caption", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

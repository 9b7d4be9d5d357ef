"""VQ-VAE-2 + PixelCNN priors: config, presets and sample options (pydantic only, no torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from zoo.config import (
    MAX_SAMPLES,
    ClassSampleOptions,
    CodesConfig,
    ConfigSection,
    ZooConfig,
    temperature_option,
    top_k_option,
)


class VQVAEConfig(ConfigSection):
    """The two-level autoencoder (Razavi et al., 2019; sizes of rosinality/vq-vae-2-pytorch)."""

    renamed_fields: ClassVar[dict[str, str]] = {  # the old names are read until zoo 0.3
        "top_codes": "top_codebook_size",
        "bottom_codes": "bottom_codebook_size",
    }

    channels: int = Field(128, ge=2, description="width of the encoders and decoders")
    res_blocks: int = Field(2, ge=0, description="residual blocks in each encoder and decoder")
    res_channels: int = Field(32, ge=1, description="hidden width of a residual block")
    code_dim: int = Field(64, ge=1, description="size of one code vector (both levels)")
    top_codebook_size: int = Field(512, ge=2, description="codes in the top level's codebook")
    bottom_codebook_size: int = Field(512, ge=2, description="codes in the bottom level's codebook")
    bottom_downsample: int = Field(4, description="image side / bottom code map side (a power of two)")
    top_downsample: int = Field(2, description="bottom code map side / top code map side (a power of two)")
    residual_relu_skip: bool = Field(
        False,
        description="residual blocks add relu(x), not x, to their output, as rosinality's code before ef5f67c "
        "(an in-place ReLU), with which the published vqvae_560.pt was trained",
    )
    beta: float = Field(0.25, ge=0, description="commitment weight")
    ema_decay: float | None = Field(
        0.99, gt=0, lt=1, description="codebooks follow EMA cluster means with this decay; null: learnt by the loss"
    )
    dead_code_threshold: float | None = Field(
        0.1, ge=0, description="restart codes whose EMA hits per batch fall below this; null disables"
    )

    @field_validator("bottom_downsample", "top_downsample")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 2 or value & (value - 1):
            raise ValueError("must be a power of two (2, 4, 8, ...)")
        return value


class PriorConfig(ConfigSection):
    """A gated PixelCNN over one level's code map."""

    variant: Literal["gated", "masked"] = Field(
        "gated",
        description="gated: vertical + horizontal stacks, no blind spot; masked: plain type A/B masks (has a blind spot)",
    )
    channels: int = Field(128, ge=2, description="width of the network (even)")
    blocks: int = Field(15, ge=1, description="gated residual blocks after the first (type A) layer")
    first_kernel: int = Field(7, ge=3, description="kernel of the first, type A layer (odd)")
    kernel: int = Field(3, ge=3, description="kernel of the masked convolutions in the blocks (odd)")
    condition_channels: int = Field(
        64, ge=1, description="width of the conditioning features (class embedding or top codes)"
    )
    condition_blocks: int = Field(
        2, ge=0, description="residual blocks applied to the embedded top codes (bottom prior)"
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the gated activations while training")

    @field_validator("first_kernel", "kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value

    @field_validator("channels")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (the masked variant's blocks halve it)")
        return value

    # Shapes of the fast sampler's state for a side x side map, without the batch axis
    # (see PixelCNNPrior.row and .step).

    @property
    def reach(self) -> int:
        return self.kernel // 2

    @property
    def cache_channels(self) -> int:
        return self.channels if self.variant == "gated" else self.channels // 2

    def vertical_cache_shape(self, side: int) -> tuple[int, ...]:
        return (self.blocks, self.cache_channels, self.reach, side + 2 * self.reach)

    def horizontal_cache_shape(self, side: int) -> tuple[int, ...]:
        # The masked variant's next row needs the whole finished row; the gated one only
        # the last `reach` positions.
        width = self.reach if self.variant == "gated" else self.reach + side
        return (self.blocks, self.cache_channels, width)

    def row_bias_shape(self, side: int) -> tuple[int, ...]:
        bias_channels = 2 * self.channels if self.variant == "gated" else self.channels
        return (self.blocks + 1, side, bias_channels)


class StageTraining(ConfigSection):
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="images (or code maps) per step")
    lr: float = Field(3e-4, gt=0, description="peak learning rate (AdamW, cosine decay)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    validation_every: int = Field(0, ge=0, description="held-out loss every this many steps; 0 never")
    patience: int | None = Field(
        None,
        ge=1,
        description="stop after this many held-out checks without improvement and keep the best weights; null never stops",
    )


class TrainingConfig(ConfigSection):
    vqvae: StageTraining = Field(
        default_factory=lambda: StageTraining(steps=2000, batch_size=64, lr=3e-4), description="the autoencoder stage"
    )
    prior_top: StageTraining = Field(
        default_factory=lambda: StageTraining(steps=2000, batch_size=64, lr=3e-4), description="the top prior stage"
    )
    prior_bottom: StageTraining = Field(
        default_factory=lambda: StageTraining(steps=2000, batch_size=64, lr=3e-4), description="the bottom prior stage"
    )


class VQVAE2Config(ZooConfig):
    data: str = Field(
        "digits",
        description="training images: a zoo.data set name (digits, photos, textures, shapes), a directory or shards",
    )
    image_size: int = Field(32, ge=4, description="side of the square training images")
    class_conditional: bool = Field(
        False, description="condition both priors on the image label (the data must have labels)"
    )
    num_classes: int = Field(10, ge=1, description="number of labels when class_conditional")
    vqvae: VQVAEConfig = Field(default_factory=VQVAEConfig, description="the two-level autoencoder")
    prior_top: PriorConfig = Field(default_factory=PriorConfig, description="prior over the top codes")
    prior_bottom: PriorConfig = Field(
        default_factory=PriorConfig, description="prior over the bottom codes, conditioned on the top codes"
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="steps, batch sizes and learning rates per stage"
    )
    codes: CodesConfig = Field(
        default_factory=CodesConfig, description="the priors' codes: extracted once to disk or on the fly"
    )
    eval_samples: int = Field(
        100,
        ge=1,
        le=MAX_SAMPLES,
        description="samples `evaluate` draws to score (digit confidence), in all: split evenly over the classes",
    )

    @model_validator(mode="after")
    def _sizes_divide(self) -> VQVAE2Config:
        stride = self.vqvae.bottom_downsample * self.vqvae.top_downsample
        if self.image_size % stride:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of bottom_downsample * top_downsample = {stride}"
            )
        return self

    @property
    def bottom_side(self) -> int:
        return self.image_size // self.vqvae.bottom_downsample

    @property
    def top_side(self) -> int:
        return self.bottom_side // self.vqvae.top_downsample


PRESETS: dict[str, dict] = {
    # sklearn's digits at 32x32: 8x8 bottom and 4x4 top codes; both priors know the digit.
    # Small codebooks keep the priors' job small (1,617 training images); the priors stop
    # when their held-out loss stops improving. About 6 minutes on one CPU thread.
    "digits32": {
        "data": "digits",
        "sample_every": 400,
        "class_conditional": True,
        "vqvae": {
            "channels": 64,
            "res_blocks": 2,
            "res_channels": 32,
            "code_dim": 32,
            "top_codebook_size": 64,
            "bottom_codebook_size": 16,
        },
        "prior_top": {"channels": 64, "blocks": 5, "condition_channels": 32, "dropout": 0.1},
        "prior_bottom": {"channels": 64, "blocks": 6, "condition_channels": 32, "condition_blocks": 1, "dropout": 0.25},
        "training": {
            "vqvae": {"steps": 1000, "batch_size": 32, "lr": 1e-3},
            "prior_top": {"steps": 600, "batch_size": 64, "lr": 1e-3, "validation_every": 100, "patience": 3},
            "prior_bottom": {"steps": 1200, "batch_size": 32, "lr": 1e-3, "validation_every": 100, "patience": 3},
        },
        # The ~1,600 training images' codes extracted once (1 s on one CPU thread), not again for
        # each batch of the priors' 1,800 steps (47 times the set: about a minute).
        "codes": {"mode": "disk"},
    },
    # The reference sizes (rosinality/vq-vae-2-pytorch at CIFAR scale): channel 128, two
    # residual blocks of 32, codebooks of 512 codes of dim 64, 15 gated blocks per prior.
    # No CIFAR is shipped: point `data` at a folder of images (class subfolders give labels).
    "cifar32": {
        "data": "photos",
        "class_conditional": False,
        "vqvae": {
            "channels": 128,
            "res_blocks": 2,
            "res_channels": 32,
            "code_dim": 64,
            "top_codebook_size": 512,
            "bottom_codebook_size": 512,
        },
        "prior_top": {"channels": 128, "blocks": 15},
        "prior_bottom": {"channels": 128, "blocks": 15},
        "training": {
            "vqvae": {"steps": 20000, "batch_size": 128, "lr": 3e-4},
            "prior_top": {"steps": 20000, "batch_size": 64, "lr": 3e-4},
            "prior_bottom": {"steps": 20000, "batch_size": 64, "lr": 3e-4},
        },
        # As the reference code (extract_code.py): the codes of centre-cropped images are
        # extracted once, then the priors train on them; codes.mode=on_the_fly encodes every
        # batch instead (the way to train on augmented images).
        "codes": {"mode": "disk"},
    },
}


class VQVAE2SampleOptions(ClassSampleOptions):
    """`classes` and `n` (images per class; images in all for a model trained without
    labels) come from zoo's ClassSampleOptions."""

    # Non-finite numbers are refused: inf or nan in an option draws garbage (VAR's `cfg` inf:
    # every token the same). pydantic merges this with the base's extra="forbid".
    model_config = ConfigDict(allow_inf_nan=False)

    temperature: float = temperature_option(1.0)
    top_k: int = top_k_option(0)
    naive: bool = Field(False, description="recompute the whole code map for every position (slow; for comparison)")

    @field_validator("classes")
    @classmethod
    def _labels_not_negative(cls, value: list[int] | None) -> list[int] | None:
        if value and min(value) < 0:
            raise ValueError("class labels are 0..num_classes-1")
        return value

"""QuantArt's config, presets and sample options (pydantic only, no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, PositiveInt, field_validator

from zoo.config import IMAGE_INPUT, ConfigSection, SampleOptionsBase, ZooConfig


class VQGANConfig(ConfigSection):
    """Architecture of each of the two VQGANs (photo and art share it, as in the paper)."""

    renamed_fields: ClassVar[dict[str, str]] = {
        "embed_dim": "code_dim",
        "num_codes": "codebook_size",
    }  # renamed in zoo 0.2

    ch: int = Field(32, ge=1, description="base width of the encoder and decoder")
    ch_mult: list[PositiveInt] = Field(
        [1, 2, 2],
        min_length=1,
        description="width multiplier per resolution; codes are 2^(len-1) times smaller than the image",
    )
    num_res_blocks: int = Field(1, ge=1, description="residual blocks per resolution (the decoder has one more)")
    attn_resolutions: list[PositiveInt] = Field(
        [16], description="feature-map sides at which self-attention follows each block"
    )
    z_channels: int = Field(64, ge=1, description="channels of the encoder output / decoder input")
    code_dim: int = Field(64, ge=1, description="size of one code vector (the code space the transfer module works in)")
    codebook_size: int = Field(256, ge=2, description="codes in the codebook of each VQGAN")
    beta: float = Field(0.25, ge=0, description="commitment weight of the quantiser")
    legacy: bool = Field(True, description="taming's original beta placement (on the codebook term)")
    dead_code_threshold: float | None = Field(
        0.1, ge=0, description="restart codes whose EMA usage per batch falls below this; null disables"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the residual blocks")


class DiscriminatorConfig(ConfigSection):
    """The image PatchGAN of each VQGAN stage and how its term enters the generator loss."""

    base_channels: int = Field(32, ge=1, description="width of the first discriminator conv")
    num_layers: int = Field(2, ge=0, description="stride-2 layers of the PatchGAN")
    loss: Literal["hinge", "vanilla"] = Field("hinge", description="discriminator loss")
    disc_start: int = Field(600, ge=0, description="step at which the discriminator and the adversarial term switch on")
    factor: float = Field(1.0, ge=0, description="multiplies the adversarial term from disc_start on")
    weight: float = Field(0.8, ge=0, description="scale of the adaptive weight (taming's disc_weight)")


class PerceptualConfig(ConfigSection):
    """Optional perceptual term of the VQGAN stages: a timm backbone with local weights."""

    backbone: str = Field("resnet18", description="timm model name, built with features_only=True")
    weights: Path | None = Field(
        None, description="safetensors file with the backbone's weights; null turns the term off"
    )
    weight: float = Field(1.0, ge=0, description="weight of the perceptual term")


class TransferConfig(ConfigSection):
    """The style transfer module and the losses of the `transfer` stage (weights as in the official code)."""

    block_num: int = Field(
        6, ge=1, description="blocks of ResnetBlock + self-attention + cross-attention to the reference codes"
    )
    content_weight: float = Field(1.0, ge=0, description="MSE of the transferred codes against the content codes")
    style_weight: float = Field(10.0, ge=0, description="MSE of channel means and stds against the reference codes")
    codebook_weight: float = Field(
        1.0, ge=0, description="quantisation loss of the transferred codes on the art codebook"
    )
    adversarial_factor: float = Field(0.8, ge=0, description="weight of the latent discriminator's hinge term")
    adaptive_weight: bool = Field(
        True,
        description="scale the adversarial term by taming's adaptive weight at the transfer module's last layer (its gradient there kept as large as that of the content + style terms, whatever the loss scales); the official code uses a constant 1, as the paper preset does",
    )
    disc_start: int = Field(0, ge=0, description="step at which the latent discriminator switches on")
    discriminator_channels: int = Field(64, ge=1, description="width of the latent discriminator")
    discriminator_layers: int = Field(
        0, ge=0, description="extra layers of the latent discriminator (0 as in the paper)"
    )
    discriminator_downsample: bool = Field(
        False, description="stride-2 first conv in the latent discriminator (the official code has it)"
    )


class VQGANTraining(ConfigSection):
    steps: int = Field(1200, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="images per step")
    lr: float = Field(4e-4, gt=0, description="learning rate of generator and discriminator (Adam, betas 0.5, 0.9)")


class TransferTraining(ConfigSection):
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="(content, style) pairs per step")
    lr: float = Field(
        4e-4,
        gt=0,
        description="learning rate of the transfer module and the latent discriminator (Adam, betas 0.5, 0.9)",
    )


class TrainingConfig(ConfigSection):
    vqgan_photo: VQGANTraining = Field(default_factory=VQGANTraining, description="photo VQGAN stage")
    vqgan_art: VQGANTraining = Field(default_factory=VQGANTraining, description="art VQGAN stage")
    transfer: TransferTraining = Field(default_factory=TransferTraining, description="transfer stage")


class DataConfig(ConfigSection):
    content: str = Field("photos", description="content images: a zoo.data set name (photos), a directory or shards")
    style: str = Field("textures", description="style images: a zoo.data set name (textures), a directory or shards")
    count: int = Field(2000, ge=1, description="random crops per generated training set")
    eval_pairs: int = Field(16, ge=1, description="held-out (content, style) pairs scored by evaluate")
    sample_images: int = Field(
        4, ge=1, description="held-out content and style images shipped for the default sample grid"
    )


class QuantArtConfig(ZooConfig):
    image_size: int = Field(64, ge=8, description="training image side")
    art_from_photo: bool = Field(
        True,
        description="start the art VQGAN from the photo VQGAN's weights (the paper fine-tunes its WikiArt VQGAN from the ImageNet one)",
    )
    vqgan: VQGANConfig = Field(default_factory=VQGANConfig, description="architecture of both VQGANs")
    discriminator: DiscriminatorConfig = Field(
        default_factory=DiscriminatorConfig, description="image discriminator of the VQGAN stages"
    )
    perceptual: PerceptualConfig = Field(default_factory=PerceptualConfig, description="optional perceptual loss")
    transfer: TransferConfig = Field(default_factory=TransferConfig, description="style transfer module and its losses")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="steps, batch sizes and learning rates per stage"
    )
    data: DataConfig = Field(default_factory=DataConfig, description="content and style data")

    @field_validator("image_size")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


PRESETS: dict[str, dict] = {
    # The defaults (64 px, f=4 codes: 16x16) tuned on the embedded data (benchmarks/results/quantart.md):
    # the photo VQGAN gets twice the steps, since its PSNR bounds content SSIM (1200 steps:
    # 18.0 dB, 2400: 20.7 dB; the art VQGAN starts from it and needs fewer), and a stronger
    # content term than the official 1, where the tiny model over-stylises. Transfer stage on
    # the same 2400-step VQGANs: content weight 10 -> style ratio 0.37, luma SSIM 0.52;
    # 15 -> 0.42, 0.52; 20 -> 0.45, 0.53.
    "tiny": {
        "sample_every": 800,
        "transfer": {"content_weight": 10.0},
        "training": {"vqgan_photo": {"steps": 2400}},
    },
    "paper": {
        # configs/vqgan_wikiart.yaml and configs/coco2art.yaml of siyuhuang/QuantArt
        "image_size": 256,
        "vqgan": {
            "ch": 128,
            "ch_mult": [1, 1, 2, 2, 4],
            "num_res_blocks": 2,
            "attn_resolutions": [16],
            "z_channels": 256,
            "code_dim": 256,
            "codebook_size": 1024,
        },
        "discriminator": {"base_channels": 64, "num_layers": 3, "disc_start": 10000, "weight": 0.8},
        "transfer": {
            "adaptive_weight": False,
            "discriminator_channels": 64,
            "discriminator_layers": 0,
            "discriminator_downsample": True,
        },
        "training": {
            "vqgan_photo": {"steps": 200000, "batch_size": 5, "lr": 4.5e-6 * 5},
            "vqgan_art": {"steps": 200000, "batch_size": 5, "lr": 4.5e-6 * 5},
            "transfer": {"steps": 100000, "batch_size": 8, "lr": 4.5e-6 * 8},
        },
        "scale": {"activation_checkpointing": True},  # recompute each block's activations in the backward pass
        # The official VQGAN data (taming.data.custom.CustomTrain): the shorter side resized to
        # 256 (albumentations SmallestMaxSize: bilinear) and a centre crop, no random crop or
        # flip (taming's ImageNet VQGAN uses random crops; QuantArt's configs do not).
        "augment": {"filter": "bilinear"},
    },
}


MAX_SIDE = 2048  # the largest --size: activations grow with its square


class QuantArtSampleOptions(SampleOptionsBase):
    # Non-finite numbers are refused: inf or nan in an option draws garbage (VAR's `cfg` inf:
    # every token the same). pydantic merges this with the base's extra="forbid".
    model_config = ConfigDict(allow_inf_nan=False)

    content: str | None = Field(
        None,
        description="content image or directory of images; default: held-out embedded photos",
        json_schema_extra=IMAGE_INPUT,
    )
    style: str | None = Field(
        None,
        description="style image or directory of images; default: held-out embedded textures",
        json_schema_extra=IMAGE_INPUT,
    )
    content_style_balance: float = Field(
        1.0, ge=0, le=1, description="0 keeps the content codes, 1 uses the transferred codes fully"
    )
    fidelity_balance: float = Field(
        1.0, ge=0, le=1, description="0 decodes the continuous transferred codes, 1 their art-codebook quantisation"
    )
    sweep: bool = Field(
        False,
        description="grid over both balances (rows: content-style, columns: fidelity) for the first content and style image",
    )
    size: int | None = Field(
        None,
        ge=8,
        le=MAX_SIDE,
        description="side images are resized and centre-cropped to (a multiple of the code stride); default: the training size",
    )

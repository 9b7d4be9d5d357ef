"""VAR's config, presets and sample options (pydantic only: no torch here)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from zoo.config import (
    IMAGE_INPUT,
    MAX_BATCH,
    MAX_CODES,
    MAX_DEPTH,
    MAX_FACTOR,
    MAX_IMAGE_SIDE,
    MAX_STEPS,
    MAX_WIDTH,
    ClassSampleOptions,
    CodesConfig,
    ConfigSection,
    Multiplier,
    Side,
    ZooConfig,
    top_k_option,
    top_p_option,
)

DEFAULT_CLASSES = 10  # with no --class: classes 0..9 (all of them for the digits)


class TokenizerConfig(ConfigSection):
    """The multi-scale VQVAE. Defaults are the official release (vae_ch160v4096z32)."""

    # read until zoo 0.3: run directories and --set flags written before the shared vocabulary
    renamed_fields: ClassVar[dict[str, str]] = {"vocab_size": "codebook_size", "latent_channels": "code_dim"}

    resolution: int = Field(256, ge=1, le=MAX_IMAGE_SIDE, description="image side in pixels")
    channels: int = Field(160, ge=1, le=MAX_WIDTH, description="base width of the encoder/decoder (taming's `ch`)")
    channel_multipliers: list[Multiplier] = Field(
        [1, 1, 2, 2, 4],
        min_length=1,
        description="width multiplier per resolution; the latent is resolution / 2^(len-1)",
    )
    res_blocks: int = Field(2, ge=1, le=MAX_DEPTH, description="residual blocks per resolution")
    attention_resolutions: list[Side] = Field(
        [16], description="feature-map sides that get self-attention after each residual block"
    )
    mid_attention: bool = Field(True, description="self-attention in the middle block")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside residual blocks")
    code_dim: int = Field(
        32, ge=1, le=MAX_WIDTH, description="size of one code vector, the latent's channels (the paper's Cvae)"
    )
    codebook_size: int = Field(
        4096, ge=2, le=MAX_CODES, description="codes in the codebook, the token vocabulary of the transformer"
    )
    patch_nums: list[int] = Field(
        [1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
        description="side of the token map at each scale, small to large; the last equals the latent side",
    )
    beta: float = Field(0.25, ge=0, le=MAX_FACTOR, description="commitment loss weight")
    phi_ratio: float = Field(0.5, ge=0, le=1, description="r in phi(h) = (1 - r) h + r conv3x3(h); 0 disables phi")
    phi_count: int = Field(
        4,
        ge=0,
        le=MAX_DEPTH,
        description="phi convolutions: 0 one per scale (non-shared), 1 one for all scales (fully shared), "
        "K >= 2 partially shared (the paper's 4)",
    )
    quant_conv_kernel: int = Field(
        3, ge=1, le=MAX_DEPTH, description="kernel of quant_conv and post_quant_conv (odd, so sides are kept)"
    )
    dead_code_threshold: float | None = Field(
        0.01,
        ge=0,
        le=MAX_FACTOR,
        description="a code whose running hits per batch fall below this is re-initialised; null disables",
    )

    @field_validator("quant_conv_kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value


class TransformerConfig(ConfigSection):
    """The VAR transformer. Width and heads follow the paper's rule unless given."""

    depth: int = Field(16, ge=1, le=MAX_DEPTH, description="number of AdaLN self-attention blocks")
    width: int | None = Field(None, ge=1, le=MAX_WIDTH, description="embedding width; default 64 * depth")
    heads: int | None = Field(None, ge=1, le=MAX_DEPTH, description="attention heads; default depth")
    mlp_ratio: float = Field(4.0, gt=0, le=64, description="FFN hidden width / width")
    drop_path: float | None = Field(
        None, ge=0, lt=1, description="stochastic depth of the last block; default 0.1 * depth / 24"
    )
    attention_l2_norm: bool = Field(True, description="L2-normalise queries and keys, with a learnable per-head scale")
    shared_adaln: bool = Field(False, description="one AdaLN projection shared by all blocks (SharedAdaLin)")
    num_classes: int = Field(
        1000, ge=1, le=MAX_CODES, description="class labels; one more 'unconditional' class is added for CFG"
    )
    condition_dropout: float = Field(
        0.1, ge=0, lt=1, description="probability of replacing the class by the unconditional one"
    )

    @property
    def resolved_width(self) -> int:
        return self.width or 64 * self.depth

    @property
    def resolved_heads(self) -> int:
        return self.heads or self.depth

    @property
    def resolved_drop_path(self) -> float:
        return 0.1 * self.depth / 24 if self.drop_path is None else self.drop_path


class TokenizerTraining(ConfigSection):
    steps: int = Field(20000, ge=1, le=MAX_STEPS, description="optimizer steps of the `tokenizer` stage")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="images per step")
    lr: float = Field(2e-4, gt=0, le=MAX_FACTOR, description="peak learning rate (Adam)")
    warmup_steps: int = Field(500, ge=0, le=MAX_STEPS, description="linear warm-up steps")
    reconstruction_loss: Literal["l1", "mse"] = Field("mse", description="pixel reconstruction loss")
    vq_weight: float = Field(
        1.0, ge=0, le=MAX_FACTOR, description="weight of the quantiser loss (codebook + beta * commitment)"
    )
    perceptual_weight: float = Field(
        0.0, ge=0, le=MAX_FACTOR, description="weight of the perceptual loss (needs perceptual_weights); 0 disables"
    )
    perceptual_backbone: str = Field("vgg16", description="timm backbone of the perceptual loss")
    perceptual_weights: Path | None = Field(
        None, description="local safetensors file with the perceptual backbone's weights"
    )
    gan_weight: float = Field(
        0.0, ge=0, le=MAX_FACTOR, description="weight of the PatchGAN adversarial loss; 0 disables"
    )
    gan_start: int = Field(
        2000, ge=0, le=MAX_STEPS, description="step at which the discriminator and the adversarial term start"
    )
    gan_lr: float = Field(2e-4, gt=0, le=MAX_FACTOR, description="discriminator learning rate")


class TransformerTraining(ConfigSection):
    steps: int = Field(100000, ge=1, le=MAX_STEPS, description="optimizer steps of the `transformer` stage")
    batch_size: int = Field(256, ge=1, le=MAX_BATCH, description="token maps per step")
    lr_per_256: float = Field(
        1e-4, gt=0, le=MAX_FACTOR, description="base learning rate; the peak lr is lr_per_256 * batch_size / 256"
    )
    warmup_steps: int = Field(2000, ge=0, le=MAX_STEPS, description="linear warm-up steps")
    weight_decay: float = Field(0.05, ge=0, le=MAX_FACTOR, description="AdamW weight decay (matrices only)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    clip_grad_norm: float = Field(2.0, gt=0, le=MAX_FACTOR, description="gradient norm clip")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")
    validate_every: int = Field(500, ge=1, le=MAX_STEPS, description="steps between held-out token losses")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError("each beta must be in [0, 1)")
        return value


class VARConfig(ZooConfig):
    """Every architecture, data and training field of VAR; presets are partial dicts of it."""

    data: str = Field(
        "digits",
        description="training images: digits | photos | textures | a folder (class subfolders become labels) | "
        "shards (a directory of zoo data pack, or a pattern train-{000000..000127}.tar)",
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="the multi-scale VQVAE")
    transformer: TransformerConfig = Field(default_factory=TransformerConfig, description="the VAR transformer")
    tokenizer_training: TokenizerTraining = Field(default_factory=TokenizerTraining, description="stage `tokenizer`")
    transformer_training: TransformerTraining = Field(
        default_factory=TransformerTraining, description="stage `transformer`"
    )
    codes: CodesConfig = Field(
        default_factory=CodesConfig, description="the transformer stage's tokens: encoded on the fly or once to disk"
    )

    @model_validator(mode="after")
    def _check_shapes(self) -> VARConfig:
        tokenizer, transformer = self.tokenizer, self.transformer
        latent = tokenizer.resolution // 2 ** (len(tokenizer.channel_multipliers) - 1)
        if tokenizer.resolution % 2 ** (len(tokenizer.channel_multipliers) - 1):
            raise ValueError(f"tokenizer.resolution must be divisible by 2^{len(tokenizer.channel_multipliers) - 1}")
        patch_nums = tokenizer.patch_nums
        if len(patch_nums) < 2 or patch_nums != sorted(set(patch_nums)) or patch_nums[0] < 1:
            raise ValueError("tokenizer.patch_nums must be at least 2 increasing sides, e.g. [1, 2, 3, 4]")
        if patch_nums[-1] != latent:
            raise ValueError(f"the last of tokenizer.patch_nums must be the latent side {latent}, got {patch_nums[-1]}")
        if transformer.resolved_width % transformer.resolved_heads:
            raise ValueError("transformer width must be a multiple of its heads")
        return self


_PAPER_TRANSFORMER_STEPS = {"steps": 200000, "batch_size": 768, "warmup_steps": 4000}
# The paper sizes recompute each block's activations in the backward pass instead of keeping them.
_PAPER_SCALE = {"activation_checkpointing": True}
# As the official trainer: every batch of (augmented) images is tokenized on the training
# device by the frozen VQVAE (`img_to_idxBl` before the autocast); no token set is stored.
_PAPER_CODES = {"mode": "on_the_fly"}

# The official training augmentation (FoundationVision/VAR utils/data.py, build_dataset):
# Resize(round(1.125 * side), LANCZOS) on the shorter side, then RandomCrop(side); the
# held-out images the same resize and CenterCrop(side). Its horizontal flip is an option
# (`hflip`, default off in utils/arg_util.py), so it is off here too.
PAPER_AUGMENT = {"resize_ratio": 1.125, "filter": "lanczos", "crop": "random", "flip": False}

# The official scale lists (side of the token map per scale), by image side.
PAPER_PATCH_NUMS: dict[int, list[int]] = {
    256: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
    512: [1, 2, 3, 4, 6, 9, 13, 18, 24, 32],
}

PRESETS: dict[str, dict] = {
    # 16 px digits: the 8x8 originals hold all the detail, so a 4x4 latent with 4 scales
    # (1+4+9+16 = 30 tokens) reconstructs them and keeps both stages inside 15 CPU minutes.
    "digits": {
        "data": "digits",
        "sample_every": 200,
        "tokenizer": {
            "resolution": 16,
            "channels": 32,
            "channel_multipliers": [1, 2, 2],
            "res_blocks": 1,
            "attention_resolutions": [],
            "code_dim": 16,
            "codebook_size": 256,
            "patch_nums": [1, 2, 3, 4],
        },
        # Half the paper's width rule (64 * depth = 256): a quarter of the compute per step,
        # which the CPU budget needs, and still >= 90% of samples read as the asked-for digit.
        "transformer": {"depth": 4, "width": 128, "heads": 4, "num_classes": 10},
        "tokenizer_training": {"steps": 600, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50},
        # The paper's lr_per_256 = 1e-4 is tuned for 200k steps on ImageNet; a 4-block model
        # that must learn in a few hundred CPU steps needs a far larger step, so this preset
        # raises it (peak lr 1e-3 at batch 64).
        "transformer_training": {
            "steps": 600,
            "batch_size": 64,
            "lr_per_256": 4e-3,
            "warmup_steps": 50,
            "validate_every": 200,
        },
        # The ~1,600 training images tokenized once (2 s on one CPU thread), not 600 batches of
        # 64 tokenized again each step (24 times the set: about 45 s).
        "codes": {"mode": "disk"},
    },
    # The paper's ImageNet 256px models; set `data` to an ImageNet-style folder (class
    # subfolders become labels). "photos" only makes them trainable out of the box.
    **{
        f"d{depth}": {
            "data": "photos",
            "tokenizer": {"resolution": 256},
            "transformer": {"depth": depth, "num_classes": 1000},
            "transformer_training": _PAPER_TRANSFORMER_STEPS,
            "scale": _PAPER_SCALE,
            "codes": _PAPER_CODES,
            "augment": PAPER_AUGMENT,
        }
        for depth in (16, 20, 24, 30)
    },
    # The paper's 512px model (var_d36.pth): the same VQVAE on a 32x32 latent (attention
    # there), ten scales up to 32, and one AdaLN projection shared by all blocks.
    "d36": {
        "data": "photos",
        "tokenizer": {"resolution": 512, "patch_nums": PAPER_PATCH_NUMS[512], "attention_resolutions": [32]},
        "transformer": {"depth": 36, "num_classes": 1000, "shared_adaln": True},
        "transformer_training": _PAPER_TRANSFORMER_STEPS,
        "scale": _PAPER_SCALE,
        "codes": _PAPER_CODES,
        "augment": PAPER_AUGMENT,
    },
}


def _is_zero(value: int | float | str) -> bool:
    try:
        return float(value) == 0.0
    except ValueError:
        return False


MAX_CFG = 100.0  # guidance past this only overflows the mixed logits: every token the same
MAX_GUMBEL = 100.0  # a temperature past this draws uniformly already


class VARSampleOptions(ClassSampleOptions):
    """`classes` and `n` (images per class) come from zoo's ClassSampleOptions; with --edit the
    default class is the unconditional one (plain in-/out-painting)."""

    default_classes: ClassVar[int] = DEFAULT_CLASSES

    cfg: float = Field(
        4.0, ge=0, le=MAX_CFG, description="classifier-free guidance; ramps as cfg * k / (K - 1) over scales k"
    )
    top_k: int = top_k_option(900)  # clamped to the codebook size
    top_p: float = top_p_option(0.96)
    gumbel: float = Field(
        0.0,
        ge=0,
        le=MAX_GUMBEL,
        description="Gumbel-softmax smoothing of the code vectors (the official `more_smooth`, which uses 0.27); 0 is off",
    )
    kv_cache: bool = Field(True, description="reuse keys/values of earlier scales; false recomputes every scale")
    # str before Path: a data: URI (zoo.runtime.images) must stay a string, as Path would fold its "//"
    edit: str | Path | None = Field(
        None,
        description="image to edit: its tokens outside --mask are kept at every scale; without --class, "
        "regenerates unconditionally",
        json_schema_extra=IMAGE_INPUT,
    )
    mask: str | Path | None = Field(
        None,
        description="edit mask image: white = regenerate, black = keep; default: regenerate the centre half",
        json_schema_extra=IMAGE_INPUT,
    )

    @field_validator("top_p", mode="before")
    @classmethod
    def _top_p_zero_is_deprecated(cls, value: object) -> object:
        # Until 0.2, top_p = 0 meant "off" here while 1 meant "off" everywhere else.
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and _is_zero(value):
            warnings.warn(
                "--top-p 0 (top_p=0) meaning 'off' is deprecated and will be an error in the next release; "
                "use --top-p 1 to keep every code",
                FutureWarning,
                stacklevel=2,
            )
            return 1.0
        return value

    @model_validator(mode="after")
    def _mask_needs_an_image(self) -> VARSampleOptions:
        if self.mask is not None and self.edit is None:  # it would be ignored without a word
            raise ValueError("--mask applies to --edit IMAGE; give the image to edit, or leave out --mask")
        return self

    @field_validator("classes")
    @classmethod
    def _no_label_below_unconditional(cls, value: list[int] | None) -> list[int] | None:
        if value and min(value) < -1:
            raise ValueError("class labels are 0..num_classes-1, or -1 for unconditional")
        return value

"""Config, presets and sample options (pydantic only: the runtime imports this without torch)."""

from typing import ClassVar

from pydantic import Field

import zoo
from zoo.config import MAX_BATCH, MAX_CODES, MAX_FACTOR, MAX_IMAGE_SIDE, MAX_STEPS, MAX_WIDTH


class TinyAutoencoderConfig(zoo.ZooConfig):
    renamed_fields: ClassVar[dict[str, str]] = {"codes": "codebook_size"}  # the old name is read until zoo 0.3

    image_size: int = Field(16, description="side of the square digit images", ge=8, le=MAX_IMAGE_SIDE)
    width: int = Field(32, description="channels of the convolutions", ge=4, le=MAX_WIDTH)
    codebook_size: int = Field(32, description="number of codes in the codebook", ge=2, le=MAX_CODES)
    code_dim: int = Field(8, description="size of one code vector", ge=1, le=MAX_WIDTH)
    steps: int = Field(300, description="training steps", ge=1, le=MAX_STEPS)
    batch_size: int = Field(32, description="images per step", ge=1, le=MAX_BATCH)
    lr: float = Field(2e-3, description="learning rate", gt=0, le=MAX_FACTOR)


PRESETS: dict[str, dict] = {"digits16": {"sample_every": 100}, "fast": {"steps": 50, "width": 16}}


HELD_OUT_DIGITS = 64  # test digits an export ships for `sample` to reconstruct


class TinyAutoencoderSampleOptions(zoo.SampleOptionsBase):
    n: int = Field(
        8,
        description="held-out digits to reconstruct: the grid shows them in its top row, their reconstructions below",
        ge=1,
        le=HELD_OUT_DIGITS,
    )

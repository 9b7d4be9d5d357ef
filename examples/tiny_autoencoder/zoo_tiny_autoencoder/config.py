"""Config and sample options (pydantic only: the runtime imports this without torch)."""

from pydantic import Field

import zoo


class Config(zoo.ZooConfig):
    image_size: int = Field(16, description="side of the square digit images", ge=8)
    width: int = Field(32, description="channels of the convolutions", ge=4)
    codes: int = Field(32, description="codebook size", ge=2)
    code_dim: int = Field(8, description="dimension of a code vector", ge=1)
    steps: int = Field(300, description="training steps", ge=1)
    batch_size: int = Field(32, description="images per step", ge=1)
    lr: float = Field(2e-3, description="learning rate", gt=0)


class SampleOptions(zoo.SampleOptionsBase):
    n: int = Field(16, description="number of images", ge=1)

"""The sampling loop (numpy only): draw random code maps, decode them."""

import numpy as np

import zoo
from zoo.runtime.loop import ModelRuntime

from .config import TinyAutoencoderConfig, TinyAutoencoderSampleOptions


class TinyAutoencoderRuntime(ModelRuntime):
    options_class = TinyAutoencoderSampleOptions

    def sample(self, options: TinyAutoencoderSampleOptions) -> zoo.SampleOutput:
        config = TinyAutoencoderConfig.model_validate(self.config)
        side = config.image_size // 4
        rng = np.random.default_rng(options.seed)
        codes = rng.integers(0, config.codebook_size, size=(options.n, side, side), dtype=np.int64)
        images = self.components("decoder", codes=codes)["image"]
        return zoo.SampleOutput(images=zoo.outputs.to_uint8(images), extras={"codes": codes})

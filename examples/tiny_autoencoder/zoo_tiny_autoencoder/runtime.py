"""The sampling loop (numpy only): draw random code maps, decode them."""

import numpy as np

import zoo
from zoo.runtime.loop import ModelRuntime

from .config import Config, SampleOptions


class TinyAutoencoderRuntime(ModelRuntime):
    options_class = SampleOptions

    def sample(self, options: SampleOptions) -> zoo.SampleOutput:
        config = Config.model_validate(self.config)
        side = config.image_size // 4
        rng = np.random.default_rng(options.seed)
        codes = rng.integers(0, config.codes, size=(options.n, side, side), dtype=np.int64)
        images = self.components("decoder", codes=codes)["image"]
        return zoo.SampleOutput(images=zoo.outputs.to_uint8(images), extras={"codes": codes})

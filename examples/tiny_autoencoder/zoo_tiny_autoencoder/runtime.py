"""The sampling loop (numpy only): reconstruct held-out digits through the codes.

An autoencoder has no prior to draw codes from (random codes decode to noise), so its
"sample" is the picture that says how well it works: `n` held-out test digits, chosen by
`seed`, in the top row, and what the decoder makes of their codes below.
"""

import numpy as np

import zoo
from zoo.outputs import reconstruction_grid, to_uint8
from zoo.runtime.loop import ModelRuntime

from .config import TinyAutoencoderSampleOptions


class TinyAutoencoderRuntime(ModelRuntime[TinyAutoencoderSampleOptions]):
    options_class = TinyAutoencoderSampleOptions

    def sample(self, options: TinyAutoencoderSampleOptions) -> zoo.SampleOutput:
        held_out = self.arrays["held_out"]  # (N, 3, S, S) in [-1, 1]
        rng = np.random.default_rng(options.seed)
        chosen = np.sort(rng.choice(len(held_out), size=min(options.n, len(held_out)), replace=False))
        images = held_out[chosen]
        codes = self.components("encoder", image=images)["codes"]  # (n, S/4, S/4)
        reconstructions = self.components("decoder", codes=codes)["image"]
        return reconstruction_grid(to_uint8(images), to_uint8(reconstructions), codes=codes)

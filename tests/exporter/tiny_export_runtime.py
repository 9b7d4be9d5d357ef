"""The torch-free half of the exporter tests' tiny plugin: config, sample options and the
sampling loop. It stands where a real plugin's `config.py` and `runtime.py` stand, so the
subprocess test can load an export of it with torch made unimportable."""

from __future__ import annotations

import numpy as np
import pydantic

from zoo.config import SampleOptionsBase, ZooConfig
from zoo.outputs import SampleOutput, to_uint8
from zoo.runtime.loop import ModelRuntime


class TinyConfig(ZooConfig):
    image_size: int = pydantic.Field(16, description="side of the square images")
    channels: int = pydantic.Field(8, description="width of the autoencoder's hidden convolutions")
    latent_channels: int = pydantic.Field(4, description="channels of one codebook vector")
    num_codes: int = pydantic.Field(16, description="codebook size")
    embed_dim: int = pydantic.Field(16, description="width of the decoder step's cache")


class TinySampleOptions(SampleOptionsBase):
    count: int = pydantic.Field(2, ge=1, description="images to draw")
    top_k: int = pydantic.Field(1, ge=1, description="sample among the k likeliest codes; 1 is greedy")
    temperature: float = pydantic.Field(1.0, gt=0, description="divides the logits")


class TinyRuntime(ModelRuntime):
    """Draws code indices one at a time with the `step` graph (its cache grows by one
    position per call), then decodes the code grid with the `decode` graph."""

    options_class = TinySampleOptions

    def sample(self, options: TinySampleOptions) -> SampleOutput:
        rng = np.random.default_rng(options.seed)
        grid = self.config["image_size"] // 4
        tokens = np.full((options.count,), self.config["num_codes"], dtype=np.int64)  # start token
        cache = np.zeros((options.count, 0, self.config["embed_dim"]), dtype=np.float32)
        drawn = []
        for _ in range(grid * grid):
            outputs = self.components("step", tokens=tokens, cache=cache)
            cache = outputs["new_cache"]
            tokens = top_k_sample(outputs["logits"] / options.temperature, options.top_k, rng)
            drawn.append(tokens)
        indices = np.stack(drawn, axis=1).reshape(options.count, grid, grid)
        images = self.components("decode", indices=indices)["images"]
        return SampleOutput(images=to_uint8(images), extras={"indices": indices})

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) in [-1, 1] -> the autoencoder's reconstruction, same shape."""
        indices = self.components("encode", images=images.astype(np.float32))["indices"]
        return self.components("decode", indices=indices)["images"]


def top_k_sample(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(B, V) logits -> (B,) int64 indices drawn among each row's k largest."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # (B, k)
    top_logits = np.take_along_axis(logits, top, axis=1).astype(np.float64)
    probabilities = np.exp(top_logits - top_logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    uniform = rng.random((logits.shape[0], 1))
    choice = np.minimum((probabilities.cumsum(axis=1) < uniform).sum(axis=1), k - 1)
    return top[np.arange(logits.shape[0]), choice].astype(np.int64)

"""The sampling loop of VQ-VAE-2 + PixelCNN priors (numpy only, no torch).

Top codes in raster order, then bottom codes given the top, then the decoder. Per prior:

    condition = <prior>_condition(labels or top codes)               once
    fast:   for each row:     row_bias, vertical = <prior>_row(...)   once per row
                for each col: logits, horizontal = <prior>_step(...)  once per position
    naive:  for each position: logits = <prior>_logits(codes, condition)[:, :, row, col]

Both paths draw one uniform number per image and position from the same generator, so
with the same seed they give the same codes (tests/plugins/test_vqvae2_pixelcnn.py).
The condition, row biases and caches stay on the engine's device (`resident`): only the
codes go in and the logits come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zoo.config import check_sample_count
from zoo.errors import ConfigError
from zoo.outputs import SampleOutput, to_uint8
from zoo.runtime.cost import FLOAT32, Cost
from zoo.runtime.loop import Components, ModelRuntime
from zoo.runtime.resident import Resident
from zoo.runtime.sampling import draw, filter_logits, merged_generators, request_rows, softmax
from zoo_vqvae2_pixelcnn.config import PriorConfig, VQVAE2Config, VQVAE2SampleOptions

DEFAULT_CLASSES = 10  # with no --class: classes 0..9 (all of them for the digits)


class VQVAE2Runtime(ModelRuntime[VQVAE2SampleOptions]):
    options_class = VQVAE2SampleOptions
    per_row_seeds = True

    def __init__(
        self, components: Components, config: dict[str, Any], arrays: dict[str, np.ndarray], files: dict[str, bytes]
    ) -> None:
        super().__init__(components, config, arrays, files)
        self.settings = VQVAE2Config.model_validate(config)

    def sample(self, options: VQVAE2SampleOptions) -> SampleOutput:
        return self.sample_batch([options])[0]

    def batch_key(self, options: VQVAE2SampleOptions) -> str | None:
        """Temperature, top-k and the path (fast or naive) shape every row's draw and must agree;
        the classes, count and seed are per row."""
        return options.model_dump_json(exclude={"seed", "n", "classes"})

    def batch_rows(self, options: VQVAE2SampleOptions) -> int:
        return len(self.labels(options))

    def sample_batch(self, requests: Sequence[VQVAE2SampleOptions]) -> list[SampleOutput]:
        labels_per_request = [self.labels(options) for options in requests]
        counts = [len(labels) for labels in labels_per_request]
        rngs = merged_generators([options.seed for options in requests], counts)
        labels, options = np.concatenate(labels_per_request), requests[0]
        top = self.sample_codes("prior_top", {"labels": labels}, options, rngs)
        bottom = self.sample_codes("prior_bottom", {"top_codes": top, "labels": labels}, options, rngs)
        images = to_uint8(self.components("decoder", top_codes=top, bottom_codes=bottom)["images"])
        return [
            SampleOutput(
                images=images[rows],
                columns=options.n if self.settings.class_conditional else None,  # one row per class
                extras={"top_codes": top[rows], "bottom_codes": bottom[rows], "labels": labels[rows]},
            )
            for options, rows in zip(requests, request_rows(counts), strict=True)
        ]

    def cost(self, options: VQVAE2SampleOptions) -> Cost:
        """Per prior, its graphs' arenas: the fast path's caches (in, out and inside), the naive
        path's whole network over the code map; then the decoder (about ten feature maps of
        half the image's side at the VQ-VAE's width) and the codes and images kept for the answer."""
        settings = self.settings
        rows = (
            1
            if not settings.class_conditional
            else len(options.classes or []) or min(DEFAULT_CLASSES, settings.num_classes)
        )
        count = options.n * rows
        total, calls = 0, 1
        for prior, side in (("prior_top", settings.top_side), ("prior_bottom", settings.bottom_side)):
            prior_settings: PriorConfig = getattr(settings, prior)
            channels = max(prior_settings.channels, prior_settings.condition_channels)
            if options.naive:
                network = (2 * prior_settings.blocks + 2) * channels * side * side
                logits = self.codebook_size(prior) * side * side
                total += 2 * count * (network + logits) * FLOAT32
                calls += side * side
            else:
                caches = np.prod(prior_settings.vertical_cache_shape(side))
                caches += np.prod(prior_settings.horizontal_cache_shape(side))
                total += 3 * count * (int(caches) + channels * side * side) * FLOAT32
                calls += side * (side + 1)
        total += 10 * count * settings.vqvae.channels * (settings.image_size // 2) ** 2 * FLOAT32
        total += count * 3 * settings.image_size**2 * (FLOAT32 + 1)
        return Cost(total, calls)

    def codebook_size(self, prior: str) -> int:
        vqvae = self.settings.vqvae
        return vqvae.top_codebook_size if prior == "prior_top" else vqvae.bottom_codebook_size

    def labels(self, options: VQVAE2SampleOptions) -> np.ndarray:
        """(rows x n,) int64 labels for the priors: each class repeated n times (n images per
        class, as every model's `n`), the classes given or the first 10. A model trained
        without labels draws n images of the single label 0."""
        settings = self.settings
        if not settings.class_conditional:
            if options.classes:
                raise ConfigError(
                    "--class needs a class-conditional model (train it with --set class_conditional=true)"
                )
            return np.zeros(options.n, dtype=np.int64)
        classes = options.classes or list(range(min(DEFAULT_CLASSES, settings.num_classes)))
        bad = [c for c in classes if not 0 <= c < settings.num_classes]
        if bad:
            raise ConfigError(
                f"--class {bad[0]} is out of range: this model knows labels 0..{settings.num_classes - 1}"
            )
        check_sample_count(options.n, len(classes))  # before any code map is allocated
        return np.repeat(np.asarray(classes, dtype=np.int64), options.n)

    def sample_codes(
        self,
        prior: str,
        condition_input: dict[str, np.ndarray],
        options: VQVAE2SampleOptions,
        rngs: Sequence[np.random.Generator],
    ) -> np.ndarray:
        """-> (count, side, side) int64 codes of one level, drawn in raster order."""
        count = len(condition_input["labels"])  # images: n per class
        side = self.settings.top_side if prior == "prior_top" else self.settings.bottom_side
        codes = np.zeros((count, side, side), dtype=np.int64)
        condition = self.components(f"{prior}_condition", resident=("condition",), **condition_input)["condition"]
        if options.naive:
            for row in range(side):
                for col in range(side):
                    logits = self.components(f"{prior}_logits", codes=codes, condition=condition)["logits"]
                    codes[:, row, col] = draw_code(logits[:, :, row, col], options.temperature, options.top_k, rngs)
            return codes

        settings: PriorConfig = getattr(self.settings, prior)
        vertical: np.ndarray | Resident = np.zeros((count, *settings.vertical_cache_shape(side)), dtype=np.float32)
        # every row's steps start from zeros, sent each row (7.5 kB per image at the defaults)
        zero_horizontal = np.zeros((count, *settings.horizontal_cache_shape(side)), dtype=np.float32)
        horizontal: np.ndarray | Resident = zero_horizontal
        for row in range(side):
            row_index = np.array([row], dtype=np.int64)
            outputs = self.components(
                f"{prior}_row",
                resident=("row_bias", "new_vertical_cache"),
                codes=codes,
                row=row_index,
                vertical_cache=vertical,
                previous_row=horizontal,
                condition=condition,
            )
            row_bias, vertical = outputs["row_bias"], outputs["new_vertical_cache"]
            horizontal = zero_horizontal
            for col in range(side):
                outputs = self.components(
                    f"{prior}_step",
                    resident=("new_horizontal_cache",),
                    codes=codes,
                    row=row_index,
                    col=np.array([col], dtype=np.int64),
                    row_bias=row_bias,
                    horizontal_cache=horizontal,
                )
                horizontal = outputs["new_horizontal_cache"]
                codes[:, row, col] = draw_code(outputs["logits"], options.temperature, options.top_k, rngs)
        return codes

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) in [-1, 1] -> top codes, bottom codes."""
        outputs = self.components("encoder", images=np.asarray(images, dtype=np.float32))
        return outputs["top_codes"], outputs["bottom_codes"]

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) in [-1, 1] -> the VQ-VAE's reconstruction, same shape."""
        top, bottom = self.encode(images)
        return self.components("decoder", top_codes=top, bottom_codes=bottom)["images"]


def draw_code(logits: np.ndarray, temperature: float, top_k: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """(B, K) logits -> (B,) int64 codes drawn from softmax(logits / temperature), among the
    top_k likeliest when top_k > 0. Row b consumes exactly one uniform number of rngs[b]."""
    filtered = filter_logits(logits.astype(np.float64) / temperature, top_k)
    return draw(softmax(filtered), rngs)

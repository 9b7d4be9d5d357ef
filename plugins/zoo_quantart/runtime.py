"""QuantArt's sampling loop (numpy + Pillow, no torch): read images, run the graphs, lay out grids.

Graphs: `photo_encoder` and `art_encoder` (images -> quantised codes), `transfer` (content
codes, reference codes, the two balances -> codes), `art_decoder` (codes -> images).
Every content and style image is encoded once, then every pair (or every point of the
balance sweep) is transferred and decoded in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from zoo.config import MAX_SAMPLES
from zoo.errors import DataError
from zoo.outputs import SampleOutput, to_uint8
from zoo.runtime.cost import FLOAT32, Cost, decode_costs, widest_feature_map
from zoo.runtime.images import image_files, is_data_uri, read_square, square_resize, to_model_input
from zoo.runtime.loop import ModelRuntime
from zoo.runtime.sampling import request_rows, run_batched
from zoo_quantart.config import QuantArtSampleOptions

BATCH = 16  # images per graph call: bounds memory at large sizes
SWEEP_STEPS = 5  # balance values 0, 0.25, ..., 1 on each axis of the sweep


def read_images(spec: str, size: int, role: str) -> np.ndarray:
    """An image file, a data: URI, or every readable image of a directory (sorted by name)
    -> (N, size, size, 3) uint8."""
    if is_data_uri(spec):
        return read_square(spec, size, f"--{role}")[None]
    path = Path(spec).expanduser()
    if path.is_dir():
        files = image_files(path)
        if len(files) > MAX_SAMPLES:  # refused before decoding any of them
            raise DataError(
                f"--{role} {spec}: {len(files)} images; a call draws at most {MAX_SAMPLES}: use a folder of fewer"
            )
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"--{role} {spec}: no such file or directory")
    images = []
    for file in files:
        try:
            images.append(read_square(file, size, f"--{role}"))
        except DataError:
            if not path.is_dir():
                raise
    if not images:
        raise DataError(f"--{role} {spec}: no readable images in this directory")
    return np.stack(images)


class QuantArtRuntime(ModelRuntime[QuantArtSampleOptions]):
    options_class = QuantArtSampleOptions
    per_row_seeds = True  # it draws nothing: a result depends only on its own inputs

    def sample(self, options: QuantArtSampleOptions) -> SampleOutput:
        return self.sample_batch([options])[0]

    def batch_key(self, options: QuantArtSampleOptions) -> str | None:
        """Requests whose images come out at one side merge: the balances are per-row inputs of
        the transfer graph and the sweep only picks rows, so they may differ; it draws nothing."""
        return str(self.image_side(options.size))

    def batch_rows(self, options: QuantArtSampleOptions) -> int:
        """The images it transfers and decodes (the encoders see fewer or as many)."""
        contents, styles = (len(costs) for costs in self.input_costs(options))
        return SWEEP_STEPS**2 if options.sweep else contents * styles

    def sample_batch(self, requests: Sequence[QuantArtSampleOptions]) -> list[SampleOutput]:
        """Every request's content and style images through the encoders at once, then every
        request's pairs (or sweep) through the transfer and the decoder at once."""
        size = self.image_side(requests[0].size)
        contents = [self.images(options.content, "content", size) for options in requests]
        styles = [self.images(options.style, "style", size) for options in requests]
        for content, style, options in zip(contents, styles, requests, strict=True):
            if not options.sweep and len(content) * len(style) > MAX_SAMPLES:
                raise DataError(
                    f"{len(content)} content x {len(style)} style images make {len(content) * len(style)} images; "
                    f"a call draws at most {MAX_SAMPLES}: give fewer content or style images"
                )
        content_codes = run_batched(
            self.components, "photo_encoder", "codes", BATCH, images=to_model_input(np.concatenate(contents))
        )
        reference_codes = run_batched(
            self.components, "art_encoder", "codes", BATCH, images=to_model_input(np.concatenate(styles))
        )
        pairs = [
            self.pairs(options, len(content), len(style))
            for options, content, style in zip(requests, contents, styles, strict=True)
        ]
        # each request's picks, shifted to its images' rows in the merged content and style images
        content_rows, style_rows = request_rows([len(c) for c in contents]), request_rows([len(s) for s in styles])
        content_pick = np.concatenate([pair[0] + rows.start for pair, rows in zip(pairs, content_rows, strict=True)])
        style_pick = np.concatenate([pair[1] + rows.start for pair, rows in zip(pairs, style_rows, strict=True)])
        content_style, fidelity = (np.concatenate([pair[axis] for pair in pairs]) for axis in (2, 3))
        codes = run_batched(
            self.components,
            "transfer",
            "codes",
            BATCH,
            content_codes=content_codes[content_pick],
            reference_codes=reference_codes[style_pick],
            content_style_balance=content_style,
            fidelity_balance=fidelity,
        )
        stylized = run_batched(self.components, "art_decoder", "images", BATCH, codes=codes)  # (N, 3, H, W)
        rows_per_request = request_rows([len(pair[0]) for pair in pairs])
        return [
            self.answer(options, content, style, stylized[rows], content_style[rows], fidelity[rows])
            for options, content, style, rows in zip(requests, contents, styles, rows_per_request, strict=True)
        ]

    @staticmethod
    def pairs(
        options: QuantArtSampleOptions, contents: int, styles: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What one request transfers: content and style index, content-style and fidelity
        balance, one per output image."""
        if options.sweep:
            # rows: content-style balance, columns: fidelity balance, for the first pair
            grid = np.linspace(0.0, 1.0, SWEEP_STEPS, dtype=np.float32)
            content_style, fidelity = (axis.ravel() for axis in np.meshgrid(grid, grid, indexing="ij"))
            first = np.zeros(len(content_style), dtype=np.int64)
            return first, first, content_style, fidelity
        content_pick, style_pick = (
            axis.ravel() for axis in np.meshgrid(np.arange(contents), np.arange(styles), indexing="ij")
        )
        content_style = np.full(len(content_pick), options.content_style_balance, dtype=np.float32)
        fidelity = np.full(len(content_pick), options.fidelity_balance, dtype=np.float32)
        return content_pick, style_pick, content_style, fidelity

    def answer(
        self,
        options: QuantArtSampleOptions,
        contents: np.ndarray,
        styles: np.ndarray,
        stylized: np.ndarray,
        content_style: np.ndarray,
        fidelity: np.ndarray,
    ) -> SampleOutput:
        """One request's stylised images laid out: the sweep's grid, one image, or the pair table."""
        extras = {"stylized": stylized, "content_style_balance": content_style, "fidelity_balance": fidelity}
        outputs = to_uint8(stylized)
        if options.sweep:
            return SampleOutput(images=outputs, columns=SWEEP_STEPS, extras=extras)
        if len(outputs) == 1:
            return SampleOutput(images=outputs, columns=1, extras=extras)
        return SampleOutput(images=self.pair_grid(contents, styles, outputs), columns=len(styles) + 1, extras=extras)

    def stylize(self, contents: np.ndarray, styles: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) content photos and style images in [-1, 1], paired row by row -> the
        stylised images (N, 3, H, W) at balances (1, 1): what the transfer stage trains."""
        ones = np.ones(len(contents), np.float32)
        codes = run_batched(
            self.components,
            "transfer",
            "codes",
            BATCH,
            content_codes=run_batched(self.components, "photo_encoder", "codes", BATCH, images=contents),
            reference_codes=run_batched(self.components, "art_encoder", "codes", BATCH, images=styles),
            content_style_balance=ones,
            fidelity_balance=ones,
        )
        return run_batched(self.components, "art_decoder", "images", BATCH, codes=codes)

    def reconstruct_art(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) in [-1, 1] -> the art VQGAN's reconstruction (its encoder's quantised
        codes through its decoder). The photo VQGAN's decoder is not exported: nothing a
        transfer makes is decoded by it."""
        codes = run_batched(self.components, "art_encoder", "codes", BATCH, images=images)
        return run_batched(self.components, "art_decoder", "images", BATCH, codes=codes)

    def cost(self, options: QuantArtSampleOptions) -> Cost:
        """Attention makes it quadratic in pixels: a call of b images holds about two b x T x T
        float32 attention maps for T tokens (the feature map's pixels) at the widest attended
        level, and about four of its widest feature maps (measured on a deep, attention-light
        VQGAN). The four graphs' arenas add up, as do the decoded inputs and the outputs."""
        size = self.image_side(options.size)
        vqgan = self.config["vqgan"]
        levels = len(vqgan["ch_mult"])
        attended = [
            level for level in range(levels) if self.config["image_size"] // 2**level in vqgan["attn_resolutions"]
        ]
        tokens = max((size // 2**level) ** 2 for level in [*attended, levels - 1])  # the middle block attends too
        code_tokens = (size // 2 ** (levels - 1)) ** 2
        widest = widest_feature_map(vqgan["ch"], vqgan["ch_mult"], size)

        def graph(batch: int, tokens: int) -> int:
            return batch * (2 * tokens * tokens + 4 * widest) * FLOAT32

        costs = self.input_costs(options)
        inputs, counts = max(max(role, default=0) for role in costs), [len(role) for role in costs]
        pairs = SWEEP_STEPS**2 if options.sweep else counts[0] * counts[1]
        arenas = graph(min(BATCH, counts[0]), tokens) + graph(min(BATCH, counts[1]), tokens)
        arenas += graph(min(BATCH, pairs), code_tokens) + graph(min(BATCH, pairs), tokens)
        images = (sum(counts) + pairs) * size * size * 3 * (1 + FLOAT32)  # uint8 and float32 copies
        outputs = 2 * pairs * 3 * size * size * FLOAT32  # the decoder's output, kept as an extra, and its uint8
        calls = sum(-(-count // BATCH) for count in counts) + 2 * -(-pairs // BATCH)
        return Cost(arenas + inputs + images + outputs, calls)

    def input_costs(self, options: QuantArtSampleOptions) -> tuple[list[int], list[int]]:
        """Content and style: each image's decoded bytes, read from its header only (0 for the
        held-out images the model ships, already decoded)."""
        content, style = (
            [0] * len(self.arrays[f"{role}_images"]) if spec is None else decode_costs(spec, f"--{role}")
            for role, spec in (("content", options.content), ("style", options.style))
        )
        return content, style

    def image_side(self, requested: int | None) -> int:
        """The requested side rounded down to a multiple of the code stride."""
        stride = 2 ** (len(self.config["vqgan"]["ch_mult"]) - 1)
        side = requested or self.config["image_size"]
        return max(stride, side // stride * stride)

    def images(self, spec: str | None, role: str, size: int) -> np.ndarray:
        """The user's images, or the held-out embedded ones shipped with the model."""
        if spec is not None:
            return read_images(spec, size, role)
        shipped = self.arrays[f"{role}_images"]  # (N, S, S, 3) uint8
        if shipped.shape[1] == size:
            return shipped
        return np.stack([square_resize(Image.fromarray(image), size) for image in shipped])

    @staticmethod
    def pair_grid(contents: np.ndarray, styles: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """A table: the style images along the top, each content image starting its row of results."""
        blank = np.full_like(contents[0], 255)
        rows = [np.concatenate([blank[None], styles])]
        per_row = len(styles)
        for index, content in enumerate(contents):
            rows.append(np.concatenate([content[None], outputs[index * per_row : (index + 1) * per_row]]))
        return np.concatenate(rows)

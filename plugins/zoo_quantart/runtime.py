"""QuantArt's sampling loop (numpy + Pillow, no torch): read images, run the graphs, lay out grids.

Graphs: `photo_encoder` and `art_encoder` (images -> quantised codes), `transfer` (content
codes, reference codes, the two balances -> codes), `art_decoder` (codes -> images).
Every content and style image is encoded once, then every pair (or every point of the
balance sweep) is transferred and decoded in batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zoo.config import MAX_SAMPLES
from zoo.errors import DataError
from zoo.outputs import SampleOutput, to_uint8
from zoo.runtime.cost import FLOAT32, Cost, decode_costs, widest_feature_map
from zoo.runtime.images import image_files, is_data_uri, read_square, square_resize, to_model_input
from zoo.runtime.loop import ModelRuntime
from zoo.runtime.sampling import run_batched
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
        size = self.image_side(options.size)
        contents = self.images(options.content, "content", size)
        styles = self.images(options.style, "style", size)
        if not options.sweep and len(contents) * len(styles) > MAX_SAMPLES:
            raise DataError(
                f"{len(contents)} content x {len(styles)} style images make {len(contents) * len(styles)} images; "
                f"a call draws at most {MAX_SAMPLES}: give fewer content or style images"
            )
        content_codes = run_batched(self.components, "photo_encoder", "codes", BATCH, images=to_model_input(contents))
        reference_codes = run_batched(self.components, "art_encoder", "codes", BATCH, images=to_model_input(styles))

        if options.sweep:
            # rows: content-style balance, columns: fidelity balance, for the first pair
            grid = np.linspace(0.0, 1.0, SWEEP_STEPS, dtype=np.float32)
            content_style, fidelity = (axis.ravel() for axis in np.meshgrid(grid, grid, indexing="ij"))
            content_pick = np.zeros(len(content_style), dtype=np.int64)
            style_pick = np.zeros(len(content_style), dtype=np.int64)
        else:
            content_pick, style_pick = (
                axis.ravel() for axis in np.meshgrid(np.arange(len(contents)), np.arange(len(styles)), indexing="ij")
            )
            content_style = np.full(len(content_pick), options.content_style_balance, dtype=np.float32)
            fidelity = np.full(len(content_pick), options.fidelity_balance, dtype=np.float32)

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

        inputs, counts = 0, []
        for role, spec in (("content", options.content), ("style", options.style)):
            if spec is None:
                counts.append(len(self.arrays[f"{role}_images"]))
            else:
                costs = decode_costs(spec, f"--{role}")
                inputs = max([inputs, *costs])
                counts.append(len(costs))
        pairs = SWEEP_STEPS**2 if options.sweep else counts[0] * counts[1]
        arenas = graph(min(BATCH, counts[0]), tokens) + graph(min(BATCH, counts[1]), tokens)
        arenas += graph(min(BATCH, pairs), code_tokens) + graph(min(BATCH, pairs), tokens)
        images = (sum(counts) + pairs) * size * size * 3 * (1 + FLOAT32)  # uint8 and float32 copies
        outputs = 2 * pairs * 3 * size * size * FLOAT32  # the decoder's output, kept as an extra, and its uint8
        calls = sum(-(-count // BATCH) for count in counts) + 2 * -(-pairs // BATCH)
        return Cost(arenas + inputs + images + outputs, calls)

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

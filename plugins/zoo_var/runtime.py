"""VAR's sampling loop, torch-free: the same code drives the torch components (`zoo sample`)
and the onnxruntime sessions (`zoo run`).

Per scale k (of K): the transformer predicts all side_k^2 tokens at once (the batch doubled:
conditional rows, then unconditional ones), guidance mixes them with t = cfg * k / (K - 1),
top-k / top-p filter the logits (zoo.runtime.sampling: top_k 0 and top_p 1 keep all), a code
is drawn (argmax when top_k == 1), and `embed_k`
adds its vectors to f_hat and returns the next scale's input. Editing keeps the edit
image's tokens outside the mask at every scale (the paper's zero-shot in-/out-painting).
The key/value cache and f_hat stay on the engine's device from scale to scale (`resident`):
only logits, the next scale's input (small; the loop concatenates it) and images come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ZooError
from zoo.outputs import SampleOutput, to_uint8
from zoo.runtime.cost import FLOAT32, FLOAT64, Cost, decode_costs, widest_feature_map
from zoo.runtime.images import open_image, read_square, square_resize, to_model_input
from zoo.runtime.loop import ModelRuntime, progress_callback
from zoo.runtime.resident import Resident
from zoo.runtime.sampling import draw, filter_logits, merged_generators, request_rows, row_generators, softmax
from zoo_var.config import DEFAULT_CLASSES, TokenizerConfig, TransformerConfig, VARSampleOptions
from zoo_var.scales import area_matrix, scale_starts


@dataclass
class Geometry:
    """What the loop needs to know of the model, read from its config dict."""

    patch_nums: list[int]
    code_dim: int
    resolution: int
    num_classes: int
    depth: int
    heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Geometry:
        tokenizer = TokenizerConfig.model_validate(config["tokenizer"])  # also reads exports' old field names
        transformer = TransformerConfig.model_validate(config["transformer"])  # resolves width and heads
        return cls(
            patch_nums=list(tokenizer.patch_nums),
            code_dim=tokenizer.code_dim,
            resolution=tokenizer.resolution,
            num_classes=transformer.num_classes,
            depth=transformer.depth,
            heads=transformer.resolved_heads,
            head_dim=transformer.resolved_width // transformer.resolved_heads,
        )


@dataclass
class EditTargets:
    tokens: list[np.ndarray]  # per scale (side_k^2,) int64: the edit image's tokens
    keep: list[np.ndarray]  # per scale (side_k^2,) bool: True where the edit image's token is kept


def gumbel_softmax(logits: np.ndarray, tau: float, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    gumbels = -np.log(np.stack([rng.exponential(size=logits.shape[1:]) for rng in rngs]))
    return softmax((logits + gumbels) / tau)


def read_image(path: str | Path, size: int) -> np.ndarray:
    """An image file -> (1, 3, size, size) float32 in [-1, 1], centre-cropped to a square."""
    return to_model_input(read_square(path, size, "--edit")[None])


def read_mask(path: str | Path | None, side: int) -> np.ndarray:
    """(side, side) float in [0, 1], 1 where the image is regenerated. White = regenerate;
    with no mask file, the centre half of the image is regenerated."""
    if path is None:
        mask = np.zeros((side, side))
        low, high = round(side / 4), round(3 * side / 4)
        mask[low:high, low:high] = 1.0
        return mask
    from PIL import Image, ImageOps

    with open_image(path, "--mask") as image:  # upright and centre-cropped, like the edit image
        gray = ImageOps.exif_transpose(image).convert("L")
    return square_resize(gray, side, Image.Resampling.BOX).astype(np.float64) / 255.0


class VARRuntime(ModelRuntime[VARSampleOptions]):
    options_class = VARSampleOptions
    reports_progress = True  # the image after each scale, decoded only for a callback
    per_row_seeds = True

    def sample(self, options: VARSampleOptions) -> SampleOutput:
        if options.edit is None:
            return self.sample_batch([options])[0]
        geometry = Geometry.from_config(self.config)
        labels = self._labels(options, geometry)
        edit = self._edit_targets(options.edit, options.mask, geometry)
        tokens, f_hat = self._generate(labels, options, geometry, row_generators(options.seed, len(labels)), edit)
        return self._finish(self._decode(f_hat), options, tokens, labels)

    def batch_key(self, options: VARSampleOptions) -> str | None:
        """Edits run alone (each has its own image); otherwise the classes, count and seed may differ."""
        return None if options.edit is not None else options.model_dump_json(exclude={"seed", "n", "classes"})

    def batch_rows(self, options: VARSampleOptions) -> int:
        return len(self._labels(options, Geometry.from_config(self.config)))

    def sample_batch(self, requests: Sequence[VARSampleOptions]) -> list[SampleOutput]:
        geometry = Geometry.from_config(self.config)
        labels = [self._labels(options, geometry) for options in requests]
        counts = [len(rows) for rows in labels]
        rngs = merged_generators([options.seed for options in requests], counts)
        tokens, f_hat = self._generate(np.concatenate(labels), requests[0], geometry, rngs, None)
        images = self._decode(f_hat)
        return [
            self._finish(images[rows], options, tokens[rows], request_labels)
            for options, request_labels, rows in zip(requests, labels, request_rows(counts), strict=True)
        ]

    def _decode(self, f_hat: np.ndarray | Resident) -> np.ndarray:
        return to_uint8(self.components("decoder", f_hat=f_hat)["image"])

    def _finish(
        self, images: np.ndarray, options: VARSampleOptions, tokens: np.ndarray, labels: np.ndarray
    ) -> SampleOutput:
        on_scale = progress_callback()
        if on_scale is not None:  # the last scale: one image per scale in all
            on_scale(SampleOutput(images=images, columns=options.n))
        return SampleOutput(images=images, columns=options.n, extras={"tokens": tokens, "labels": labels})

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) in [-1, 1] -> the tokenizer's reconstruction through its multi-scale
        tokens: the encoder's tokens, each scale's code vectors added into f_hat by its
        `embed_k` graph (as sampling adds them), the decoder."""
        geometry = Geometry.from_config(self.config)
        patch_nums, starts = geometry.patch_nums, scale_starts(geometry.patch_nums)
        codebook = self.arrays["codebook"].astype(np.float32)  # (codebook_size, code_dim)
        tokens = self.components("encoder", image=np.asarray(images, np.float32))["tokens"]  # (B, L)
        f_hat = np.zeros((len(tokens), geometry.code_dim, patch_nums[-1], patch_nums[-1]), np.float32)
        for k in range(len(patch_nums)):
            codes = np.ascontiguousarray(codebook[tokens[:, starts[k] : starts[k + 1]]])  # (B, side_k^2, C)
            f_hat = self.components(f"embed_{k}", codes=codes, f_hat=f_hat)["new_f_hat"]
        return self.components("decoder", f_hat=f_hat)["image"]

    def cost(self, options: VARSampleOptions) -> Cost:
        """Each graph's arena holds its largest call's activations (onnxruntime keeps them), so
        the graphs add up: the transformer step's at the last scale (about three times its
        key/value cache and logits out, plus attention; the loop holds the cache in and out
        too), the decoder's (about ten of its widest
        feature maps), and the loop's float64 filtering of the logits (copies, a sort, a sum)."""
        geometry = Geometry.from_config(self.config)
        tokenizer = TokenizerConfig.model_validate(self.config["tokenizer"])
        rows = len(options.classes) if options.classes else 1 if options.edit is not None else DEFAULT_CLASSES
        batch = options.n * min(rows, geometry.num_classes + 1)
        codebook_size = len(self.arrays["codebook"])
        total = sum(side * side for side in geometry.patch_nums)
        last = geometry.patch_nums[-1] ** 2
        width = geometry.heads * geometry.head_dim
        cache = (2 * batch) * geometry.depth * 2 * total * width * FLOAT32
        logits = (2 * batch) * (last if options.kv_cache else total) * codebook_size * FLOAT32
        attention = (2 * batch) * geometry.heads * last * total * FLOAT32
        filtering = batch * last * codebook_size * 7 * FLOAT64
        widest = widest_feature_map(tokenizer.channels, tokenizer.channel_multipliers, geometry.resolution)
        decoder = 10 * batch * widest * FLOAT32
        edit = 0
        if options.edit is not None:
            edit = max(decode_costs(options.edit, "--edit"))
            edit += max(decode_costs(options.mask, "--mask")) if options.mask is not None else 0
        peak = 5 * (cache + logits) + attention + filtering + decoder + edit
        return Cost(peak, 2 * len(geometry.patch_nums) + 1 + (options.edit is not None))

    def _labels(self, options: VARSampleOptions, geometry: Geometry) -> np.ndarray:
        """Each class repeated n times; class -1 (or the null class) is unconditional."""
        if options.classes:
            classes = list(options.classes)
        elif options.edit is not None:
            classes = [-1]  # unconditional: the docs' "without --class, regenerates unconditionally"
        else:
            classes = list(range(min(DEFAULT_CLASSES, geometry.num_classes)))
        for label in classes:
            if not -1 <= label < geometry.num_classes:
                raise ZooError(
                    f"class {label} is out of range: this model has classes 0..{geometry.num_classes - 1} "
                    f"(-1 draws unconditionally)"
                )
        classes = [geometry.num_classes if label == -1 else label for label in classes]
        return np.repeat(np.asarray(classes, np.int64), options.n)

    def _edit_targets(self, edit: str | Path, mask: str | Path | None, geometry: Geometry) -> EditTargets:
        image = read_image(edit, geometry.resolution)
        tokens = self.components("encoder", image=image)["tokens"][0]  # (L,)
        side = geometry.patch_nums[-1]
        keep_latent = 1.0 - read_mask(mask, side)  # 1 keeps the edit image
        starts = scale_starts(geometry.patch_nums)
        per_scale_tokens, per_scale_keep = [], []
        for k, scale_side in enumerate(geometry.patch_nums):
            rows = area_matrix(side, scale_side)
            keep = (rows @ keep_latent @ rows.T) > 0.5
            if scale_side * scale_side <= 3:
                keep[:] = True  # the coarsest maps carry the global layout: take them from the image
            per_scale_tokens.append(tokens[starts[k] : starts[k + 1]].astype(np.int64))
            per_scale_keep.append(keep.reshape(-1))
        return EditTargets(per_scale_tokens, per_scale_keep)

    def _generate(
        self,
        labels: np.ndarray,
        options: VARSampleOptions,
        geometry: Geometry,
        rngs: Sequence[np.random.Generator],
        edit: EditTargets | None,
    ) -> tuple[np.ndarray, np.ndarray | Resident]:
        """Scale by scale: returns the tokens (B, L) int64 and the final f_hat (B, C, h, w),
        still on the engine's device."""
        batch, code_dim, patch_nums = len(labels), geometry.code_dim, geometry.patch_nums
        num_scales, starts = len(patch_nums), scale_starts(patch_nums)
        codebook = self.arrays["codebook"].astype(np.float32)  # (codebook_size, code_dim)
        # Guidance: the first half of the doubled batch is conditional, the second unconditional.
        both_labels = np.concatenate([labels, np.full_like(labels, geometry.num_classes)])
        empty_cache = np.zeros(  # (B, depth, keys/values, heads, past, head_dim)
            (2 * batch, geometry.depth, 2, geometry.heads, 0, geometry.head_dim), np.float32
        )
        cache: np.ndarray | Resident = empty_cache
        f_hat: np.ndarray | Resident = np.zeros((batch, code_dim, patch_nums[-1], patch_nums[-1]), np.float32)
        scale_input = np.zeros((batch, patch_nums[0] ** 2, code_dim), np.float32)  # unused: scale 0 starts from SOS
        all_inputs: list[np.ndarray] = []  # the no-cache path recomputes from these
        tokens = []
        on_scale = progress_callback()
        for k in range(num_scales):
            start, end = starts[k], starts[k + 1]
            doubled_input = np.concatenate([scale_input, scale_input])
            if options.kv_cache:
                out = self.components(
                    "transformer_step",
                    resident=("new_cache",),
                    labels=both_labels,
                    scale_inputs=doubled_input,
                    positions=np.arange(start, end, dtype=np.int64),
                    cache=cache,
                )
                cache, logits = out["new_cache"], out["logits"]
            else:
                all_inputs.append(doubled_input)
                out = self.components(
                    "transformer_step",
                    labels=both_labels,
                    scale_inputs=np.concatenate(all_inputs, axis=1),
                    positions=np.arange(0, end, dtype=np.int64),
                    cache=empty_cache,
                )
                logits = out["logits"][:, start:end]
            ratio = k / (num_scales - 1)
            guidance = options.cfg * ratio
            logits = (1 + guidance) * logits[:batch] - guidance * logits[batch:]  # (B, l, V)
            filtered = filter_logits(logits, options.top_k, options.top_p)
            scale_tokens = filtered.argmax(axis=-1) if options.top_k == 1 else draw(softmax(filtered), rngs)
            if options.gumbel > 0:
                tau = max(options.gumbel * (1 - 0.95 * ratio), 0.005)  # sharper at finer scales, as MaskGIT
                codes = (gumbel_softmax(filtered * (1 + ratio), tau, rngs) @ codebook).astype(np.float32)
            else:
                codes = codebook[scale_tokens]  # (B, l, C)
            if edit is not None:
                keep = edit.keep[k]
                scale_tokens = np.where(keep[None], edit.tokens[k][None], scale_tokens)
                codes = np.where(keep[None, :, None], codebook[edit.tokens[k]][None], codes)
            tokens.append(scale_tokens.astype(np.int64))
            out = self.components(
                f"embed_{k}", resident=("new_f_hat",), codes=np.ascontiguousarray(codes, np.float32), f_hat=f_hat
            )
            f_hat = out["new_f_hat"]
            if on_scale is not None and k < num_scales - 1:  # the last scale's: decoded once, in `sample`
                images = self.components("decoder", f_hat=f_hat)["image"]
                on_scale(SampleOutput(images=to_uint8(images), columns=options.n))
            if k < num_scales - 1:
                scale_input = out["next_input"]
        return np.concatenate(tokens, axis=1), f_hat

"""rosinality's published VQ-VAE-2 (`vqvae_560.pt`) -> a zoo `vqvae2_pixelcnn` run directory.

The file is a plain state dict of rosinality/vq-vae-2-pytorch's `VQVAE`, whose layers zoo's
`VQVAE2` reproduces one for one (same order, so the same layer numbers), under other names:

    official                                   zoo (under `vqvae.`)
    enc_b.blocks.N.* / enc_t.blocks.N.*        encoder_bottom.layers.N.* / encoder_top.layers.N.*
    dec_t.blocks.N.* / dec.blocks.N.*          decoder_top.layers.N.* / decoder.layers.N.*
    quantize_conv_t.* / quantize_conv_b.*      top_in.* / bottom_in.*
    upsample_t.*                               upsample_top.0.*
    quantize_{t,b}.embed (D, K)                quantizer_{top,bottom}.codebook (K, D): transposed
    quantize_{t,b}.embed_avg (D, K)            quantizer_{top,bottom}.cluster_sum (K, D): transposed
    quantize_{t,b}.cluster_size (K,)           quantizer_{top,bottom}.cluster_size, and .usage

The file was trained with an in-place ReLU opening every residual block (the skip adds
relu(x)): the import sets `vqvae.residual_relu_skip`. The PixelSNAIL priors were never
published; the priors keep their initialisation and are trained by zoo on the codes
(`zoo train vqvae2_pixelcnn --from RUN --stage prior_top`).

A key that maps to nothing, a missing key, or a shape that does not fit the model built
from the inferred config is a one-line `CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint_files import (
    CheckpointError,
    PublishedFile,
    config_from_tensors,
    load_checkpoint,
    matching_rule,
    meta_shapes,
    tensors_in,
)
from zoo.importer import Converted, Importer
from zoo.importing import check_fit
from zoo_vqvae2_pixelcnn.config import VQVAE2Config

PUBLISHED_FILE = "vqvae_560.pt"
PUBLISHED_IMAGE_SIZE = 256  # FFHQ at 256 px; a fully convolutional net does not store it

# (official key pattern, zoo key under `vqvae.`); the first full match wins.
RULES: list[tuple[str, str]] = [
    (r"enc_b\.blocks\.(\d+)\.(.+)", r"encoder_bottom.layers.\1.\2"),
    (r"enc_t\.blocks\.(\d+)\.(.+)", r"encoder_top.layers.\1.\2"),
    (r"dec_t\.blocks\.(\d+)\.(.+)", r"decoder_top.layers.\1.\2"),
    (r"dec\.blocks\.(\d+)\.(.+)", r"decoder.layers.\1.\2"),
    (r"quantize_conv_t\.(weight|bias)", r"top_in.\1"),
    (r"quantize_conv_b\.(weight|bias)", r"bottom_in.\1"),
    (r"upsample_t\.(weight|bias)", r"upsample_top.0.\1"),
    (r"quantize_t\.embed", "quantizer_top.codebook"),
    (r"quantize_b\.embed", "quantizer_bottom.codebook"),
    (r"quantize_t\.embed_avg", "quantizer_top.cluster_sum"),
    (r"quantize_b\.embed_avg", "quantizer_bottom.cluster_sum"),
    (r"quantize_t\.cluster_size", "quantizer_top.cluster_size"),
    (r"quantize_b\.cluster_size", "quantizer_bottom.cluster_size"),
]
TRANSPOSED = ("quantize_t.embed", "quantize_b.embed", "quantize_t.embed_avg", "quantize_b.embed_avg")


class RosinalityVQVAEImporter(Importer):
    model = "vqvae2_pixelcnn"
    format = "rosinality"
    description = (
        f"rosinality/vq-vae-2-pytorch's published FFHQ 256 px VQ-VAE {PUBLISHED_FILE} "
        "(github.com/rosinality/vq-vae-2-pytorch, Google Drive link in its README); the autoencoder only: "
        "train the priors with `zoo train vqvae2_pixelcnn --from RUN --stage prior_top`, then prior_bottom"
    )
    # No `checkpoints` for `zoo pull`: the file is published as a Google Drive link only, which
    # has no stable download address; download it by hand and `zoo import` it.

    def convert(self, files: list[Path]) -> Converted:
        if len(files) != 1:
            raise CheckpointError(f"pass one file, {PUBLISHED_FILE}; got {len(files)}")
        path = Path(files[0])
        return self.convert_state_dict(path, tensors_in(load_checkpoint(path), "VQ-VAE-2", path))

    def convert_state_dict(self, path: Path, official: dict[str, torch.Tensor]) -> Converted:
        """`convert` on a state dict already read (`path` names it in errors); tensors may be
        on the meta device (shapes only)."""
        file = PublishedFile(path, official, "rosinality's vqvae_*.pt, complete")
        tensors: dict[str, torch.Tensor] = {}
        sources: dict[str, str] = {}  # zoo key -> official key
        for key, tensor in official.items():  # names first: a file of another model fails on its first key
            rule = matching_rule(RULES, key)
            if rule is None:
                raise file.fail(key, "maps to nothing in zoo's VQ-VAE-2; is this rosinality's vqvae_*.pt?")
            zoo_key = "vqvae." + re.sub(rule[0], rule[1], key)
            if key in TRANSPOSED:
                if tensor.ndim != 2:
                    raise file.fail(key, f"has shape {tuple(tensor.shape)}, not (code_dim, codebook_size)")
                tensor = tensor.t()  # (D, K) -> (K, D)
            tensors[zoo_key], sources[zoo_key] = tensor, key
            if key.endswith("cluster_size"):  # zoo tracks code usage separately; same EMA of hits per batch
                usage = zoo_key.replace("cluster_size", "usage")
                tensors[usage], sources[usage] = tensor, key

        config = {"image_size": PUBLISHED_IMAGE_SIZE, "vqvae": self._vqvae_config(file)}
        self._check_against_model(path, config, tensors, sources)
        notes = [
            f"image_size is not stored in the file: {PUBLISHED_IMAGE_SIZE} (the published FFHQ model) is assumed; "
            "no weight depends on it (the autoencoder is fully convolutional, the priors' layers do not depend on "
            "the code map size): set image_size when training the priors on images of another size",
            "residual_relu_skip is on: the file was trained with the in-place ReLU of rosinality's code before "
            "ef5f67c; set vqvae.residual_relu_skip=false for the behaviour of its HEAD code",
            "codebooks quantize_{t,b}.embed (code_dim, codebook_size) and embed_avg are transposed into "
            "codebook and cluster_sum (codebook_size, code_dim); cluster_size is kept and also becomes usage "
            "(zoo's running hits per batch for dead-code restarts, which the official code does not do)",
            "ema_decay 0.99 is rosinality's default (not stored in the file)",
            "the PixelSNAIL priors were never published: prior_top and prior_bottom keep their initialisation; "
            "train them with `zoo train vqvae2_pixelcnn --from RUN --stage prior_top` (then prior_bottom)",
        ]
        return Converted(config=config, tensors=tensors, stages=["vqvae"], notes=notes)

    @staticmethod
    def _vqvae_config(file: PublishedFile) -> dict[str, Any]:
        top, bottom = file.get("quantize_t.embed"), file.get("quantize_b.embed")  # (D, K)
        if top.ndim != 2 or bottom.ndim != 2 or top.shape[0] != bottom.shape[0]:
            raise file.fail("quantize_b.embed", f"has shape {tuple(bottom.shape)}, quantize_t.embed {tuple(top.shape)}")
        channels = file.get("enc_b.blocks.4.weight").shape[0]  # the 3x3 conv after the two strided ones
        res_blocks = sorted(
            {int(m.group(1)) for k in file.tensors if (m := re.fullmatch(r"enc_b\.blocks\.(\d+)\.conv\..+", k))}
        )
        values: dict[str, Any] = {
            "channels": channels,
            "res_blocks": len(res_blocks),
            "code_dim": top.shape[0],
            "top_codebook_size": top.shape[1],
            "bottom_codebook_size": bottom.shape[1],
            "bottom_downsample": 4,  # the official code's only strides
            "top_downsample": 2,
            "ema_decay": 0.99,
            "residual_relu_skip": True,
        }
        if res_blocks:
            values["res_channels"] = file.get(f"enc_b.blocks.{res_blocks[0]}.conv.1.weight").shape[0]
        return values

    @staticmethod
    def _check_against_model(
        path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], sources: dict[str, str]
    ) -> None:
        """Every converted tensor must fit the model built from the inferred config (on the
        meta device: no memory); no autoencoder key may be missing (the priors were never
        published)."""
        from zoo_vqvae2_pixelcnn.model import VQVAE2PixelCNN

        def file_layout(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
            return shape[::-1] if sources[key] in TRANSPOSED else shape

        model_config = config_from_tensors(VQVAE2Config, config, path, "VQ-VAE-2")
        shapes = meta_shapes(lambda: VQVAE2PixelCNN(model_config))
        for key in check_fit(tensors, shapes, "zoo's VQ-VAE-2", lambda key: (path, sources[key]), file_layout):
            if key.startswith("vqvae."):
                raise CheckpointError(f"{path}: no tensor for zoo's {key}; is the file complete?")

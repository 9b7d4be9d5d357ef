"""The graphs VAR is exported as, each a method of the network, and the runtime loop's codebook:

encoder            Tokenizer.encode_indices            image (B, 3, H, W) -> tokens (B, L) int64
embed_k            quantizer.add_scale(k, ...)         codes (B, side_k^2, code_dim), f_hat (B, code_dim, h, w)
                                                       -> new_f_hat, next_input (B, side_{k+1}^2, code_dim)
                                                       (one graph per scale; the last has no next_input)
transformer_step   VARTransformer.step                 labels, scale_inputs, positions, cache
                                                       -> logits, new_cache (zoo.nn.attention's cache layout,
                                                       (B, depth, 2, heads, past, head_dim))
decoder            Tokenizer.decode_image              f_hat (B, code_dim, h, w) -> image (B, 3, H, W) in [-1, 1]

The encoder (a nearest-code search per scale) stays fp32 at fp16/int8 (keep_fp32).
"""

from __future__ import annotations

import torch

from zoo.components import Component, ExportAssets
from zoo.torch_components import method_component
from zoo_var.config import VARConfig
from zoo_var.model import VARModel

# Size 0 is traced: no batch of 1 there (torch.export specialises 0/1). Size 1 validates the
# largest step (the last scale after the full cache) at batch 1, which keeps the paper-size
# models' validation within memory; size 2 the first scale at batch 3.
BATCH_OF_SIZE = (2, 1, 3)
BATCH_AXIS = {0: "batch"}


def export_components(model: VARModel, config: VARConfig) -> list[Component]:
    tokenizer, transformer = config.tokenizer, config.transformer
    side, code_dim, patch_nums = tokenizer.patch_nums[-1], tokenizer.code_dim, tokenizer.patch_nums
    starts = model.quantizer.scale_starts
    heads = transformer.resolved_heads
    head_dim = transformer.resolved_width // heads

    def images(size: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(BATCH_OF_SIZE[size], 3, tokenizer.resolution, tokenizer.resolution) * 2 - 1}

    def f_hat(size: int) -> dict[str, torch.Tensor]:
        return {"f_hat": torch.randn(BATCH_OF_SIZE[size], code_dim, side, side)}

    def embed_inputs(scale: int):
        def make(size: int) -> dict[str, torch.Tensor]:
            return {"codes": torch.randn(BATCH_OF_SIZE[size], patch_nums[scale] ** 2, code_dim), **f_hat(size)}

        return make

    def step_inputs(size: int) -> dict[str, torch.Tensor]:
        # traced: scale 1 after a 3-long cache; then the last scale, and scale 0 from an empty cache
        scale, past = [(1, 3), (len(patch_nums) - 1, starts[-2]), (0, 0)][size]
        batch = 2 * BATCH_OF_SIZE[size]  # doubled for guidance
        tokens = patch_nums[scale] ** 2
        return {
            "labels": torch.randint(0, transformer.num_classes + 1, (batch,)),
            "scale_inputs": torch.randn(batch, tokens, code_dim),
            "positions": torch.arange(starts[scale], starts[scale] + tokens),
            "cache": torch.randn(batch, transformer.depth, 2, heads, past, head_dim),
        }

    def embed(scale: int) -> Component:
        outputs = ["new_f_hat"] if scale == len(patch_nums) - 1 else ["new_f_hat", "next_input"]
        return method_component(
            f"embed_{scale}",
            model.quantizer,
            "add_scale",
            embed_inputs(scale),
            outputs,
            {name: BATCH_AXIS for name in ["codes", "f_hat", *outputs]},
            scale,
        )

    return [
        method_component(
            "encoder",
            model.tokenizer,
            "encode_indices",
            images,
            ["tokens"],
            {"image": BATCH_AXIS, "tokens": BATCH_AXIS},
            keep_fp32=True,
        ),
        method_component(
            "decoder", model.tokenizer, "decode_image", f_hat, ["image"], {"f_hat": BATCH_AXIS, "image": BATCH_AXIS}
        ),
        *(embed(scale) for scale in range(len(patch_nums))),
        method_component(
            "transformer_step",
            model.transformer,
            "step",
            step_inputs,
            ["logits", "new_cache"],
            {
                "labels": BATCH_AXIS,
                "scale_inputs": {0: "batch", 1: "tokens"},
                "positions": {0: "tokens"},
                "cache": {0: "batch", 4: "past"},
                "logits": {0: "batch", 1: "tokens"},
                "new_cache": {0: "batch", 4: "total"},
            },
        ),
    ]


def export_assets(model: VARModel, config: VARConfig) -> ExportAssets:
    """The codebook (codebook_size, code_dim): the loop looks up the drawn codes' vectors itself."""
    return ExportAssets(arrays={"codebook": model.quantizer.codebook.detach().float().cpu().numpy()})

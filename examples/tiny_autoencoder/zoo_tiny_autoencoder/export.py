"""The graphs: `encoder` (image -> codes) and `decoder` (codes -> image), methods of the model;
and the held-out digits the sampling loop reconstructs, shipped with an export."""

import torch

import zoo
from zoo.data import digits
from zoo.torch_components import method_component

from .config import HELD_OUT_DIGITS, TinyAutoencoderConfig
from .model import TinyAutoencoder


def export_components(model: TinyAutoencoder, config: TinyAutoencoderConfig) -> list[zoo.Component]:
    size, side = config.image_size, config.image_size // 4

    def images(i: int) -> dict[str, torch.Tensor]:  # batch sizes 1, 3, 5 for i = 0, 1, 2
        return {"image": torch.rand(1 + 2 * i, 3, size, size) * 2 - 1}

    def codes(i: int) -> dict[str, torch.Tensor]:
        return {"codes": torch.randint(0, config.codebook_size, (1 + 2 * i, side, side))}

    batch = {0: "batch"}
    return [
        method_component("encoder", model, "encode_codes", images, ["codes"], {"image": batch, "codes": batch}),
        method_component("decoder", model, "decode_codes", codes, ["image"], {"codes": batch, "image": batch}),
    ]


def export_assets(model: TinyAutoencoder, config: TinyAutoencoderConfig) -> zoo.ExportAssets:
    """The first HELD_OUT_DIGITS test digits, (N, 3, S, S) float32 in [-1, 1]: what `sample` reconstructs."""
    held_out = digits(config.image_size, "test")
    images = torch.stack([held_out[i]["image"] for i in range(HELD_OUT_DIGITS)])
    return zoo.ExportAssets(arrays={"held_out": images.numpy()})

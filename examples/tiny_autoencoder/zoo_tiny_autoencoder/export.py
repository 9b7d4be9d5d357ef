"""The graphs: `encoder` (image -> codes) and `decoder` (codes -> image), methods of the model."""

import torch

import zoo
from zoo.torch_components import method_component

from .config import TinyAutoencoderConfig
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

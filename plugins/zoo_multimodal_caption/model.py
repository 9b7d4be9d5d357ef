"""One latent shared by an image autoencoder and a captioner, trained together.

    image --ImageEncoder--> latent --ImageDecoder--> image          (reconstruction MSE)
                            latent --TextDecoder---> caption        (cross-entropy, teacher forcing)
    caption --TextEncoder-> latent                                  (InfoNCE against the image latent)

Caption -> image runs TextEncoder then ImageDecoder. The text tokenizer (text_tokenizer.py)
the captions were trained with is part of the model's state (see get_extra_state), so a run
directory is self-contained.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import nn

from zoo.errors import RunError
from zoo_multimodal_caption.config import CaptionConfig
from zoo_multimodal_caption.image import ImageDecoder, ImageEncoder
from zoo_multimodal_caption.text import TextDecoder, TextEncoder
from zoo_multimodal_caption.text_tokenizer import tokenizer_from_json


class CaptionModel(nn.Module):
    def __init__(self, config: CaptionConfig) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder(config.image, config.latent_dim)
        self.image_decoder = ImageDecoder(config.image, config.latent_dim)
        self.text_encoder = TextEncoder(config.text, config.latent_dim)
        self.text_decoder = TextDecoder(config.text, config.latent_dim)
        self.tokenizer_json: str | None = None  # set by data.tokenizer_for (training, or first use)

    # The tokenizer rides in the state dict (and so in model.safetensors) as UTF-8 bytes: its
    # size is only known once it is trained, which a buffer fixed at build time cannot express.
    def get_extra_state(self) -> torch.Tensor:
        data = (self.tokenizer_json or "").encode()
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.tokenizer_json = bytes(state.cpu().numpy()).decode() or None

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        self.tokenizer_json = tokenizer.to_str()

    @property
    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_json is None:
            raise RunError("this caption model has no tokenizer yet; train the model (or use data.tokenizer_for)")
        return tokenizer_from_json(self.tokenizer_json)

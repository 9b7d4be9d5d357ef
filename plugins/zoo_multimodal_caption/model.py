"""One latent shared by an image autoencoder and a captioner, trained together.

    image --ImageEncoder--> latent --ImageDecoder--> image          (reconstruction MSE)
                            latent --TextDecoder---> caption        (cross-entropy, teacher forcing)
    caption --TextEncoder-> latent                                  (InfoNCE against the image latent)

Caption -> image runs TextEncoder then ImageDecoder. The tokenizer the captions were trained
with is part of the model's state (see get_extra_state), so a run directory is self-contained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from zoo.errors import RunError
from zoo_multimodal_caption.config import CaptionConfig, LossConfig
from zoo_multimodal_caption.image import ImageDecoder, ImageEncoder
from zoo_multimodal_caption.text import TextDecoder, TextEncoder
from zoo_multimodal_caption.tokenizer import PAD_ID, tokenizer_from_json


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


def info_nce(image_latent: torch.Tensor, text_latent: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities. Pairs whose captions are identical (common
    in a small caption language) count as positives of each other, not as negatives."""
    image_latent = F.normalize(image_latent, dim=-1)
    text_latent = F.normalize(text_latent, dim=-1)
    logits = image_latent @ text_latent.T / temperature  # (B, B)
    same_caption = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()  # (B, B), 1 on the diagonal
    targets = same_caption / same_caption.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def caption_losses(model: CaptionModel, images: torch.Tensor, tokens: torch.Tensor, weights: LossConfig) -> dict[str, torch.Tensor]:
    """images (B, 3, S, S) in [-1, 1], tokens (B, T) = [BOS] caption [EOS] [PAD]... -> named scalars."""
    image_latent = model.image_encoder(images)  # (B, latent)
    reconstruction = F.mse_loss(model.image_decoder(image_latent), images)
    logits, _ = model.text_decoder(tokens[:, :-1], image_latent)  # (B, T - 1, vocab)
    caption = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD_ID)
    text_latent = model.text_encoder(tokens)  # (B, latent)
    contrastive = info_nce(image_latent, text_latent, tokens, weights.temperature)
    loss = (weights.reconstruction_weight * reconstruction + weights.caption_weight * caption
            + weights.contrastive_weight * contrastive)
    losses = {"reconstruction": reconstruction, "caption": caption, "contrastive": contrastive}
    if weights.caption_to_image_weight > 0:
        losses["caption_to_image"] = F.mse_loss(model.image_decoder(text_latent), images)
        loss = loss + weights.caption_to_image_weight * losses["caption_to_image"]
    return {"loss": loss, **losses}

"""The loss of the `joint` stage: image reconstruction, caption cross-entropy and the
image/text contrastive term on the shared latent (+ optionally caption -> image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo_multimodal_caption.config import LossConfig
from zoo_multimodal_caption.model import CaptionModel
from zoo_multimodal_caption.text_tokenizer import PAD_ID


def info_nce(
    image_latent: torch.Tensor, text_latent: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities. Pairs whose captions are identical (common
    in a small caption language) count as positives of each other, not as negatives."""
    image_latent = F.normalize(image_latent, dim=-1)
    text_latent = F.normalize(text_latent, dim=-1)
    logits = image_latent @ text_latent.T / temperature  # (B, B)
    same_caption = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()  # (B, B), 1 on the diagonal
    targets = same_caption / same_caption.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def caption_losses(
    model: CaptionModel, images: torch.Tensor, tokens: torch.Tensor, weights: LossConfig
) -> dict[str, torch.Tensor]:
    """images (B, 3, S, S) in [-1, 1], tokens (B, T) = [BOS] caption [EOS] [PAD]... -> named scalars."""
    image_latent = model.image_encoder(images)  # (B, latent)
    reconstruction = F.mse_loss(model.image_decoder(image_latent), images)
    logits, _ = model.text_decoder(tokens[:, :-1], image_latent)  # (B, T - 1, vocab)
    caption = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD_ID)
    text_latent = model.text_encoder(tokens)  # (B, latent)
    contrastive = info_nce(image_latent, text_latent, tokens, weights.temperature)
    loss = (
        weights.reconstruction_weight * reconstruction
        + weights.caption_weight * caption
        + weights.contrastive_weight * contrastive
    )
    losses = {"reconstruction": reconstruction, "caption": caption, "contrastive": contrastive}
    if weights.caption_to_image_weight > 0:
        losses["caption_to_image"] = F.mse_loss(model.image_decoder(text_latent), images)
        loss = loss + weights.caption_to_image_weight * losses["caption_to_image"]
    return {"loss": loss, **losses}

"""The text half of the model: caption -> latent and (latent, caption so far) -> next-token logits."""

from __future__ import annotations

import torch
from torch import nn

from zoo.nn.attention import DecoderBlock, EncoderBlock, padding_mask
from zoo_multimodal_caption.config import TextConfig
from zoo_multimodal_caption.text_tokenizer import PAD_ID


class TextEncoder(nn.Module):
    """(B, T) token ids -> (B, latent): transformer encoder, mean over the real tokens, projection."""

    def __init__(self, config: TextConfig, latent_dim: int) -> None:
        super().__init__()
        width = config.embedding_dim
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.position_embedding = nn.Embedding(config.max_length, width)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(width, config.encoder_heads, config.feedforward_dim, config.dropout)
            for _ in range(config.encoder_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.to_latent = nn.Linear(width, latent_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))  # (B, T, C)
        mask = padding_mask(tokens, PAD_ID)  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        real = mask[:, 0, 0, :, None].to(x.dtype)  # (B, T, 1)
        pooled = (x * real).sum(1) / real.sum(1).clamp(min=1.0)  # (B, C)
        return self.to_latent(pooled)  # (B, latent)


class TextDecoder(nn.Module):
    """Causal transformer decoder conditioned on the latent through cross-attention to one
    memory token (the latent projected to the decoder's width).

    forward(tokens, latent, cache) -> (logits, cache): `cache` holds every layer's keys and
    values of the positions already decoded, (B, layers, 2, heads, P, head_dim); the new
    tokens sit at positions P, P+1, ...; the returned cache has P + T positions. With
    cache=None (training) the tokens start at position 0.
    """

    def __init__(self, config: TextConfig, latent_dim: int) -> None:
        super().__init__()
        width = config.embedding_dim
        self.layers = config.decoder_layers
        self.heads = config.decoder_heads
        self.head_dim = width // config.decoder_heads
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.position_embedding = nn.Embedding(config.max_length, width)
        self.latent_to_memory = nn.Linear(latent_dim, width)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(width, config.decoder_heads, config.feedforward_dim, config.dropout)
            for _ in range(config.decoder_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.to_logits = nn.Linear(width, config.vocab_size)

    def empty_cache(self, batch: int) -> torch.Tensor:
        weight = self.token_embedding.weight
        return weight.new_zeros(batch, self.layers, 2, self.heads, 0, self.head_dim)

    def forward(
        self,
        tokens: torch.Tensor,  # (B, T) int64
        latent: torch.Tensor,  # (B, latent)
        cache: torch.Tensor | None = None,  # (B, layers, 2, heads, P, head_dim)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        past_length = 0 if cache is None else cache.shape[4]
        positions = torch.arange(tokens.shape[1], device=tokens.device) + past_length
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))  # (B, T, C)
        memory = self.latent_to_memory(latent)[:, None, :]  # (B, 1, C)
        presents = []
        for layer, block in enumerate(self.blocks):
            x, present = block(x, memory, None if cache is None else cache[:, layer])
            presents.append(present)
        logits = self.to_logits(self.norm(x))  # (B, T, vocab)
        return logits, torch.stack(presents, dim=1)  # (B, layers, 2, heads, P + T, head_dim)

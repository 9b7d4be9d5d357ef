"""Multi-head attention with an explicit key/value cache, and pre-norm transformer blocks.

Export-friendly: no Python branches on tensor values, and the cache is an input whose
grown copy is an output (never updated in place), so one graph serves every decoding step.
A cache holds keys and values stacked on axis 1: (B, 2, heads, past, head_dim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(query_length: int, past_length: int, device: torch.device) -> torch.Tensor:
    """(query_length, past_length + query_length) bool, True where a query may attend:
    query i sits at position past_length + i and sees every key at or before it."""
    query_positions = torch.arange(query_length, device=device) + past_length
    key_positions = torch.arange(past_length + query_length, device=device)
    return key_positions[None, :] <= query_positions[:, None]


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) tokens -> (B, 1, 1, T) bool, True on real tokens: a key mask for every query."""
    return (tokens != pad_id)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Queries from `x` attend over keys/values from `source` (self-attention: source is x)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, heads, T, C / heads)
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        source: torch.Tensor,  # (B, S, C)
        mask: torch.Tensor | None = None,  # bool, broadcastable to (B, heads, T, P + S); True = attend
        past: torch.Tensor | None = None,  # (B, 2, heads, P, C / heads) keys and values of earlier positions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, width = x.shape
        query = self.split_heads(self.query(x))  # (B, heads, T, D)
        key, value = self.key_value(source).chunk(2, dim=-1)
        key, value = self.split_heads(key), self.split_heads(value)  # (B, heads, S, D)
        if past is not None:
            key = torch.cat([past[:, 0], key], dim=2)  # (B, heads, P + S, D)
            value = torch.cat([past[:, 1], value], dim=2)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, T, D)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        return self.out(attended), torch.stack([key, value], dim=1)  # (B, T, C), (B, 2, heads, P + S, D)


class FeedForward(nn.Sequential):
    def __init__(self, width: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention + feed-forward."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = MultiHeadAttention(width, heads, dropout)
        self.feedforward_norm = nn.LayerNorm(width)
        self.feedforward = FeedForward(width, hidden, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, C)
        normed = self.attention_norm(x)
        x = x + self.dropout(self.attention(normed, normed, mask)[0])
        return x + self.dropout(self.feedforward(self.feedforward_norm(x)))


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention (with a key/value cache) + cross-attention to a memory
    + feed-forward: the layer of a transformer decoder (`nn.TransformerDecoderLayer` shapes)."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attention_norm = nn.LayerNorm(width)
        self.self_attention = MultiHeadAttention(width, heads, dropout)
        self.cross_attention_norm = nn.LayerNorm(width)
        self.cross_attention = MultiHeadAttention(width, heads, dropout)
        self.feedforward_norm = nn.LayerNorm(width)
        self.feedforward = FeedForward(width, hidden, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C) the new positions
        memory: torch.Tensor,  # (B, M, C) what every position may look at
        past: torch.Tensor | None = None,  # (B, 2, heads, P, D) this layer's cache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        past_length = 0 if past is None else past.shape[3]
        mask = causal_mask(x.shape[1], past_length, x.device)
        normed = self.self_attention_norm(x)
        attended, present = self.self_attention(normed, normed, mask, past)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.cross_attention(self.cross_attention_norm(x), memory)[0])
        x = x + self.dropout(self.feedforward(self.feedforward_norm(x)))
        return x, present  # (B, T, C), (B, 2, heads, P + T, D)

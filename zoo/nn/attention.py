"""Attention with an explicit key/value cache, and pre-norm transformer blocks.

Export-friendly: no Python branches on tensor values, and the cache is an input whose
grown copy is an output (never updated in place), so one graph serves every decoding step.
Every attention here keeps one cache layout, keys and values stacked on axis 1:
(B, 2, heads, past, head_dim); a model stacks its layers' caches on axis 1 again,
(B, layers, 2, heads, past, head_dim), so batch is axis 0 and past axis 4 everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.layers import FeedForward


def causal_mask(query_length: int, past_length: int, device: torch.device) -> torch.Tensor:
    """(query_length, past_length + query_length) bool, True where a query may attend:
    query i sits at position past_length + i and sees every key at or before it."""
    query_positions = torch.arange(query_length, device=device) + past_length
    key_positions = torch.arange(past_length + query_length, device=device)
    return key_positions[None, :] <= query_positions[:, None]


def block_causal_mask(blocks: torch.Tensor, past_length: int | torch.SymInt = 0) -> torch.Tensor:
    """blocks (T,): the block (e.g. VAR's scale) of each new position -> (T, P + T) bool.
    A query sees every cached key (all of earlier blocks) and the new keys of its own or
    an earlier block, so a whole block is predicted at once."""
    within = blocks[:, None] >= blocks[None, :]  # (T, T)
    cached = torch.ones(blocks.shape[0], past_length, dtype=torch.bool, device=blocks.device)  # (T, P)
    return torch.cat((cached, within), dim=1)


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) tokens -> (B, 1, 1, T) bool, True on real tokens: a key mask for every query."""
    return (tokens != pad_id)[:, None, None, :]


def _attend(
    query: torch.Tensor,  # (B, heads, T, D)
    key: torch.Tensor,  # (B, heads, S, D)
    value: torch.Tensor,  # (B, heads, S, D)
    mask: torch.Tensor | None,  # bool, broadcastable to (B, heads, T, P + S); True = attend
    past: torch.Tensor | None,  # (B, 2, heads, P, D)
    scale: float | None = None,  # None: 1 / sqrt(D)
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend the cached keys/values, attend, merge the heads -> (B, T, heads * D) and the
    new cache (B, 2, heads, P + S, D)."""
    present = torch.stack((key, value), dim=1)  # (B, 2, heads, S, D)
    if past is not None:
        # One copy of the cache, already in its stacked layout; keys and values are views of it
        # (concatenating them apart and stacking after copied the whole cache twice).
        present = torch.cat((past, present), dim=3)  # (B, 2, heads, P + S, D)
    key, value = present.unbind(1)
    attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
    batch, heads, length, head_dim = attended.shape
    attended = attended.transpose(1, 2).reshape(batch, length, heads * head_dim)
    return attended, present


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
        query = self.split_heads(self.query(x))  # (B, heads, T, D)
        key, value = self.key_value(source).chunk(2, dim=-1)
        key, value = self.split_heads(key), self.split_heads(value)  # (B, heads, S, D)
        dropout = self.dropout if self.training else 0.0
        attended, present = _attend(query, key, value, mask, past, dropout=dropout)
        return self.out(attended), present  # (B, T, C), (B, 2, heads, P + S, D)


class FusedSelfAttention(nn.Module):
    """Self-attention as FoundationVision/VAR writes it: one bias-free qkv projection plus
    learned query and value biases (the key has none), and, with l2_norm, unit-length
    queries and keys whose dot product is scaled by a learnable per-head exp(log_scale)
    <= 100 (starts at 4); without l2_norm, the official 0.25 / sqrt(head_dim)."""

    zero_k_bias: torch.Tensor  # (width,) zeros buffer: the key's missing bias

    def __init__(self, width: int, heads: int, l2_norm: bool) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width), persistent=False)
        if l2_norm:
            self.log_scale = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        else:
            self.register_parameter("log_scale", None)
        self.scale = 1.0 if l2_norm else 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        mask: torch.Tensor | None = None,  # bool, broadcastable to (B, heads, T, P + T); True = attend
        past: torch.Tensor | None = None,  # (B, 2, heads, P, D)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, width = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).view(batch, length, 3, self.heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, D)
        if self.log_scale is not None:
            query = F.normalize(query, dim=-1) * self.log_scale.clamp_max(math.log(100.0)).exp()
            key = F.normalize(key, dim=-1)
        attended, present = _attend(query, key, value, mask, past, scale=self.scale)
        return self.proj(attended), present  # (B, T, C), (B, 2, heads, P + T, D)


# The caption model's saved runs name the feed-forward's linears by position, as the
# nn.Sequential it once was ("feedforward.0", "feedforward.3"); its blocks keep those names
# on disk through these two state-dict hooks.
_SAVED_FEEDFORWARD_NAMES = {"feedforward.fc1.": "feedforward.0.", "feedforward.fc2.": "feedforward.3."}


def _rename_keys(state_dict: dict, prefix: str, renames: dict[str, str]) -> None:
    for old, new in renames.items():
        for key in [key for key in state_dict if key.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


def _to_saved_names(module: nn.Module, state_dict: dict, prefix: str, metadata: dict) -> None:
    _rename_keys(state_dict, prefix, _SAVED_FEEDFORWARD_NAMES)


def _from_saved_names(module: nn.Module, state_dict: dict, prefix: str, *rest) -> None:
    _rename_keys(state_dict, prefix, {saved: name for name, saved in _SAVED_FEEDFORWARD_NAMES.items()})


def _keep_saved_feedforward_names(block: nn.Module) -> None:
    block.register_state_dict_post_hook(_to_saved_names)
    block.register_load_state_dict_pre_hook(_from_saved_names)


class EncoderBlock(nn.Module):
    """Pre-norm bidirectional self-attention + feed-forward."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = MultiHeadAttention(width, heads, dropout)
        self.feedforward_norm = nn.LayerNorm(width)
        self.feedforward = FeedForward(width, hidden, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        _keep_saved_feedforward_names(self)

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
        self.feedforward = FeedForward(width, hidden, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        _keep_saved_feedforward_names(self)

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

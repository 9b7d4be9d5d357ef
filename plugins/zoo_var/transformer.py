"""The VAR transformer: class-conditional next-scale prediction over the tokenizer's token
maps (after FoundationVision/VAR `models/var.py`, `models/basic_var.py`).

The sequence is every scale's tokens in order, L = sum(side_k^2). Scale 0 is predicted
from the start-of-sequence tokens (class embedding + pos_start); scale k >= 1 from the
word embedding of f_hat(scales < k) downsampled to side_k. A token attends to every token
of its own and earlier scales (block-causal mask), so at sampling time a whole scale is
predicted at once and earlier scales come from the key/value cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.nn.attention import FusedSelfAttention, block_causal_mask
from zoo.nn.layers import DropPath, FeedForward, modules_as
from zoo_var.config import TransformerConfig


class SharedAdaLin(nn.Linear):
    """One projection of the condition to the 6 modulation vectors, shared by all blocks."""

    def forward(self, condition: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, 1, 6, C)
        return super().forward(condition).view(condition.shape[0], 1, 6, -1)


def _last_linear(ada_lin: nn.Sequential) -> nn.Linear:
    """The projection that ends an `ada_lin` (SiLU, Linear), whose rows the init scales."""
    linear = ada_lin[-1]
    assert isinstance(linear, nn.Linear)  # narrows Sequential's Module
    return linear


class AdaLNSelfAttentionBlock(nn.Module):
    """x += gate1 * attn(LN(x) * (1 + scale1) + shift1); x += gate2 * ffn(LN(x) * (1 + scale2) + shift2),
    the six vectors computed from the class condition (its own projection, or a shared one
    plus a learned per-block offset)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float, l2_norm: bool, shared_adaln: bool):
        super().__init__()
        self.width = width
        self.norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.attention = FusedSelfAttention(width, heads, l2_norm)
        self.ffn = FeedForward(width, round(width * mlp_ratio), nn.GELU(approximate="tanh"))
        self.drop_path = DropPath(drop_path)
        self.shared_adaln = shared_adaln
        if shared_adaln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, width) / width**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor | None, past: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C), past (B, 2, H, P, d) -> x (B, T, C), keys/values (B, 2, H, P+T, d)."""
        if self.shared_adaln:
            modulation = self.ada_gss + condition  # (B, 1, 6, C)
        else:
            modulation = self.ada_lin(condition).view(-1, 1, 6, self.width)
        gate1, gate2, scale1, scale2, shift1, shift2 = modulation.unbind(2)  # each (B, 1, C)
        attended, present = self.attention(self.norm(x) * (1 + scale1) + shift1, mask, past)
        x = x + self.drop_path(attended * gate1)
        x = x + self.drop_path(self.ffn(self.norm(x) * (1 + scale2) + shift2) * gate2)
        return x, present


class AdaLNBeforeHead(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(condition).view(-1, 1, 2, self.width).unbind(2)
        return self.norm(x) * (1 + scale) + shift


class VARTransformer(nn.Module):
    level_of_position: torch.Tensor  # (L,) buffer: the scale of every position

    def __init__(self, config: TransformerConfig, code_dim: int, codebook_size: int, patch_nums: list[int]) -> None:
        super().__init__()
        width, depth = config.resolved_width, config.depth
        self.width, self.num_classes = width, config.num_classes
        self.condition_dropout = config.condition_dropout
        self.first_tokens = patch_nums[0] ** 2
        sequence_length = sum(side * side for side in patch_nums)
        init_std = math.sqrt(1 / width / 3)

        self.class_embedding = nn.Embedding(config.num_classes + 1, width)  # the last class is "unconditional"
        self.pos_start = nn.Parameter(torch.empty(self.first_tokens, width))
        self.position_embedding = nn.Parameter(torch.empty(sequence_length, width))
        self.level_embedding = nn.Embedding(len(patch_nums), width)
        self.word_embed = nn.Linear(code_dim, width)
        self.shared_ada_lin = (
            nn.Sequential(nn.SiLU(), SharedAdaLin(width, 6 * width)) if config.shared_adaln else nn.Identity()
        )
        # stochastic depth grows linearly over the blocks, 0 .. drop_path (torch.linspace)
        drop_paths = [config.resolved_drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            AdaLNSelfAttentionBlock(
                width,
                config.resolved_heads,
                config.mlp_ratio,
                drop_paths[i],
                config.attention_l2_norm,
                config.shared_adaln,
            )
            for i in range(depth)
        )
        self.head_norm = AdaLNBeforeHead(width)
        self.head = nn.Linear(width, codebook_size)  # logits over the codes
        levels = torch.cat([torch.full((side * side,), k) for k, side in enumerate(patch_nums)])
        self.register_buffer("level_of_position", levels, persistent=False)  # (L,) scale of every position
        self._init_weights(init_std)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _init_weights(self, std: float, adaln: float = 0.5, adaln_gamma: float = 1e-5, head: float = 0.02) -> None:
        """The official init (init_std = sqrt(1/3C)): gates start near zero so every block
        starts near the identity; residual projections shrink with depth."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=std)
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.position_embedding, std=std)
        with torch.no_grad():
            self.head.weight.mul_(head)
            _last_linear(self.head_norm.ada_lin).weight.mul_(adaln)
            width, depth = self.width, len(self.blocks)
            for block in modules_as(self.blocks, AdaLNSelfAttentionBlock):
                block.attention.proj.weight.div_(math.sqrt(2 * depth))
                block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
                if block.shared_adaln:
                    block.ada_gss[:, :, 2:].mul_(adaln)
                    block.ada_gss[:, :, :2].mul_(adaln_gamma)
                else:
                    _last_linear(block.ada_lin).weight[2 * width :].mul_(adaln)
                    _last_linear(block.ada_lin).weight[: 2 * width].mul_(adaln_gamma)

    def embed(
        self, labels: torch.Tensor, scale_inputs: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """labels (B,), scale_inputs (B, T, code_dim), positions (T,) -> tokens (B, T, C), condition (B, C).
        Positions of scale 0 take the start-of-sequence tokens, the others word_embed(input)."""
        condition = self.class_embedding(labels)  # (B, C)
        is_start = (positions < self.first_tokens)[None, :, None]  # (1, T, 1)
        start = condition[:, None, :] + self.pos_start[positions.clamp(max=self.first_tokens - 1)]  # (B, T, C)
        tokens = torch.where(is_start, start, self.word_embed(scale_inputs))
        tokens = tokens + self.level_embedding(self.level_of_position[positions]) + self.position_embedding[positions]
        return tokens, condition

    def run_blocks(
        self,
        tokens: torch.Tensor,
        condition: torch.Tensor,
        mask: torch.Tensor | None,
        cache: torch.Tensor | None,
        keep_presents: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens (B, T, C), cache (B, depth, 2, H, P, d) or None -> logits (B, T, codebook_size) and each
        block's keys/values (B, 2, H, P+T, d); none with `keep_presents=False` (training: holding
        them to the end of the forward pass would cost twice the checkpointed activations)."""
        block_condition = self.shared_ada_lin(condition)
        presents = []
        for i, block in enumerate(self.blocks):
            tokens, present = block(tokens, block_condition, mask, None if cache is None else cache[:, i])
            if keep_presents:
                presents.append(present)
        logits = self.head(self.head_norm(tokens, condition))
        return logits, presents

    def forward(self, labels: torch.Tensor, teacher_input: torch.Tensor) -> torch.Tensor:
        """Training: labels (B,), teacher_input (B, L - first, code_dim) -> logits (B, L, codebook_size)."""
        batch, _, channels = teacher_input.shape
        start_inputs = teacher_input.new_zeros(batch, self.first_tokens, channels)  # unused: scale 0 is SOS
        scale_inputs = torch.cat((start_inputs, teacher_input), dim=1)
        positions = torch.arange(scale_inputs.shape[1], device=labels.device)
        tokens, condition = self.embed(labels, scale_inputs, positions)
        mask = block_causal_mask(self.level_of_position[positions])  # (L, L)
        logits, _ = self.run_blocks(tokens, condition, mask, None, keep_presents=False)
        return logits

    def step(
        self, labels: torch.Tensor, scale_inputs: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling, exported as `transformer_step`: the tokens at `positions` given the cached
        keys/values of earlier ones.

        labels (B,), scale_inputs (B, T, code_dim), positions (T,), cache (B, depth, 2, H, P, d)
        -> logits (B, T, codebook_size), new cache (B, depth, 2, H, P+T, d). With an empty cache and
        positions 0..n-1 this recomputes the whole prefix (the no-cache path)."""
        tokens, condition = self.embed(labels, scale_inputs, positions)
        mask = block_causal_mask(self.level_of_position[positions], cache.shape[4])  # (T, P+T)
        logits, presents = self.run_blocks(tokens, condition, mask, cache)
        return logits, torch.stack(presents, dim=1)

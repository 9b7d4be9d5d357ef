"""zoo.nn attention and transformer layers: masks, the key/value cache, DropPath, FeedForward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.tolerances import assert_within_rounding, depth_of, rounding_bound
from zoo.nn.attention import (
    DecoderBlock,
    EncoderBlock,
    FusedSelfAttention,
    MultiHeadAttention,
    block_causal_mask,
    causal_mask,
)
from zoo.nn.layers import DropPath, FeedForward

WIDTH, HEADS = 16, 2
BLOCKS = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # VAR's scales 1, 2, 3 (14 tokens)


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Zero-initialised biases and scales would hide bugs: give every tensor random values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return module.eval()


def self_attention(kind: str) -> nn.Module:
    if kind == "multi_head":
        return randomised(MultiHeadAttention(WIDTH, HEADS))
    return randomised(FusedSelfAttention(WIDTH, HEADS, l2_norm=kind == "fused_l2"))


def attend(module: nn.Module, x: torch.Tensor, mask, past=None):
    if isinstance(module, MultiHeadAttention):
        return module(x, x, mask, past)
    return module(x, mask, past)


KINDS = ["multi_head", "fused", "fused_l2"]


# -- masks ----------------------------------------------------------------------------------


def test_causal_mask_lets_each_position_see_itself_and_the_past():
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3, 2, torch.device("cpu")), expected)


def test_block_causal_mask_sees_cached_keys_and_its_own_and_earlier_blocks():
    expected = torch.tensor(
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(block_causal_mask(torch.tensor([3, 3, 4, 4]), past_length=2), expected)
    # blocks of one position are the ordinary causal mask
    assert torch.equal(block_causal_mask(torch.arange(4)), causal_mask(4, 0, torch.device("cpu")))


@pytest.mark.parametrize("kind", KINDS)
def test_a_later_input_changes_no_output_of_an_earlier_block(kind):
    module = self_attention(kind)
    x = torch.randn(2, len(BLOCKS), WIDTH)
    mask = block_causal_mask(BLOCKS)
    with torch.no_grad():
        before, _ = attend(module, x, mask)
        changed = x.clone()
        changed[:, 3] = torch.randn(2, WIDTH)  # a position of block 1
        after, _ = attend(module, changed, mask)
    difference = (after - before).abs().amax(dim=(0, 2))  # per position
    assert difference[:1].max() == 0  # block 0 does not see it
    assert difference[1:].min() > rounding_bound(before, depth_of(module))  # block 1 (itself included) and 2 do


# -- the key/value cache --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cached_attention_equals_the_full_recompute(kind):
    module = self_attention(kind)
    x = torch.randn(3, len(BLOCKS), WIDTH)
    with torch.no_grad():
        full, full_cache = attend(module, x, block_causal_mask(BLOCKS))
        cache = torch.zeros(3, 2, HEADS, 0, WIDTH // HEADS)
        outputs = []
        for block in range(3):
            new = (BLOCKS == block).nonzero()[:, 0]
            out, cache = attend(module, x[:, new], block_causal_mask(BLOCKS[new], cache.shape[3]), cache)
            outputs.append(out)
    # the cached path sums the same products in other groupings: rounding through the module
    assert_within_rounding(torch.cat(outputs, 1), full, depth_of(module))
    assert_within_rounding(cache, full_cache, depth_of(module))


@pytest.mark.parametrize("kind", KINDS)
def test_the_cache_layout_is_batch_keys_values_heads_positions_head_dim(kind):
    module = self_attention(kind)
    x = torch.randn(3, 5, WIDTH)
    with torch.no_grad():
        _, cache = attend(module, x[:, :2], causal_mask(2, 0, x.device))
        _, cache = attend(module, x[:, 2:], causal_mask(3, 2, x.device), cache)
    assert cache.shape == (3, 2, HEADS, 5, WIDTH // HEADS)
    # axis 1 holds keys then values: the value of the first position goes through the output
    # projection unchanged when it is the only key there is
    with torch.no_grad():
        single, present = attend(module, x[:, :1], None)
    values = present[:, 1].transpose(1, 2).reshape(3, 1, WIDTH)  # (B, 1, C)
    projection = module.out if isinstance(module, MultiHeadAttention) else module.proj
    torch.testing.assert_close(single, projection(values))
    assert not torch.allclose(present[:, 0], present[:, 1])


def test_decoder_block_with_a_cache_equals_the_full_recompute():
    block = randomised(DecoderBlock(WIDTH, HEADS, hidden=32))
    x, memory = torch.randn(2, 6, WIDTH), torch.randn(2, 1, WIDTH)
    with torch.no_grad():
        full, full_cache = block(x, memory)
        _, cache = block(x[:, :4], memory, torch.zeros(2, 2, HEADS, 0, WIDTH // HEADS))
        rest, cache = block(x[:, 4:], memory, cache)
        changed = x.clone()
        changed[:, 3] = torch.randn(2, WIDTH)  # not a constant shift: layer norm would remove that
        after, _ = block(changed, memory)
    assert_within_rounding(rest, full[:, 4:], depth_of(block))
    assert_within_rounding(cache, full_cache, depth_of(block))
    assert (after[:, :3] - full[:, :3]).abs().max() == 0  # causal: earlier positions untouched
    assert (after[:, 3:] - full[:, 3:]).abs().amin(dim=(0, 2)).min() > rounding_bound(full, depth_of(block))


# -- FusedSelfAttention numerics ----------------------------------------------------------


@pytest.mark.parametrize("l2_norm", [False, True])
def test_fused_self_attention_is_the_official_formula(l2_norm):
    module = randomised(FusedSelfAttention(WIDTH, HEADS, l2_norm))
    if l2_norm:
        with torch.no_grad():
            module.log_scale[0, 0] = math.log(1000.0)  # clamped to 100
    x = torch.randn(2, 5, WIDTH)
    head_dim = WIDTH // HEADS

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, d)
        return t.view(2, 5, HEADS, head_dim).transpose(1, 2)

    wq, wk, wv = module.qkv.weight.chunk(3)
    q, k, v = heads(x @ wq.T + module.q_bias), heads(x @ wk.T), heads(x @ wv.T + module.v_bias)
    if l2_norm:
        scale = torch.tensor([100.0, module.log_scale[0, 1].exp().item()])[None, :, None, None]
        scores = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)) * scale
    else:
        scores = q @ k.transpose(-1, -2) * 0.25 / math.sqrt(head_dim)
    expected = module.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, WIDTH))
    with torch.no_grad():
        out, _ = module(x)
    assert_within_rounding(out, expected, depth_of(module))
    assert ("log_scale" in module.state_dict()) == l2_norm
    assert "zero_k_bias" not in module.state_dict()


# -- DropPath and FeedForward ---------------------------------------------------------------


def test_drop_path_is_the_identity_in_eval():
    x = torch.randn(64, 3, 4)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.randn(4000, 3, 4)
    out = DropPath(0.25).train()(x)
    kept = (out != 0).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert torch.equal(kept | dropped, torch.ones(4000, dtype=torch.bool))  # whole samples, never parts
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    torch.testing.assert_close(out[kept], x[kept] / 0.75)


def test_drop_path_rejects_a_probability_of_one():
    with pytest.raises(ValueError, match="not in"):
        DropPath(1.0)


def test_feed_forward_applies_its_activation():
    torch.manual_seed(0)
    exact, tanh = FeedForward(8, 32), FeedForward(8, 32, nn.GELU(approximate="tanh"))
    tanh.load_state_dict(exact.state_dict())
    x = torch.randn(2, 5, 8) * 3
    expected = exact.fc2(F.gelu(exact.fc1(x), approximate="tanh"))
    torch.testing.assert_close(tanh(x), expected)
    assert (exact(x) - expected).abs().max() > rounding_bound(expected, depth_of(exact))  # more than rounding


@pytest.mark.parametrize("block", [EncoderBlock, DecoderBlock])
def test_caption_blocks_keep_their_saved_feedforward_names(block):
    module = block(WIDTH, HEADS, hidden=32)
    keys = list(module.state_dict())
    assert {"feedforward.0.weight", "feedforward.0.bias", "feedforward.3.weight", "feedforward.3.bias"} <= set(keys)
    assert not any("fc1" in key or "fc2" in key for key in keys)
    copy = randomised(block(WIDTH, HEADS, hidden=32), seed=1)
    copy.load_state_dict(module.state_dict())  # strict: the saved names load back
    assert torch.equal(copy.feedforward.fc2.weight, module.feedforward.fc2.weight)

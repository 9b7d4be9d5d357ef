"""`ModelPlugin.blocks` of the built-in plugins: units that do not nest and hold most of the
weights, and that train every stage to the same gradients under activation checkpointing
(`zoo.scale.checkpoint_activations`), dropout and GAN terms included."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from tests.conftest import TINY_VAR
from tests.tolerances import assert_within_rounding, depth_of
from zoo.config import ZooConfig, resolve
from zoo.plugin import ModelPlugin, Stage, StageContext, StepContext
from zoo.scale import checkpoint_activations
from zoo.trainer import freeze_all_but
from zoo_multimodal_caption.plugin import MultimodalCaptionPlugin
from zoo_quantart.plugin import QuantArtPlugin
from zoo_var.plugin import VARPlugin
from zoo_vqvae2_pixelcnn.plugin import VQVAE2PixelCNNPlugin

torch.set_num_threads(1)

CPU = torch.device("cpu")
BATCH = 4

# Tiny configs with randomness inside the blocks (dropout, stochastic depth), which the
# recomputation must replay, and QuantArt's GAN terms on from the first step (the VQGANs'
# adaptive weight takes two more backward passes, at the decoder's last layer).
TINY: dict[str, tuple[ModelPlugin, dict[str, Any]]] = {
    "var": (
        VARPlugin(),
        {
            **VARPlugin.presets["digits"],
            "tokenizer": {**TINY_VAR["tokenizer"], "attention_resolutions": [8], "dropout": 0.2},
            "transformer": {**TINY_VAR["transformer"], "drop_path": 0.5},
        },
    ),
    "vqvae2_pixelcnn": (
        VQVAE2PixelCNNPlugin(),
        {
            "data": "digits",
            "image_size": 16,
            "vqvae": {
                "channels": 16,
                "res_blocks": 1,
                "res_channels": 8,
                "code_dim": 8,
                "top_codebook_size": 16,
                "bottom_codebook_size": 16,
            },
            "prior_top": {"channels": 16, "blocks": 2, "condition_channels": 8, "dropout": 0.3},
            "prior_bottom": {
                "channels": 16,
                "blocks": 2,
                "condition_channels": 8,
                "condition_blocks": 1,
                "dropout": 0.3,
            },
        },
    ),
    "quantart": (
        QuantArtPlugin(),
        {
            "image_size": 32,
            "vqgan": {
                "ch": 8,
                "ch_mult": [1, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [16],
                "z_channels": 8,
                "code_dim": 8,
                "codebook_size": 32,
                "dropout": 0.2,
            },
            "discriminator": {"base_channels": 8, "num_layers": 1, "disc_start": 0},
            # the adaptive weight: see test_the_adaptive_gan_weight_through_checkpointed_transfer_blocks
            "transfer": {"block_num": 2, "discriminator_channels": 8, "disc_start": 0, "adaptive_weight": False},
            "data": {"count": 8, "eval_pairs": 2, "sample_images": 2},
        },
    ),
    "multimodal_caption": (
        MultimodalCaptionPlugin(),
        {
            "image": {"size": 32, "channels": [8, 16]},
            "latent_dim": 16,
            "text": {
                "vocab_size": 128,
                "max_length": 24,
                "embedding_dim": 32,
                "encoder_layers": 1,
                "encoder_heads": 2,
                "decoder_layers": 2,
                "decoder_heads": 2,
                "feedforward_dim": 64,
                "dropout": 0.2,
            },
            "loss": {"caption_to_image_weight": 1.0},  # the image decoder runs twice
            "data": {"train_count": 32, "test_count": 8},
        },
    ),
}


def tiny(name: str) -> tuple[ModelPlugin, ZooConfig]:
    plugin, overrides = TINY[name]
    return plugin, resolve(plugin.Config, overrides)


def parameter_count(modules: list[nn.Module]) -> int:
    """Parameters of the modules, each counted once."""
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


@pytest.mark.parametrize("name", TINY)
def test_blocks_are_separate_units_holding_most_weights(name):
    plugin, config = tiny(name)
    model = plugin.build(config)
    blocks = plugin.blocks(model)
    assert blocks
    assert len({id(block) for block in blocks}) == len(blocks)
    for outer in blocks:
        inner = {id(module) for module in outer.modules() if module is not outer}
        assert not any(id(block) in inner for block in blocks), f"a block inside {type(outer).__name__}"
    assert parameter_count(blocks) >= 0.5 * parameter_count([model])


def prepared_stage(plugin: ModelPlugin, config: ZooConfig, stage: Stage, cache: Path) -> tuple[nn.Module, Any]:
    """A fresh model set up as the trainer starts `stage` (frozen but for its optimizers'
    modules, data built, on_start run) and a fixed batch of the stage's training data."""
    torch.manual_seed(0)
    model = plugin.build(config)
    context = StageContext(model, config, cache, CPU)
    freeze_all_but(model, stage)
    dataset = stage.dataset(context)
    if stage.on_start is not None:
        stage.on_start(model, context)
        freeze_all_but(model, stage)
    return model, default_collate([dataset[i] for i in range(BATCH)])


def count_calls(blocks: list[nn.Module]) -> Counter:
    """How often each block's forward (by position) starts to run, the recomputations of
    checkpointing included: call before `checkpoint_activations`, which wraps the forward."""
    calls: Counter = Counter()
    for index, block in enumerate(blocks):
        forward = block.forward

        def counted(*args: Any, forward: Any = forward, index: int = index, **kwargs: Any) -> Any:
            calls.update([index])  # at the start: the recomputation stops once it has what backward needs
            return forward(*args, **kwargs)

        block.forward = counted
    return calls


def train_step(model: nn.Module, stage: Stage, batch: Any, calls: Counter) -> tuple[dict, dict, Counter]:
    """The first optimizer's loss and backward pass -> gradients, state after it, and how
    often each block started to run."""
    torch.manual_seed(1)
    loss = stage.optimizers[0].loss(model, batch, StepContext(0, stage.steps, CPU))["loss"]
    loss.backward()
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return gradients, copy.deepcopy(model.state_dict()), Counter(calls)


def assert_checkpointing_changes_nothing(plugin: ModelPlugin, config: ZooConfig, stage: Stage, cache: Path) -> None:
    model, batch = prepared_stage(plugin, config, stage, cache)
    checkpointed = copy.deepcopy(model)
    plain_calls, checkpointed_calls = count_calls(plugin.blocks(model)), count_calls(plugin.blocks(checkpointed))
    checkpoint_activations(plugin.blocks(checkpointed))

    expected, expected_state, calls = train_step(model, stage, batch, plain_calls)
    gradients, state, recomputed_calls = train_step(checkpointed, stage, batch, checkpointed_calls)

    assert expected, stage.name
    assert gradients.keys() == expected.keys(), stage.name
    for name, gradient in expected.items():  # the recomputation may round differently (tests.tolerances)
        assert_within_rounding(gradients[name], gradient, depth_of(model), msg=f"{stage.name}: {name}")
    # the recomputation repeats no side effect (code usage, BatchNorm statistics outside the blocks)
    torch.testing.assert_close(state, expected_state, rtol=0, atol=0, msg=lambda m: f"{stage.name}: {m}")
    # and it did happen: every block that ran in the loss ran again in the backward pass
    assert calls, f"{stage.name}: no block ran"
    # (a graph differentiated twice, as by the adaptive GAN weight, recomputes twice)
    assert recomputed_calls.keys() == calls.keys(), stage.name
    assert all(recomputed_calls[index] >= 2 * count for index, count in calls.items()), stage.name


@pytest.mark.parametrize("name", TINY)
def test_checkpointed_blocks_give_the_same_gradients_in_every_stage(name, tmp_path):
    plugin, config = tiny(name)
    for stage in plugin.stages(config):
        assert_checkpointing_changes_nothing(plugin, config, stage, tmp_path / stage.name)


def test_the_adaptive_gan_weight_through_checkpointed_transfer_blocks(tmp_path):
    plugin, overrides = TINY["quantart"]
    config = resolve(plugin.Config, overrides, overrides={"transfer": {"adaptive_weight": True}})
    stage = next(stage for stage in plugin.stages(config) if stage.name == "transfer")
    assert_checkpointing_changes_nothing(plugin, config, stage, tmp_path)


def checkpointing_presets() -> list[tuple[str, str]]:
    return [
        (name, preset)
        for name, (plugin, _) in TINY.items()
        for preset, values in plugin.presets.items()
        if values.get("scale", {}).get("activation_checkpointing")
    ]


def test_the_paper_sizes_and_only_they_turn_on_activation_checkpointing():
    assert sorted(checkpointing_presets()) == sorted(
        [("var", f"d{depth}") for depth in (16, 20, 24, 30, 36)]
        + [("quantart", "paper"), ("multimodal_caption", "engravings")]
    )


@pytest.mark.parametrize(("name", "preset"), checkpointing_presets())
def test_blocks_hold_most_weights_where_checkpointing_is_on(name, preset):
    plugin = TINY[name][0]
    config = resolve(plugin.Config, plugin.presets[preset])
    with torch.device("meta"):
        model = plugin.build(config)
    assert parameter_count(plugin.blocks(model)) >= 0.9 * parameter_count([model])

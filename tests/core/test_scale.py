"""The levers of zoo.scale in one process: accumulation, activation checkpointing,
torch.compile with its fallback, the AdamW kernel; resuming with other levers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.core.toy_plugin import Points, ToyConfig, ToyPlugin
from tests.tolerances import assert_same_training, rounding_bound
from zoo.errors import TrainingError
from zoo.plugin import StepContext
from zoo.scale import adamw_kernel, checkpoint_activations, compile_blocks
from zoo.trainer import TrainOptions, build_optimizer, split_batch, train


def train_toy(run_dir, options: dict | None = None, **fields) -> torch.nn.Module:
    options = {**(options or {}), **{k: fields.pop(k) for k in list(fields) if k in TrainOptions.__dataclass_fields__}}
    return train(
        ToyPlugin(), ToyConfig(**fields), run_dir, options=TrainOptions(device="cpu", progress="quiet", **options)
    )


def assert_same_state(expected: torch.nn.Module, found: torch.nn.Module, steps: int | None) -> None:
    """The same weights: bitwise (steps None), or within the rounding of `steps` optimizer
    steps that add the same gradients in other orders (tests.tolerances)."""
    if steps is None:
        for key, value in expected.state_dict().items():
            torch.testing.assert_close(found.state_dict()[key], value, rtol=0, atol=0, msg=key)
    else:
        assert_same_training(expected.state_dict(), found.state_dict(), steps)


def test_four_micro_batches_train_the_weights_of_one_batch_four_times_larger(tmp_path):
    # every stage: one optimizer, a GAN stage whose critic reads the generator's output of
    # the same micro-batch (StepContext.cache), a critic-only stage
    whole = train_toy(tmp_path / "whole", steps=12, batch_size=16)
    micro = train_toy(tmp_path / "micro", steps=12, batch_size=16, scale={"accumulate": 4})
    assert_same_state(whole, micro, steps=3 * 12)  # three stages


def test_validation_runs_in_micro_batches_and_measures_the_same_loss(tmp_path):
    import json

    def validation_losses(run: str, **fields) -> list[float]:
        train_toy(tmp_path / run, steps=10, stage="regress", patience=100, **fields)
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [row["val_loss"] for row in rows if "val_loss" in row]

    whole, micro = validation_losses("whole"), validation_losses("micro", scale={"accumulate": 4})
    assert len(whole) == 2
    # the mean of four micro-batch means against one mean: a few roundings of the loss
    assert micro == pytest.approx(whole, rel=rounding_bound(1.0, depth=4))


def test_a_batch_that_does_not_split_into_micro_batches_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="batch size 8 does not split into 1 processes x 3 micro-batches"):
        train_toy(tmp_path / "run", steps=2, batch_size=8, scale={"accumulate": 3})


def test_split_batch_cuts_tensors_and_lists_alike():
    batch = {"x": torch.arange(8).view(4, 2), "caption": ["a", "b", "c", "d"], "tag": "t"}
    parts = split_batch(batch, 2)
    assert [p["caption"] for p in parts] == [["a", "b"], ["c", "d"]]
    assert torch.equal(parts[1]["x"], torch.tensor([[4, 5], [6, 7]]))
    assert parts[0]["tag"] == "t"


def count_layer_calls(model: torch.nn.Module, calls: Counter) -> None:
    """Count the calls of the first layer inside each block (generator, critic): a block's
    recomputation in the backward pass runs its layers again."""
    for name in ("generator", "critic"):
        getattr(model, name)[0].register_forward_pre_hook(lambda module, args, name=name: calls.update([name]))


def gradients(checkpointed: bool) -> tuple[dict[str, torch.Tensor], Counter]:
    """The adversarial stage's gradients, and the block layers' calls during the backward passes."""
    plugin, config = ToyPlugin(), ToyConfig(dropout=0.3)
    torch.manual_seed(0)
    model = plugin.build(config)
    if checkpointed:
        checkpoint_activations(plugin.blocks(model))
    forward_calls, backward_calls = Counter(), Counter()
    points = Points(16, 0)
    batch = {"x": points.x, "y": points.y}
    torch.manual_seed(1)  # dropout: the recomputation must draw the same mask
    stage = plugin.stages(config)[1]
    context = StepContext(0, 1, torch.device("cpu"))
    for spec in stage.optimizers:
        calls = Counter()
        count_layer_calls(model, calls)
        loss = spec.loss(model, batch, context)["loss"]
        forward_calls += calls
        calls.clear()
        loss.backward()
        backward_calls += calls
        for module in (model.generator[0], model.critic[0]):
            module._forward_pre_hooks.clear()
    assert forward_calls == Counter(generator=1, critic=2), forward_calls  # the critic sees real and fake
    return {name: param.grad.clone() for name, param in model.named_parameters()}, backward_calls


def test_activation_checkpointing_recomputes_the_blocks_and_gives_the_same_gradients():
    (plain, plain_recomputed), (checkpointed, recomputed) = gradients(False), gradients(True)
    assert plain_recomputed == Counter()  # without checkpointing the backward pass runs no layer
    # with it, each block call of the forward pass that the loss differentiates runs again:
    # the generator once (the critic loss detaches its output), the critic on real and fake
    assert recomputed == Counter(generator=1, critic=2)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=0, msg=name)


class LayerCallCountingToy(ToyPlugin):
    """The toy plugin whose models count the calls of their blocks' first layers."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()

    def build(self, config: ToyConfig) -> torch.nn.Module:
        model = super().build(config)
        count_layer_calls(model, self.calls)
        return model


def test_activation_checkpointing_trains_the_same_weights(tmp_path):
    runs = {}
    for name, scale in (("plain", {}), ("checkpointed", {"activation_checkpointing": True})):
        plugin = LayerCallCountingToy()
        options = TrainOptions(device="cpu", progress="quiet", stage="regress")
        model = train(plugin, ToyConfig(steps=10, dropout=0.2, scale=scale), tmp_path / name, options=options)
        runs[name] = model, plugin.calls
    (plain, plain_calls), (checkpointed, checkpointed_calls) = runs["plain"], runs["checkpointed"]
    # the lever reached the model: each of the 10 steps ran the generator again in its backward pass
    assert checkpointed_calls["generator"] == plain_calls["generator"] + 10, (plain_calls, checkpointed_calls)
    assert_same_state(plain, checkpointed, steps=None)


def test_a_block_that_fails_to_compile_runs_eagerly_after_one_warning(monkeypatch):
    def broken_compile(function, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler\nlong traceback")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    blocks = [torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)]
    expected = [block(torch.ones(1, 3)) for block in blocks]
    warnings: list[str] = []
    compile_blocks(blocks, warnings.append)
    for _ in range(2):
        for block, value in zip(blocks, expected, strict=True):
            torch.testing.assert_close(block(torch.ones(1, 3)), value)
    assert warnings == ["--compile: torch.compile failed (RuntimeError: inductor: no C++ compiler); training eagerly"]


@pytest.mark.slow
def test_compiled_blocks_train_the_weights_of_eager_ones(tmp_path):
    warnings: list[str] = []
    model = ToyPlugin().build(ToyConfig())
    compile_blocks(ToyPlugin().blocks(model), warnings.append)
    model.generator(torch.randn(4, 4)).sum().backward()
    assert warnings == []  # this machine compiles: the comparison below is of compiled code
    eager = train_toy(tmp_path / "eager", steps=6, stage="regress")
    compiled = train_toy(tmp_path / "compiled", steps=6, stage="regress", scale={"compile": True})
    assert_same_state(eager, compiled, steps=6)


def test_adamw_kernel_choice():
    cpu = torch.device("cpu")
    assert adamw_kernel("auto", cpu, sharded=False) == {"fused": True}
    assert adamw_kernel("auto", cpu, sharded=True) == {"foreach": True}
    assert adamw_kernel("for-loop", cpu, sharded=False) == {"foreach": False}
    spec = ToyPlugin().stages(ToyConfig())[0].optimizers[0]
    optimizer = build_optimizer(spec, ToyPlugin().build(ToyConfig()), adamw_kernel("auto", cpu, sharded=False))
    assert optimizer.defaults["fused"] is True


def test_a_run_resumes_with_other_levers(tmp_path, monkeypatch):
    from zoo import checkpoint as ckpt
    from zoo.trainer import Trainer

    straight = train_toy(tmp_path / "straight", steps=12, stage="regress")
    checkpoint = Trainer._maybe_checkpoint

    def interrupted_after_step_4(self, state, done):
        checkpoint(self, state, done)
        if done == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_maybe_checkpoint", interrupted_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_toy(tmp_path / "run", {"checkpoint_every": 4}, steps=12, stage="regress")
    monkeypatch.undo()
    assert ckpt.read_trainer_checkpoint(tmp_path / "run")[1]["step"] == 4
    # other levers (a resume on other hardware), the same model and data: the same weights
    levers = {"accumulate": 2, "activation_checkpointing": True, "adamw": "for-loop"}
    resumed = train_toy(tmp_path / "run", {"resume": True}, steps=12, stage="regress", scale=levers)
    assert_same_state(straight, resumed, steps=12)


def test_precision_is_a_lever_of_the_config_and_the_call_may_override_it(tmp_path):
    import json

    train_toy(tmp_path / "config", steps=2, stage="regress", scale={"precision": "bf16"})
    train_toy(tmp_path / "call", {"precision": "bf16"}, steps=2, stage="regress")
    for run in ("config", "call"):
        assert json.loads((tmp_path / run / "config.json").read_text())["sessions"][-1]["precision"] == "bf16"

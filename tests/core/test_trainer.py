"""The trainer: stages, freezing, several optimizers, EMA, early stopping, NaN, resume
(several processes: test_distributed.py; the levers: test_scale.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.core.toy_plugin import ToyConfig, ToyPlugin
from zoo import checkpoint as ckpt
from zoo.distributed import WorldInfo
from zoo.errors import RunError, TrainingError, UnknownNameError
from zoo.trainer import GlobalBatchSampler, TrainOptions, lr_factor, train


def run_toy(run_dir: Path, **fields) -> torch.nn.Module:
    options = {k: fields.pop(k) for k in list(fields) if k in TrainOptions.__dataclass_fields__}
    return train(
        ToyPlugin(), ToyConfig(**fields), run_dir, options=TrainOptions(device="cpu", progress="quiet", **options)
    )


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_stages_run_in_order_and_loss_goes_down(tmp_path):
    run_toy(tmp_path / "run", steps=100)
    rows = [r for r in metrics(tmp_path / "run") if r.get("stage") == "regress" and "loss" in r]
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    ends = [r["stage"] for r in metrics(tmp_path / "run") if r.get("event") == "end"]
    assert ends == ["regress", "adversarial", "critic_only"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["completed"] == ends


def test_frozen_parameters_stay_frozen(tmp_path):
    torch.manual_seed(0)
    model = run_toy(tmp_path / "a", steps=10, stage="regress")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = run_toy(tmp_path / "a", steps=10, stage="critic_only")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("generator."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("critic."))


def test_second_optimizer_respects_start_step_and_every(tmp_path):
    run_toy(tmp_path / "run", steps=20, stage="adversarial", log_every=1)
    rows = [
        r for r in metrics(tmp_path / "run") if r.get("stage") == "adversarial" and "step" in r and "event" not in r
    ]
    critic_steps = [r["step"] - 1 for r in rows if "critic/loss" in r]
    assert critic_steps == list(range(5, 20, 2))
    assert all("generator/grad_norm" in r for r in rows)


def test_lr_schedule_warmup_then_cosine():
    spec = ToyPlugin().stages(ToyConfig())[0].optimizers[0]
    spec.warmup_steps, spec.min_lr_ratio = 10, 0.1
    factors = [lr_factor(spec, s, 110) for s in range(110)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    # the last step is 99 % of the way down the cosine (float64, exact but for rounding)
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in pairwise(factors[10:]))


def test_ema_weights_are_copied_in_at_the_end(tmp_path):
    plain = run_toy(tmp_path / "plain", steps=20, stage="regress")
    averaged = run_toy(tmp_path / "ema", steps=20, stage="regress", ema_decay=0.9)
    assert not torch.equal(plain.generator[0].weight, averaged.generator[0].weight)


def test_early_stopping_stops_and_restores_best(tmp_path):
    run_toy(tmp_path / "run", steps=400, stage="regress", patience=2)
    rows = metrics(tmp_path / "run")
    end = [r for r in rows if r.get("event") == "end"][0]
    assert end["step"] < 400
    validation = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(validation) >= 3
    assert min(validation) < validation[0]


def test_checkpoint_keeps_the_validation_state_as_a_plain_dict(tmp_path):
    # The format of every checkpoint so far: resuming reads {"best", "bad", "best_weights"}.
    with pytest.raises(TrainingError):
        run_toy(tmp_path / "run", steps=30, stage="regress", patience=50, nan_at_step=12, checkpoint_every=10)
    _, state = ckpt.read_trainer_checkpoint(tmp_path / "run")
    losses = [r["val_loss"] for r in metrics(tmp_path / "run") if "val_loss" in r]
    validation = state["validation"]
    assert state["step"] == 10
    assert len(losses) == 2
    assert set(validation) == {"best", "bad", "best_weights"}
    assert validation["best"] == min(losses)
    assert validation["bad"] == int(losses[1] >= losses[0])
    assert validation["best_weights"].keys() == {
        "generator.0.weight",
        "generator.0.bias",
        "generator.3.weight",
        "generator.3.bias",
        "critic.0.weight",
        "critic.0.bias",
        "critic.2.weight",
        "critic.2.bias",
    }


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="loss is nan.*last good checkpoint"):
        run_toy(tmp_path / "run", steps=30, stage="regress", nan_at_step=12, checkpoint_every=5)
    _, state = ckpt.read_trainer_checkpoint(tmp_path / "run")
    assert state["stage"] == "regress"
    assert state["step"] == 10


def test_existing_run_needs_resume_and_same_config(tmp_path):
    run_toy(tmp_path / "run", steps=5, stage="regress")
    with pytest.raises(RunError, match="resume=True") as raised:
        run_toy(tmp_path / "run", steps=5)
    assert "--resume" not in str(raised.value)
    assert "--resume" in raised.value.cli_message
    with pytest.raises(RunError, match="another config .steps: the run has 5, this call gives 6") as raised:
        run_toy(tmp_path / "run", steps=6, resume=True)
    assert "this command gives 6" in raised.value.cli_message
    assert "--out" in raised.value.cli_message
    with pytest.raises(UnknownNameError, match="Did you mean 'regress'"):
        run_toy(tmp_path / "other", steps=5, stage="regres")


def test_global_batches_split_across_ranks():
    single = list(GlobalBatchSampler(10, 4, 5, 0, 0, WorldInfo()))
    halves = [list(GlobalBatchSampler(10, 4, 5, 0, 0, WorldInfo(rank, 2))) for rank in (0, 1)]
    assert [a + b for a, b in zip(*halves, strict=True)] == single
    assert list(GlobalBatchSampler(10, 4, 5, 0, 2, WorldInfo())) == single[2:]


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from tests.core.toy_plugin import ToyConfig, ToyPlugin
    from zoo.trainer import TrainOptions, train
    run_dir, resume = sys.argv[1], sys.argv[2] == "resume"
    config = ToyConfig(steps=40, dropout=0.2)
    train(ToyPlugin(), config, run_dir, options=TrainOptions(device="cpu", progress="quiet", resume=resume,
          checkpoint_every=3))
""")


def test_killed_run_resumes_to_identical_weights(tmp_path):
    script = tmp_path / "train_toy.py"
    script.write_text(TRAIN_SCRIPT.format(root=str(ROOT)))
    run = lambda run_dir, mode: [sys.executable, str(script), str(run_dir), mode]  # noqa: E731
    subprocess.run(run(tmp_path / "straight", "fresh"), check=True)

    victim = subprocess.Popen(run(tmp_path / "killed", "fresh"), env={**os.environ, "TOY_SLEEP": "0.02"})
    latest = tmp_path / "killed" / "state" / "latest.json"
    deadline = time.time() + 60
    while time.time() < deadline:  # kill mid-way through the second stage
        if latest.exists() and "adversarial-" in latest.read_text() and "done" not in latest.read_text():
            break
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    record = json.loads((tmp_path / "killed" / "config.json").read_text())
    assert record.get("completed") == ["regress"], "the kill should land inside the second stage"
    subprocess.run(run(tmp_path / "killed", "resume"), check=True)

    straight = ckpt.load_tensors(tmp_path / "straight" / "model.safetensors")
    resumed = ckpt.load_tensors(tmp_path / "killed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_bf16_autocast_trains(tmp_path):
    run_toy(tmp_path / "run", steps=100, stage="regress", precision="bf16")
    rows = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]


def test_cuda_asked_for_without_a_gpu_is_a_clear_error():
    from zoo.device import choose_device
    from zoo.errors import ZooError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert choose_device("auto").type == "cpu"
    with pytest.raises(ZooError, match="no usable CUDA GPU"):
        choose_device("cuda")


def test_weight_decay_skips_vectors_and_named_parameters():
    from zoo.trainer import build_optimizer

    model = ToyPlugin().build(ToyConfig())
    spec = ToyPlugin().stages(ToyConfig())[0].optimizers[0]
    spec.weight_decay, spec.no_weight_decay = 0.1, ("generator.3.",)
    decayed, exempt = build_optimizer(spec, model).param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([16, 4])]
    assert decayed["weight_decay"] == 0.1
    assert len(exempt["params"]) == 3
    assert exempt["weight_decay"] == 0.0


class GridToyPlugin(ToyPlugin):
    """A plugin whose grid draws from the torch RNG and names the stage by its brightness."""

    def stage_grid(self, model, config, stage, device):
        import numpy as np

        from zoo.outputs import SampleOutput

        noise = torch.rand(4)  # a grid that consumes random numbers must not change training
        shade = {"regress": 50, "adversarial": 100, "critic_only": 150}[stage.name] + int(noise.sum() > 9)
        return SampleOutput(images=np.full((2, 8, 8, 3), shade, np.uint8))


def test_every_stage_writes_a_grid_without_changing_the_weights(tmp_path):
    from PIL import Image

    plain = run_toy(tmp_path / "plain", steps=9)
    plugin, config = GridToyPlugin(), ToyConfig(steps=9, sample_every=4)
    gridded = train(plugin, config, tmp_path / "grids", options=TrainOptions(device="cpu", progress="quiet"))
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(gridded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    samples = tmp_path / "grids" / "samples"
    for stage, shade in (("regress", 50), ("adversarial", 100), ("critic_only", 150)):
        assert Image.open(samples / f"{stage}.png").getpixel((20, 20))[0] == shade
        assert sorted(p.name for p in (samples / stage).iterdir()) == ["step_4.png", "step_8.png"]
    assert not (tmp_path / "plain" / "samples").exists()  # no sample_options, no override: no grid


def test_a_failed_session_is_recorded(tmp_path):
    with pytest.raises(TrainingError):
        run_toy(tmp_path / "run", steps=10, nan_at_step=3, stage="regress")
    [session] = json.loads((tmp_path / "run" / ckpt.CONFIG_FILE).read_text())["sessions"]
    assert session["status"] == "failed"
    assert session["ended"]
    assert session["stage"] == "regress"

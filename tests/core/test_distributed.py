"""Two gloo processes on torch's engines (replicate = DDP, fully_shard = FSDP2) train the
weights one process trains with the whole batch, through every toy stage: a GAN stage with
two optimizers, EMA, mid-stage checkpoints and grids; and a killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.tolerances import assert_same_training
from zoo import checkpoint as ckpt

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from tests.core.toy_plugin import ToyConfig, ToyPlugin
    from zoo.trainer import TrainOptions, train
    run_dir, fields, resume = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "resume"
    train(ToyPlugin(), ToyConfig(**fields), run_dir,
          options=TrainOptions(device="cpu", progress="quiet", checkpoint_every=4, resume=resume))
""")

# 12 steps a stage, batch 8: EMA in the first stage, a grid every 5 steps (gathered when
# sharded), checkpoints every 4 steps.
FIELDS = {"steps": 12, "batch_size": 8, "ema_decay": 0.9, "sample_every": 5}


def command(tmp_path: Path, run_dir: Path, fields: dict, processes: int, resume: bool = False) -> list[str]:
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    args = [str(script), str(run_dir), json.dumps(fields), "resume" if resume else "fresh"]
    if processes == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(run_dir / ckpt.WEIGHTS_FILE)


def assert_same_weights(one: Path, two: Path, steps: int) -> None:
    """Within rounding (tests.tolerances): all-reduce adds the processes' gradients in its own order."""
    assert_same_training(weights(one), weights(two), steps)


@pytest.mark.slow
@pytest.mark.parametrize("shard", [False, True], ids=["replicate", "fully_shard"])
def test_two_processes_train_the_weights_of_one_with_the_whole_batch(tmp_path, shard):
    subprocess.run(command(tmp_path, tmp_path / "one", FIELDS, 1), check=True, timeout=240)
    # two micro-batches per process: the first backward pass keeps its gradients local
    two = {**FIELDS, "scale": {"shard": shard, "accumulate": 2}}
    subprocess.run(command(tmp_path, tmp_path / "two", two, 2), check=True, timeout=240)
    assert_same_weights(tmp_path / "one", tmp_path / "two", steps=3 * FIELDS["steps"])  # three stages
    session = json.loads((tmp_path / "two" / "config.json").read_text())["sessions"][-1]
    assert session["engine"] == ("fully_shard (FSDP2)" if shard else "replicate (DDP)") + " on 2 processes"


@pytest.mark.slow
@pytest.mark.parametrize("shard", [False, True], ids=["replicate", "fully_shard"])
def test_two_processes_killed_mid_stage_resume_to_the_same_weights(tmp_path, shard):
    fields = {**FIELDS, "steps": 16, "dropout": 0.1, "scale": {"shard": shard}}  # dropout: the RNG state
    subprocess.run(command(tmp_path, tmp_path / "straight", fields, 2), check=True, timeout=240)
    victim = subprocess.Popen(
        command(tmp_path, tmp_path / "killed", fields, 2),
        env={**os.environ, "TOY_SLEEP": "0.05"},
        start_new_session=True,  # its own process group: the kill reaches both workers
    )
    latest = tmp_path / "killed" / "state" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill inside the GAN stage, after one of its checkpoints
        if latest.exists() and "adversarial-8" in latest.read_text():
            break
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    record = json.loads((tmp_path / "killed" / "config.json").read_text())
    assert record.get("completed") == ["regress"], "the kill should land inside the second stage"
    subprocess.run(command(tmp_path, tmp_path / "killed", fields, 2, resume=True), check=True, timeout=240)
    assert_same_weights(tmp_path / "straight", tmp_path / "killed", steps=3 * fields["steps"])


def test_a_stage_whose_forward_rewrites_parameters_is_replicated_not_sharded():
    from zoo.distributed import Engine, WorldInfo
    from zoo.nn.quantize import VectorQuantizer

    notes: list[str] = []
    engine = Engine(WorldInfo(0, 2), True, torch.device("cpu"), lambda: torch.nn.Module(), notes.append)
    restarting = torch.nn.Sequential(torch.nn.Linear(2, 2), VectorQuantizer(8, 2, ema_decay=None))
    assert engine._rewrites_parameters(restarting, "tokenizer")
    assert notes == [
        "stage tokenizer: 1 writes its parameters in the forward pass (dead-code restarts), which sharding "
        "would lose; this stage is replicated (DDP) instead"
    ]
    averaged = torch.nn.Sequential(torch.nn.Linear(2, 2), VectorQuantizer(8, 2, ema_decay=0.99))
    frozen = torch.nn.Sequential(torch.nn.Linear(2, 2), VectorQuantizer(8, 2, ema_decay=None).requires_grad_(False))
    assert not engine._rewrites_parameters(averaged, "vqvae")
    assert not engine._rewrites_parameters(frozen, "prior")

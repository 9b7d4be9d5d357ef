"""Faults around a training run: kills, a second trainer, bad options, corrupt state, full disks."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import Field

import zoo
from tests.conftest import ROOT
from tests.core.toy_plugin import Points, ToyConfig, ToyPlugin
from zoo import checkpoint as ckpt, temporary
from zoo.errors import ConfigError, DataError, RunError, TrainingError
from zoo.trainer import TrainOptions, train


class SizedToyConfig(ToyConfig):
    points: int = Field(64, description="training points (0 makes the data set empty)")


class SizedToyPlugin(ToyPlugin):
    """The toy whose data size is a config setting, so a bad data setting fails a stage."""

    Config = SizedToyConfig

    def stages(self, config: SizedToyConfig) -> list[zoo.Stage]:
        stages = super().stages(config)
        for stage in stages:
            stage.dataset = lambda ctx: Points(config.points, 0)
        return stages


def run_toy(run_dir: Path, plugin: ToyPlugin | None = None, **fields) -> torch.nn.Module:
    plugin = plugin or ToyPlugin()
    options = {k: fields.pop(k) for k in list(fields) if k in TrainOptions.__dataclass_fields__}
    options = TrainOptions(device="cpu", progress="quiet", **options)
    return train(plugin, plugin.Config(**fields), run_dir, options=options)


def step_records(run_dir: Path) -> list[tuple[str, int]]:
    rows = [json.loads(line) for line in (run_dir / ckpt.METRICS_FILE).read_text().splitlines()]
    return [(r["stage"], r["step"]) for r in rows if "event" not in r]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = ckpt.load_tensors(a / ckpt.WEIGHTS_FILE), ckpt.load_tensors(b / ckpt.WEIGHTS_FILE)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


TRAIN_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from tests.core.toy_plugin import ToyConfig, ToyPlugin
    from zoo.trainer import TrainOptions, train
    run_dir, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    train(ToyPlugin(), ToyConfig(steps=steps, dropout=0.2), run_dir,
          options=TrainOptions(device="cpu", progress="quiet", resume=mode == "resume",
                               checkpoint_every=3, log_every=2))
""")


@pytest.fixture
def toy_command(tmp_path):
    script = tmp_path / "train_toy.py"
    script.write_text(TRAIN_SCRIPT.format(root=str(ROOT)))
    return lambda run_dir, mode="fresh", steps=40: [sys.executable, str(script), str(run_dir), mode, str(steps)]


# a second trainer, the run directory itself ------------------------------------------------


def test_second_trainer_on_a_run_directory_is_refused_with_the_holders_pid(tmp_path, toy_command):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(toy_command(run_dir), env={**os.environ, "TOY_SLEEP": "0.05"})
    try:
        deadline = time.time() + 60
        while not (run_dir / ckpt.METRICS_FILE).exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert holder.poll() is None, "the first trainer should still be training"
        with pytest.raises(RunError, match=rf"being trained by another process \(PID {holder.pid}\)"):
            run_toy(run_dir, steps=40, dropout=0.2, resume=True)
    finally:
        holder.kill()
        holder.wait()
    run_toy(run_dir, steps=40, dropout=0.2, resume=True)  # the OS dropped the dead holder's lock


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(RunError, match="is a file, not a run directory"):
        run_toy(tmp_path / "run", steps=5, stage="regress")


# options and stages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("checkpoint_every", 0, r"checkpoint_every must be .* at least 1; got 0"),
        ("checkpoint_every", -3, r"checkpoint_every must be .* at least 1; got -3"),
        ("log_every", 0, r"log_every must be .* at least 1; got 0"),
        ("log_every_seconds", 0, r"log_every_seconds must be a positive number of seconds; got 0"),
    ],
)
def test_checkpoint_and_log_intervals_must_be_positive(field, value, message):
    with pytest.raises(ConfigError, match=message) as raised:
        TrainOptions(**{field: value})
    # the API's wording names the argument, the CLI's the flag
    assert "--" not in str(raised.value)
    assert raised.value.cli_message.startswith(f"--{field.replace('_', '-')} must be")


def test_stage_without_steps_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TrainingError, match="stage regress of toy has 0 steps"):
        run_toy(tmp_path / "run", steps=0)
    with pytest.raises(TrainingError, match="stage adversarial of toy has 40 steps of batch size -8"):
        run_toy(tmp_path / "run", batch_size=-8, stage="adversarial")
    assert not (tmp_path / "run").exists()


def test_a_run_that_failed_before_training_does_not_block_the_corrected_command(tmp_path):
    with pytest.raises(DataError, match="no training data"):
        run_toy(tmp_path / "run", SizedToyPlugin(), points=0, steps=5)
    run_toy(tmp_path / "run", SizedToyPlugin(), points=64, steps=5)  # no --resume, same --out
    assert json.loads((tmp_path / "run" / ckpt.CONFIG_FILE).read_text())["config"]["points"] == 64
    with pytest.raises(RunError, match=r"already holds a run; continue it \(resume=True\)") as raised:
        run_toy(tmp_path / "run", SizedToyPlugin(), points=64, steps=5)
    assert "--resume" not in str(raised.value)
    assert "--resume --out" in raised.value.cli_message


# state/latest.json -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, reason",
    [
        ("", "not JSON"),
        ("{ckpt", "not JSON"),
        ('["ckpt-regress-done"]', "not a JSON object"),
        ("{}", "'checkpoint' is None"),
        ('{"checkpoint": 3}', "'checkpoint' is 3"),
        ('{"checkpoint": "../../elsewhere"}', "'checkpoint' is '../../elsewhere'"),
        ('{"checkpoint": "ckpt-a/../../../elsewhere"}', "not a checkpoint folder name"),
    ],
)
def test_corrupt_latest_json_is_one_line_naming_the_fix(tmp_path, content, reason):
    state = tmp_path / "run" / ckpt.STATE_DIR
    state.mkdir(parents=True)
    (state / ckpt.LATEST_FILE).write_text(content)
    with pytest.raises(RunError, match=r"state/latest.json in .*run is corrupt \(") as error:
        ckpt.read_trainer_checkpoint(tmp_path / "run")
    assert reason in str(error.value)
    assert f"delete {state} to restart the stage" in str(error.value)


@pytest.fixture(scope="module")
def stopped_mid_stage(tmp_path_factory) -> Path:
    """A run whose last checkpoint is in the middle of stage `regress` (a NaN stopped it)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(TrainingError):
        run_toy(run_dir, steps=30, stage="regress", nan_at_step=12, checkpoint_every=5)
    assert ckpt.latest_checkpoint(run_dir).name == "ckpt-regress-10"
    return run_dir


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda state: state.pop("stage"), "'stage' is missing or not a str"),
        (lambda state: state.update(step=0), "it says stage 'regress' step 0, its folder is ckpt-regress-10"),
        (lambda state: state.update(step="10"), "'step' is missing or not a int"),
        (lambda state: state.update(completed="regress"), "'completed' is not a list of stage names"),
        (lambda state: state.update(optimizers={}), "'optimizers' is missing or not a list"),
        (lambda state: state.update(rng={"__dict__": [["cpu", 5]]}), "'rng' holds no CPU generator state"),
        (lambda state: state.clear(), "'completed' is not a list of stage names"),
    ],
    ids=["no-stage", "step-0", "step-text", "completed-text", "optimizers", "rng", "empty"],
)
def test_a_trainer_json_that_is_json_but_wrong_is_one_line_on_resume(stopped_mid_stage, tmp_path, change, problem):
    """It used to restart the stage at step 0 from the checkpoint's weights without a word."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(stopped_mid_stage, run_dir)
    path = run_dir / ckpt.STATE_DIR / "ckpt-regress-10" / "trainer.json"
    state = dict(json.loads(path.read_text())["__dict__"])  # the skeleton of ckpt.flatten_state
    change(state)
    path.write_text(json.dumps({"__dict__": [[key, value] for key, value in state.items()]}))
    with pytest.raises(RunError) as error:
        run_toy(run_dir, steps=30, stage="regress", nan_at_step=12, resume=True, checkpoint_every=5)
    message = str(error.value)
    assert f"trainer checkpoint {path.parent} is damaged: {problem}" in message
    assert "\n" not in message
    assert not (run_dir / ckpt.STATE_DIR / "ckpt-regress-15").exists()  # nothing trained


def test_latest_json_never_leads_outside_the_run_directory(tmp_path):
    run_toy(tmp_path / "elsewhere", steps=5, stage="regress")
    run_toy(tmp_path / "run", steps=5, stage="regress")
    state = tmp_path / "run" / ckpt.STATE_DIR
    (state / "ckpt-link").symlink_to(tmp_path / "elsewhere" / ckpt.STATE_DIR / "ckpt-regress-done")
    (state / ckpt.LATEST_FILE).write_text('{"checkpoint": "ckpt-link"}')
    with pytest.raises(RunError, match="corrupt .*ckpt-link leads outside"):
        run_toy(tmp_path / "run", steps=5, stage="adversarial")


# what a kill leaves ----------------------------------------------------------------------


def test_leftovers_of_killed_writes_are_removed_when_training_starts(tmp_path):
    """What a kill leaves is what zoo recorded before writing it (zoo.temporary)."""
    run_dir = tmp_path / "run"
    run_toy(run_dir, steps=5, stage="regress")
    state = run_dir / ckpt.STATE_DIR
    leftovers = []
    for folder, stem in [(run_dir, ".config.json"), (state, ".latest.json"), (state, ".ckpt-adversarial-3")]:
        name = temporary.new_name(stem)
        temporary.record(folder, name)
        (folder / name).mkdir()
        (folder / name / "half-written").write_text("x")
        leftovers.append(folder / name)
    run_toy(run_dir, steps=5, stage="adversarial")
    assert [p for p in leftovers if p.exists()] == []
    assert not (run_dir / temporary.REGISTER).exists() and not (state / temporary.REGISTER).exists()


def test_training_into_a_directory_of_user_files_deletes_none_of_them(tmp_path):
    """Files that look like temporary ones but were not written by zoo are kept: `--out`
    into an existing directory, leftovers in state/ and cache/, old-looking checkpoints."""
    run_dir = tmp_path / "mine"
    users = [
        run_dir / ".tmpfoo",
        run_dir / ".data.tmp",
        run_dir / ".config.json.k2j4x9.tmp",
        run_dir / "state" / ".latest.json.q8w7e6.tmp",
        run_dir / "state" / ".ckpt-regress-3.partial" / "notes",
        run_dir / "state" / "ckpt-mine" / "notes",
        run_dir / "cache" / ".tokens.z1.tmp",
        run_dir / "notes.txt",
    ]
    for path in users:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's")
    run_toy(run_dir, steps=7, checkpoint_every=3)
    run_toy(run_dir, steps=7, checkpoint_every=3, stage="adversarial")  # starts again: the clean-up runs
    assert [p for p in users if not p.exists()] == []
    assert sorted(p.name for p in (run_dir / "state").iterdir() if p.name.startswith("ckpt-")) == [
        "ckpt-adversarial-done",
        "ckpt-mine",
    ]


def test_a_restarted_stage_logs_each_step_once(tmp_path):
    run_dir = tmp_path / "run"
    fields = dict(steps=30, stage="regress", nan_at_step=12, checkpoint_every=5, log_every=1)
    with pytest.raises(TrainingError):  # logs steps 1..12, checkpoint at 10
        run_toy(run_dir, **fields)
    with open(run_dir / ckpt.METRICS_FILE, "a") as file:
        file.write('{"stage": "regress", "st')  # a line a kill cut short
    with pytest.raises(TrainingError):  # resumes from 10, logs 11 and 12 again
        run_toy(run_dir, resume=True, **fields)
    assert step_records(run_dir) == [("regress", step) for step in range(1, 13)]


# permissions and full disks --------------------------------------------------------------


UMASK_SCRIPT = textwrap.dedent("""
    import os, sys
    os.umask(0o022)
    sys.path.insert(0, {root!r})
    from tests.core.toy_plugin import ToyConfig, ToyPlugin
    from zoo.trainer import TrainOptions, train
    train(ToyPlugin(), ToyConfig(steps=6), sys.argv[1], options=TrainOptions(device="cpu", progress="quiet"))
""")


def test_files_in_a_run_directory_follow_the_umask(tmp_path):
    script = tmp_path / "umask_toy.py"
    script.write_text(UMASK_SCRIPT.format(root=str(ROOT)))
    subprocess.run([sys.executable, str(script), str(tmp_path / "run")], check=True)
    paths = list((tmp_path / "run").rglob("*"))
    assert {p.name for p in paths} >= {
        "config.json",
        "model.safetensors",
        "latest.json",
        "tensors.safetensors",
        "trainer.json",
        "metrics.jsonl",
        ".lock",
    }
    modes = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}
    assert {p: m for p, m in modes.items() if m != (oct(0o755) if Path(p).is_dir() else oct(0o644))} == {}


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full (Linux) to fill a disk")
def test_full_disk_raises_oserror_naming_the_file_and_the_run_resumes(tmp_path):
    """A metrics file on a full device (/dev/full: every write fails with ENOSPC)."""
    fields = dict(steps=20, stage="regress", checkpoint_every=5, log_every=7)
    run_toy(tmp_path / "straight", **fields)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ckpt.METRICS_FILE).symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left on device") as error:
        run_toy(run_dir, **fields)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(run_dir / ckpt.METRICS_FILE)
    (run_dir / ckpt.METRICS_FILE).unlink()  # space freed
    run_toy(run_dir, resume=True, **fields)
    assert_same_weights(tmp_path / "straight", run_dir)


def test_failed_tensor_write_is_a_plain_oserror_and_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    real_save_file, calls = ckpt.save_file, []

    def save_file_on_a_full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:  # the second checkpoint's weights
            raise SafetensorError(
                f"Error while serializing: I/O error: No space left on device (os error 28) "
                f'at path "{Path(filename).parent}/.tmpX1y2Z3"'
            )
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file_on_a_full_disk)
    with pytest.raises(OSError) as error:
        run_toy(tmp_path / "run", steps=20, stage="regress", checkpoint_every=5)
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == calls[-1]
    monkeypatch.undo()
    assert ckpt.read_trainer_checkpoint(tmp_path / "run")[1]["step"] == 5
    run_toy(tmp_path / "run", steps=20, stage="regress", checkpoint_every=5, resume=True)
    assert not list((tmp_path / "run" / ckpt.STATE_DIR).glob(".ckpt-*"))


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores permission bits; the /dev/full test covers a failing write",
)
def test_read_only_output_is_a_plain_oserror_naming_the_path(tmp_path):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as error:
            run_toy(parent / "run", steps=5, stage="regress")
        assert str(parent / "run") in str(error.value)
    finally:
        parent.chmod(0o755)


# kills at random moments -----------------------------------------------------------------


def wait_for_lock(run_dir: Path, process: subprocess.Popen) -> None:
    """Until `process` holds the run directory's lock, i.e. has imported torch and starts training."""
    lock, deadline = run_dir / ckpt.LOCK_FILE, time.time() + 120
    while process.poll() is None and time.time() < deadline:
        if lock.exists() and lock.read_text().strip() == str(process.pid):
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_random_kills_then_resumes_train_the_same_model_and_log_each_step_once(tmp_path, toy_command):
    run_toy(tmp_path / "straight", steps=30, dropout=0.2, checkpoint_every=3, log_every=2)  # as TRAIN_SCRIPT does
    run_dir, delays, killed_while_training = tmp_path / "killed", random.Random(7), 0
    env = {**os.environ, "TOY_SLEEP": "0.05"}  # 90 steps: about 5 s of training in all
    for _ in range(6):
        victim = subprocess.Popen(toy_command(run_dir, "resume", steps=30), env=env)
        wait_for_lock(run_dir, victim)
        time.sleep(delays.uniform(0.0, 1.0))
        killed_while_training += victim.poll() is None
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    subprocess.run(toy_command(run_dir, "resume", steps=30), check=True)
    assert killed_while_training >= 4

    assert_same_weights(tmp_path / "straight", run_dir)
    records = step_records(run_dir)
    assert [key for key, count in Counter(records).items() if count > 1] == []
    assert Counter(records) == Counter(step_records(tmp_path / "straight"))
    leftovers = [p for p in run_dir.rglob("*") if p.name.startswith((".tmp", ".ckpt-")) or p.name.endswith(".tmp")]
    assert leftovers == []

"""Progress reporting: plain lines off a terminal, JSON events."""

from __future__ import annotations

import io
import json

from zoo.progress import JsonReporter, PlainReporter, make_reporter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_n_seconds_never_cut():
    clock, out = Clock(), io.StringIO()
    reporter = PlainReporter(every_seconds=30, file=out, clock=clock)
    reporter.start("tokenizer", 1000, 0)
    long_name = "a_very_long_metric_name_that_would_not_fit_in_eighty_columns_of_a_terminal"
    for step in range(10, 1001, 10):
        clock.now = step * 0.5  # 20 steps/s: a line every 30 s is every 60 steps
        reporter.update(
            step,
            {"stage": "tokenizer", "step": step, "loss": 1 / step, long_name: 2.0, "lr": 1e-3, "images_per_s": 320.0},
        )
    lines = out.getvalue().splitlines()
    assert lines[0] == "tokenizer: 1000 steps"
    assert [line.split()[1] for line in lines[1:]] == [f"{s}/1000" for s in range(60, 1000, 60)] + ["1000/1000"]
    assert lines[1] == (f"tokenizer 60/1000 (6%) 320 img/s ETA 7m50s loss 0.01667 {long_name} 2 lr 0.001")
    assert len(lines[1]) > 80
    assert lines[-1].startswith("tokenizer 1000/1000 (100%) 320 img/s ETA 0s")


def test_plain_resume_and_stage_end():
    clock, out = Clock(), io.StringIO()
    reporter = PlainReporter(every_seconds=1, file=out, clock=clock)
    reporter.start("prior", 100, 40)
    clock.now = 3.0
    reporter.update(50, {"loss": 2.0, "images_per_s": 10.0})
    reporter.update(50, {"stage": "prior", "step": 50, "val_loss": 2.5})  # validation: no line of its own
    clock.now = 6.0
    reporter.update(60, {"loss": 1.5, "images_per_s": 10.0})
    reporter.stage_end("prior", 75.0, {"loss": 2.0, "val_loss": 2.5})
    assert out.getvalue().splitlines() == [
        "prior: 100 steps, resuming at step 40",
        "prior 50/100 (50%) 10 img/s ETA 15s loss 2",
        "prior 60/100 (60%) 10 img/s ETA 12s loss 1.5 val_loss 2.5",
        "prior: done in 1m15s: loss 2 val_loss 2.5",
    ]


def test_auto_is_plain_off_a_terminal(capsys):
    assert isinstance(make_reporter("auto"), PlainReporter)  # pytest's stdout is no terminal


def test_json_stage_end_and_done(capsys):
    reporter = JsonReporter()
    reporter.stage_end("a", 1.234, {"loss": 0.5})
    reporter.done("runs/x", {"a": {"steps": 10, "seconds": 1.2, "metrics": {"loss": 0.5}}})
    first, last = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first == {"event": "stage_end", "stage": "a", "seconds": 1.23, "metrics": {"loss": 0.5}}
    assert last["event"] == "done"
    assert last["run_dir"] == "runs/x"
    assert last["metrics"] == {"loss": 0.5}

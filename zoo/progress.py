"""How the trainer reports progress: a rich bar on a terminal, plain lines every few
seconds when the output is a file or a pipe, JSON lines for scripts, or nothing.

    bar     a live rich bar (only on a terminal: rich draws nothing into a pipe)
    plain   `tokenizer 120/500 (24%) 310 img/s ETA 1m05s loss 0.123 ...` every
            `log_every_seconds` and at a stage's end; never cut to a width, never wrapped
    json    one object per logged step, `stage_start`, `stage_end`, `message`, and `done`
    quiet   messages only, on stderr
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

Mode = Literal["auto", "bar", "plain", "json", "quiet"]

# What a line or bar shows besides the step: these are not "metrics" a reader scans for.
NOT_SHOWN = ("stage", "step", "lr", "images_per_s", "event")


class Reporter(Protocol):
    def start(self, stage: str, total: int, done: int) -> None: ...
    def update(self, step: int, metrics: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...
    def stage_end(self, stage: str, seconds: float, metrics: dict[str, Any]) -> None: ...
    def done(self, run_dir: str, stages: dict[str, Any]) -> None: ...


def format_metrics(metrics: dict[str, Any], limit: int | None = None) -> str:
    """`loss 0.123 mse 0.0456`: numeric values in 4 significant digits, in their logged order."""
    shown = [(k, v) for k, v in metrics.items() if k not in NOT_SHOWN and isinstance(v, (int, float))]
    return " ".join(f"{k} {v:.4g}" for k, v in shown[:limit])


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class BarReporter:
    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task: TaskID | None = None  # set by `start`

    def start(self, stage: str, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(stage, total=total, completed=done, stage=stage, summary="")

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if self.task is None:  # not started: nothing to update
            return
        self.progress.update(self.task, completed=step, summary=format_metrics(metrics, limit=4))

    def message(self, text: str) -> None:
        self.progress.console.print(text, soft_wrap=True, highlight=False, markup=False)

    def finish(self) -> None:
        self.progress.stop()

    def stage_end(self, stage: str, seconds: float, metrics: dict[str, Any]) -> None:
        pass

    def done(self, run_dir: str, stages: dict[str, Any]) -> None:
        pass


class PlainReporter:
    """One plain line every `every_seconds` (and when a stage ends), for logs and pipes."""

    def __init__(self, every_seconds: float = 30.0, file: Any = None, clock: Callable[[], float] = time.monotonic):
        self.every_seconds, self.file, self.clock = every_seconds, file, clock
        self.stage, self.total, self.first = "", 0, 0
        self.started = self.last_line = 0.0
        self.held_out: dict[str, Any] = {}  # the latest validation values of the stage

    def _print(self, text: str) -> None:
        print(text, file=self.file or sys.stdout, flush=True)

    def start(self, stage: str, total: int, done: int) -> None:
        self.stage, self.total, self.first = stage, total, done
        self.held_out = {}
        self.started = self.last_line = self.clock()
        self._print(f"{stage}: {total} steps" + (f", resuming at step {done}" if done else ""))

    def line(self, step: int, metrics: dict[str, Any]) -> str:
        """`stage step/total (pct%) N img/s ETA 1m05s metrics...`"""
        elapsed = self.clock() - self.started
        steps_done = step - self.first
        eta = elapsed / steps_done * (self.total - step) if steps_done > 0 else float("nan")
        parts = [f"{self.stage} {step}/{self.total} ({100 * step // max(1, self.total)}%)"]
        if "images_per_s" in metrics:
            parts.append(f"{metrics['images_per_s']:.0f} img/s")
        parts.append(f"ETA {format_duration(eta)}" if eta == eta else "ETA ?")
        shown = format_metrics(metrics)
        if shown:
            parts.append(shown)
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.3g}")
        return " ".join(parts)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if "images_per_s" not in metrics:  # a validation record: shown with the next line
            self.held_out.update({k: v for k, v in metrics.items() if k not in NOT_SHOWN})
            return
        now = self.clock()
        if now - self.last_line < self.every_seconds and step < self.total:
            return
        self.last_line = now
        self._print(self.line(step, {**metrics, **self.held_out}))

    def message(self, text: str) -> None:
        self._print(text)

    def finish(self) -> None:
        pass

    def stage_end(self, stage: str, seconds: float, metrics: dict[str, Any]) -> None:
        self._print(
            f"{stage}: done in {format_duration(seconds)}" + (f": {format_metrics(metrics)}" if metrics else "")
        )

    def done(self, run_dir: str, stages: dict[str, Any]) -> None:
        pass


class JsonReporter:
    def start(self, stage: str, total: int, done: int) -> None:
        print(json.dumps({"event": "stage_start", "stage": stage, "total": total, "done": done}), flush=True)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        print(json.dumps({"event": "step", **metrics}), flush=True)

    def message(self, text: str) -> None:
        print(json.dumps({"event": "message", "text": text}), flush=True)

    def finish(self) -> None:
        pass

    def stage_end(self, stage: str, seconds: float, metrics: dict[str, Any]) -> None:
        event = {"event": "stage_end", "stage": stage, "seconds": round(seconds, 2), "metrics": metrics}
        print(json.dumps(event), flush=True)

    def done(self, run_dir: str, stages: dict[str, Any]) -> None:
        final = {k: v for stage in stages.values() for k, v in stage.get("metrics", {}).items()}
        print(json.dumps({"event": "done", "run_dir": run_dir, "stages": stages, "metrics": final}), flush=True)


class QuietReporter:
    def start(self, stage: str, total: int, done: int) -> None:
        pass

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        print(text, file=sys.stderr)

    def finish(self) -> None:
        pass

    def stage_end(self, stage: str, seconds: float, metrics: dict[str, Any]) -> None:
        pass

    def done(self, run_dir: str, stages: dict[str, Any]) -> None:
        pass


def make_reporter(mode: Mode, every_seconds: float = 30.0) -> Reporter:
    """`auto`: the bar on a terminal, plain lines otherwise."""
    if mode == "auto":
        mode = "bar" if sys.stdout.isatty() else "plain"
    reporters: dict[str, Callable[[], Reporter]] = {
        "bar": BarReporter,
        "plain": lambda: PlainReporter(every_seconds),
        "json": JsonReporter,
        "quiet": QuietReporter,
    }
    return reporters[mode]()

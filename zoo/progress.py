"""How the trainer reports progress: a rich bar, JSON lines for scripts, or nothing."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Literal, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Mode = Literal["bar", "json", "quiet"]


class Reporter(Protocol):
    def start(self, stage: str, total: int, done: int) -> None: ...
    def update(self, step: int, metrics: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


class BarReporter:
    def __init__(self) -> None:
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

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.task is None:  # not started: nothing to update
            return
        shown = {k: v for k, v in metrics.items() if k not in ("stage", "step", "lr")}
        summary = " ".join(f"{k} {v:.4g}" for k, v in list(shown.items())[:4])
        self.progress.update(self.task, completed=step, summary=summary)

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def finish(self) -> None:
        self.progress.stop()


class JsonReporter:
    def start(self, stage: str, total: int, done: int) -> None:
        print(json.dumps({"event": "stage_start", "stage": stage, "total": total, "done": done}), flush=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        print(json.dumps({"event": "step", **metrics}), flush=True)

    def message(self, text: str) -> None:
        print(json.dumps({"event": "message", "text": text}), flush=True)

    def finish(self) -> None:
        pass


class QuietReporter:
    def start(self, stage: str, total: int, done: int) -> None:
        pass

    def update(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def message(self, text: str) -> None:
        print(text, file=sys.stderr)

    def finish(self) -> None:
        pass


def make_reporter(mode: Mode) -> Reporter:
    reporters: dict[str, Callable[[], Reporter]] = {"bar": BarReporter, "json": JsonReporter, "quiet": QuietReporter}
    return reporters[mode]()

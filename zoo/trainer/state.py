"""Everything one stage's loop reads and changes (`StageState`), with its two parts that
outlive a step: early stopping's memory (`ValidationState`) and the metrics since the last
record (`MetricsWindow`)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.distributed import StageStep
from zoo.plugin import Stage, StageContext


@dataclass
class ValidationState:
    """Early stopping's memory: the best held-out loss, evaluations since, the best weights.

    Checkpoints store it as the dict {"best", "bad", "best_weights"} (`as_dict`/`from_dict`),
    the format runs written before this class existed still have."""

    best: float = math.inf
    bad: int = 0  # evaluations since the best one
    best_weights: dict[str, torch.Tensor] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "best_weights": self.best_weights}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ValidationState:
        return cls(best=saved["best"], bad=saved["bad"], best_weights=saved["best_weights"])

    def record(self, loss: float, model: nn.Module, patience: int | None) -> bool:
        """Remember `loss` (and the weights when it is the best); True when patience is exhausted."""
        if loss < self.best:
            self.best, self.bad = loss, 0
            self.best_weights = {k: v.clone() for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        return patience is not None and self.bad >= patience


@dataclass
class MetricsWindow:
    """The loss values and image count since the last metrics record."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    images: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, values: dict[str, float], prefix: str | None) -> None:
        for key, value in values.items():
            self.values[key if prefix is None else f"{prefix}/{key}"].append(value)

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}

    def images_per_second(self) -> float:
        return self.images / max(time.perf_counter() - self.started, 1e-9)

    def reset(self) -> None:
        self.values.clear()
        self.images, self.started = 0, time.perf_counter()


@dataclass
class StageState:
    """Everything one stage's loop reads and changes; what a checkpoint saves of a stage."""

    model: nn.Module
    step_module: StageStep  # the root the engine wraps; every loss runs through it
    stage: Stage
    index: int  # position of the stage in the plugin's list
    context: StageContext
    dataset: Dataset
    completed: list[str]  # the run's finished stages (shared with `Trainer._run_stages`)
    param_lists: list[list[nn.Parameter]]  # one per optimizer
    optimizers: list[torch.optim.Optimizer]
    ema: dict[str, torch.Tensor] | None  # averaged trained weights, by parameter name
    validation: ValidationState = field(default_factory=ValidationState)
    start: int = 0  # first step to run (a resumed stage starts past 0)
    step: int = 0  # the last step run
    window: MetricsWindow = field(default_factory=MetricsWindow)
    started: float = field(default_factory=time.perf_counter)
    last_metrics: dict[str, float] = field(default_factory=dict)  # the latest logged values, for the summary

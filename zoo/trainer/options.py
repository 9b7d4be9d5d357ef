"""What one `train` call is asked to do besides the config: device, progress, which stage,
resume, checkpoint and log intervals, the Inception weights of the validation metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoo.device import Precision
from zoo.errors import ConfigError
from zoo.progress import Mode


@dataclass
class TrainOptions:
    device: str = "auto"
    precision: Precision | None = None  # None: the config's scale.precision
    progress: Mode = "bar"
    stage: str | None = None  # run only this stage
    resume: bool = False
    from_run: Path | None = None  # take earlier stages' weights from this run
    checkpoint_every: int = 200
    log_every: int = 10
    log_every_seconds: float = 30.0  # plain progress lines (output not a terminal): one per this many seconds
    tensorboard: Path | None = None  # write TensorBoard scalars and grids to this directory
    inception_weights: Path | None = None  # of the config's validation metrics; default $ZOO_INCEPTION_WEIGHTS
    command: list[str] | None = None  # the command line recorded in the run (default: sys.argv)

    def __post_init__(self) -> None:
        # The one check for the API and the CLI: each audience reads its own spelling.
        for name in ("checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                message = "must be a whole number of steps, at least 1; got"
                raise ConfigError(f"{name} {message} {value!r}", cli=f"--{name.replace('_', '-')} {message} {value!r}")
        seconds = self.log_every_seconds
        if not isinstance(seconds, (int, float)) or not seconds > 0:
            message = f"must be a positive number of seconds; got {seconds!r}"
            raise ConfigError(f"log_every_seconds {message}", cli=f"--log-every-seconds {message}")

"""What `zoo serve` is told on its command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ConfigError

DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    export_dirs: list[Path]
    provider: str | None = None  # None: CUDA when it really works, else CPU (zoo.runtime.sessions)
    threads: int | None = None  # onnxruntime intra-op threads per session
    verify_key: Path | None = None  # an Ed25519 public key every export's manifest.sig must match
    workers: int = 2  # requests sampled at once, in threads sharing the sessions
    max_queue: int = 32  # requests waiting for a worker; more are refused with 503
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # the largest request body

    def __post_init__(self) -> None:
        if not self.export_dirs:
            raise ConfigError("zoo serve needs at least one export directory")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be at least 0, got {self.max_queue}")
        if self.max_upload_bytes < 1024:
            raise ConfigError(f"--max-upload-mb must allow at least 1 kB, got {self.max_upload_bytes} bytes")

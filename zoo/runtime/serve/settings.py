"""What `zoo serve` is told on its command line, checked before anything is loaded or bound."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import ConfigError
from zoo.runtime.cpus import available_cpus

DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_SIDE = 16_384  # a side past this is refused before decoding (a 1 x 64,000,000 strip)
MEMORY_SHARE = 0.5  # of the machine's memory, split between the workers: the default request budget
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def machine_memory_bytes() -> int:
    """Physical memory (POSIX sysconf); 8 GiB where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 * 1024**3


def default_request_budget(workers: int) -> int:
    """Bytes one request may need at its peak: half the machine's memory over the workers,
    so that `workers` requests sampling at once still leave the other half."""
    return int(machine_memory_bytes() * MEMORY_SHARE / max(workers, 1))


@dataclass(frozen=True)
class ServeSettings:
    export_dirs: list[Path]
    provider: str | None = None  # None: CUDA when it really works, else CPU (zoo.runtime.sessions)
    threads: int | None = None  # onnxruntime intra-op threads per session; None: session_threads' default
    verify_key: Path | None = None  # an Ed25519 public key every export's manifest.sig must match
    workers: int = 2  # requests sampled at once, in threads sharing the sessions
    max_queue: int = 32  # requests waiting for a worker; more are refused with 503
    max_batch: int = 0  # rows one merged loop call may hold (zoo.runtime.serve.batching); 0: no merging
    max_wait_ms: float = 10.0  # how long a request waits for others to share its call
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # the largest request body
    max_request_bytes: int | None = None  # a request's estimated peak memory; None: default_request_budget
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE  # pixels on either side of an uploaded image
    request_timeout: float | None = None  # seconds of sampling before a request is stopped; None: no limit
    header_timeout: float = 10.0  # seconds for a connection to send a request's headers
    body_timeout: float = 30.0  # seconds for a request's body to arrive in full
    keep_alive_timeout: float = 5.0  # seconds an idle keep-alive connection stays open
    shutdown_timeout: float = 30.0  # seconds a shutdown waits for in-flight requests before dropping them
    max_connections: int = 512  # open connections; more are closed at once
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted; () = the bind address and localhost
    allowed_origins: tuple[str, ...] = ()  # browser Origins accepted besides the page's own
    token: str | None = field(default=None, repr=False)  # bearer token every API call must carry

    def __post_init__(self) -> None:
        if not self.export_dirs:
            raise ConfigError("zoo serve needs at least one export directory")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port must be 1..65535, got {self.port}")
        _at_least("--workers", self.workers, 1)
        _at_least("--max-queue", self.max_queue, 0)
        _at_least("--max-batch", self.max_batch, 0)
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        _at_least("--max-connections", self.max_connections, 1)
        _at_least("--max-image-side", self.max_image_side, 8)
        if self.max_upload_bytes < 1024:
            raise ConfigError(f"--max-upload-mb must allow at least 1 kB, got {self.max_upload_bytes} bytes")
        if self.max_request_bytes is not None and self.max_request_bytes < 1024**2:
            raise ConfigError(f"--max-request-mb must allow at least 1 MB, got {self.max_request_bytes} bytes")
        for flag, seconds in (
            ("--request-timeout", self.request_timeout),
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--keep-alive-timeout", self.keep_alive_timeout),
            ("--shutdown-timeout", self.shutdown_timeout),
        ):
            if seconds is not None and not 0 < seconds <= 86_400:  # also refuses nan and inf
                raise ConfigError(f"{flag} must be over 0 and at most 86400 seconds, got {seconds}")
        if self.token is not None and not self.token:
            raise ConfigError("the --token-file is empty; write a token in it (e.g. `openssl rand -hex 32`)")

    @property
    def session_threads(self) -> int:
        """--threads, or the cores over the workers: each worker samples in its own thread and
        onnxruntime would give every call one thread per core, so with 2 workers on 2 cores four
        threads took turns on two (measured: benchmarks/results/serve.md), each op that
        parallelises waiting for a core; merged calls, whose ops parallelise most, lost most."""
        return self.threads or max(1, available_cpus() // self.workers)

    @property
    def request_budget(self) -> int:
        return self.max_request_bytes if self.max_request_bytes is not None else default_request_budget(self.workers)

    @property
    def host_names(self) -> frozenset[str] | None:
        """Host header names (lower case, no port) accepted; None accepts any (a wildcard bind
        with no --allowed-host: the server answers on addresses it cannot list)."""
        if self.allowed_hosts:
            return frozenset(host_name(host) for host in self.allowed_hosts)
        if self.host in WILDCARD_HOSTS:
            return None
        names = {"localhost", "127.0.0.1", "[::1]", _host_header_name(self.host)}
        return frozenset(names)


def host_name(host: str) -> str:
    """A Host header (or an --allowed-host) without its port, lower case: `[::1]:8000` -> `[::1]`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


def _host_header_name(address: str) -> str:
    """An address as a Host header spells it: IPv6 in brackets."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address.lower()}]"
    except ValueError:
        pass
    return address.lower()


def _at_least(flag: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{flag} must be at least {low}, got {value}")

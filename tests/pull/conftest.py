"""What the `zoo pull` tests share: published checkpoints of fixture size, declared by a test
plugin like a third party's (never in the real catalogue), a Hugging Face cache laid out by
hand, and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import textwrap
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from zoo.registry import reset_registry

VAR_FIXTURES = ROOT / "tests" / "fixtures" / "var"
VAE, TRANSFORMER = VAR_FIXTURES / "vae_qsr4.pth", VAR_FIXTURES / "var_saln0.pth"

# An importer of var's official format under another format name, listing the entries of
# entries.json beside it (the tests write it: the server's port changes every run).
FIXTURE_PLUGIN = textwrap.dedent("""
    import json
    from pathlib import Path

    import zoo
    from zoo_var.importer import OfficialVARImporter

    def _checkpoint(entry):
        files = tuple(zoo.RemoteFile(**file) for file in entry["files"])
        return zoo.PublishedCheckpoint(entry["name"], files, "fixture-sized official VAR files", "MIT",
                                       entry.get("figure"), entry.get("preset"))

    class FixtureVARImporter(OfficialVARImporter):
        format = "fixture"
        checkpoints = tuple(_checkpoint(e) for e in json.loads((Path(__file__).parent / "entries.json").read_text()))

    @zoo.hookimpl
    def zoo_register_importers():
        return [FixtureVARImporter()]
""")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def declare(tmp_path, monkeypatch) -> Iterator[Callable[[list[dict[str, Any]]], Path]]:
    """declare(entries) -> the registry file: the test plugin lists `entries`, in this process
    ($ZOO_REGISTRY, registry reset) and in subprocesses (the same environment)."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "fixture_pull.py").write_text(FIXTURE_PLUGIN)
    registry = folder / "registry.yaml"
    registry.write_text("plugins: [fixture_pull.py]\n")

    def write(entries: list[dict[str, Any]]) -> Path:
        (folder / "entries.json").write_text(json.dumps(entries))
        monkeypatch.setenv("ZOO_REGISTRY", str(registry))
        monkeypatch.setenv("ZOO_LOAD_PLUGINS", "zoo_var")
        reset_registry()
        return registry

    yield write
    reset_registry()


@pytest.fixture
def zoo_cache(tmp_path, monkeypatch) -> Path:
    """zoo's plain-URL cache, in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "zoo" / "pull"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in tmp_path, offline: in this process (huggingface_hub
    reads its environment once, at import) and in subprocesses."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def cache_in_hub(cache: Path, repo: str, files: list[Path], commit: str = "a1" * 20) -> str:
    """Lay `files` out as the Hub's cache holds a download of `repo` at `commit` (its main):
    models--ORG--NAME/blobs/SHA256, snapshots/COMMIT/FILE -> ../../blobs/SHA256, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    for file in files:
        blob = root / "blobs" / sha256(file)
        shutil.copyfile(file, blob)
        os.symlink(Path("..") / ".." / "blobs" / blob.name, root / "snapshots" / commit / file.name)
    (root / "refs" / "main").write_text(commit)
    return commit


class FileServer(ThreadingHTTPServer):
    """Serves `files` (path -> bytes) with Range requests, and as the Hub does (HEAD with the
    commit and the file's sha256 as its ETag; a 404 says EntryNotFound) for HF_ENDPOINT. A path
    in `truncate` announces its full length and closes after half of it. Records each GET's
    path and Range header."""

    daemon_threads = True
    commit = "b2" * 20

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        self._respond(head=False)

    def _respond(self, head: bool) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if self.headers.get("Range") and not head:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
        self.send_header("X-Repo-Commit", self.server.commit)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        if head:
            return
        if self.path in self.server.truncate:
            self.wfile.write(part[: len(part) // 2])
            self.close_connection = True
            return
        self.wfile.write(part)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `requests`
        pass


@pytest.fixture
def server() -> Iterator[FileServer]:
    file_server = FileServer()
    thread = threading.Thread(target=file_server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield file_server
    file_server.shutdown()
    file_server.server_close()

"""`zoo pull` of plain URLs from a real HTTP server on 127.0.0.1 serving the VAR parity
fixtures (the VQVAE `/vae.pth` is the file that fails; the transformer beside it keeps the
inferred model tiny): a good download, a truncated one (resumed by the next pull), a wrong checksum, a
404, a closed port, offline. Each failure is one line and leaves --out alone."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import zoo
from tests.pull.conftest import TRANSFORMER, VAE, sha256
from zoo.downloads import DownloadError, url_cache_path
from zoo.importer import RemoteFile


@pytest.fixture(autouse=True)
def online(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(autouse=True)
def transformer_file(server):
    server.files["/var.pth"] = TRANSFORMER.read_bytes()


def url_entry(url: str, sha: str | None) -> dict:
    """The VQVAE at `url` (the file under test), the transformer from the server."""
    transformer = url.rsplit("/", 1)[0] + "/var.pth"
    files = [{"filename": "vae.pth", "url": url, "sha256": sha}, {"filename": "var.pth", "url": transformer}]
    return {"name": "var-fixture", "files": files}


def pull_fails(out: Path) -> str:
    with pytest.raises(DownloadError) as caught:
        zoo.pull("var-fixture", out)
    assert not out.exists()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_url_download_is_checked_cached_and_imported(declare, zoo_cache, server, tmp_path):
    server.files["/vae.pth"] = VAE.read_bytes()
    declare([url_entry(server.url("/vae.pth"), sha256(VAE))])
    pulled = zoo.pull("var-fixture", tmp_path / "run")
    assert [(f.source, f.sha256, f.checked) for f in pulled.files] == [
        (server.url("/vae.pth"), sha256(VAE), True),
        (server.url("/var.pth"), sha256(TRANSFORMER), False),
    ]
    assert [f.path.name for f in pulled.files] == ["vae.pth", "var.pth"]
    assert all(f.path.is_relative_to(zoo_cache) for f in pulled.files)
    assert pulled.imported.config.tokenizer.codebook_size == 64  # the fixture's VQVAE, imported
    zoo.pull("var-fixture", tmp_path / "again")
    assert len(server.requests) == 2  # the second pull read the cache


def test_a_truncated_download_fails_then_resumes(declare, zoo_cache, server, tmp_path):
    body = VAE.read_bytes()
    server.files["/vae.pth"] = body
    server.truncate.add("/vae.pth")
    declare([url_entry(server.url("/vae.pth"), sha256(VAE))])
    message = pull_fails(tmp_path / "run")
    assert message.startswith(f"the download of {server.url('/vae.pth')} stopped after {len(body) // 2} bytes (")
    assert message.endswith("); pull again to resume it")

    server.truncate.clear()
    pulled = zoo.pull("var-fixture", tmp_path / "run")
    assert server.requests[-2] == ("/vae.pth", f"bytes={len(body) // 2}-")  # only the rest was asked for
    assert pulled.files[0].checked and (tmp_path / "run" / "model.safetensors").is_file()


def test_a_wrong_checksum_fails_and_leaves_no_file_in_the_cache(declare, zoo_cache, server, tmp_path):
    server.files["/vae.pth"] = VAE.read_bytes()
    url = server.url("/vae.pth")
    declare([url_entry(url, "f" * 64)])
    message = pull_fails(tmp_path / "run")
    assert message.startswith(f"{url} has sha256 {sha256(VAE)}, not the published {'f' * 64}; deleted it")
    assert not url_cache_path(RemoteFile("vae.pth", url=url), zoo_cache).exists()


def test_a_404_is_one_line(declare, zoo_cache, server, tmp_path):
    url = server.url("/moved.pth")
    declare([url_entry(url, None)])
    assert pull_fails(tmp_path / "run") == (
        f"{url} answered 404 Not Found: the file moved or is no longer published there"
    )


def test_no_network_is_one_line(declare, zoo_cache, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/vae.pth"
    declare([url_entry(url, None)])
    target = url_cache_path(RemoteFile("vae.pth", url=url), zoo_cache)
    message = pull_fails(tmp_path / "run")
    assert message.startswith("cannot reach 127.0.0.1 for vae.pth (")
    assert message.endswith(f"): check the network, or put the file at {target}")


def test_offline_reads_the_url_cache_only(declare, zoo_cache, server, tmp_path, monkeypatch):
    from huggingface_hub import constants

    server.files["/vae.pth"] = VAE.read_bytes()
    entry = url_entry(server.url("/vae.pth"), None)
    declare([entry])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    vae, transformer = (url_cache_path(RemoteFile(**file), zoo_cache) for file in entry["files"])
    assert pull_fails(tmp_path / "run") == (
        f"{server.url('/vae.pth')} is not in zoo's download cache ({vae}) and HF_HUB_OFFLINE is set: "
        "unset it, or put the file there"
    )
    for source, target in ((VAE, vae), (TRANSFORMER, transformer)):  # put there by hand, as the message says
        target.parent.mkdir(parents=True)
        target.write_bytes(source.read_bytes())
    pulled = zoo.pull("var-fixture", tmp_path / "run")
    assert [f.sha256 for f in pulled.files] == [sha256(VAE), sha256(TRANSFORMER)]
    assert server.requests == []

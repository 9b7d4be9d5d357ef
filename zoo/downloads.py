"""Published files -> local paths, for `zoo pull`.

Files on the Hugging Face Hub go through `huggingface_hub.hf_hub_download`: its standard
cache (`HF_HUB_CACHE`, `HF_HOME`), its resumable downloads, `HF_HUB_OFFLINE` and
`HF_ENDPOINT`, shared with every other library that reads the Hub. The Hub has no
downloader for other addresses, so plain URLs are fetched here with httpx into zoo's own
cache, `$XDG_CACHE_HOME/zoo/pull` (default `~/.cache/zoo/pull`):

    URL --GET (Range: bytes=N- when N bytes are there)--> FILE.incomplete --complete--> FILE

A download that stops keeps its bytes and the next pull asks for the rest; only a file
whose length matched the server's is renamed to its name, and only that name is reused.
`HF_HUB_OFFLINE=1` holds for plain URLs too: offline means no request at all.

Every failure is one `DownloadError` line saying what to do; a published sha256 that the
file does not have deletes it from zoo's cache (it would fail again) and fails the pull.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from zoo.errors import ZooError, first_line
from zoo.importer import RemoteFile
from zoo.runtime.manifest import sha256_file


class DownloadError(ZooError):
    """A published file that cannot be fetched, or that is not what its publisher states."""


def default_cache_dir() -> Path:
    """zoo's cache of plain-URL downloads (Hub files live in the Hub's cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoo" / "pull"


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch(file: RemoteFile, cache_dir: Path | None = None) -> Path:
    """The local path of `file`, downloaded if it is not cached; its sha256 checked where known."""
    path = _fetch_hub(file) if file.repo is not None else _fetch_url(file, cache_dir or default_cache_dir())
    if file.sha256 is not None:
        got = sha256_file(path)
        if got != file.sha256.lower():
            where = file.source
            if file.url is not None:
                path.unlink()
                fix = "deleted it from zoo's cache: pull again, and if it fails again the file was replaced"
            else:
                fix = f"the repo changed, or the cached copy is damaged: delete {path} and pull again"
            raise DownloadError(f"{where} has sha256 {got}, not the published {file.sha256}; {fix}")
    return path


# --- the Hugging Face Hub --------------------------------------------------------------


def _fetch_hub(file: RemoteFile) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert file.repo is not None
    source = file.source
    try:
        return Path(hf_hub_download(file.repo, file.filename, revision=file.revision))
    except LocalEntryNotFoundError as error:  # not cached, and offline or the Hub out of reach
        why = "HF_HUB_OFFLINE is set" if offline() else f"the Hub cannot be reached ({_cause(error)})"
        fix = "unset HF_HUB_OFFLINE" if offline() else "check the network, HF_ENDPOINT and any proxy"
        raise DownloadError(f"{source} is not in the Hugging Face cache and {why}: {fix}") from None
    except RemoteEntryNotFoundError:
        raise DownloadError(f"{source}: no such file in the repo (404); the publisher moved it") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{source}: no revision {file.revision!r} in the repo (404)") from None
    except RepositoryNotFoundError:
        raise DownloadError(
            f"{source}: no such repo on the Hub, or it is private or gated (log in with `hf auth login`)"
        ) from None
    except HfHubHTTPError as error:
        raise DownloadError(f"{source}: the Hub answered {first_line(error)}") from None
    except OSError as error:  # a download cut short, a full disk: the Hub's own message
        raise DownloadError(f"{source}: {first_line(error)}; pull again to resume") from None
    except Exception as error:  # its HTTP client's transport errors once its retries are spent
        raise DownloadError(
            f"{source}: the download failed ({first_line(error, 120, with_type=True)}); pull again to resume"
        ) from None


def _cause(error: BaseException) -> str:
    """The connection error under the Hub's "cannot find the requested files" wrapper."""
    cause = error.__cause__ or error
    return first_line(cause, 120, with_type=cause is not error)


# --- plain URLs -------------------------------------------------------------------------


def url_cache_path(file: RemoteFile, cache_dir: Path) -> Path:
    """Where `file` lives in zoo's cache: one folder per URL, the file under its own name."""
    assert file.url is not None
    return cache_dir / hashlib.sha256(file.url.encode()).hexdigest()[:16] / file.filename


def _fetch_url(file: RemoteFile, cache_dir: Path) -> Path:
    import httpx

    assert file.url is not None
    target = url_cache_path(file, cache_dir)
    if target.is_file():
        return target
    if offline():
        raise DownloadError(
            f"{file.url} is not in zoo's download cache ({target}) and HF_HUB_OFFLINE is set: "
            "unset it, or put the file there"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.incomplete")
    try:
        _download(file.url, partial)
    except httpx.ConnectError as error:
        raise DownloadError(
            f"cannot reach {httpx.URL(file.url).host} for {file.filename} ({first_line(error, 120)}): "
            f"check the network, or put the file at {target}"
        ) from None
    except (httpx.TransportError, _Truncated) as error:
        have = partial.stat().st_size if partial.exists() else 0
        raise DownloadError(
            f"the download of {file.url} stopped after {have} bytes ({first_line(error, 120)}); pull again to resume it"
        ) from None
    partial.replace(target)
    return target


class _Truncated(Exception):
    """The server ended the body before the length it announced."""


def _download(url: str, partial: Path) -> None:
    """GET `url` into `partial`, continuing after the bytes already there where the server
    takes a Range request (206); a 200 starts over."""
    import httpx
    from huggingface_hub.utils import tqdm

    have = partial.stat().st_size if partial.exists() else 0
    # identity: the bytes as stored, so that Content-Length and Range count the file's bytes
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    timeout = httpx.Timeout(60.0, connect=15.0)
    with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as response:
        if response.status_code == 416 and have:  # the bytes there are the whole file, or stale
            partial.unlink()
            return _download(url, partial)
        if response.status_code >= 400:
            raise DownloadError(
                f"{url} answered {response.status_code} {response.reason_phrase}: the file moved or is "
                "no longer published there"
            )
        resumed = response.status_code == 206
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=partial.stem) as bar,
        ):
            for chunk in response.iter_raw():  # as they arrive: a cut keeps all of them
                out.write(chunk)
                bar.update(len(chunk))
    size = partial.stat().st_size
    if total is not None and size != total:
        raise _Truncated(f"the server sent {size} of {total} bytes")

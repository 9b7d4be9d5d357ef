"""Which Inception weights torch-fidelity loads, and a check that they are the published ones.

torch-fidelity downloads `weights-inception-2015-12-05-6726825d.pth` into torch hub's
checkpoint folder on first use. zoo looks, in order, at `--inception-weights FILE`,
`$ZOO_INCEPTION_WEIGHTS`, and that file in the hub folder; only then does it download, and
where the network is unreachable it says in one line how to give the file instead.

The check: torch-fidelity publishes no full sha256 of the file, only the first 8 hex digits
in its name (torch hub's `check_hash` convention). zoo checks that prefix and records the
full hash it computed beside every figure, so a number names the exact file it came from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from zoo.errors import ZooError

URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
FILE_NAME = URL.rsplit("/", 1)[1]
SHA256_PREFIX = "6726825d"  # the published part of the hash: the suffix of FILE_NAME
ENV = "ZOO_INCEPTION_WEIGHTS"
DOWNLOAD_TIMEOUT = 30.0  # seconds without an answer before the network counts as unreachable


class InceptionWeightsError(ZooError):
    """The Inception weights file is missing, unreachable or not the published one."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_path() -> Path:
    """Where torch hub (and so torch-fidelity) keeps the downloaded file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME


def resolve_weights(given: Path | str | None = None, *, check: bool = True) -> tuple[Path, str]:
    """The weights file to load and its sha256: `given`, else $ZOO_INCEPTION_WEIGHTS, else
    torch hub's copy, downloaded there if absent. With `check`, a file whose hash does not
    start with the published prefix is refused (tests pass their random-weight files with
    check=False)."""
    source = "--inception-weights"
    if given is None and os.environ.get(ENV):
        given, source = os.environ[ENV], f"${ENV}"
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(
                f"{source} {path} is not a file; give the path of {FILE_NAME} (from {URL})",
            )
    else:
        path = hub_path()
        if not path.is_file():
            download(URL, path)
    digest = sha256_of(path)
    if check and not digest.startswith(SHA256_PREFIX):
        raise InceptionWeightsError(
            f"{path} has sha256 {digest[:16]}..., not the published Inception weights ({SHA256_PREFIX}...); "
            f"download {URL} again",
        )
    return path, digest


def download(url: str, path: Path) -> None:
    """Fetch `url` into `path` atomically, or say in one line how to do without the network."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as answer:
            shutil.copyfileobj(answer, out)
        os.replace(temp, path)
    except (urllib.error.URLError, OSError, ValueError) as error:
        Path(temp).unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise InceptionWeightsError(
            f"no Inception weights file and no network to download it ({reason}): download {URL} elsewhere "
            f"and pass it with --inception-weights FILE or ${ENV}"
        ) from None

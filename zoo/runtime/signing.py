"""Ed25519 signatures of an export's `manifest.json` (torch-free).

The manifest records every file of the export with its sha256, so a signature over its
exact bytes vouches for the whole directory: `zoo export --sign KEY.pem` writes
`manifest.sig` beside it, and `zoo run --verify KEY.pub.pem` (`zoo.runtime.load(...,
verify_key=...)`) refuses an export whose signature is missing or does not match, before
anything else in the directory is read. `zoo keygen --out KEY` makes a key pair.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zoo.errors import ConfigError, ExportError

SIGNATURE_NAME = "manifest.sig"


def generate_key_pair(out: Path) -> tuple[Path, Path]:
    """Write `OUT.pem` (private, mode 0600) and `OUT.pub.pem` (public); never overwrite a key."""
    out = Path(out)
    stem = out.name.removesuffix(".pem")
    private_path, public_path = out.with_name(f"{stem}.pem"), out.with_name(f"{stem}.pub.pem")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; choose another --out (a key is never overwritten)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    # Created with mode 0600 in one step: the key is never readable by others, not even briefly.
    with os.fdopen(os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = _load_key(path, "private", serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--sign {path}: not an Ed25519 private key; make one with `zoo keygen --out KEY`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = _load_key(path, "public", serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"--verify {path}: not an Ed25519 public key; use the KEY.pub.pem that `zoo keygen` wrote")
    return key


def _load_key(path: Path, kind: str, loader, **kwargs):
    flag = "--sign" if kind == "private" else "--verify"
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot read the {kind} key ({error.strerror})") from None
    try:
        return loader(data, **kwargs)
    except (ValueError, TypeError):
        raise ConfigError(f"{flag} {path}: not a PEM {kind} key; make a pair with `zoo keygen --out KEY`") from None


def signature(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The contents of `manifest.sig` for manifest bytes `data`: one base64 line."""
    return base64.b64encode(key.sign(data)) + b"\n"


def verify_signature(export_dir: Path, data: bytes, public_key: Path) -> None:
    """`data` (the manifest's bytes) must carry a valid signature by `public_key`."""
    key = load_public_key(public_key)
    path = Path(export_dir) / SIGNATURE_NAME
    if not path.is_file():
        raise ExportError(
            f"{export_dir} has no {SIGNATURE_NAME}: the export is unsigned; export again with `zoo export --sign KEY.pem`"
        )
    try:
        key.verify(base64.b64decode(path.read_bytes().strip(), validate=True), data)
    except (InvalidSignature, binascii.Error):
        raise ExportError(
            f"{export_dir}: {SIGNATURE_NAME} does not match manifest.json and {public_key}: the export was changed "
            "or signed by another key; do not run it"
        ) from None

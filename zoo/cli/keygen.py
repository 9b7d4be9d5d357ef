"""`zoo keygen`: an Ed25519 key pair for signing exports."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand
from zoo.errors import ConfigError


def register(commands: Any) -> None:
    keygen = add_subcommand(
        commands,
        "keygen",
        "make an Ed25519 key pair for signing exports",
        "Write an Ed25519 key pair: KEY.pem (private, mode 0600) and KEY.pub.pem.",
        "example:\n  zoo keygen --out deploy && zoo export var --out exports/var --sign deploy.pem",
    )
    keygen.add_argument("--out", required=True, metavar="KEY", help="writes KEY.pem (private) and KEY.pub.pem")
    keygen.set_defaults(handler=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> None:
    from zoo.runtime.signing import generate_key_pair

    out = Path(args.out)
    if not out.name.removesuffix(".pem") or out.name == ".." or args.out.endswith(("/", os.sep)):
        raise ConfigError(f"--out {args.out!r} names no key file; give one, e.g. --out deploy")
    private, public = generate_key_pair(out)
    print(f"private key: {private} (keep it secret; sign with `zoo export ... --sign {private}`)")
    print(f"public key: {public} (give it to users; check with `zoo run DIR --verify {public}`)")

"""`zoo data pack | info`: a folder as WebDataset shards, and what a folder or shard set holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand

PROGRESS_EVERY = 5000  # items between the progress lines of `zoo data pack`


def register(commands: Any) -> None:
    data = add_subcommand(
        commands,
        "data",
        "pack an image folder into WebDataset shards; describe a folder or shard set",
        "Training reads an image folder, a caption set or WebDataset tar shards lazily, in DataLoader worker "
        "processes. Shards are the format for large data: `pack` writes the folder's train and test splits "
        "and a shard index; `data=DIR` (or a brace pattern of shard files) in any config trains on them.",
        "examples:\n  zoo data pack imagenet/train --out shards/imagenet\n  zoo data info shards/imagenet --verify\n"
        "  zoo train var --preset d16 --set data=shards/imagenet",
    )
    actions = data.add_subparsers(
        dest="action", metavar="ACTION", required=True, help="`zoo data ACTION --help` for its flags"
    )
    pack = add_subcommand(
        actions,
        "pack",
        "write a folder (class subfolders or a caption set) as tar shards and shardindex.json",
        "One sample per image (per caption line for a caption set), the image bytes as stored, the label as "
        "`.cls`, the caption as `.txt`; shards `train-000000.tar`, ... and `test-000000.tar`, ... hold the "
        "folder's own fixed 90/10 split. Files Pillow cannot identify are skipped and counted.",
        "examples:\n  zoo data pack photos/ --out shards/photos --shard-size 2000\n"
        "  zoo data pack imagenet/train --out shards/imagenet-288 --resize 288",
    )
    pack.add_argument("folder", type=Path, help="image folder or caption set")
    pack.add_argument("--out", type=Path, required=True, help="directory for the shards and shardindex.json")
    pack.add_argument("--shard-size", type=int, default=5000, metavar="N", help="items per shard (default 5000)")
    pack.add_argument(
        "--shard-bytes", type=float, default=1.0, metavar="GB", help="close a shard past this many GB (default 1)"
    )
    pack.add_argument(
        "--resize", type=int, metavar="SIDE", help="re-encode as JPEG with the shorter side at most SIDE pixels"
    )
    pack.add_argument("--json", action="store_true", help="print what was written as JSON")
    pack.set_defaults(handler=cmd_pack, needs_train=True)
    info = add_subcommand(
        actions,
        "info",
        "what a folder or shard set holds: items, splits, classes, shards",
        "Lists names only, decodes nothing; for shards without an index the items are counted from the tar headers.",
        "examples:\n  zoo data info photos/\n  zoo data info 'shards/train-{000000..000127}.tar' --verify",
    )
    info.add_argument("path", help="a folder, a shard directory, a brace pattern of shards or one .tar")
    info.add_argument("--verify", action="store_true", help="check every shard against the sha256 of its index")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(handler=cmd_info, needs_train=True)


def cmd_pack(args: argparse.Namespace) -> None:
    from zoo.data.packing import pack

    def progress(read: int, total: int, packed: int) -> None:
        if read % PROGRESS_EVERY == 0 or read == total:
            print(f"read {read:,} of {total:,} files, packed {packed:,}", file=sys.stderr, flush=True)

    report = pack(
        args.folder,
        args.out,
        shard_size=args.shard_size,
        max_shard_bytes=int(args.shard_bytes * 1e9),
        resize=args.resize,
        progress=progress,
    )
    if args.json:
        skipped = [{"file": name, "reason": reason} for name, reason in report.skipped]
        written = {"out": str(report.out), "items": report.items, "shards": report.shards, "bytes": report.bytes}
        print(json.dumps({**written, "skipped": skipped}))
        return
    splits = ", ".join(f"{split} {count:,}" for split, count in report.items.items())
    print(f"wrote {report.shards} shards ({report.bytes / 1e6:,.1f} MB) to {report.out}: {splits}")
    if report.skipped:
        first, reason = report.skipped[0]
        noun = "file" if len(report.skipped) == 1 else "files"
        print(f"skipped {len(report.skipped)} {noun} (first: {first}: {reason})")


def cmd_info(args: argparse.Namespace) -> None:
    from zoo.data.packing import describe, info

    facts = info(args.path, verify=args.verify)
    if args.json:
        print(json.dumps(facts))
    else:
        print("\n".join(describe(facts)))

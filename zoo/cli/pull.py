"""`zoo pull`: published weights -> a run directory, in one command."""

from __future__ import annotations

import argparse
import json
from typing import Any

from zoo.cli.common import add_subcommand, print_table
from zoo.cli.importing import show_imported


def register(commands: Any) -> None:
    pull = add_subcommand(
        commands,
        "pull",
        "download published weights -> a run directory",
        "Download the files of a published checkpoint (the Hugging Face Hub's cache, or zoo's for plain "
        "URLs: ~/.cache/zoo/pull), check their sha256 where it is published, and import them like `zoo import`. "
        "HF_HUB_OFFLINE=1 uses cached files only; HF_ENDPOINT picks a Hub mirror.",
        "examples:\n  zoo pull --list\n  zoo pull var-d16 --out runs/var-d16",
    )
    pull.add_argument("name", nargs="?", help="published checkpoint (`zoo pull --list`)")
    pull.add_argument("--out", help="run directory to create (default: runs/NAME)")
    pull.add_argument("--list", action="store_true", help="list the published checkpoints the importers know")
    pull.add_argument("--json", action="store_true", help="print the result as JSON")
    pull.set_defaults(handler=cmd_pull, needs_train=True)


def cmd_pull(args: argparse.Namespace) -> None:
    from zoo.errors import ZooError

    if args.list:
        if args.name or args.out:
            raise ZooError("zoo pull --list takes no NAME or --out")
        list_published(args.json)
        return
    if not args.name:
        raise ZooError("name the checkpoint to pull, e.g. `zoo pull var-d16`; `zoo pull --list` shows them")
    from zoo.pulling import pull

    pulled = pull(args.name, args.out)
    if args.json:
        imported = pulled.imported
        print(
            json.dumps(
                {
                    "name": pulled.name,
                    "run_dir": str(imported.run_dir),
                    "preset": imported.preset,
                    "files": [
                        {"path": str(f.path), "source": f.source, "sha256": f.sha256, "checked": f.checked}
                        for f in pulled.files
                    ],
                    "notes": imported.notes,
                    "config": imported.config.model_dump(mode="json"),
                },
                indent=2,
            )
        )
        return
    for file in pulled.files:
        check = "matches the published sha256" if file.checked else "no sha256 published; recorded in the run"
        print(f"{file.source} -> {file.path} (sha256 {file.sha256[:16]}..., {check})")
    show_imported(pulled.imported, pulled.model, as_json=False)


def list_published(as_json: bool) -> None:
    from zoo.pulling import catalogue

    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "model": listed.model,
            "preset": listed.checkpoint.preset,
            "files": [file.source for file in listed.checkpoint.files],
            "licence": listed.checkpoint.licence,
            "figure": listed.checkpoint.figure,
            "description": listed.checkpoint.description,
        }
        for name, listed in catalogue().items()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no installed importer lists published checkpoints")
        return
    print_table(
        ["name", "model", "preset", "paper's figure", "licence"],
        [[row["name"], row["model"], row["preset"] or "-", row["figure"] or "-", row["licence"]] for row in rows],
    )
    print("files:")
    for row in rows:
        print(f"  {row['name']}: {'  '.join(row['files'])}")

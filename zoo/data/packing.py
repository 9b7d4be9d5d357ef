"""Packing a folder into WebDataset shards (`pack`) and describing a folder or a shard set
(`info`, `describe`). The format and how shards are read: zoo.data.shards."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from zoo.checkpoint import atomic_write_json
from zoo.data.folders import (
    FOLDER_HINT,
    caption_lines,
    existing_folder,
    folder_rows,
    has_captions,
    list_captions,
    list_folder,
)
from zoo.data.images import read_rgb
from zoo.data.shards import (
    DEFAULT_SHARD_BYTES,
    DEFAULT_SHARD_SIZE,
    FORMAT_VERSION,
    INDEX_FILE,
    INDEX_KIND,
    find_shards,
    is_shard_spec,
    scan_shard,
)
from zoo.data.sources import Skipped, nothing_readable, one_line
from zoo.errors import DataError
from zoo.runtime.images import max_image_pixels
from zoo.runtime.manifest import sha256_file

# packing -------------------------------------------------------------------------------------


@dataclass
class PackReport:
    out: Path
    items: dict[str, int]  # per split
    shards: int
    bytes: int
    skipped: Skipped


class _SplitWriter:
    """Writes one split's samples into `{split}-000000.tar`, ... of at most `shard_size`
    items and about `max_bytes` each; each shard is written under a temporary name and
    renamed when complete. `entries` are the index records of the shards written."""

    def __init__(self, out: Path, split: str, shard_size: int, max_bytes: int) -> None:
        self.out, self.split, self.shard_size, self.max_bytes = out, split, shard_size, max_bytes
        self.entries: list[dict[str, Any]] = []
        self._stream: Any = None
        self._writer: Any = None
        self._count = 0

    def write(self, sample: dict[str, Any]) -> None:
        from webdataset.writer import TarWriter  # the format's own writer; importing it loads webdataset

        if self._writer is not None and (self._count >= self.shard_size or self._stream.tell() >= self.max_bytes):
            self._close()
        if self._writer is None:
            name = f"{self.split}-{len(self.entries):06d}.tar"
            self._stream = (self.out / f".{name}.partial").open("wb")
            self._writer = TarWriter(self._stream, mtime=0)  # mtime 0: the same folder packs to the same bytes
            self._count = 0
        self._writer.write(sample)
        self._count += 1

    def _close(self) -> None:
        self._writer.close()
        self._stream.close()
        name = f"{self.split}-{len(self.entries):06d}.tar"
        partial = self.out / f".{name}.partial"
        os.replace(partial, self.out / name)
        self.entries.append(
            {
                "url": name,
                "nsamples": self._count,
                "filesize": (self.out / name).stat().st_size,
                "sha256": sha256_file(self.out / name),
                "split": self.split,
            }
        )
        self._writer = self._stream = None

    def finish(self) -> list[dict[str, Any]]:
        if self._writer is not None:
            self._close()
        return self.entries


def _image_bytes(path: Path, max_pixels: int, resize: int | None) -> tuple[bytes, str]:
    """A file's bytes as stored and its extension, after a header check (an image Pillow
    knows, within the pixel limit); with `resize`, decoded, the shorter side resized to it
    (never enlarged) and stored as JPEG quality 95."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
        with Image.open(path) as image:
            width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} pixels is over the limit of {max_pixels:,}")
    data = path.read_bytes()
    if resize is None:
        return data, path.suffix[1:].lower()
    image = read_rgb(io.BytesIO(data), max_pixels)
    scale = resize / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=95)
    return encoded.getvalue(), "jpg"


def pack(
    source: str | Path,
    out: str | Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    resize: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> PackReport:
    """Write an image folder or a caption set as WebDataset shards and a shard index in `out`.

    One sample per image file (per caption line for a caption set: an image with k captions
    is stored k times), in the folder's train and test splits. Image bytes are stored as
    they are unless `resize` is given. Files whose header Pillow cannot read, or over
    $ZOO_MAX_IMAGE_PIXELS, are skipped and counted; a truncated image passes the header
    check and is skipped when read. `progress(read, total, packed)` is called after each
    listed item: items looked at, items listed, samples written (skipped files are not).
    """
    if shard_size < 1 or max_shard_bytes < 1:
        raise DataError(
            f"shard size must be at least 1 item and 1 byte; got {shard_size} items, {max_shard_bytes} bytes"
        )
    root = existing_folder(source, "data folder")
    target = Path(out).expanduser()
    if target.resolve() == root.resolve() or root.resolve() in target.resolve().parents:
        raise DataError(f"--out {target} is inside the folder it packs; write the shards elsewhere")
    target.mkdir(parents=True, exist_ok=True)
    max_pixels = max_image_pixels()
    captioned = has_captions(root)
    samples: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # split -> (image path, fields)
    if captioned:
        captions = list_captions(root)
        listing_skipped, classes = captions.skipped, []
        for split in ("train", "test"):
            _, lines = caption_lines(captions, split)
            samples[split] = [
                (captions.images[int(captions.image_rows[line])], {"txt": captions.captions[int(line)]})
                for line in lines
            ]
    else:
        folder = list_folder(root)
        listing_skipped, classes = folder.skipped, folder.class_names
        for split in ("train", "test"):
            samples[split] = [
                (folder.paths[int(row)], {"cls": int(folder.labels[row])}) for row in folder_rows(folder, split)
            ]
    total, done, packed = sum(len(items) for items in samples.values()), 0, 0
    skipped: Skipped = list(listing_skipped)
    entries: list[dict[str, Any]] = []
    items = {}
    for split, split_samples in samples.items():
        writer = _SplitWriter(target, split, shard_size, max_shard_bytes)
        written = 0
        for relative, fields in split_samples:
            try:
                data, extension = _image_bytes(root / relative, max_pixels, resize)
            except Exception as error:  # Pillow raises many types for bad files; a skip, counted
                skipped.append((relative, one_line(error)))
            else:
                writer.write({"__key__": f"{written:09d}", extension: data, **fields})
                written += 1
                packed += 1
            done += 1
            if progress is not None:
                progress(done, total, packed)
        entries += writer.finish()
        items[split] = written
    if not entries:
        raise nothing_readable(str(root), skipped, FOLDER_HINT)
    index = {
        "__kind__": INDEX_KIND,
        "wids_version": 1,
        "name": root.name,
        "shardlist": entries,
        "zoo": {
            "format": FORMAT_VERSION,
            "items": items,
            "classes": classes,
            "captions": captioned,
            "skipped": len(skipped),
            "resized": resize,
        },
    }
    atomic_write_json(target / INDEX_FILE, index)
    return PackReport(target, items, len(entries), sum(entry["filesize"] for entry in entries), skipped)


# info ----------------------------------------------------------------------------------------


def info(spec: str | Path, verify: bool = False) -> dict[str, Any]:
    """What a folder or a shard set holds, as a JSON-ready dict (`describe` makes it lines).
    Nothing is decoded; `verify` checks every shard against the sha256 of its index."""
    text = str(spec)
    if is_shard_spec(text):
        found = find_shards(text)
        counts = {}
        for shard in found.shards:
            counts[shard.path] = shard.items if shard.items is not None else len(scan_shard(shard.path)[0])
        per_split: dict[str, int] = {}
        for shard in found.shards:
            key = shard.split or "unsplit"
            per_split[key] = per_split.get(key, 0) + counts[shard.path]
        result: dict[str, Any] = {
            "kind": "shards",
            "path": text,
            "shards": len(found.shards),
            "items": sum(counts.values()),
            "splits": per_split,
            "bytes": sum(shard.path.stat().st_size for shard in found.shards),
            "classes": found.classes,
            "captions": found.captions,
            "index": (found.shards[0].path.parent / INDEX_FILE).is_file(),
        }
        if verify:
            result["mismatched"] = [
                str(shard.path) for shard in found.shards if shard.sha256 and sha256_file(shard.path) != shard.sha256
            ]
            result["unverified"] = sum(1 for shard in found.shards if not shard.sha256)
        return result
    root = existing_folder(text, "data folder")
    if has_captions(root):
        captions = list_captions(root)
        return {
            "kind": "caption set",
            "path": text,
            "items": len(captions.captions),
            "images": len(captions.images),
            "splits": {split: len(caption_lines(captions, split)[1]) for split in ("train", "test")},
            "skipped": len(captions.skipped),
        }
    folder = list_folder(root)
    return {
        "kind": "image folder",
        "path": text,
        "items": len(folder.paths),
        "splits": {split: len(folder_rows(folder, split)) for split in ("train", "test")},
        "classes": folder.class_names,
        "skipped": len(folder.skipped),
    }


def describe(facts: dict[str, Any]) -> list[str]:
    """`info`'s dict as the lines `zoo data info` prints."""
    splits = ", ".join(f"{name} {count:,}" for name, count in facts["splits"].items())
    lines = [f"{facts['path']}: {facts['kind']}, {facts['items']:,} items ({splits})"]
    if facts["kind"] == "shards":
        captions = {True: "captions", False: "labels", None: "unknown (no index)"}[facts["captions"]]
        lines.append(f"  {facts['shards']} shards, {facts['bytes'] / 1e6:,.1f} MB, items carry {captions}")
        if not facts["index"]:
            lines.append(f"  no {INDEX_FILE}: items were counted from the tar headers")
    if facts.get("images") is not None:
        lines.append(f"  {facts['images']:,} images")
    classes = facts.get("classes") or []
    if classes:
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        lines.append(f"  {len(classes)} classes: {shown}")
    if facts.get("skipped"):
        lines.append(f"  {facts['skipped']} files left out by the listing")
    if "mismatched" in facts:
        bad = facts["mismatched"]
        lines.append(
            "  sha256: " + (f"{len(bad)} shards differ from the index: {', '.join(bad)}" if bad else "all match")
        )
    return lines

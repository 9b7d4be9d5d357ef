"""WebDataset tar shards: `ShardSet`, the lazy source (zoo.data.sources) that reads them by item index.

The format is WebDataset's: each shard a plain tar in which a sample is the consecutive
members sharing a key (`000000042.jpg`, `000000042.cls`, `000000042.txt`): the image bytes
as the folder stores them (re-encoded only when `pack` is asked to resize), the label as
decimal text, the caption as UTF-8. `pack` writes `train-000000.tar`, ... and
`test-000000.tar`, ... (the folder's own fixed 90/10 split, zoo.data.folders, so training
on the shards and on the folder sees the same items), and `shardindex.json`: a wids shard
index ("wids-shard-index-v1": each shard's url, nsamples and filesize) to which zoo adds
each shard's sha256 and split, and the item counts, classes and kind of the set.
`wids.ShardListDataset("DIR/shardindex.json")` reads the same set.

`data` in a config names shards three ways: a directory with a shard index (its splits
as packed), a directory of .tar files, or a brace pattern (`shards/train-{000000..000127}.tar`)
or one .tar path. A pattern naming packed shards of one split reads the other split's
shards from the same index (so `train-{...}.tar` still has its held-out shards). Shards
no index tags with a split are split like a folder: a fixed 10% of their items are held out.

Shards are read by index (map-style), not streamed, so that folders and shards share one
sampler: the seeded global permutation of zoo.data.loader, split over ranks and workers,
with exact resume. A process indexes a shard the first time it reads from it: it walks
the tar headers (seeks, no data read) and keeps where each sample starts and ends (16
bytes per sample); an item is then one seek and one read. (wids, webdataset's own indexed
reader, copies local shards into a cache directory or writes lock files next to them,
which fails on read-only storage, memory-maps whole shards and keeps ten open, which a
global permutation over many shards keeps evicting.)

A shard that is missing or not a tar file is a DataError naming it before any work; a
sample that cannot be read (corrupt or truncated image, no image member, a shard cut
short) is skipped and counted like an unreadable file of a folder.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.config import AugmentConfig
from zoo.data.base import check_split, pick_split, split_indices
from zoo.data.images import read_rgb
from zoo.data.sources import LazyImages, StringSequence, one_line
from zoo.errors import DataError
from zoo.runtime.images import IMAGE_SUFFIXES

INDEX_FILE = "shardindex.json"
INDEX_KIND = "wids-shard-index-v1"
FORMAT_VERSION = 1  # of zoo's fields in the index
DEFAULT_SHARD_SIZE = 5000  # items per shard
DEFAULT_SHARD_BYTES = 1 << 30  # a shard is closed before it passes this size
IMAGE_EXTENSIONS = tuple(suffix[1:] for suffix in sorted(IMAGE_SUFFIXES))
BLOCK = 512  # a tar block


# finding shards ------------------------------------------------------------------------------


@dataclass
class Shard:
    path: Path
    items: int | None = None  # None: not in an index; counted by reading its headers
    split: str | None = None  # "train" / "test" as packed; None: split like a folder
    sha256: str | None = None
    size: int | None = None


@dataclass
class ShardList:
    where: str  # the spec, for messages
    shards: list[Shard]
    classes: list[str] = field(default_factory=list)
    captions: bool | None = None  # None: not in an index; decided by the first sample


def is_shard_spec(spec: str) -> bool:
    """Whether a `data` value names shards: a brace pattern, a .tar path, a directory with a
    shard index, or a directory of .tar files (and nothing else)."""
    if "{" in spec or spec.endswith(".tar"):
        return True
    path = Path(spec).expanduser()
    if not path.is_dir():
        return False
    if (path / INDEX_FILE).is_file():
        return True
    with os.scandir(path) as entries:
        names = [(entry.name, entry.is_dir()) for entry in entries if not entry.name.startswith(".")]
    return bool(names) and all(name.endswith(".tar") and not is_dir for name, is_dir in names)


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand  # webdataset's dependency, the notation of its shard lists

    return list(braceexpand(pattern))


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"shard index {path} cannot be read ({one_line(error)}); pack the folder again") from None
    if not isinstance(index, dict) or not isinstance(index.get("shardlist"), list):
        raise DataError(f"shard index {path} has no shardlist; pack the folder again (zoo data pack)")
    return index


def _indexed(directory: Path, index: dict[str, Any]) -> dict[Path, Shard]:
    shards = {}
    for entry in index["shardlist"]:
        path = (directory / entry["url"]).resolve()
        shards[path] = Shard(
            path, entry.get("nsamples"), entry.get("split"), entry.get("sha256"), entry.get("filesize")
        )
    return shards


def find_shards(spec: str) -> ShardList:
    """The shards a `data` value names, with what an index says about them."""
    path = Path(spec).expanduser()
    if path.is_dir():
        directory = path
        if (path / INDEX_FILE).is_file():
            index = _read_index(path / INDEX_FILE)
            shards = list(_indexed(path, index).values())
        else:
            index, shards = {}, [Shard(p.resolve()) for p in sorted(path.glob("*.tar"))]
    else:
        names = _expand(str(path))
        if any(glob.has_magic(name) for name in names):
            raise DataError(
                f"data {spec!r}: name shards with a brace pattern (train-{{000000..000009}}.tar), not * or ?"
            )
        paths = [Path(name).resolve() for name in names]
        directory = paths[0].parent
        index = _read_index(directory / INDEX_FILE) if (directory / INDEX_FILE).is_file() else {}
        known = _indexed(directory, index) if index else {}
        shards = [known.get(p, Shard(p)) for p in paths]
        named = {shard.split for shard in shards}
        if None not in named:  # packed shards of some splits: the index's shards of the others come along
            shards += [shard for shard in known.values() if shard.split not in named]
    if not shards:
        raise DataError(f"no shards in {spec}; pack a folder into it with `zoo data pack FOLDER --out {spec}`")
    for shard in shards:
        check_shard(shard.path)
    zoo = index.get("zoo", {}) if isinstance(index.get("zoo"), dict) else {}
    captions = zoo.get("captions")
    return ShardList(spec, shards, list(zoo.get("classes", [])), captions if isinstance(captions, bool) else None)


def check_shard(path: Path) -> None:
    """A DataError naming `path` unless it is a readable file that starts like a tar."""
    try:
        with path.open("rb") as stream:
            header = stream.read(BLOCK)
    except OSError as error:
        raise DataError(f"shard {path} cannot be opened ({error.strerror or one_line(error)})") from None
    if header and not _is_tar_header(header):
        raise DataError(f"shard {path} is not a tar file; pack the folder again (zoo data pack)")


def _is_tar_header(header: bytes) -> bool:
    if len(header) < BLOCK:
        return False
    if header[257:262] == b"ustar":
        return True
    try:  # an old (v7) tar: no magic, but the header checksum holds (its own field counted as spaces)
        stored = int(header[148:156].split(b"\0")[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(header[:148]) + 8 * ord(" ") + sum(header[156:BLOCK])


# reading one shard ---------------------------------------------------------------------------


def split_key(name: str) -> tuple[str | None, str]:
    """WebDataset's key and extension of a member name: "dir/000042.seg.png" -> ("dir/000042", "seg.png")."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{directory}/{stem}" if directory else stem), extension


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def scan_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends): the byte range of each sample of a shard, from its tar headers only.
    A shard cut short keeps the samples before the cut (the last may be incomplete)."""
    starts, ends = array("q"), array("q")
    last_key: str | None = None
    with tarfile.open(path, "r:") as archive:
        while True:
            try:
                member = archive.next()
            except (tarfile.TarError, OSError, EOFError):
                break
            if member is None:
                break
            # TarFile keeps every header it reads; only the ~16 bytes per sample below are kept
            archive.members.clear()  # type: ignore[attr-defined]  # (typeshed leaves the attribute out)
            if not member.isfile():
                continue
            key, _ = split_key(member.name)
            if key is None:
                continue
            end = member.offset_data + _padded(member.size)
            if key != last_key:
                starts.append(member.offset)
                ends.append(end)
                last_key = key
            else:
                ends[-1] = end
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


def read_sample(path: Path, start: int, end: int) -> dict[str, bytes]:
    """The members of the sample in bytes [start, end) of a shard: extension -> bytes."""
    with path.open("rb") as stream:
        stream.seek(start)
        data = stream.read(end - start)
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive:
            if member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    members[split_key(member.name)[1]] = extracted.read()
    return members


def image_member(members: dict[str, bytes]) -> str | None:
    """The extension of a sample's image member ("jpg", "seg.png", ...), or None."""
    for extension in members:
        if extension.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            return extension
    return None


# the lazy source -----------------------------------------------------------------------------


class ShardSet(LazyImages):
    """Items {"image": (3, size, size) in [-1, 1]} and "label" (the `.cls` member, 0 without
    one) or, for a set of captions, "caption" (the `.txt` member).

    `class_names` come from the shard index (empty for shards without one). Splits: packed
    shards by their split, other shards split like a folder (10% of their items held out).
    """

    hint = "Pack a folder of images into shards with `zoo data pack`."

    def __init__(
        self,
        spec: str,
        size: int,
        split: str = "all",
        seed: int = 0,
        augment: AugmentConfig | None = None,
    ) -> None:
        check_split(split)
        found = find_shards(spec)
        self.spec, self.class_names = spec, found.classes
        self.shards = [shard.path for shard in found.shards]
        self._spans: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # this process's index of each shard read
        counts = [shard.items if shard.items is not None else self._count(k) for k, shard in enumerate(found.shards)]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # first item of each shard
        self.rows = self._split_rows(found.shards, counts, split)
        super().__init__(
            where=spec,
            size=size,
            split=split,
            seed=seed,
            augment=augment,
            files=int(self.offsets[-1]),
            listing_skipped=[],
        )
        if not len(self.rows):
            raise DataError(f"{spec} holds no items in its {split} split; {self.hint}")
        self.captioned = found.captions if found.captions is not None else self._first_has_caption()
        self.check_readable()

    @property
    def captions(self) -> Sequence[str] | None:
        """The split's captions in item order, read from the .txt members without decoding an
        image (a tokenizer trains on them); None for a set of labelled images."""
        return _ShardCaptions(self) if self.captioned else None

    def caption_of(self, item: int) -> str:
        shard, local = self._locate(item)
        starts, ends = self._spans_of(shard)
        if local >= len(starts):
            return ""
        members = read_sample(self.shards[shard], int(starts[local]), int(ends[local]))
        return members.get("txt", b"").decode("utf-8")

    def _first_has_caption(self) -> bool:
        """Shards without an index: a set of captions if its first readable sample has a .txt member."""
        for item in self.rows[:64]:
            shard, local = self._locate(int(item))
            try:
                starts, ends = self._spans_of(shard)
                members = read_sample(self.shards[shard], int(starts[local]), int(ends[local]))
            except Exception:  # unreadable samples are counted when they are read
                continue
            if image_member(members) is not None:
                return "txt" in members
        return False

    def _count(self, shard: int) -> int:
        try:
            self._spans[shard] = scan_shard(self.shards[shard])
        except (tarfile.TarError, OSError) as error:
            raise DataError(f"shard {self.shards[shard]} cannot be read ({one_line(error)})") from None
        return len(self._spans[shard][0])

    def _spans_of(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._spans:
            self._spans[shard] = scan_shard(self.shards[shard])
        return self._spans[shard]

    def _split_rows(self, shards: list[Shard], counts: list[int], split: str) -> np.ndarray:
        """The items of a split: tagged shards by their tag, the items of untagged ones split
        like a folder's files."""
        ranges = [np.arange(self.offsets[k], self.offsets[k + 1]) for k in range(len(shards))]
        untagged = np.concatenate([ranges[k] for k, s in enumerate(shards) if s.split is None] or [np.zeros(0, int)])
        if split == "all":
            return np.arange(self.offsets[-1], dtype=np.int64)
        tagged = [ranges[k] for k, s in enumerate(shards) if s.split == split]
        held = untagged[pick_split(split_indices(len(untagged)), split, len(untagged))] if len(untagged) else untagged
        return np.sort(np.concatenate([*tagged, held])).astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def _file_of(self, position: int) -> int:
        return int(self.rows[position])

    def _locate(self, item: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.offsets, item, side="right")) - 1
        return shard, item - int(self.offsets[shard])

    def _read(self, item: int) -> tuple[Image.Image, dict[str, Any]]:
        shard, local = self._locate(item)
        starts, ends = self._spans_of(shard)
        if local >= len(starts):
            raise ValueError(f"the shard holds {len(starts)} readable samples, not {local + 1} (cut short?)")
        members = read_sample(self.shards[shard], int(starts[local]), int(ends[local]))
        extension = image_member(members)
        if extension is None:
            raise ValueError(f"no image member (found {', '.join(sorted(members)) or 'none'})")
        image = read_rgb(io.BytesIO(members[extension]), self.max_pixels)
        if self.captioned:
            if "txt" not in members:
                raise ValueError("no .txt caption member")
            return image, {"caption": members["txt"].decode("utf-8")}
        return image, {"label": int(members["cls"].decode()) if "cls" in members else 0}

    def _fields(self, position: int) -> dict[str, Any]:
        return {}

    def _file_name(self, file: int) -> str:
        shard, local = self._locate(file)
        return f"{self.shards[shard].name} sample {local}"

    def summary(self) -> str:
        skipped = self.skipped_summary()
        items = f"{len(self)} items in {len(self.shards)} shards"
        return f"{self.spec} ({self.split} split): {items}" + (f"; {skipped}" if skipped else "")


class _ShardCaptions(StringSequence):
    def __init__(self, shards: ShardSet) -> None:
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def string(self, index: int) -> str:
        return self.shards.caption_of(int(self.shards.rows[index]))

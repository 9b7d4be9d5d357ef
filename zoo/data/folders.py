"""A user's own data, read lazily: an image folder (class subfolders become labels) and a
caption set (images and captions.jsonl or captions.csv).

Making one lists the folder (names only) and reads its first item; every other image is
decoded when it is read, in a DataLoader worker: converted to RGB (`zoo.data.images`),
fitted to the training size and augmented (`zoo.data.augment`). Files that cannot be read
(corrupt, not an image, more pixels than $ZOO_MAX_IMAGE_PIXELS) are skipped and counted
when they are read, as zoo.data.sources describes; what the listing itself leaves out
(images outside the class folders, caption lines without an image) is counted and logged
once. A folder with no image file, or none readable, is a DataError.

The train/test split is a fixed stratified 90/10 of the listed files (zoo.data.base), the
same in every process and for the shards `zoo data pack` writes from the folder.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image

from zoo.config import AugmentConfig
from zoo.data.base import check_split, pick_split, split_indices
from zoo.data.images import read_rgb
from zoo.data.sources import LazyImages, Picked, Skipped, StringTable, nothing_readable, one_line
from zoo.errors import DataError
from zoo.runtime.images import IMAGE_SUFFIXES

CAPTION_FILES = ("captions.jsonl", "captions.csv")
FOLDER_HINT = "Put .png/.jpg images in it, or in one subfolder per class."
CAPTION_HINT = "List images that exist in the caption file."


def existing_folder(path: str | Path, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} {str(root)!r} is not a directory; pass a folder of images")
    return root


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image_name(name: str) -> bool:
    return _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def image_names(folder: Path) -> list[str]:
    """The image files under `folder` (any depth, hidden ones left out), as paths relative
    to it, ordered like sorted pathlib paths (by their parts)."""
    found: list[str] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(folder / relative if relative else folder) as entries:
            for entry in entries:
                if not _visible(entry.name):
                    continue
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir():
                    pending.append(name)
                elif _is_image_name(entry.name) and entry.is_file():
                    found.append(name)
    found.sort(key=lambda name: name.split("/"))
    return found


@dataclass(frozen=True)
class FolderListing:
    """Every image file of a folder: `paths[i]` (relative) has label `labels[i]`."""

    class_names: list[str]
    paths: StringTable
    labels: np.ndarray  # (N,) int64
    skipped: Skipped  # loose images next to class folders


def list_folder(root: Path) -> FolderListing:
    """Class folders are the visible subfolders holding images (at any depth), sorted; with
    none, the folder's own images form one unlabelled class. Raises DataError if empty."""
    with os.scandir(root) as entries:
        children = sorted((entry.name, entry.is_dir()) for entry in entries if _visible(entry.name))
    loose = [name for name, is_dir in children if not is_dir and _is_image_name(name) and (root / name).is_file()]
    class_names: list[str] = []
    counts: list[int] = []

    def class_members() -> Iterator[str]:  # one class folder's names at a time: no list of them all
        for name, is_dir in children:
            members = image_names(root / name) if is_dir else []
            if members:
                class_names.append(name)
                counts.append(len(members))
                yield from (f"{name}/{member}" for member in members)

    paths = StringTable(class_members())
    skipped: Skipped = []
    if class_names:
        skipped = [(name, "outside the class folders") for name in loose]  # skipped, not guessed
        labels = np.repeat(np.arange(len(class_names), dtype=np.int64), counts)
    else:
        paths = StringTable(loose)
        labels = np.zeros(len(paths), dtype=np.int64)
    if not len(paths):
        raise nothing_readable(str(root), skipped, FOLDER_HINT)
    return FolderListing(class_names, paths, labels, skipped)


def folder_rows(listing: FolderListing, split: str) -> np.ndarray:
    """The files of a split: a fixed 90/10 split of the listing, stratified by class."""
    count = len(listing.paths)
    return pick_split(split_indices(count, labels=listing.labels), split, count)


class ImageFolder(LazyImages):
    """Items {"image": (3, size, size) in [-1, 1], "label": int}.

    Labels are the indices of the sorted class subfolder names (`class_names`); images in
    deeper folders belong to their top-level class folder. A folder without subfolders is
    one unlabelled class: every label is 0 and `class_names` is empty. "train" and "test"
    are a fixed stratified 90/10 split of the listed files; "all" is every file.
    """

    hint = FOLDER_HINT

    def __init__(
        self,
        path: str | Path,
        size: int,
        split: str = "all",
        seed: int = 0,
        augment: AugmentConfig | None = None,
    ) -> None:
        check_split(split)
        self.root = existing_folder(path, "image folder")
        listing = list_folder(self.root)
        self.class_names = listing.class_names
        self._all_paths = listing.paths
        count = len(listing.paths)
        self.rows = folder_rows(listing, split)
        self.paths = Picked(listing.paths, self.rows)
        self.labels = listing.labels[self.rows]
        super().__init__(
            where=str(self.root),
            size=size,
            split=split,
            seed=seed,
            augment=augment,
            files=count,
            listing_skipped=listing.skipped,
        )
        self.check_readable()

    def __len__(self) -> int:
        return len(self.rows)

    def _file_of(self, position: int) -> int:
        return int(self.rows[position])

    def _read(self, file: int) -> tuple[Image.Image, dict[str, Any]]:
        return read_rgb(self.root / self._all_paths[file], self.max_pixels), {}

    def _fields(self, position: int) -> dict[str, Any]:
        return {"label": int(self.labels[position])}

    def _file_name(self, file: int) -> str:
        return self._all_paths[file]

    def summary(self) -> str:
        classes = f" in {len(self.class_names)} classes" if self.class_names else ""
        skipped = self.skipped_summary()
        return f"{self.root} ({self.split} split): {len(self)} images{classes}" + (f"; {skipped}" if skipped else "")


def _inside(image: str) -> bool:
    """Whether a caption file's image path stays inside the caption folder (no `..`, not absolute)."""
    path = PurePath(image)
    return not (path.is_absolute() or path.anchor or ".." in path.parts)


def _caption_records(root: Path, skipped: Skipped) -> Any:
    """(where, record) for every line of captions.jsonl (else captions.csv) that names something."""
    jsonl, csv_file = (root / name for name in CAPTION_FILES)
    if jsonl.is_file():
        with jsonl.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    try:
                        yield f"{jsonl.name} line {number}", json.loads(line)
                    except json.JSONDecodeError as error:
                        skipped.append((f"{jsonl.name} line {number}", f"not JSON ({one_line(error)})"))
    elif csv_file.is_file():
        with csv_file.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if not {"image", "caption"} <= set(reader.fieldnames or ()):
                found = ",".join(reader.fieldnames or ())
                raise DataError(f"{csv_file} needs a header row with the columns image,caption; found {found!r}")
            for number, row in enumerate(reader, start=2):
                yield f"{csv_file.name} line {number}", row
    else:
        raise DataError(f"{root} has no captions.jsonl or captions.csv; add one with an image and a caption per line")


def read_captions(root: Path, skipped: Skipped) -> list[tuple[str, str]]:
    """(image path, caption) pairs of the caption file; bad lines go to `skipped`."""
    pairs = []
    for where, record in _caption_records(root, skipped):
        image = record.get("image") if isinstance(record, dict) else None
        text = record.get("caption") if isinstance(record, dict) else None
        if not (isinstance(image, str) and image and isinstance(text, str) and text.strip()):
            skipped.append((where, 'needs a non-empty "image" and "caption"'))
        elif not _inside(image):
            skipped.append((where, f"image {image!r} is outside the caption folder"))
        else:
            pairs.append((image, text))
    return pairs


@dataclass(frozen=True)
class CaptionListing:
    """The images a caption file names that exist (`images`), and per readable caption line
    the row of its image (`image_rows`) and its text (`captions`)."""

    images: StringTable
    image_rows: np.ndarray  # (lines,) int64
    captions: StringTable
    skipped: Skipped


def list_captions(root: Path) -> CaptionListing:
    skipped: Skipped = []
    pairs = read_captions(root, skipped)
    row_of: dict[str, int] = {}
    inside = root.resolve()
    for image in dict.fromkeys(image for image, _ in pairs):
        if not (root / image).is_file():
            skipped.append((image, "file not found"))
        elif not (root / image).resolve().is_relative_to(inside):  # a symbolic link on the way out
            skipped.append((image, "a symbolic link that leads outside the caption folder"))
        else:
            row_of[image] = len(row_of)
    if not row_of:
        raise nothing_readable(str(root), skipped, CAPTION_HINT)
    kept = [(row_of[image], text) for image, text in pairs if image in row_of]
    image_rows = np.array([row for row, _ in kept], dtype=np.int64)
    return CaptionListing(StringTable(row_of), image_rows, StringTable(text for _, text in kept), skipped)


def caption_lines(listing: CaptionListing, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, lines) of a split: a fixed 90/10 split of the images, and the caption lines
    of the chosen images, in file order."""
    count = len(listing.images)
    chosen = np.sort(pick_split(split_indices(count), split, count))
    return chosen, np.flatnonzero(np.isin(listing.image_rows, chosen))


class CaptionSet(LazyImages):
    """Items {"image": (3, size, size) in [-1, 1], "caption": str}, one per caption line.

    Paths in the caption file are relative to the folder; paths that leave it are skipped.
    An image may have several captions; "train" and "test" split the images (a fixed
    90/10), so no image is in both.
    """

    what = "unreadable image or caption line"
    hint = CAPTION_HINT

    def __init__(
        self,
        path: str | Path,
        size: int,
        split: str = "all",
        seed: int = 0,
        augment: AugmentConfig | None = None,
    ) -> None:
        check_split(split)
        self.root = existing_folder(path, "caption set")
        listing = list_captions(self.root)
        self._images = listing.images
        count = len(listing.images)
        chosen, lines = caption_lines(listing, split)
        self.paths = Picked(listing.images, chosen)
        self.image_rows = listing.image_rows[lines]
        self.captions = Picked(listing.captions, lines)
        super().__init__(
            where=str(self.root),
            size=size,
            split=split,
            seed=seed,
            augment=augment,
            files=count,
            listing_skipped=listing.skipped,
        )
        self.check_readable()

    def __len__(self) -> int:
        return len(self.image_rows)

    def _file_of(self, position: int) -> int:
        return int(self.image_rows[position])

    def _read(self, file: int) -> tuple[Image.Image, dict[str, Any]]:
        return read_rgb(self.root / self._images[file], self.max_pixels), {}

    def _fields(self, position: int) -> dict[str, Any]:
        return {"caption": self.captions[position]}

    def _file_name(self, file: int) -> str:
        return self._images[file]

    def summary(self) -> str:
        skipped = self.skipped_summary()
        items = f"{len(self)} captions of {len(self.paths)} images"
        return f"{self.root} ({self.split} split): {items}" + (f"; {skipped}" if skipped else "")


def image_folder(
    path: str | Path, size: int, split: str = "all", seed: int = 0, augment: AugmentConfig | None = None
) -> ImageFolder:
    return ImageFolder(path, size, split, seed, augment)


def caption_set(
    path: str | Path, size: int, split: str = "all", seed: int = 0, augment: AugmentConfig | None = None
) -> CaptionSet:
    return CaptionSet(path, size, split, seed, augment)


def has_captions(path: Path) -> bool:
    return any((path / name).is_file() for name in CAPTION_FILES)

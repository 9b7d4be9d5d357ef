"""A user's own data: an image folder (class subfolders become labels) and a caption set.

Every image of the folder is decoded once, converted to RGB (see `zoo.data.images.to_rgb`),
centre-cropped and resized, and kept as uint8. Files that cannot be read (corrupt, not an
image, more pixels than $ZOO_MAX_IMAGE_PIXELS, named outside the folder) are skipped, counted (`.skipped`,
`.skipped_files`, `.summary()`) and reported in one log line; a folder with no readable
image is a DataError. The train/test split is made over the readable files only, so a
folder's held-out images are never all bad ones.

A folder's decoded contents are kept for the life of the process (a few folders, keyed by
every file's size and modification time), so checking the data before training, the
training stages and their held-out splits decode it once and report its skips once.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from zoo.data.base import check_split, pick_split, split_indices, uint8_to_tensor
from zoo.data.images import is_image_file, read_rgb, square_resize
from zoo.errors import DataError
from zoo.runtime.images import max_image_pixels

logger = logging.getLogger("zoo.data")

CAPTION_FILES = ("captions.jsonl", "captions.csv")
CACHED_FOLDERS = 4  # decoded folders kept per process: content and style of a run, with room to spare
Skipped = list[tuple[str, str]]  # (path relative to the folder, why it was skipped)
Fingerprint = tuple[tuple[str, int, int], ...]  # (relative path, size, mtime_ns) of every file


def _existing_folder(path: str | Path, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} {str(root)!r} is not a directory; pass a folder of images")
    return root


def _fingerprint(root: Path) -> Fingerprint:
    """What makes a cached decode of `root` stale: any file added, removed or rewritten."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class _Decoded:
    """The readable images of a list of files: row i of `images` is `paths[i]`."""

    paths: list[str]
    images: np.ndarray  # (N, size, size, 3) uint8


def _decode(root: Path, relative_paths: list[str], size: int, skipped: Skipped) -> _Decoded:
    """Decode every file; the ones that fail go to `skipped`."""
    max_pixels = max_image_pixels()  # once: a bad $ZOO_MAX_IMAGE_PIXELS is an error, not a skip per file
    paths, images = [], []
    for relative in relative_paths:
        path = root / relative
        if not path.is_file():
            skipped.append((relative, "file not found"))
            continue
        try:
            images.append(square_resize(read_rgb(path, max_pixels), size))
        except Exception as error:  # Pillow raises many types for bad files; none is fatal here
            skipped.append((relative, _one_line(error)))
            continue
        paths.append(relative)
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)
    return _Decoded(paths, stacked)


def _report(root: Path, skipped: Skipped, what: str) -> None:
    """One warning line for all of a folder's skipped files: `what` is a singular noun."""
    if skipped:
        logger.warning("%s", _skipped_text(skipped, what, f" in {root}"))


def _skipped_text(skipped: Skipped, what: str, where: str = "") -> str:
    first, reason = skipped[0]
    noun = what if len(skipped) == 1 else f"{what}s"
    return f"skipped {len(skipped)} {noun}{where} (first: {first}: {reason})"


def _empty(root: Path, skipped: Skipped, hint: str) -> DataError:
    detail = f"; skipped {len(skipped)} (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return DataError(f"no readable images in {root}{detail}. {hint}")


def _summary(dataset: ImageFolder | CaptionSet, items: str, what: str) -> str:
    """One line for the user: what was read, from where, and what was skipped."""
    skipped = f"; {_skipped_text(dataset.skipped_files, what)}" if dataset.skipped_files else ""
    return f"{dataset.root} ({dataset.split} split): {items}{skipped}"


@dataclass(frozen=True)
class _FolderContents:
    class_names: list[str]
    decoded: _Decoded
    labels: np.ndarray  # (N,) int64, one per decoded image
    skipped: Skipped


def _folder_files(root: Path, skipped: Skipped) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (relative path, label) of every image file; loose files next to class
    folders have no class and go to `skipped`."""
    class_folders = sorted(
        child
        for child in root.iterdir()
        if child.is_dir() and not child.name.startswith(".") and any(map(is_image_file, child.rglob("*")))
    )
    files: list[tuple[str, int]] = []
    for label, folder in enumerate(class_folders):
        members = sorted(p for p in folder.rglob("*") if is_image_file(p))
        files += [(p.relative_to(root).as_posix(), label) for p in members]
    loose = sorted(p.name for p in root.iterdir() if is_image_file(p))
    if not class_folders:
        return [], [(name, 0) for name in loose]
    skipped += [(name, "outside the class folders") for name in loose]  # skipped, not guessed
    return [folder.name for folder in class_folders], files


@functools.lru_cache(maxsize=CACHED_FOLDERS)
def _folder_contents(root: Path, size: int, fingerprint: Fingerprint) -> _FolderContents:
    skipped: Skipped = []
    class_names, files = _folder_files(root, skipped)
    decoded = _decode(root, [relative for relative, _ in files], size, skipped)
    if not decoded.paths:
        raise _empty(root, skipped, "Put .png/.jpg images in it, or in one subfolder per class.")
    _report(root, skipped, "unreadable image")
    label_of = dict(files)
    labels = np.array([label_of[relative] for relative in decoded.paths], dtype=np.int64)
    return _FolderContents(class_names, decoded, labels, skipped)


class ImageFolder(Dataset):
    """Items {"image": (3, size, size) in [-1, 1], "label": int}.

    Labels are the indices of the sorted class subfolder names (`class_names`); images in
    deeper folders belong to their top-level class folder. A folder without subfolders is
    one unlabelled class: every label is 0 and `class_names` is empty. "train" and "test"
    are a fixed stratified 90/10 split of the readable files; "all" is every readable file.
    """

    def __init__(self, path: str | Path, size: int, split: str = "all") -> None:
        check_split(split)
        self.root = _existing_folder(path, "image folder")
        self.size, self.split = size, split
        contents = _folder_contents(self.root, size, _fingerprint(self.root))
        self.class_names = contents.class_names
        self.skipped_files: Skipped = list(contents.skipped)
        count = len(contents.labels)
        self.image_rows = pick_split(split_indices(count, labels=contents.labels), split, count)
        self.paths = [contents.decoded.paths[row] for row in self.image_rows]
        self.labels = contents.labels[self.image_rows]
        self.images = contents.decoded.images  # every readable image, shared by the splits

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def summary(self) -> str:
        classes = f" in {len(self.class_names)} classes" if self.class_names else ""
        return _summary(self, f"{len(self)} images{classes}", "unreadable image")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": uint8_to_tensor(self.images[self.image_rows[index]]), "label": int(self.labels[index])}


def _inside(image: str) -> bool:
    """Whether a caption file's image path stays inside the caption folder (no `..`, not absolute)."""
    path = PurePath(image)
    return not (path.is_absolute() or path.anchor or ".." in path.parts)


def _read_captions(root: Path, skipped: Skipped) -> list[tuple[str, str]]:
    """(image path, caption) pairs from captions.jsonl, else captions.csv; bad lines are skipped."""
    jsonl, csv_file = (root / name for name in CAPTION_FILES)
    rows: list[tuple[str, Any]] = []  # (where, record) for every line that names something
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{jsonl.name} line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    skipped.append((f"{jsonl.name} line {number}", f"not JSON ({_one_line(error)})"))
    elif csv_file.is_file():
        with csv_file.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if not {"image", "caption"} <= set(reader.fieldnames or ()):
                found = ",".join(reader.fieldnames or ())
                raise DataError(f"{csv_file} needs a header row with the columns image,caption; found {found!r}")
            rows = [(f"{csv_file.name} line {number}", row) for number, row in enumerate(reader, start=2)]
    else:
        raise DataError(f"{root} has no captions.jsonl or captions.csv; add one with an image and a caption per line")
    pairs = []
    for where, record in rows:
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
class _CaptionContents:
    decoded: _Decoded
    pairs: list[tuple[int, str]]  # (row of the image in decoded, caption) per readable caption line
    skipped: Skipped


@functools.lru_cache(maxsize=CACHED_FOLDERS)
def _caption_contents(root: Path, size: int, fingerprint: Fingerprint) -> _CaptionContents:
    skipped: Skipped = []
    pairs = _read_captions(root, skipped)
    decoded = _decode(root, list(dict.fromkeys(image for image, _ in pairs)), size, skipped)
    if not decoded.paths:
        raise _empty(root, skipped, "List images that exist in the caption file.")
    _report(root, skipped, "unreadable image or caption line")
    row_of_path = {relative: row for row, relative in enumerate(decoded.paths)}
    readable = [(row_of_path[image], text) for image, text in pairs if image in row_of_path]
    return _CaptionContents(decoded, readable, skipped)


class CaptionSet(Dataset):
    """Items {"image": (3, size, size) in [-1, 1], "caption": str}, one per caption line.

    Paths in the caption file are relative to the folder; paths that leave it are skipped.
    An image may have several captions; "train" and "test" split the readable images (a
    fixed 90/10), so no image is in both.
    """

    def __init__(self, path: str | Path, size: int, split: str = "all") -> None:
        check_split(split)
        self.root = _existing_folder(path, "caption set")
        self.size, self.split = size, split
        contents = _caption_contents(self.root, size, _fingerprint(self.root))
        self.skipped_files: Skipped = list(contents.skipped)
        count = len(contents.decoded.paths)
        chosen = set(pick_split(split_indices(count), split, count).tolist())
        kept = [(row, text) for row, text in contents.pairs if row in chosen]
        self.paths = [contents.decoded.paths[row] for row in sorted(chosen)]
        self.images = contents.decoded.images  # every readable image, shared by the splits
        self.image_rows = np.array([row for row, _ in kept], dtype=np.int64)
        self.captions = [text for _, text in kept]

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def summary(self) -> str:
        return _summary(self, f"{len(self)} captions of {len(self.paths)} images", "unreadable image or caption line")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": uint8_to_tensor(self.images[self.image_rows[index]]), "caption": self.captions[index]}


def image_folder(path: str | Path, size: int, split: str = "all") -> ImageFolder:
    return ImageFolder(path, size, split)


def caption_set(path: str | Path, size: int, split: str = "all") -> CaptionSet:
    return CaptionSet(path, size, split)


def has_captions(path: Path) -> bool:
    return any((path / name).is_file() for name in CAPTION_FILES)

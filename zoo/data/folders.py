"""A user's own data: an image folder (class subfolders become labels) and a caption set.

Every image is decoded once when the data set is made, converted to RGB (see
`zoo.data.images.to_rgb`), centre-cropped and resized, and kept as uint8. Files that cannot
be read are skipped, counted (`.skipped`, `.skipped_files`) and reported in one log line;
a data set with no readable image is a DataError.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from zoo.data.base import check_split, pick_split, split_indices, uint8_to_tensor
from zoo.data.images import is_image_file, read_rgb, square_resize
from zoo.errors import DataError

logger = logging.getLogger("zoo.data")

CAPTION_FILES = ("captions.jsonl", "captions.csv")
Skipped = list[tuple[str, str]]  # (path relative to the folder, why it was skipped)


def _existing_folder(path: str | Path, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} {str(root)!r} is not a directory; pass a folder of images")
    return root


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _decode(root: Path, relative_paths: list[str], size: int, skipped: Skipped) -> dict[str, np.ndarray]:
    """{relative path: (size, size, 3) uint8} of the files that decode; the rest go to `skipped`."""
    decoded = {}
    for relative in relative_paths:
        path = root / relative
        if not path.is_file():
            skipped.append((relative, "file not found"))
            continue
        try:
            decoded[relative] = square_resize(read_rgb(path), size)
        except Exception as error:  # Pillow raises many types for bad files; none is fatal here
            skipped.append((relative, _one_line(error)))
    return decoded


def _report(root: Path, skipped: Skipped, what: str) -> None:
    """One warning line for all of a data set's skipped files: `what` is a singular noun."""
    if skipped:
        first, reason = skipped[0]
        noun = what if len(skipped) == 1 else f"{what}s"
        logger.warning("skipped %d %s in %s (first: %s: %s)", len(skipped), noun, root, first, reason)


def _empty(root: Path, split: str, skipped: Skipped, hint: str) -> DataError:
    detail = f"; skipped {len(skipped)} (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return DataError(f"no readable images in the {split!r} split of {root}{detail}. {hint}")


class ImageFolder(Dataset):
    """Items {"image": (3, size, size) in [-1, 1], "label": int}.

    Labels are the indices of the sorted class subfolder names (`class_names`); images in
    deeper folders belong to their top-level class folder. A folder without subfolders is
    one unlabelled class: every label is 0 and `class_names` is empty. "train" and "test"
    are a fixed stratified 90/10 split of the files; "all" is every file.
    """

    def __init__(self, path: str | Path, size: int, split: str = "all") -> None:
        check_split(split)
        self.root = _existing_folder(path, "image folder")
        self.size, self.split = size, split
        self.skipped_files: Skipped = []
        class_folders = sorted(
            child for child in self.root.iterdir()
            if child.is_dir() and not child.name.startswith(".") and any(map(is_image_file, child.rglob("*")))
        )
        self.class_names = [folder.name for folder in class_folders]
        files: list[tuple[str, int]] = []
        for label, folder in enumerate(class_folders):
            members = sorted(p for p in folder.rglob("*") if is_image_file(p))
            files += [(p.relative_to(self.root).as_posix(), label) for p in members]
        loose = sorted(p.name for p in self.root.iterdir() if is_image_file(p))
        if class_folders:
            # Loose files next to class folders have no class; they are skipped, not guessed.
            self.skipped_files += [(name, "outside the class folders") for name in loose]
        else:
            files = [(name, 0) for name in loose]
        labels = [label for _, label in files]
        chosen = pick_split(split_indices(len(files), labels=labels), split, len(files))
        decoded = _decode(self.root, [files[i][0] for i in chosen], size, self.skipped_files)
        kept = [files[i] for i in chosen if files[i][0] in decoded]
        if not kept:
            hint = "Put .png/.jpg images in it, or in one subfolder per class."
            raise _empty(self.root, split, self.skipped_files, hint)
        _report(self.root, self.skipped_files, "unreadable image")
        self.paths = [relative for relative, _ in kept]
        self.labels = np.array([label for _, label in kept], dtype=np.int64)
        self.images = np.stack([decoded[relative] for relative in self.paths])  # (N, size, size, 3) uint8

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": uint8_to_tensor(self.images[index]), "label": int(self.labels[index])}


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
        if isinstance(image, str) and image and isinstance(text, str) and text.strip():
            pairs.append((image, text))
        else:
            skipped.append((where, 'needs a non-empty "image" and "caption"'))
    return pairs


class CaptionSet(Dataset):
    """Items {"image": (3, size, size) in [-1, 1], "caption": str}, one per caption line.

    Paths in the caption file are relative to the folder. An image may have several
    captions; "train" and "test" split by image (a fixed 90/10), so no image is in both.
    """

    def __init__(self, path: str | Path, size: int, split: str = "all") -> None:
        check_split(split)
        self.root = _existing_folder(path, "caption set")
        self.size, self.split = size, split
        self.skipped_files: Skipped = []
        pairs = _read_captions(self.root, self.skipped_files)
        unique_images = list(dict.fromkeys(image for image, _ in pairs))
        chosen = pick_split(split_indices(len(unique_images)), split, len(unique_images))
        decoded = _decode(self.root, [unique_images[i] for i in chosen], size, self.skipped_files)
        kept = [(image, text) for image, text in pairs if image in decoded]
        if not kept:
            raise _empty(self.root, split, self.skipped_files, "List images that exist in the caption file.")
        _report(self.root, self.skipped_files, "unreadable image or caption line")
        self.paths = list(dict.fromkeys(image for image, _ in kept))
        row_of_path = {relative: row for row, relative in enumerate(self.paths)}
        self.images = np.stack([decoded[relative] for relative in self.paths])  # (N_images, size, size, 3)
        self.image_rows = np.array([row_of_path[image] for image, _ in kept], dtype=np.int64)
        self.captions = [text for _, text in kept]

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

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

"""What the lazy image sources (zoo.data.folders, zoo.data.shards) share.

A lazy source is listed once (names and labels, no pixel decoded) and decodes an item when
it is read, usually in a DataLoader worker process. So that memory does not grow with the
data set, and forked workers do not copy it page by page, a listing holds no Python object
per item: names live in a `StringTable` (one UTF-8 buffer and an offsets array), labels in
numpy arrays.

Reading item i:

    for position in i, i+1, i+2, ... (wrapping around the split):
        file = the file (image) of that position
        if file is marked unreadable: next position
        try to decode file; on failure: mark it unreadable, next position
        return the decoded image, fitted and augmented (zoo.data.augment), with position's fields
    no readable file at all: DataError

So an unreadable file never stops a worker: the item is replaced by the next readable one,
the same one in every process, and the file is marked in a table of one byte per file in
shared memory, which every worker and the training process see. `unreadable_files()` reads
it; the trainer merges the tables of all ranks and reports them once (zoo.data.loader).
Each source reads its first item when it is made, so a source with nothing readable is a
DataError before any training step.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zoo.config import AugmentConfig
from zoo.data.augment import current_epoch, fit, held_out, item_generator
from zoo.data.base import check_split, uint8_to_tensor
from zoo.errors import DataError
from zoo.runtime.images import max_image_pixels

logger = logging.getLogger("zoo.data")

Skipped = list[tuple[str, str]]  # (name, why it was skipped)
_reported: set[str] = set()  # warnings this process has logged (a folder listed for train and test warns once)


class StringSequence(Sequence[str]):
    """A read-only sequence of strings computed per index: subclasses define `__len__` and
    `string(index)` for 0 <= index < len; slicing, negative indices and iteration are here."""

    def string(self, index: int) -> str:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self.string(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.string(index)

    def __iter__(self) -> Iterator[str]:
        return (self.string(i) for i in range(len(self)))


class StringTable(StringSequence):
    """Strings stored as one UTF-8 buffer plus an offsets array."""

    def __init__(self, strings: Iterable[str] = ()) -> None:
        buffer, offsets = bytearray(), array("q", [0])
        for text in strings:
            buffer += text.encode("utf-8")
            offsets.append(len(buffer))
        self._buffer = bytes(buffer)
        self._offsets = np.array(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def string(self, index: int) -> str:
        return self._buffer[self._offsets[index] : self._offsets[index + 1]].decode("utf-8")

    def __repr__(self) -> str:
        return f"StringTable({len(self)} strings)"


class Picked(StringSequence):
    """The strings of a table at some rows (a split's paths), without copying them."""

    def __init__(self, table: Sequence[str], rows: np.ndarray) -> None:
        self.table, self.rows = table, rows

    def __len__(self) -> int:
        return len(self.rows)

    def string(self, index: int) -> str:
        return self.table[int(self.rows[index])]

    def __repr__(self) -> str:
        return f"Picked({len(self)} of {len(self.table)})"


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def skipped_text(skipped: Skipped, what: str, where: str = "") -> str:
    first, reason = skipped[0]
    noun = what if len(skipped) == 1 else f"{what}s"
    return f"skipped {len(skipped)} {noun}{where} (first: {first}: {reason})"


def warn_once(message: str) -> None:
    if message not in _reported:
        _reported.add(message)
        logger.warning("%s", message)


def nothing_readable(where: str, skipped: Skipped, hint: str) -> DataError:
    detail = f"; skipped {len(skipped)} (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return DataError(f"no readable images in {where}{detail}. {hint}")


class LazyImages(Dataset):
    """Base of the lazy sources: items {"image": (3, size, size) in [-1, 1], ...fields}.

    A subclass lists its files, then calls `__init__` here, and defines how a position of
    its split maps to a file (`_file_of`), how a file is read (`_read`: the decoded image
    and any fields the file holds; any exception counts as unreadable), the fields the
    listing gives a position (`_fields`) and a file's name for messages (`_file_name`).
    `listing_skipped` holds what its listing left out.
    """

    what = "unreadable image"  # the noun of the skip report
    hint = "Put .png/.jpg images in it."  # how to fix a source with nothing readable

    def __init__(
        self,
        *,
        where: str,
        size: int,
        split: str,
        seed: int,
        augment: AugmentConfig | None,
        files: int,
        listing_skipped: Skipped,
    ) -> None:
        self.where, self.size, self.split, self.seed = where, size, check_split(split), seed
        augment = augment or AugmentConfig()
        self.augment = augment if split == "train" else held_out(augment)
        self.max_pixels = max_image_pixels()  # once: a bad $ZOO_MAX_IMAGE_PIXELS is an error, not a skip per file
        self.listing_skipped = listing_skipped
        # one byte per file, in shared memory: DataLoader workers mark, every process reads
        self.unreadable = torch.zeros(max(files, 1), dtype=torch.uint8).share_memory_()
        if listing_skipped:
            warn_once(skipped_text(listing_skipped, "file", f" listing {where}"))

    # what a subclass defines -------------------------------------------------------------

    def __len__(self) -> int:
        raise NotImplementedError

    def _file_of(self, position: int) -> int:
        raise NotImplementedError

    def _read(self, file: int) -> tuple[Image.Image, dict[str, Any]]:
        raise NotImplementedError

    def _fields(self, position: int) -> dict[str, Any]:
        raise NotImplementedError

    def _file_name(self, file: int) -> str:
        raise NotImplementedError

    # reading -----------------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} items")
        index %= count
        for step in range(count):
            position = (index + step) % count
            file = self._file_of(position)
            if self.unreadable[file]:
                continue
            try:
                image, found = self._read(file)
            except Exception:  # Pillow and tarfile raise many types for bad input; none stops training
                self.unreadable[file] = 1
                continue
            pixels = fit(image, self.size, self.augment, item_generator(self.seed, current_epoch(), index))
            return {"image": uint8_to_tensor(pixels), **self._fields(position), **found}
        raise nothing_readable(f"{self.where} ({self.split} split)", self.skipped_files, self.hint)

    def check_readable(self) -> None:
        """Read the first item now: a source with nothing readable fails before any work."""
        if len(self) == 0:
            raise nothing_readable(f"{self.where} ({self.split} split)", self.listing_skipped, self.hint)
        self[0]

    # what was skipped --------------------------------------------------------------------

    def unreadable_files(self) -> np.ndarray:
        """The files marked unreadable so far by any process reading this source."""
        return np.flatnonzero(self.unreadable.numpy())

    def why_unreadable(self, file: int) -> str:
        try:
            self._read(file)
        except Exception as error:
            return one_line(error)
        return "unreadable when read"  # e.g. a file that was fixed since

    @property
    def skipped_files(self) -> Skipped:
        """What the listing left out, then the files found unreadable (decoded again to say why)."""
        return self.listing_skipped + [
            (self._file_name(int(file)), self.why_unreadable(int(file))) for file in self.unreadable_files()
        ]

    @property
    def skipped(self) -> int:
        return len(self.listing_skipped) + len(self.unreadable_files())

    def skipped_summary(self, unreadable: np.ndarray | None = None) -> str | None:
        """ "skipped N unreadable images (first: NAME: WHY)", or None for nothing skipped.
        `unreadable` is the table of every rank merged (zoo.data.loader), default this process's."""
        marked = self.unreadable_files() if unreadable is None else np.flatnonzero(unreadable)
        count = len(marked) + len(self.listing_skipped)
        if not count:
            return None
        if len(marked):
            first = (self._file_name(int(marked[0])), self.why_unreadable(int(marked[0])))
        else:
            first = self.listing_skipped[0]
        noun = self.what if count == 1 else f"{self.what}s"
        return f"skipped {count} {noun} (first: {first[0]}: {first[1]})"

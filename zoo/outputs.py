"""What sampling returns, shared by the torch and onnxruntime paths (no torch here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from zoo.errors import ConfigError


@dataclass
class SampleOutput:
    """Images as (N, H, W, 3) uint8 and/or texts; `extras` carries arrays a caller may
    want to compare (e.g. the sampled token indices)."""

    images: np.ndarray | None = None
    texts: list[str] | None = None
    columns: int | None = None  # grid width; default: about square
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def grid(self) -> Image.Image:
        if self.images is None or len(self.images) == 0:
            raise ValueError("this sample holds no images")
        return image_grid(self.images, self.columns)

    def save(self, out: Path) -> None:
        """Write the image grid to `out` (a .png) and texts, if any, beside it."""
        out = Path(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            if self.images is not None:
                self.grid().save(out)
            if self.texts is not None:
                text_path = out if self.images is None else out.with_suffix(".txt")
                text_path.write_text("\n".join(self.texts) + "\n")
        except OSError as error:  # a failed write (a full disk) does not name its file
            raise OSError(error.errno, error.strerror, str(error.filename or out)) from None


def reconstruction_grid(inputs: np.ndarray, reconstructions: np.ndarray, **extras: np.ndarray) -> SampleOutput:
    """Two rows of (N, H, W, 3) uint8 images: the inputs above, their reconstructions below."""
    if inputs.shape != reconstructions.shape:
        raise ValueError(f"inputs {inputs.shape} and reconstructions {reconstructions.shape} differ in shape")
    return SampleOutput(images=np.concatenate([inputs, reconstructions]), columns=len(inputs), extras=dict(extras))


# What --out may be: formats Pillow writes in every build, without extra options.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def check_output_path(out: str | Path) -> Path:
    """Refuse an --out that sampling could not be saved to, before the sampling."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as {out / 'sample.png'}")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        given = f"{out.suffix!r}" if out.suffix else "no extension"
        raise ConfigError(f"--out {out} has {given}; give an image file name ending in {', '.join(OUTPUT_SUFFIXES)}")
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8."""
    images = np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
    return images.astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2, min_side: int = 64) -> Image.Image:
    """Tile (N, H, W, 3) uint8 images into one picture with a white border (none around a
    single image, which is saved as it is); images smaller than `min_side` are enlarged by
    whole pixels (nearest) so a 16px digit is visible."""
    if len(images) == 1:
        pad = 0
    factor = max(1, min_side // max(images.shape[1], images.shape[2]))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    n, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = image
    return Image.fromarray(canvas)

"""Images whose headers lie about their size, as an attacker sends them: a few hundred bytes
declaring billions of pixels. Made by patching the size fields of a small real image."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_declaring(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR (with a valid CRC) declares width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = 8 + 8  # signature, then the IHDR chunk's length and type
    data[start : start + 8] = struct.pack(">II", width, height)
    data[start + 13 : start + 17] = struct.pack(">I", zlib.crc32(bytes(data[start - 4 : start + 13])))
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A small real GIF whose screen and image descriptors declare width x height."""
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    descriptor = data.index(b"\x2c")  # the image descriptor: 0x2C, left, top, width, height
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)

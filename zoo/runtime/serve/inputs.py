"""A sample request -> the model's validated SampleOptions.

Two body forms:

- `application/json`: the options object; an image option (one the plugin marks with
  zoo.config.IMAGE_INPUT) holds the image itself, as a `data:` URI or bare base64;
- `multipart/form-data`: an optional `options` part holding that JSON, and one file part
  per image, named after its option (repeat the name for an option that takes a list).

A client never names a file on the server: a string in an image option is always read as
image data, never as a path. The body is read into memory up to the size limit and the
multipart parts are collected in memory (python-multipart's streaming parser with our own
callbacks, not Starlette's UploadFile, which spools parts past 1 MB to a temporary file):
no upload touches the disk. Every image is sniffed with Pillow before the model sees it,
and refused with 413 when its header declares more pixels, or a longer side, than the server
takes: nothing is decoded before that.

The body is read on the event loop within a deadline (408 past it); everything after that
(JSON, multipart, base64, image headers, validation) is CPU work done in a worker thread
(`parse_request`), so a large body never stalls the other connections. JSON is refused with
400 when nested past MAX_JSON_DEPTH, when a number has over MAX_NUMBER_DIGITS digits, or when
it holds NaN or Infinity (not JSON; the option schemas refuse non-finite numbers too), and
with 413 when it holds over MAX_JSON_VALUES values.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import anyio
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from zoo.config import SampleOptionsBase, validate
from zoo.errors import DataError
from zoo.runtime.images import MAX_PIXELS_VARIABLE, data_uri, data_uri_bytes, is_data_uri, max_image_pixels
from zoo.runtime.serve.models import ServedModel

OPTIONS_PART = "options"  # the multipart part holding the options as JSON
MAX_JSON_DEPTH = 16  # sample options are flat: an object of values and lists
MAX_NUMBER_DIGITS = 400  # digits of one JSON number (Python's int() refuses past 4300 with ValueError)
# Values in one JSON body, counted by its commas before parsing: sample options hold a few
# hundred at most (256 captions or classes), images are single strings. The JSON parser
# and pydantic hold the GIL, so millions of tiny values would stall the event loop's thread
# for a second even off it.
MAX_JSON_VALUES = 65_536


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass
class Part:
    """One part of a multipart body, in memory."""

    name: str
    filename: str | None
    data: bytes


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass `limit` bytes, and with
    408 (closing the connection) unless it has all arrived within `timeout` seconds."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {int(declared)} bytes, over the limit of {limit}")
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # a chunked body declares no length: count as it arrives
                    raise RequestError(413, f"the request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(
            408, f"the request body did not arrive within {timeout:g} s; send it at once", {"Connection": "close"}
        ) from None
    return b"".join(chunks)


def parse_multipart(body: bytes, boundary: bytes) -> list[Part]:
    """A multipart/form-data body -> its parts, all in memory."""
    parts: list[Part] = []
    headers: dict[str, str] = {}
    header_name, header_value, data = bytearray(), bytearray(), bytearray()

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        header_name.extend(chunk[start:end])

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        header_value.extend(chunk[start:end])

    def on_header_end() -> None:
        headers[header_name.decode("latin-1").lower()] = header_value.decode("latin-1")
        header_name.clear()
        header_value.clear()

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.extend(chunk[start:end])

    def on_part_end() -> None:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        if b"name" not in disposition:
            raise RequestError(400, "a multipart part has no name (Content-Disposition: form-data; name=...)")
        filename = disposition.get(b"filename")
        parts.append(
            Part(
                disposition[b"name"].decode("utf-8", "replace"),
                filename.decode("utf-8", "replace") if filename is not None else None,
                bytes(data),
            )
        )

    callbacks: Any = {  # python-multipart's callback table is a TypedDict of these names
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as error:
        raise RequestError(400, f"the multipart body cannot be parsed ({error})") from None
    return parts


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise RequestError(400, f"a JSON number has {len(text)} digits, over the limit of {MAX_NUMBER_DIGITS}")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise RequestError(400, f"a JSON number has {len(text)} characters, over the limit of {MAX_NUMBER_DIGITS}")
    return float(text)


def _no_constant(name: str) -> Any:
    raise RequestError(400, f"{name} is not a JSON number: send a finite number")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def json_object(data: bytes, where: str) -> dict[str, Any]:
    if not data.strip():
        return {}
    if data.count(b",") >= MAX_JSON_VALUES:
        raise RequestError(413, f"{where} holds over {MAX_JSON_VALUES:,} values; sample options are far fewer")
    try:
        value = json.loads(data, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"{where} is not valid JSON ({error})") from None
    except RecursionError:
        raise RequestError(400, f"{where} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise RequestError(400, f"{where} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    if not isinstance(value, dict):
        raise RequestError(400, f"{where} must be a JSON object of sample options")
    return value


def image_data_uri(data: bytes, option: str, max_side: int) -> str:
    """Image bytes -> a `data:` URI for the sampling loop, after Pillow recognises them and
    their header declares at most `max_side` pixels a side and zoo's pixel limit in all."""
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                media_type = Image.MIME.get(image.format or "", "")
                width, height = image.size
    except Image.DecompressionBombError:
        raise RequestError(413, f"{option}: the image declares too many pixels to decode safely") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(415, f"{option}: not an image Pillow can read (send PNG, JPEG, WebP, ...)") from None
    if max(width, height) > max_side:
        raise RequestError(
            413, f"{option}: the image is {width}x{height}, over the server's limit of {max_side} pixels a side"
        )
    if width * height > limit:
        raise RequestError(
            413,
            f"{option}: the image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the server's "
            f"limit of {limit / 1e6:g} (${MAX_PIXELS_VARIABLE})",
        )
    return data_uri(data, media_type)


def json_image(value: Any, option: str) -> bytes:
    """An image option's JSON value (a data: URI or bare base64) -> its bytes; never a path."""
    if not isinstance(value, str):
        raise RequestError(422, f"{option}: give the image as a data: URI or base64 string")
    if is_data_uri(value):
        try:
            return data_uri_bytes(value, option)
        except DataError as error:
            raise RequestError(400, str(error)) from None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        raise RequestError(
            400, f"{option}: not base64 image data (the server reads no paths: send the image itself)"
        ) from None


def parse_request(body: bytes, content_type: str, model: ServedModel, max_image_side: int) -> SampleOptionsBase:
    """A request's body -> its options, images as data: URIs, validated by the model's
    SampleOptions (ConfigError, answered with 422, when they refuse). CPU work: run it off
    the event loop."""
    media_type, parameters = parse_options_header(content_type)
    images: dict[str, list[bytes]] = {}
    if media_type == b"multipart/form-data":
        if b"boundary" not in parameters:
            raise RequestError(400, "a multipart/form-data body needs a boundary parameter in its Content-Type")
        options: dict[str, Any] = {}
        for part in parse_multipart(body, parameters[b"boundary"]):
            if part.name == OPTIONS_PART and part.filename is None:
                options = json_object(part.data, f"the {OPTIONS_PART!r} part")
            elif part.name in model.image_options:
                images.setdefault(part.name, []).append(part.data)
            else:
                raise RequestError(400, f"unexpected form part {part.name!r}; {_expected_parts(model)}")
    elif media_type in (b"application/json", b""):
        options = json_object(body, "the request body")
    else:
        shown = media_type.decode("latin-1")[:100]
        raise RequestError(415, f"send application/json or multipart/form-data, not {shown!r}")

    for option, takes_list in model.image_options.items():
        if option in options and option in images:
            raise RequestError(400, f"{option}: given both in the options and as a file part; give it once")
        if option in options and options[option] is not None:
            value = options[option]
            images[option] = [json_image(item, option) for item in (value if isinstance(value, list) else [value])]
        if option in images:
            uris = [image_data_uri(data, option, max_image_side) for data in images[option]]
            if not takes_list and len(uris) != 1:
                raise RequestError(400, f"{option} takes one image, got {len(uris)}")
            options[option] = uris if takes_list else uris[0]
    # ConfigError (pydantic's message, one line) is answered with 422 by the app
    return validate(model.loaded.options_class, options, what="sample option")


def _expected_parts(model: ServedModel) -> str:
    images = ", ".join(sorted(model.image_options))
    if not images:
        return f"send the options as JSON, alone or as an {OPTIONS_PART!r} part ({model.name} takes no images)"
    return f"send an {OPTIONS_PART!r} part (JSON) and file parts named {images}"

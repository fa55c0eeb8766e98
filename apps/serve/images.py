"""Images in requests: ``data:`` URLs decoded under limits; remote URLs only when the server allows them.

Nothing a request says is read from the server's disk: ``file:`` URLs and paths are refused.
The pixel cap is checked from the image header before the pixels are decoded
(``vision.load_image``), so a small file that would decode to gigapixels (a decompression
bomb) costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from PIL import Image

from apps.serve.errors import APIError
from vision import ImageLoadError, load_image

_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)
REMOTE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 16_777_216
    """Width x height of one decoded image (4096 x 4096)."""
    max_bytes: int = 10 * 1024 * 1024
    """Encoded size of one image."""
    allow_remote: bool = False
    """Fetch http(s) image URLs (off: only data: URLs)."""


def decode_image_url(url: str, limits: ImageLimits, where: str) -> Image.Image:
    """The RGB image an ``image_url.url`` holds; ``APIError`` (400) naming ``where`` if it is unusable."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        encoded = _data_url_bytes(url, limits, where)
    elif scheme in ("http", "https"):
        if not limits.allow_remote:
            raise APIError(400, f"{where}: remote image URLs are not fetched by this server; send the image inline as a "
                           "data: URL (data:image/png;base64,...), or start the server with --allow-remote-images",
                           param=where, code="remote_image_refused")
        encoded = _fetch(url, limits, where)
    else:
        raise APIError(400, f"{where}: only data: URLs are read (data:image/png;base64,...); file paths and "
                       f"{scheme + ': ' if scheme else ''}URLs are not", param=where, code="invalid_image_url")
    try:
        return load_image(encoded, max_pixels=limits.max_pixels)
    except ImageLoadError as err:
        detail = str(err).split(": ", 1)[-1]  # load_image names "<N bytes of image data>"; say where instead
        detail = re.sub(r"\s*\(cannot identify image file <[^>]*>\)", " (not PNG, JPEG, GIF, WebP or another format PIL reads)",
                        detail)
        raise APIError(400, f"{where}: {detail}", param=where, code="invalid_image") from err


def _data_url_bytes(url: str, limits: ImageLimits, where: str) -> bytes:
    match = _DATA_URL.fullmatch(url)
    if match is None or ";base64" not in match["params"].lower():
        raise APIError(400, f"{where}: a data: URL must be base64-encoded, as data:image/png;base64,...",
                       param=where, code="invalid_image_url")
    mime = match["mime"].strip().lower()
    if mime and not mime.startswith("image/"):
        raise APIError(400, f"{where}: the data: URL holds {mime!r}, not an image (image/png, image/jpeg, ...)",
                       param=where, code="invalid_image")
    data = match["data"].strip()
    approximate = len(data) * 3 // 4
    if approximate > limits.max_bytes:
        raise APIError(400, f"{where}: the image is about {approximate} bytes, more than this server's limit of "
                       f"{limits.max_bytes} (--max-image-bytes); send a smaller image", param=where, code="image_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise APIError(400, f"{where}: the data: URL's base64 is not valid ({err})", param=where,
                       code="invalid_image") from err


def _fetch(url: str, limits: ImageLimits, where: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT_S) as response:  # noqa: S310 (http(s) only, checked above)
            data = response.read(limits.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise APIError(400, f"{where}: could not fetch the image ({err})", param=where, code="image_fetch_failed") from err
    if len(data) > limits.max_bytes:
        raise APIError(400, f"{where}: the image is more than this server's limit of {limits.max_bytes} bytes "
                       "(--max-image-bytes)", param=where, code="image_too_large")
    return data

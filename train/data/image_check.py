"""The image check before training: every image's data read to its end, cheaply, and remembered.

A header alone does not show a truncated file: a JPEG cut in half opens, reports its size and
fails only when its pixels are decoded, which in training happens at whatever step first draws
it. So the check reads each image's data through: a PNG's chunks are verified (CRCs and the
final chunk, no inflating; ~10x cheaper than decoding), a JPEG decodes at 1/8 scale (draft mode:
the whole entropy-coded stream is still read, so a cut one fails, at about half the cost), other
formats decode fully.

Files that passed are remembered in ``$VLM_CACHE/checked-images.txt`` by path, size and
modification time, so a resumed run or the next stage on the same data checks nothing again; an
edited or replaced file has another key and is checked anew. Embedded image bytes (parquet) are
checked every time: hashing them would cost about as much as the check.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from train.data.sample import ImageRef
from vision.preprocess import ImageLoadError
from vlm.atomic import atomic_write_text
from vlm.llm_source import default_cache_dir

CACHE_NAME = "checked-images.txt"
MAX_REMEMBERED = 1_000_000
"""Keys kept (33 bytes each, newest last); older ones are forgotten, and at worst checked again."""


def check_image(image: ImageRef, max_pixels: int) -> None:
    """Raise ``ImageLoadError`` (naming the file) unless ``image`` is an image within ``max_pixels`` whose data reads through."""
    name = f"{image}: " if isinstance(image, Path) else ""
    try:
        with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageLoadError(f"{name}{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
            if opened.format == "PNG":
                opened.verify()
            else:
                if opened.format == "JPEG":
                    opened.draft(opened.mode, (max(1, width // 8), max(1, height // 8)))
                opened.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}{err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}not a readable image ({err})") from err


class CheckedImages:
    """The image files already known to read through (see the module docstring)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_NAME
        try:
            self.known = dict.fromkeys(self.path.read_text(encoding="ascii").split())  # ordered: oldest first
        except (OSError, UnicodeDecodeError):
            self.known = {}  # no cache yet, or an unreadable one: check everything
        self.added = False

    @staticmethod
    def key(path: Path, max_pixels: int) -> str | None:
        try:
            stat = path.stat()
        except OSError:
            return None  # missing: check_image names it
        text = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{max_pixels}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def check(self, image: ImageRef, max_pixels: int) -> None:
        """``check_image``, skipped for a file that passed before."""
        key = self.key(image, max_pixels) if isinstance(image, Path) else None
        if key is not None and key in self.known:
            return
        check_image(image, max_pixels)
        if key is not None:
            self.known[key] = None
            self.added = True

    def save(self) -> None:
        """Write the cache (atomically); never fails the run: a cache that cannot be written only costs time."""
        if not self.added:
            return
        kept = list(self.known)[-MAX_REMEMBERED:]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, "\n".join(kept) + "\n")
        except OSError:
            pass
        self.added = False

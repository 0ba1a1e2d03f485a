"""Image and mask I/O through pyarrow filesystems: local paths and URIs alike.

Every decoding problem becomes an ``ItemError`` naming the file, so a stage can record it
and go on with the other images.

Colour policy of ``load_rgb``: alpha is dropped, not composited (the colour under a
transparent pixel is what the camera/editor stored, and compositing over an arbitrary
background would invent edges that a classifier could learn); 16-bit images are scaled
to 8 bit (v / 257, so 65535 -> 255), not clipped.
"""
from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageFile, UnidentifiedImageError

from wsss_ray.data.errors import ItemError
from wsss_ray.store import exists, open_fs, write_bytes_atomic

# Our own cap, checked before decoding: big survey photos (8000 x 8000) are legitimate,
# but anything past this would need gigabytes per image and is almost surely an error.
MAX_PIXELS = 20000 * 20000

# PIL refuses images over 2 * MAX_IMAGE_PIXELS (about 179 M pixels by default) with a
# DecompressionBombError. We enforce MAX_PIXELS ourselves, so lift PIL's limit to it
# (never lower a limit someone else raised further).
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# A truncated file must fail, not come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


# --------------------------------------------------------------------------- bytes

def absolute_root(root: str) -> str:
    """Manifest URIs must not depend on the working directory of a Ray worker."""
    return root if "://" in root else os.path.abspath(root)


def read_bytes(uri: str, filesystem: pafs.FileSystem | None = None) -> bytes:
    try:
        fs, path = open_fs(uri, filesystem)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as e:  # ArrowInvalid (bad URI) is a ValueError
        raise ItemError(uri, f"cannot access file: {stable_reason(e)}") from e
    if info.type == pafs.FileType.NotFound:
        raise ItemError(uri, "file not found")
    if info.type != pafs.FileType.File:
        raise ItemError(uri, "not a regular file")
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        raise ItemError(uri, f"cannot read file: {stable_reason(e)}") from e
    if not data:
        raise ItemError(uri, "empty file (0 bytes)")
    return data



def list_names(dir_uri: str, filesystem: pafs.FileSystem | None = None) -> set[str] | None:
    """Base names of the files directly in a directory, or None if it does not exist.
    One listing instead of a stat per image: 118k stats on object storage are slow."""
    fs, path = open_fs(dir_uri, filesystem)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return {i.base_name for i in infos if i.type == pafs.FileType.File}


# --------------------------------------------------------------------------- decoding

_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def stable_reason(e: BaseException) -> str:
    """An exception as a short sentence that is the same in every run: no object addresses
    (PIL names its BytesIO by address), never an empty message."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image format PIL can identify"
    message = _ADDRESS.sub("the data", str(e)).strip()
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _open_image(data: bytes, uri: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ItemError(uri, f"image too large: {stable_reason(e)}") from e
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, ...)
        raise ItemError(uri, f"not a readable image: {stable_reason(e)}") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ItemError(uri, f"zero-size image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ItemError(uri, f"image too large: {w}x{h} exceeds {MAX_PIXELS} pixels")
    return img


def _decode(img: Image.Image, uri: str) -> None:
    """Force the full decode now, so corrupt or truncated data fails here, by name."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # someone flipped the global; truncated files would silently load half grey
        warnings.warn("PIL LOAD_TRUNCATED_IMAGES was True; wsss_ray resets it to False")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    except Exception as e:
        raise ItemError(uri, f"corrupt or truncated image: {stable_reason(e)}") from e


def _gray_to_rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a.astype(np.uint8)).convert("RGB")


def _to_rgb(img: Image.Image, uri: str) -> Image.Image:
    """Any PIL mode -> an RGB image (kept in PIL so a resize needs no extra copy)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT:
        # 'I' is how some Pillow versions report 16-bit PNGs: values are 0..65535
        a = np.clip(np.asarray(img).astype(np.float32), 0, 65535)
        return _gray_to_rgb(np.rint(a / 257.0))
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, np.float32))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0  # float images: [0,1] or [0,255]
        return _gray_to_rgb(np.rint(np.clip(a * scale, 0, 255)))
    if mode in ("P", "PA"):
        # via RGBA so a palette transparency entry is honoured, then alpha dropped
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except Exception as e:
        raise ItemError(uri, f"cannot convert mode {mode} to RGB: {stable_reason(e)}") from e


def _target_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_rgb(uri: str, max_side: int = 0, filesystem: pafs.FileSystem | None = None) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB; with ``max_side`` > 0 the long side is
    downscaled to it (aspect kept; never upscaled)."""
    img = _open_image(read_bytes(uri, filesystem), uri)
    target = None
    if max_side > 0 and max(img.size) > max_side:
        target = _target_size(*img.size, max_side)
        if img.format == "JPEG":
            # DCT-domain downscale by 1/2..1/8: much faster than decoding full size
            img.draft(img.mode, target)
    _decode(img, uri)
    rgb = _to_rgb(img, uri)
    if target is not None and rgb.size != target:
        # reducing_gap: box-reduce first, then bicubic; ~10x faster on huge images
        rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.array(rgb, dtype=np.uint8)


def image_size(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[int, int]:
    """(height, width) from the header only: no pixel decode, reads the first 64 KB (the
    whole file only when its header runs longer, as big EXIF or ICC blocks can)."""
    fs, path = open_fs(uri, filesystem)
    if not exists(fs, path):
        raise ItemError(uri, "file not found")
    try:
        with fs.open_input_file(path) as f:
            if f.size() == 0:
                raise ItemError(uri, "empty file (0 bytes)")
            head = f.read(_HEADER_BYTES)
            rest = f.read() if len(head) == _HEADER_BYTES else b""
    except OSError as e:
        raise ItemError(uri, f"cannot read file: {stable_reason(e)}") from e
    try:
        w, h = _header_size(head)
    except Exception as e:
        if not rest:
            raise ItemError(uri, f"not a readable image: {stable_reason(e)}") from e
        try:
            w, h = _header_size(head + rest)
        except Exception as e2:
            raise ItemError(uri, f"not a readable image: {stable_reason(e2)}") from e2
    if w <= 0 or h <= 0:
        raise ItemError(uri, f"zero-size image ({w}x{h})")
    return h, w


_HEADER_BYTES = 1 << 16


def _header_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# --------------------------------------------------------------------------- masks

def load_mask(uri: str, filesystem: pafs.FileSystem | None = None) -> np.ndarray:
    """(H, W) uint8 class-index mask: palette indices as stored (VOC: class id, 255
    ignore), grayscale values as stored. Colour masks are refused: their values would
    be colours, not ids."""
    img = _open_image(read_bytes(uri, filesystem), uri)
    _decode(img, uri)
    if img.mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if img.mode == "1":
        return np.array(img, dtype=np.uint8)  # bool -> 0/1
    if img.mode in _SIXTEEN_BIT:
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ItemError(uri, f"mask values outside 0..255 in mode {img.mode}")
        return a.astype(np.uint8)
    raise ItemError(uri, f"mask must be a palette (P) or grayscale (L) PNG, got mode {img.mode}")


def save_mask(mask: np.ndarray, uri: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Write a mode-L PNG atomically (see ``save_png``)."""
    a = np.asarray(mask)
    if a.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {a.shape}")
    if a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError("mask values must lie in 0..255")
        a = a.astype(np.uint8)
    save_png(a, uri, filesystem)


def save_png(array: np.ndarray, uri: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Write a uint8 array (H x W, or H x W x 3) as PNG to a local path or URI, atomically:
    a temporary name, then a rename, so a crashed run never leaves a half-written file
    that a rerun would take as done."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    fs, path = open_fs(uri, filesystem)
    write_bytes_atomic(fs, path, buf.getvalue())


# ------------------------------------------------------------------ label masks as PNG bytes
# (the mask shards' ``png`` column: mode-L, 0 background, class id + 1, 255 ignore)

def encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)), dtype=np.uint8)

"""Image decoding and eval preprocessing: one bounded-memory decoder for every path.

:func:`load_image` is the only image decoder of the library: ``predict``, ``evaluate``,
training (:func:`effnet.train.train_decode`), INT8 calibration
(:func:`effnet.deploy.calibration_batches`) and any server go through it, directly or via
:func:`load_transformed`. It returns the RGB picture a person sees in an image viewer or
raises one :class:`ImageDecodeError` (a one-line message: the file, what is wrong, how to
fix it) that callers count and skip:

* every mode Pillow opens is handled: 16- and 32-bit grayscale (``I;16``, ``I;16B``, ``I``,
  ``F``) is rescaled to 8 bits from its nominal range (not clipped, which turns it white),
  1-bit, L, P, CMYK and YCbCr are converted, and transparency (RGBA, LA, PA, a palette or
  grayscale with a tRNS colour) is composited on white; the EXIF orientation is applied;
* an image whose declared size exceeds :data:`MAX_IMAGE_PIXELS` is refused from its header,
  before any pixel is decoded; a big JPEG is decoded at 1/2, 1/4 or 1/8 scale (JPEG draft
  mode) when the caller says which size it needs (``min_size``);
* :func:`resize_center_crop` resizes straight into the crop for images of extreme aspect
  ratio, so no intermediate grows with the image's aspect ratio.

The eval transform reproduces torchvision's ``Resize(short side) -> CenterCrop -> ToTensor
-> Normalize`` on Pillow images (the pipeline of timm, torchvision and
EfficientNet-PyTorch) with Pillow alone, so the same pixels come out without torchvision.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import warnings
from concurrent.futures import Executor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .registry import ModelConfig, PreprocessConfig

__all__ = [
    "ImageDecodeError",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "MAX_IMAGE_PIXELS",
    "MAX_RESIZE_PIXELS",
    "DRAFT_MARGIN",
    "data_dir",
    "load_image",
    "decode_image",
    "load_transformed",
    "decode_transformed",
    "resize_shorter_side",
    "center_crop",
    "resize_center_crop",
    "squash_center_crop",
    "CROP_FUNCTIONS",
    "to_tensor",
    "ResizeCropTransform",
    "eval_transform",
    "ImageDataset",
    "collate_skip",
    "imagenet_class_names",
    "model_class_names",
    "list_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: Largest declared image size (width x height, pixels) :func:`load_image` decodes. It is
#: Pillow's own default ``PIL.Image.MAX_IMAGE_PIXELS`` (1024**3 // 4 // 3 = 89,478,485: a
#: quarter GiB at 3 bytes a pixel), above which Pillow starts warning of decompression
#: bombs. Decoding one such image takes at most about 4 bytes a pixel for the raster plus as
#: much again for the RGB conversion (~0.7 GiB at the cap). Larger images are refused from
#: their header; pass ``max_pixels`` to :func:`load_image` to allow more (Pillow itself still
#: refuses more than twice its own limit).
MAX_IMAGE_PIXELS = 89_478_485

#: Largest intermediate image (pixels) that :func:`resize_center_crop` builds on its exact
#: path (resize the whole image, then crop). 2**24 pixels is 64 MiB of RGB(X) raster and
#: covers aspect ratios up to 256:1 at a 256-pixel resize; beyond it the resize goes
#: straight from a source box to the crop.
MAX_RESIZE_PIXELS = 1 << 24

#: JPEG draft mode is used only when the image's shorter side, decoded at 1/2, 1/4 or 1/8
#: scale, is still at least this many times the size the caller resizes it to, so the final
#: resize remains a >= 2x antialiased downscale. Measured on the shared photos whose
#: shorter side is >= 512 px (resize 256, crop 224): the crop differs from a full decode by
#: 0.31 grey levels on average and 10 at most (margin 1 gave 2.0 and 136).
DRAFT_MARGIN = 2

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_FIX = "re-export it as an 8-bit RGB JPEG or PNG, or remove it"

#: The Pillow formats :func:`load_image` opens (Pillow format ids; JPEG includes the MPO
#: files of cameras): the raster formats of :data:`IMAGE_EXTENSIONS` plus AVIF, JPEG 2000,
#: and TGA, where the installed Pillow has them. Others Pillow knows are refused: EPS
#: would run Ghostscript on the file, ICO decodes an embedded PNG inside ``Image.open``,
#: before the size cap is checked, and scientific or game formats (FITS, DDS, ...) are
#: not photos.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "AVIF", "JPEG2000", "TGA")

_open_formats: Optional[Tuple[str, ...]] = None


def _formats() -> Tuple[str, ...]:
    """:data:`IMAGE_FORMATS` that the installed Pillow can open (loads all its plugins once)."""
    global _open_formats
    if _open_formats is None:
        Image.init()
        _open_formats = tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
    return _open_formats


class ImageDecodeError(ValueError):
    """An image file could not be read or decoded, or is refused (too large, unknown range).

    The message is one line: ``cannot decode image <path>: <what is wrong>; <how to fix>``.
    """


def data_dir() -> Path:
    """The shared data folder: ``$EFFNET_DATA``, default ``../shared/data`` from the working directory."""
    return Path(os.environ.get("EFFNET_DATA", "../shared/data")).expanduser()


# ---- decoding -----------------------------------------------------------------------------------

def _error(path: Path, what: str, fix: str = _FIX) -> ImageDecodeError:
    """The :class:`ImageDecodeError` for ``path``, on one line (newlines in ``what`` are flattened)."""
    what = " ".join(str(what).split())
    return ImageDecodeError(f"cannot decode image {path}: {what}; {fix}")


def _draft_jpeg(img: Image.Image, min_size: int) -> None:
    """Ask Pillow to decode a JPEG at 1/8, 1/4 or 1/2 scale (libjpeg's scaled IDCT) when allowed.

    The largest reduction ``s`` is chosen whose shorter side ``short // s`` is still at least
    ``DRAFT_MARGIN * min_size`` pixels; nothing is decoded here (only the header is read) and
    the mode is kept. Other formats are left alone.
    """
    if img.format not in ("JPEG", "MPO") or min_size <= 0:
        return
    w, h = img.size
    for s in (8, 4, 2):
        if min(w, h) // s >= DRAFT_MARGIN * min_size:
            img.draft(img.mode, (w // s, h // s))
            return


def _nominal_range(img: Image.Image, path: Path) -> float:
    """The value shown as white for a 16/32-bit integer or float grayscale image (black is 0).

    ``I;16*`` modes: 65535. ``I`` (int32: 16-bit PNG/PGM in some Pillow versions, 32-bit
    TIFF): 65535 when every value is in 0..65535 (Pillow scales 16-bit PGMs to that range),
    else 2**31 - 1. ``F`` (float32): 1.0, 255 or 65535, the smallest that holds the maximum.

    Raises:
        ImageDecodeError: negative values, or a float image above 65535 (no standard range).
    """
    if img.mode.startswith("I;16"):
        return 65535.0
    lo, hi = img.getextrema()
    if lo < 0:
        raise _error(path, f"{img.mode}-mode ({'float' if img.mode == 'F' else '32-bit integer'}) image has "
                           f"negative values (min {lo}), so it has no standard display range",
                     "save it as an 8- or 16-bit image (values 0..255 or 0..65535)")
    if img.mode == "I":
        return 65535.0 if hi <= 65535 else float(2 ** 31 - 1)
    for white in (1.0, 255.0, 65535.0):
        if hi <= white:
            return white
    raise _error(path, f"float image has values up to {hi}, above any standard display range (1, 255, 65535)",
                 "save it as an 8- or 16-bit image (values 0..255 or 0..65535)")


def _deep_gray_to_l(img: Image.Image, path: Path) -> Image.Image:
    """16-bit, 32-bit integer or float grayscale -> 8-bit ``L``, ``round(v * 255 / white)``.

    ``white`` comes from :func:`_nominal_range` (65535 for 16-bit: 257 * v maps back to v
    exactly). Converted in bands of about 2**20 pixels, so the temporary float64 arrays stay
    ~8 MiB whatever the image size. A tRNS grey value (``info["transparency"]``) becomes white.

    Raises:
        ImageDecodeError: NaN or infinite values, or no standard range (:func:`_nominal_range`).
    """
    white = _nominal_range(img, path)
    w, h = img.size
    out = np.empty((h, w), dtype=np.uint8)
    trns = img.info.get("transparency")
    rows = max(1, (1 << 20) // max(w, 1))
    for y in range(0, h, rows):
        band = np.asarray(img.crop((0, y, w, min(h, y + rows))))
        v = band.astype(np.float64)
        if not np.isfinite(v).all():
            raise _error(path, "float image has NaN or infinite values", "replace them and re-save the image")
        v = np.clip(np.rint(v * (255.0 / white)), 0, 255).astype(np.uint8)
        if isinstance(trns, (int, float)):
            v[band == trns] = 255               # transparent: the white background shows
        out[y:y + band.shape[0]] = v
    return Image.fromarray(out, "L")


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """A loaded Pillow image of any mode -> the ``RGB`` picture a viewer shows.

    Alpha (RGBA, LA, PA, RGBa, La) and tRNS transparency (P, L, RGB, 1 with
    ``info["transparency"]``) are composited on white: ``out = a * c + (1 - a) * 255``
    with Pillow's rounding. Deep grayscale goes through :func:`_deep_gray_to_l`. Other modes
    (1, L, P, CMYK, YCbCr, RGBX...) use ``Image.convert("RGB")``, what timm and torchvision
    loaders do; an ``RGB`` image is returned as is.

    Raises:
        ImageDecodeError: a mode Pillow cannot convert to RGB (e.g. LAB, HSV) or out of range.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _deep_gray_to_l(img, path).convert("RGB")
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", img.size, (255, 255, 255))
        out.paste(rgba, (0, 0), rgba)           # the alpha band is the mask
        return out
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise _error(path, f"{mode}-mode image cannot be converted to RGB ({e})", _FIX) from e


def load_image(path: Union[str, os.PathLike], min_size: Optional[int] = None,
               max_pixels: Optional[int] = None) -> Image.Image:
    """Decode an image file to the RGB Pillow image a person sees, in bounded memory.

    The one decoder of the library (see the module docstring for every mode it handles).
    The declared size is checked right after ``Image.open``, which reads only the header,
    so a decompression bomb is refused before anything is allocated; Pillow's own
    ``DecompressionBombError`` and ``DecompressionBombWarning`` never escape.

    Args:
        path: the image file.
        min_size: the shorter side (pixels) the caller will resize the image to, e.g. a
            transform's ``decode_size``. A JPEG whose shorter side is at least
            ``2 * DRAFT_MARGIN * min_size`` is then decoded at 1/2..1/8 scale (the result's
            shorter side stays >= ``DRAFT_MARGIN * min_size``; see :data:`DRAFT_MARGIN` for
            the measured difference). ``None``: always decode at full size (bit-exact
            reference behaviour).
        max_pixels: largest ``width * height`` accepted; default :data:`MAX_IMAGE_PIXELS`.

    Returns:
        An ``RGB`` image, EXIF orientation applied (width and height in display orientation).

    Raises:
        FileNotFoundError: no such file.
        ImageDecodeError: not a regular file, empty, not in :data:`IMAGE_FORMATS`, truncated
            or corrupt, larger than ``max_pixels``, or a mode/range with no RGB rendering.

    Note:
        Pillow's bomb warning is silenced with ``warnings.catch_warnings``, which changes
        process-wide state in Python < 3.14: threads decoding at once may briefly see each
        other's filter (harmless here; DataLoader workers are processes).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise _error(path, "it is a directory or special file, not an image file",
                     "remove it or rename it so it does not end in an image extension")
    try:
        if path.stat().st_size == 0:
            raise _error(path, "the file is empty (0 bytes)", "re-copy or re-export it, or remove it")
        with open(path, "rb") as f:
            return _decode(f, path, min_size, max_pixels)
    except PermissionError as e:
        raise _error(path, f"it cannot be read ({e.strerror or e})", "give the user running effnet read access") from e


def decode_image(data: Union[bytes, bytearray, memoryview], name: str = "<upload>", min_size: Optional[int] = None,
                 max_pixels: Optional[int] = None) -> Image.Image:
    """:func:`load_image` for an image already in memory: an HTTP upload, a file read by Ray Data.

    The same decoder, caps and errors as :func:`load_image`; the caller bounds ``len(data)``
    (the server's ``--max-upload-mb``, batch inference's file cap) before the bytes are read.

    Args:
        data: the encoded file (JPEG, PNG, ...), bytes.
        name: what error messages call it (the upload's file name or the path).
        min_size, max_pixels: as :func:`load_image`.

    Returns:
        An ``RGB`` Pillow image, EXIF orientation applied.

    Raises:
        ImageDecodeError: empty, not an image, truncated or corrupt, over ``max_pixels``, an
            unrenderable mode; the message names ``name``.
    """
    if len(data) == 0:
        raise _error(name, "the file is empty (0 bytes)", "send the image file's contents")
    return _decode(io.BytesIO(data), name, min_size, max_pixels)


def _decode(f, path, min_size: Optional[int], max_pixels: Optional[int]) -> Image.Image:
    """Decode the open binary file ``f`` (named ``path`` in errors): the core of :func:`load_image`."""
    cap = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f, formats=_formats())        # reads the header only
            w, h = img.size
            if w * h > cap:
                raise _error(path, f"it declares {w}x{h} = {w * h:,} pixels, more than the cap of {cap:,} "
                                   f"pixels (effnet.data.MAX_IMAGE_PIXELS)",
                             "downscale it below the cap, or pass max_pixels to load_image")
            if min_size:
                _draft_jpeg(img, int(min_size))
            img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:                        # unreadable EXIF: shown unrotated, as viewers do
            pass
        return _to_rgb(img, path)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise _error(path, f"it is too large to decode safely ({e}); effnet refuses more than {cap:,} pixels "
                           f"(effnet.data.MAX_IMAGE_PIXELS)", "downscale it below the cap") from e
    except UnidentifiedImageError as e:
        raise _error(path, f"it is not an image in a format effnet reads ({', '.join(_formats())}): "
                           f"a text or HTML file with an image extension, or another format", _FIX) from e
    except PermissionError:
        raise
    except MemoryError as e:
        raise _error(path, "not enough memory to decode it",
                     "downscale it, or lower effnet.data.MAX_IMAGE_PIXELS") from e
    except Exception as e:                        # OSError (truncated), SyntaxError, struct.error, ...
        raise _error(path, f"{type(e).__name__}: {e}. The file is truncated or corrupt") from e


# ---- resizing -----------------------------------------------------------------------------------

def _check_interpolation(interpolation: str) -> None:
    """Raise ``ValueError`` unless ``interpolation`` is one of Pillow's filters (``_PIL_FILTERS``)."""
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {sorted(_PIL_FILTERS)}")


def _shorter_side_size(w: int, h: int, size: int) -> Tuple[int, int]:
    """(width, height) after resizing the shorter side of a ``w`` x ``h`` image to ``size``.

    The longer side becomes ``int(size * long / short)`` (torchvision's rounding).
    """
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_shorter_side(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio.

    The longer side becomes ``int(size * long / short)`` (torchvision's rounding); an image
    already at that size is returned unchanged. The result grows with the aspect ratio (a
    1 x 100000 image becomes 256 x 25,600,000): to resize and crop in bounded memory use
    :func:`resize_center_crop`.
    """
    _check_interpolation(interpolation)
    w, h = img.size
    new_w, new_h = _shorter_side_size(w, h, size)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _PIL_FILTERS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` pixels (offsets rounded as torchvision does).

    Raises:
        ValueError: the image is smaller than the crop.
    """
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}x{size} crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_center_crop(img: Image.Image, resize_size: int, crop_size: int,
                       interpolation: str = "bicubic", executor: Optional[Executor] = None) -> Image.Image:
    """``center_crop(resize_shorter_side(img, resize_size), crop_size)`` in bounded memory.

    When the resized image would have at most :data:`MAX_RESIZE_PIXELS` pixels (every photo
    up to a 256:1 aspect ratio at resize 256) the pixels are bit-identical to that
    expression, so to torchvision/timm with the same Pillow: for RGB and L images Pillow's
    two resampling passes are run separately (:func:`_separable_resize_crop`), in Pillow's
    order, the first only on the source lines the crop reads and the second only on the
    crop's lines, which is about 13% less work (and, given ``executor``, split over two
    threads). Otherwise the crop is mapped back to a box in source coordinates and
    ``Image.resize((crop, crop), box=...)`` resamples straight into it: nothing larger than
    the crop is allocated. That path is not bit-identical: Pillow takes the box in float32,
    which moves the resampling weights slightly, and picks the pass order from the box
    resize's own sizes, which can move the rounding between the passes (up to ~13 levels at
    sharp edges, 0.3 on average, measured on shared photos).

    Args:
        img: a Pillow image (any mode Pillow resizes).
        resize_size: the shorter side after resizing, pixels.
        crop_size: the side of the central square, pixels.
        interpolation: a name in ``_PIL_FILTERS`` (bicubic, bilinear, ...).
        executor: a thread pool; when given, each resampling pass is split in two halves,
            one run on the calling thread and one on ``executor`` (Pillow releases the GIL
            while resampling): about 1.7x lower latency for one photo on an otherwise idle
            2-core machine, the same pixels. Leave it ``None`` where several images are
            already decoded in parallel (DataLoader workers, a busy server).

    Returns:
        A ``crop_size`` x ``crop_size`` image, same mode.

    Raises:
        ValueError: unknown interpolation, or the resized image is smaller than the crop.
    """
    _check_interpolation(interpolation)
    w, h = img.size
    new_w, new_h = _shorter_side_size(w, h, resize_size)
    if new_w < crop_size or new_h < crop_size:
        raise ValueError(f"image {w}x{h} resized to {new_w}x{new_h} is smaller than the {crop_size}x{crop_size} crop")
    top, left = int(round((new_h - crop_size) / 2.0)), int(round((new_w - crop_size) / 2.0))
    if new_w * new_h <= MAX_RESIZE_PIXELS:
        if img.mode in ("RGB", "L") and interpolation in _FILTER_SUPPORT and _pillow_pass_order():
            return _separable_resize_crop(img, (new_w, new_h), (left, top), crop_size, interpolation, executor)
        return center_crop(resize_shorter_side(img, resize_size, interpolation), crop_size)
    sx, sy = w / new_w, h / new_h                 # source pixels per resized pixel
    box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
    return img.resize((crop_size, crop_size), _PIL_FILTERS[interpolation], box=box)


#: Support (in source pixels at scale 1) of Pillow's separable resampling filters, from
#: Pillow's ``src/libImaging/Resample.c`` (``BOX``, ``BILINEAR``, ``HAMMING``, ``BICUBIC``,
#: ``LANCZOS``). ``nearest`` does not go through the two-pass resampler.
_FILTER_SUPPORT = {"box": 0.5, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 3.0}


def _source_span(in_size: int, out_size: int, first: int, count: int, support: float) -> Tuple[int, int]:
    """Source rows [lo, hi) that output rows [first, first + count) of an ``in_size`` ->
    ``out_size`` resampling pass read, with a 2-row margin (Pillow's window: centre
    ``(i + 0.5) * scale``, half-width ``support * max(scale, 1)``)."""
    scale = in_size / out_size
    half = support * max(scale, 1.0)
    lo = int((first + 0.5) * scale - half) - 2
    hi = int((first + count - 0.5) * scale + half) + 3
    return max(lo, 0), min(hi, in_size)


@functools.lru_cache(maxsize=None)
def _pillow_pass_order() -> Optional[str]:
    """Which pass the installed Pillow runs first in a two-pass resize, found on a probe image.

    Pillow up to 12 always resamples horizontally first; Pillow 13 runs the vertical pass
    first when the height shrinks by more than twice as many pixels as the width
    (``ImagingResampleInner`` in ``src/libImaging/Resample.c``). Each pass rounds to uint8,
    so the order shows in the pixels: a tall noise image resized both ways tells them apart.

    Returns:
        ``"pillow13"`` (the rule above), ``"horizontal"`` (always horizontal first), or
        ``None`` when neither reproduces Pillow (then :func:`resize_center_crop` does not
        split the passes).
    """
    noise = np.random.default_rng(0).integers(0, 256, (64, 16), dtype=np.uint8)
    img, f = Image.fromarray(noise, "L"), Image.Resampling.BICUBIC
    full = np.asarray(img.resize((15, 20), f))                   # height shrinks 44 px, width 1 px
    h_first = np.asarray(img.resize((15, 64), f).resize((15, 20), f))
    v_first = np.asarray(img.resize((16, 20), f).resize((15, 20), f))
    if (h_first == v_first).all():
        return None
    if (full == v_first).all():
        return "pillow13"
    return "horizontal" if (full == h_first).all() else None


def _horizontal_first(w: int, h: int, new_w: int, new_h: int) -> bool:
    """Whether Pillow resamples a ``w`` x ``h`` -> ``new_w`` x ``new_h`` resize horizontally first."""
    return _pillow_pass_order() == "horizontal" or not (h - new_h > 0 and h - new_h > (w - new_w) * 2)


def _separable_resize_crop(img: Image.Image, size: Tuple[int, int], offset: Tuple[int, int], crop: int,
                           interpolation: str, executor: Optional[Executor]) -> Image.Image:
    """``img.resize(size).crop((left, top, left + crop, top + crop))``, bit-identical, with less work.

    Pillow resizes in two passes, each rounding to uint8 and each independent per row
    (horizontal) or per column (vertical), with weights that depend only on the input and
    output lengths. So the first pass (in Pillow's order, :func:`_horizontal_first`) runs
    on the source rows (or columns) the crop needs, a strip whose other length is
    unchanged, so its weights are Pillow's, and keeps the crop's columns (rows); pasted at
    its place into a canvas as long as the image, the second pass over the canvas gives the
    crop exactly (the canvas lines never read stay zero). A pass whose length does not
    change is a copy, as in Pillow. ``RGB`` and ``L`` only (Pillow premultiplies alpha for
    the others). With ``executor`` each pass is split in two halves, one run there.
    """
    img.load()                  # once, here: two threads cropping a lazily opened file would both decode it
    (w, h), (new_w, new_h), (left, top) = img.size, size, offset
    f, support = _PIL_FILTERS[interpolation], _FILTER_SUPPORT[interpolation]

    def rows(src: Image.Image, a: int, b: int) -> Image.Image:      # horizontal pass of rows [a, b)
        return src.crop((0, a, src.width, b)).resize((new_w, b - a), f).crop((left, 0, left + crop, b - a))

    def cols(src: Image.Image, a: int, b: int) -> Image.Image:      # vertical pass of columns [a, b)
        return src.crop((a, 0, b, src.height)).resize((b - a, new_h), f).crop((0, top, b - a, top + crop))

    if _horizontal_first(w, h, new_w, new_h):
        (lo, hi), first, second = _source_span(h, new_h, top, crop, support), rows, cols
        canvas, at = Image.new(img.mode, (crop, h)), (lambda a: (0, a))
    else:
        (lo, hi), first, second = _source_span(w, new_w, left, crop, support), cols, rows
        canvas, at = Image.new(img.mode, (w, crop)), (lambda a: (a, 0))
    for a, part in _in_halves(first, img, lo, hi, executor):
        canvas.paste(part, at(a))
    out = Image.new(img.mode, (crop, crop))
    for a, part in _in_halves(second, canvas, 0, crop, executor):
        out.paste(part, at(a)[::-1])
    return out


def _in_halves(fn: Callable, src: Image.Image, lo: int, hi: int, executor: Optional[Executor]) -> list:
    """``[(lo, fn(src, lo, hi))]``, or with ``executor`` the two halves of [lo, hi), one run there."""
    if executor is None or hi - lo < 2:
        return [(lo, fn(src, lo, hi))]
    mid = (lo + hi) // 2
    other = executor.submit(fn, src, mid, hi)
    return [(lo, fn(src, lo, mid)), (mid, other.result())]


@functools.lru_cache(maxsize=16)
def _normalize_lut(mean: tuple, std: tuple) -> np.ndarray:
    """(C, 256) float32: ``(v / 255 - mean[c]) / std[c]`` for every uint8 value ``v``, in torch's float32 ops."""
    v = torch.arange(256, dtype=torch.float32).div(255)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1)
    return ((v[None] - m) / s).numpy()


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB uint8 image (H, W, 3) -> normalised float32 tensor (3, H, W): ``(x / 255 - mean) / std``.

    Computed as torchvision's ``ToTensor`` + ``Normalize`` (float32: divide by 255, subtract
    the mean, divide by the std), tabulated once for the 256 values of each channel and
    looked up (the same bits, ~1.7x faster for a 224 x 224 crop).
    """
    a = np.asarray(img, dtype=np.uint8)
    lut = _normalize_lut(tuple(float(x) for x in mean), tuple(float(x) for x in std))
    if a.ndim != 3 or a.shape[2] != lut.shape[0]:
        raise ValueError(f"to_tensor needs an image with {lut.shape[0]} channels (mean/std), got an array of shape "
                         f"{a.shape}: convert it to RGB first")
    out = np.empty((lut.shape[0],) + a.shape[:2], np.float32)
    for c in range(lut.shape[0]):      # uint8 indices are always in range: "clip" skips numpy's buffered check
        np.take(lut[c], a[..., c], out=out[c], mode="clip")
    return torch.from_numpy(out)


def squash_center_crop(img: Image.Image, resize_size: int, crop_size: int,
                       interpolation: str = "bicubic") -> Image.Image:
    """Resize to ``resize_size`` x ``resize_size`` ignoring the aspect ratio, then take the
    central ``crop_size`` square (timm's ``crop_mode='squash'``: ``Resize((s, s))`` then
    ``CenterCrop``). Nothing larger than ``resize_size`` squared is allocated.

    Raises:
        ValueError: unknown interpolation, or ``crop_size`` above ``resize_size``.
    """
    _check_interpolation(interpolation)
    if crop_size > resize_size:
        raise ValueError(f"crop {crop_size} px is larger than the squashed {resize_size}x{resize_size} image")
    return center_crop(img.resize((resize_size, resize_size), _PIL_FILTERS[interpolation]), crop_size)


# The eval resize of each PreprocessConfig.crop_mode: aspect kept, or squashed.
CROP_FUNCTIONS = {"center": resize_center_crop, "squash": squash_center_crop}


class ResizeCropTransform:
    """Resize the shorter side, take the central square, make a tensor: eval preprocessing.

    Args:
        resize_size: shorter side after resizing, pixels (also :attr:`decode_size`).
        crop_size: side of the central square, pixels.
        interpolation: Pillow filter name (bicubic, bilinear, ...).
        mean, std: RGB normalisation in [0, 1] units; both ``None`` gives uint8 pixels.
        crop_mode: ``center`` keeps the aspect ratio (:func:`resize_center_crop`);
            ``squash`` resizes both sides to ``resize_size`` (:func:`squash_center_crop`).

    Calling it maps an RGB Pillow image to a float32 tensor (3, crop, crop) normalised as
    ``(x / 255 - mean) / std``, or a uint8 tensor (3, crop, crop) without mean/std. Resizing
    goes through :func:`resize_center_crop` (bounded memory). A plain class, not a closure,
    so DataLoader workers can pickle it.

    Attributes:
        decode_size: what :func:`load_transformed` passes to ``load_image(min_size=...)`` so
            big JPEGs are decoded at reduced scale.

    Raises:
        ValueError: unknown interpolation or crop mode; only one of mean and std given.
    """

    def __init__(self, resize_size: int, crop_size: int, interpolation: str = "bicubic",
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 crop_mode: str = "center") -> None:
        _check_interpolation(interpolation)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (normalised float output) or neither (uint8 output)")
        if crop_mode not in CROP_FUNCTIONS:
            raise ValueError(f"crop_mode must be one of {list(CROP_FUNCTIONS)}, got {crop_mode!r}")
        self.crop_mode = crop_mode
        self.resize_size, self.crop_size, self.interpolation = int(resize_size), int(crop_size), interpolation
        self.mean = None if mean is None else tuple(mean)
        self.std = None if std is None else tuple(std)

    @property
    def decode_size(self) -> int:
        """The shorter side the decoder must keep, pixels (the resize size)."""
        return self.resize_size

    def __call__(self, img: Image.Image, executor: Optional[Executor] = None) -> torch.Tensor:
        """``executor``: a thread pool that splits the resize of this one image in two
        (:func:`resize_center_crop`), for a lone request on an idle server; same pixels.
        Used by the ``center`` crop mode; ``squash`` resizes in one Pillow call and ignores it."""
        if self.crop_mode == "center":
            img = resize_center_crop(img, self.resize_size, self.crop_size, self.interpolation, executor)
        else:
            img = CROP_FUNCTIONS[self.crop_mode](img, self.resize_size, self.crop_size, self.interpolation)
        if self.mean is None:
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return to_tensor(img, self.mean, self.std)

    def __repr__(self) -> str:
        return (f"ResizeCropTransform(resize_size={self.resize_size}, crop_size={self.crop_size}, "
                f"interpolation={self.interpolation!r}, mean={self.mean}, std={self.std}, "
                f"crop_mode={self.crop_mode!r})")


def eval_transform(config: Union[PreprocessConfig, ModelConfig]) -> ResizeCropTransform:
    """The eval preprocessing of a model or weight: resize (aspect kept, or squashed for
    ``crop_mode="squash"``), center crop, normalise.

    Args:
        config: a :class:`PreprocessConfig` or a :class:`ModelConfig` (its ``preprocess``).

    Returns:
        A :class:`ResizeCropTransform`: RGB Pillow image -> float32 tensor (3, input_size,
        input_size). Decode files for it with :func:`load_transformed`.
    """
    pre = config.preprocess if isinstance(config, ModelConfig) else config
    return ResizeCropTransform(pre.resize_size, pre.input_size, pre.interpolation, pre.mean, pre.std, pre.crop_mode)


def load_transformed(path: Union[str, os.PathLike], transform: Callable[[Image.Image], torch.Tensor]):
    """Decode ``path`` with :func:`load_image` and apply ``transform``: the per-file step of every path.

    ``transform``'s ``decode_size`` attribute, when it has one (:class:`ResizeCropTransform`),
    becomes ``load_image``'s ``min_size`` so a big JPEG is decoded at reduced scale.

    Returns:
        Whatever ``transform`` returns (e.g. a float32 tensor (3, H, W)).

    Raises:
        FileNotFoundError, ImageDecodeError: as :func:`load_image`; callers count and skip.
    """
    return transform(load_image(path, min_size=getattr(transform, "decode_size", None)))


def decode_transformed(data: Union[bytes, bytearray, memoryview], transform: Callable[[Image.Image], torch.Tensor],
                       name: str = "<upload>", max_pixels: Optional[int] = None,
                       executor: Optional[Executor] = None):
    """:func:`load_transformed` for bytes in memory (:func:`decode_image`, then ``transform``).

    ``max_pixels`` as :func:`decode_image`; ``executor`` is passed to ``transform`` (a
    :class:`ResizeCropTransform` splits its resize over it) when given.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    img = decode_image(data, name, min_size=getattr(transform, "decode_size", None), max_pixels=max_pixels)
    return transform(img) if executor is None else transform(img, executor)


# ---- datasets ---------------------------------------------------------------------------------

class ImageDataset(torch.utils.data.Dataset):
    """Labelled image files, decoded and transformed on access (in DataLoader workers).

    An unreadable image (:class:`ImageDecodeError`, e.g. corrupt, truncated, too large, or
    a missing file) does not raise: its item carries ``None`` in place of the tensor and
    :func:`collate_skip` drops it and reports its path, so a run counts and names bad files
    instead of crashing.

    Args:
        samples: (path, class index) pairs.
        transform: Pillow image -> tensor (e.g. :func:`eval_transform`); files are decoded
            with :func:`load_transformed`.
        classes: class names by index, when known.

    Items: ``(tensor (3, H, W) float32, label int, path str)``, or for an unreadable file
    ``(None, label, reason str)``, the reason naming the file and what is wrong.
    """

    def __init__(self, samples: List[Tuple[Path, int]], transform: Callable[[Image.Image], torch.Tensor],
                 classes: Optional[List[str]] = None) -> None:
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.transform = transform
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            return load_transformed(path, self.transform), label, str(path)
        except (ImageDecodeError, FileNotFoundError) as e:
            return None, label, str(e)          # the reason names the file

    @classmethod
    def from_folder(cls, root: Union[str, os.PathLike], transform: Callable, classes: Optional[List[str]] = None
                    ) -> "ImageDataset":
        """Images under ``root/<class>/`` (any depth); classes are the sorted folder names.

        Raises:
            FileNotFoundError: ``root`` missing, or it holds no class folder with images.
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        names = classes or sorted(d.name for d in root.iterdir() if d.is_dir())
        samples = [(f, i) for i, c in enumerate(names) if (root / c).is_dir()
                   for f in sorted((root / c).rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS]
        if not samples:
            raise FileNotFoundError(f"{root} has no images in class subfolders (expected {root}/<class>/<image>)")
        return cls(samples, transform, names)

    @classmethod
    def from_csv(cls, csv_path: Union[str, os.PathLike], transform: Callable,
                 root: Optional[Union[str, os.PathLike]] = None) -> "ImageDataset":
        """Images listed in a CSV with ``file`` and ``class_index`` columns (a header row).

        File names are resolved against ``root`` (default: the CSV's folder), then
        ``root/images``.

        Raises:
            ValueError: not UTF-8 text or not a CSV, the CSV lacks those columns, or a row
                has no file name or a ``class_index`` that is not a non-negative integer; the
                message names the CSV and the row (1-based line number, the header is row 1).
        """
        csv_path = Path(csv_path)
        base = Path(root) if root is not None else csv_path.parent
        try:
            return cls._read_csv(csv_path, base, transform)
        except UnicodeDecodeError as e:
            raise ValueError(f"{csv_path} is not a UTF-8 text file (byte {e.start}: {e.reason}); expected a CSV "
                             f"with a file,class_index header") from None
        except csv.Error as e:
            raise ValueError(f"{csv_path} is not a readable CSV ({e}); expected a CSV with a file,class_index "
                             f"header") from None

    @classmethod
    def _read_csv(cls, csv_path: Path, base: Path, transform: Callable) -> "ImageDataset":
        samples = []
        with open(csv_path, newline="", encoding="utf-8-sig") as f:   # -sig: a BOM from Excel
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
                raise ValueError(f"{csv_path} needs a header with 'file' and 'class_index' columns")
            for r in reader:
                where = f"{csv_path} row {reader.line_num}"
                name, label = (r.get("file") or "").strip(), r.get("class_index")
                if not name:
                    raise ValueError(f"{where}: the file column is empty; give an image file name")
                try:
                    y = int(label)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: class_index {label!r} is not an integer; "
                                     f"use the class's 0-based index") from None
                if y < 0:
                    raise ValueError(f"{where}: class_index {y} is negative; use the class's 0-based index")
                p = base / name
                if not p.exists() and (base / "images" / name).exists():
                    p = base / "images" / name
                samples.append((p, y))
        if not samples:
            raise ValueError(f"{csv_path} lists no images (only a header)")
        return cls(samples, transform)


def collate_skip(batch):
    """Collate ``ImageDataset`` items, dropping unreadable ones.

    Returns:
        ``(images (N, 3, H, W) or None, labels (N,) int64, skipped list)``: one reason per
        dropped item, each naming its file (``cannot decode image PATH: ...``).
    """
    good = [b for b in batch if b[0] is not None]
    skipped = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), skipped
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), skipped


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """Every file under ``folder`` (any depth) whose name ends in one of
    :data:`IMAGE_EXTENSIONS` (any case), sorted by path."""
    return sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)


def model_class_names(model: torch.nn.Module) -> List[str]:
    """A classifier's class names by index: its own ``class_names``, ImageNet's for a
    1000-class model without names, else ``class_<i>``."""
    if getattr(model, "class_names", None):
        return list(model.class_names)
    if model.num_classes == 1000:
        return imagenet_class_names()
    return [f"class_{i}" for i in range(model.num_classes)]


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names, by class index (the standard sorted-synset order of
    timm and torchvision: 0 = "tench, Tinca tinca", 309 = "bee", 310 = "ant, emmet, pismire").

    Source: EfficientNet-PyTorch's ``examples/simple/labels_map.txt`` (Apache-2.0), which
    agrees name for name with timm's ``imagenet_synset_to_lemma.txt``; shipped with effnet
    as ``effnet/imagenet_classes.txt``, one name per line.
    """
    from importlib import resources

    text = resources.files("effnet").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = text.splitlines()
    assert len(names) == 1000, "effnet/imagenet_classes.txt must hold 1000 lines"
    return names

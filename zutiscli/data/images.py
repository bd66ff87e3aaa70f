"""Finding image files and decoding them to 8-bit RGB.

This module is imported by DataLoader worker processes, so it depends on PIL and numpy only
(never torch).

Entry points:

* :func:`load_image` opens one file and returns a fully decoded ``PIL.Image.Image`` in mode
  ``"RGB"`` (``uint8``, 3 channels, ``(width, height)`` after EXIF orientation), or raises
  :class:`~zutiscli.errors.ImageLoadError` with a reason the user can act on.
* :func:`read_image` decodes the same way from one read of the file and also returns what a
  caller that records the file wants without opening it again: its bytes (to hash), its ``stat``
  and the displayed size at full resolution (also when a JPEG was decoded at a reduced scale).
* :func:`discover_images` turns command-line sources (files, directories, glob patterns, and
  an optional list file) into a sorted, de-duplicated list of paths.

Conversion to RGB (:func:`to_rgb`) follows these rules, by PIL mode:

* ``RGB``: unchanged (copied).
* ``1``: black 0, white 255.
* ``L``: the grey level in all three channels.
* ``P``: palette lookup; if the palette has transparency (a ``transparency`` entry or an RGBA
  palette) the result is composited over white.
* ``L`` or ``RGB`` with a colour-key ``transparency`` entry (PNG ``tRNS``): keyed pixels become
  white.
* ``LA``, ``RGBA``, ``PA`` (straight alpha): alpha-weighted composite over **white**,
  ``out = round((c * a + 255 * (255 - a)) / 255)``, so a fully transparent pixel is white
  whatever colour it stores.
* ``La``, ``RGBa`` (premultiplied alpha, ``c_p = c * a / 255``): the same composite,
  ``out = min(255, c_p + 255 - a)``.
* ``CMYK``: through the embedded ICC profile to sRGB when the file carries one and PIL.ImageCms
  can use it; otherwise PIL's plain formula ``out = (255 - c) * (255 - k) / 255``.
* ``YCbCr``, ``HSV``: PIL's own conversion.
* ``LAB`` (PIL's 8-bit CIELab: L* 0..100 stored as 0..255, a* and b* as signed bytes, shown
  plus 128 by ``getpixel``): CIE formulas with reference white D50 (the ICC convention),
  Bradford-adapted to sRGB's D65.
* ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``: always the full 16-bit range,
  ``out = round(v * 255 / 65535)``, so 65535 -> 255 and 32768 -> 128 (PIL's own ``convert``
  clips everything above 255 to 255).
* ``I`` (int32): if the maximum is <= 255 the values are taken as 8-bit; otherwise as 16-bit
  (0..65535, scaled as above). Negative values become 0, values above 65535 become 255.
* ``F`` (float32): NaN becomes 0. From the finite values: if the maximum is <= 1 the range is
  0..1 (times 255); else if it is <= 255 the range is 0..255; else the image is min-max
  normalised to 0..255 (a constant image then becomes 255). Results are clipped to 0..255 and
  rounded half up; +-inf clip to 255 / 0.
* any other mode: PIL's ``convert("RGB")`` if PIL supports it, else an error.

ICC profiles of images that are not CMYK are ignored: their pixels are taken to be sRGB.
Multi-frame files (GIF, TIFF, WebP, MPO) give their first frame.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import io
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features
from PIL.JpegImagePlugin import JpegImageFile

from zutiscli.data.limits import DEFAULT_MAX_PIXELS
from zutiscli.errors import ImageLoadError, ZutisError

try:  # PIL is sometimes built without LittleCMS; CMYK then falls back to the plain formula.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the PIL build
    ImageCms = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "DiscoveredImages",
    "LoadedImage",
    "discover_images",
    "load_image",
    "read_image",
    "to_rgb",
]

# zutis enforces its own decompression-bomb limit (``load_image(max_pixels=...)``, exposed as
# --max-pixels), checked right after the header is read. PIL's global check inside
# ``Image.open`` would warn or raise with a different limit and a message that does not name
# our option, so it is switched off here, once, when this module is imported.
Image.MAX_IMAGE_PIXELS = None


def _image_extensions() -> frozenset[str]:
    """Lowercase suffixes (with the dot) of the files a directory walk keeps."""
    extensions = {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
        ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
    }  # fmt: skip
    # AVIF decoding ships with PIL >= 11.2 wheels; only claim the suffix where it works.
    if "avif" in features.modules and features.check_module("avif"):
        extensions.add(".avif")
    return frozenset(extensions)


#: Lowercase file suffixes (with the leading dot) kept when walking directories and globs.
IMAGE_EXTENSIONS: frozenset[str] = _image_extensions()

_EXIF_ORIENTATION = 0x0112
# EXIF orientations 5-8 store the picture with width and height swapped.
_SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})
# What PIL's decoders and metadata parsers raise on damaged data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode one image file to a fully loaded 8-bit RGB image.

    Args:
        path: The image file.
        max_pixels: Largest accepted ``width * height`` of the stored image, in pixels, checked
            from the header before any pixel is decoded (decompression-bomb protection).
            ``None`` accepts any size.
        draft_size: ``(width, height)`` in pixels, in the displayed (EXIF-rotated) orientation.
            For JPEG files PIL is asked to decode at a reduced scale (1/2, 1/4 or 1/8, done in
            the DCT domain, so much faster) while keeping both sides >= this size; the caller
            resizes afterwards. Ignored for other formats.

    Returns:
        A ``PIL.Image.Image`` in mode ``"RGB"`` (``uint8``), already decoded and independent of
        the file (which is closed), with EXIF orientation applied: orientations 5-8 swap width
        and height. See the module docstring for how each PIL mode becomes RGB (transparency is
        composited over white).

    Raises:
        ImageLoadError: The file is missing, a directory, empty, not an image, truncated or
            corrupt, larger than ``max_pixels``, or of a pixel mode that cannot become RGB.
        ValueError: ``max_pixels`` or ``draft_size`` is not positive.
    """
    _check_arguments(max_pixels, draft_size)
    file = Path(path)
    _check_is_readable_file(file)
    return _open_and_decode(file, file, max_pixels, draft_size)[0]


@dataclass(frozen=True)
class LoadedImage:
    """One image file as :func:`read_image` returns it.

    Attributes:
        image: ``PIL.Image.Image`` in mode ``"RGB"`` (``uint8``), EXIF orientation applied; for a
            JPEG read with ``draft_size`` it may be smaller than ``size`` (by 1/2, 1/4 or 1/8).
        size: ``(width, height)`` in pixels of the displayed (EXIF-rotated) image at full
            resolution, whatever scale it was decoded at.
        data: the file's bytes, as read (e.g. to hash them).
        stat: the file's ``os.stat_result``, taken from the open file that ``data`` was read from
            (``st_size`` in bytes, ``st_mtime_ns`` in nanoseconds).
    """

    image: Image.Image
    size: tuple[int, int]
    data: bytes
    stat: os.stat_result


def read_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> LoadedImage:
    """Read one image file once and decode it exactly as :func:`load_image` does.

    The file is opened once: its bytes are read into memory and decoded from there, and its
    header (size, EXIF orientation) is parsed once, so a caller that also hashes the file and
    records its full-resolution size does not open it again.

    Args:
        path: The image file.
        max_pixels: As for :func:`load_image` (pixels of the stored image; ``None``: any size).
        draft_size: As for :func:`load_image` (``(width, height)`` in pixels, displayed
            orientation; JPEG only).

    Returns:
        A :class:`LoadedImage`: ``image`` is pixel for pixel what :func:`load_image` returns
        for the same arguments.

    Raises:
        ImageLoadError: As :func:`load_image`, with the same reasons.
        ValueError: ``max_pixels`` or ``draft_size`` is not positive.
    """
    _check_arguments(max_pixels, draft_size)
    file = Path(path)
    _check_is_readable_file(file)
    try:
        with open(file, "rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:
        raise ImageLoadError(file, f"cannot be read: {exc.strerror or exc}") from exc
    if not data:  # emptied since it was checked
        raise ImageLoadError(file, "is empty (0 bytes)")
    image, size = _open_and_decode(file, io.BytesIO(data), max_pixels, draft_size)
    return LoadedImage(image, size, data, info)


def _check_arguments(max_pixels: int | None, draft_size: tuple[int, int] | None) -> None:
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, not {max_pixels}")
    if draft_size is not None and (len(draft_size) != 2 or min(draft_size) <= 0):
        raise ValueError(f"draft_size must be two positive sizes (w, h), not {draft_size}")


def _open_and_decode(
    file: Path,
    source: Path | io.BytesIO,
    max_pixels: int | None,
    draft_size: tuple[int, int] | None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Open ``source`` (``file`` itself or its bytes) with PIL and :func:`_decode` it; PIL's errors
    become :class:`ImageLoadError` naming ``file``."""
    try:
        with Image.open(source) as img:
            return _decode(file, img, max_pixels, draft_size)
    except Image.DecompressionBombError as exc:
        # Not raised by Image.open (its check is off), but some plugins have their own limits.
        raise ImageLoadError(file, f"is too large to decode safely: {_detail(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(file, "is not an image PIL can read") from exc
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error from the operating system
            raise ImageLoadError(file, f"cannot be read: {exc.strerror or exc}") from exc
        raise ImageLoadError(file, f"is truncated or corrupt: {_detail(exc)}") from exc


def _check_is_readable_file(file: Path) -> None:
    """Raise ImageLoadError unless ``file`` is an existing, non-empty regular file."""
    try:
        info = file.stat()
    except (FileNotFoundError, NotADirectoryError) as exc:
        if file.is_symlink():
            raise ImageLoadError(file, "is a broken symbolic link") from exc
        raise ImageLoadError(file, "does not exist") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(file, "is a symbolic link loop") from exc
        raise ImageLoadError(file, f"cannot be read: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(file, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(file, "is not a regular file")
    if info.st_size == 0:
        raise ImageLoadError(file, "is empty (0 bytes)")


def _decode(
    file: Path,
    img: Image.Image,
    max_pixels: int | None,
    draft_size: tuple[int, int] | None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Check the size, decode and convert an opened (not yet loaded) image.

    Returns the RGB image and the displayed ``(width, height)`` at full resolution, in pixels.
    """
    width, height = img.size  # as stored, at full resolution
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            file,
            f"has {width * height:,} pixels ({width:,}x{height:,}), above the limit of "
            f"{max_pixels:,}; raise it with --max-pixels",
        )

    if draft_size is not None and isinstance(img, JpegImageFile):
        # The draft scale applies to the stored pixels; for orientations 5-8 the stored image
        # is the displayed one turned by 90 degrees, so ask for the swapped size.
        want_w, want_h = draft_size
        if _orientation(img) in _SWAPPED_ORIENTATIONS:
            want_w, want_h = want_h, want_w
        img.draft("RGB", (int(want_w), int(want_h)))

    try:
        img.load()  # PIL decodes lazily: truncation and corruption only show up here
    except _DECODE_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise ImageLoadError(file, f"cannot be read: {exc.strerror or exc}") from exc
        raise ImageLoadError(file, f"is truncated or corrupt: {_detail(exc)}") from exc

    # After load(): a PNG may keep its EXIF after the pixel data, and PIL reads it there.
    orientation = _orientation(img)
    full_size = (height, width) if orientation in _SWAPPED_ORIENTATIONS else (width, height)
    oriented = img
    if orientation in range(2, 9):
        oriented = ImageOps.exif_transpose(img)

    try:
        return to_rgb(oriented), full_size  # always a new image, not tied to the file about to be closed
    except ValueError as exc:
        raise ImageLoadError(
            file, f"has pixel mode {img.mode!r}, which zutis cannot convert to RGB"
        ) from exc


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1-8 of ``img``; 1 (as stored) when absent or unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value)
    except (*_DECODE_ERRORS, TypeError, KeyError):
        return 1  # damaged metadata: show the pixels as stored, as image viewers do


def _detail(exc: BaseException) -> str:
    """PIL's message for ``exc`` as a clause: no trailing full stop, never empty."""
    text = str(exc).strip().rstrip(".")
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------------
# Conversion to RGB
# --------------------------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any supported PIL mode to mode ``"RGB"`` (``uint8``).

    The rules for each mode are in the module docstring; in short, transparency is composited
    over white (alpha-weighted), 16-bit data is scaled (65535 -> 255), and 32-bit integer and
    float data are scaled by the range their values suggest.

    Args:
        img: A loaded ``PIL.Image.Image`` of size ``(width, height)``.

    Returns:
        A new image of the same size in mode ``"RGB"``.

    Raises:
        ValueError: PIL has no conversion from ``img.mode`` to RGB.
    """
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" in img.info:  # colour-key transparency
        return _composite_over_white(img.convert("RGBA"))
    if mode == "RGB":
        return img.copy()
    if mode == "L":
        return img.convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in img.info or (
            img.palette is not None and img.palette.mode == "RGBA"
        )
        return _composite_over_white(img.convert("RGBA")) if has_alpha else img.convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    if mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        return _composite_over_white(img)
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode == "LAB":
        return _lab_to_rgb(img)
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_scale_16bit(np.asarray(img)))
    if mode == "I":
        return _grey_to_rgb(_int32_to_uint8(np.asarray(img)))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(img)))
    # YCbCr, HSV, RGBX, ... : PIL's own conversion is right for these.
    return img.convert("RGB")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """``(H, W)`` ``uint8`` grey levels -> RGB image with the grey in all three channels."""
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


def _composite_over_white(img: Image.Image) -> Image.Image:
    """Alpha-weighted composite of an ``LA``/``La``/``PA``/``RGBA``/``RGBa`` image over white.

    Straight alpha: ``out = round((c * a + 255 * (255 - a)) / 255)``.
    Premultiplied alpha (``La``, ``RGBa``, where ``c_p = c * a / 255``):
    ``out = min(255, c_p + 255 - a)``.
    """
    if img.mode == "PA":
        img = img.convert("RGBA")
    pixels = np.asarray(img).astype(np.int32)  # (H, W, 2) or (H, W, 4)
    colour, alpha = pixels[:, :, :-1], pixels[:, :, -1:]
    if img.mode in ("La", "RGBa"):
        out = np.minimum(colour + (255 - alpha), 255)
    else:
        out = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    out = out.astype(np.uint8)
    if out.shape[2] == 1:
        return _grey_to_rgb(out[:, :, 0])
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK -> RGB through the embedded ICC profile when possible, else PIL's formula."""
    icc = img.info.get("icc_profile")
    if icc and ImageCms is not None:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(img, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            converted = None  # unusable or mismatched profile: fall back to the plain formula
        if converted is not None:
            return converted
    return img.convert("RGB")


# CIE constants. PIL's LAB data comes from ICC transforms and Lab TIFFs (as written by image
# editors), whose reference white is D50 (the ICC connection space), so: D50 white (X, Y, Z),
# and the XYZ(D50) -> linear sRGB matrix that includes the Bradford adaptation to D65.
_D50_WHITE = np.array([0.96422, 1.0, 0.82521])
_XYZ_D50_TO_LINEAR_SRGB = np.array(
    [
        [3.1338561, -1.6168667, -0.4906146],
        [-0.9787684, 1.9161415, 0.0334540],
        [0.0719453, -0.2289914, 1.4052427],
    ]
)


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    """PIL ``LAB`` -> sRGB with the CIE formulas, reference white D50 (Bradford-adapted).

    PIL stores L* scaled to 0..255 and a*, b* as signed 8-bit integers (``getpixel`` and
    ``putpixel`` show them with a +128 offset, but the raw bytes are two's complement).
    """
    raw = np.asarray(img)  # (H, W, 3) uint8
    lightness = raw[:, :, 0].astype(np.float64) * (100.0 / 255.0)
    signed = raw[:, :, 1:].view(np.int8).astype(np.float64)
    a_star, b_star = signed[:, :, 0], signed[:, :, 1]
    fy = (lightness + 16.0) / 116.0
    f = np.stack([fy + a_star / 500.0, fy, fy - b_star / 200.0], axis=-1)
    delta = 6.0 / 29.0
    ratio = np.where(f > delta, f**3, 3.0 * delta**2 * (f - 4.0 / 29.0))
    xyz = ratio * _D50_WHITE
    linear = np.clip(xyz @ _XYZ_D50_TO_LINEAR_SRGB.T, 0.0, 1.0)
    srgb = np.where(
        linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1.0 / 2.4) - 0.055
    )
    return Image.fromarray(_round_to_uint8(srgb * 255.0), "RGB")


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    """Clip float values to 0..255 and round half up to ``uint8``."""
    return np.floor(np.clip(values, 0.0, 255.0) + 0.5).astype(np.uint8)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Integers in 0..65535 (any integer dtype) -> ``uint8`` ``round(v * 255 / 65535)``."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _int32_to_uint8(values: np.ndarray) -> np.ndarray:
    """Mode ``I``: 8-bit if the maximum is <= 255, else 16-bit (0..65535); clipped."""
    if values.size and int(values.max()) > 255:
        return _scale_16bit(values)
    return np.clip(values, 0, 255).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Mode ``F``: range 0..1, 0..255 or min-max from the finite values; NaN -> 0."""
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.uint8)
    low = float(data[finite].min())
    high = float(data[finite].max())
    if high <= 1.0:
        scaled = data * 255.0
    elif high <= 255.0:
        scaled = data
    elif high > low:
        scaled = (data - low) * (255.0 / (high - low))
    else:  # constant image above 255
        scaled = np.full_like(data, 255.0)
    scaled = np.where(np.isnan(scaled), 0.0, scaled)  # +-inf are clipped below
    return _round_to_uint8(scaled)


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass
class DiscoveredImages:
    """Result of :func:`discover_images`.

    Attributes:
        paths: Image paths, sorted by their posix string and unique by resolved absolute path;
            relative when given relative.
        problems: ``(entry, reason)`` for what names no readable file: entries of the list file
            that do not exist, symbolic links that lead nowhere (dangling, or in a loop), links to
            a directory that contains them, directories that cannot be listed. In the order met,
            each once.
    """

    paths: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def discover_images(
    sources: Sequence[str | Path],
    *,
    from_list: str | Path | None = None,
) -> DiscoveredImages:
    """Expand command-line sources and an optional list file into image paths.

    Each source is, checked in this order:

    * an existing file: kept whatever its suffix (loading will say if it is not an image);
    * a directory: walked recursively, following symbolic links to directories (each directory
      is walked once, however many links lead to it), skipping hidden files and directories
      (name starting with ``.``) below it, keeping files whose lowercase suffix is in
      :data:`IMAGE_EXTENSIONS`;
    * a glob pattern (contains ``*``, ``?`` or ``[``), expanded with ``**`` support: matched
      directories are walked as above, matched files kept only with an image suffix.

    ``from_list`` is a UTF-8 text file with one path per line; surrounding whitespace is
    stripped, blank lines and lines starting with ``#`` are ignored, and relative paths are
    taken relative to the **current working directory** (not to the list file). Files listed
    are kept whatever their suffix, directories are walked, and no glob expansion is done.

    What names no readable file is reported in :attr:`DiscoveredImages.problems` instead of
    raising, so that a stage lists it with the images it could not read: a list entry that does
    not exist, a symbolic link that is dangling or part of a loop (met in a walk, it is reported
    when its name has an image suffix or no suffix at all, as a link to a directory may have), a
    link to a directory that contains it (a loop: not walked), a directory that cannot be listed.

    Returns:
        The paths sorted by posix string, de-duplicated by resolved absolute path (the first in
        sorted order is kept), in the form given (relative inputs stay relative).

    Raises:
        ZutisError: A source that does not exist, a glob that matches nothing, or a list file
            that is missing or not UTF-8 text.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for source in sources:
        found.extend(_expand_source(source, problems))

    if from_list is not None:
        for entry in _read_list_file(Path(from_list)):
            listed = Path(entry)
            if listed.is_file():
                found.append(listed)
            elif listed.is_dir():
                found.extend(_walk_directory(listed, problems))
            else:
                problems.append((entry, _link_problem(listed) or "no such file or directory"))

    once: dict[str, str] = {}
    for entry, reason in problems:  # a bad link reached twice (listed, and in a listed directory)
        once.setdefault(str(entry), reason)
    return DiscoveredImages(paths=_sorted_unique(found), problems=list(once.items()))


def _expand_source(source: str | Path, problems: list[tuple[str, str]]) -> Iterator[Path]:
    """Paths named by one command-line source (file, directory or glob pattern); what names no
    readable file goes to ``problems``."""
    text = os.fspath(source)
    if os.path.isfile(text):
        yield Path(text)
    elif os.path.isdir(text):
        yield from _walk_directory(Path(text), problems)
    elif _has_glob_magic(text) and "**" in text.split("/"):
        images, matched = _recursive_glob(text, problems)
        if not matched:
            raise ZutisError(f"{text}: matches no file")
        yield from images
    elif _has_glob_magic(text):
        matches = glob.glob(text)
        if not matches:
            raise ZutisError(f"{text}: matches no file")
        for match in matches:
            if os.path.isdir(match):
                yield from _walk_directory(Path(match), problems)
            elif _has_image_suffix(match):
                problem = _link_problem(Path(match))
                if problem is None:
                    yield Path(match)
                else:
                    problems.append((match, problem))
    else:
        raise ZutisError(f"{text}: no such file or directory")


def _has_glob_magic(text: str) -> bool:
    """True when ``text`` contains a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(char in text for char in "*?[")


def _link_problem(path: Path) -> str | None:
    """Why the symbolic link ``path`` leads to no file (dangling, or in a loop); None when ``path``
    is no symbolic link or its target exists."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"is a broken symbolic link (to {os.readlink(path)}, which does not exist)"
        return f"cannot be read: {exc.strerror or exc}"
    return None


def _contains(directory: str, path: str) -> bool:
    """Whether real path ``path`` is real path ``directory`` or inside it."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _safe_walk(top: Path, problems: list[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """``(directory, its file names)`` under ``top``, top-down, names sorted, hidden names (``.``)
    left out. Links to directories are followed, each directory is walked once however many links
    lead to it, and a link to a directory that contains it (a loop) is reported in ``problems``
    and not walked; so are directories that cannot be listed."""

    def unlistable(error: OSError) -> None:
        problems.append((str(error.filename), f"cannot be listed: {error.strerror or error}"))

    seen = {os.path.realpath(top)}  # directories walked or about to be, by real path
    for dirpath, dirnames, filenames in os.walk(top, onerror=unlistable, followlinks=True):
        here = os.path.realpath(dirpath)
        kept = []
        # real directories first: a directory also reached through a link is walked under its own name
        for name in sorted(dirnames, key=lambda name: (os.path.islink(os.path.join(dirpath, name)), name)):
            path = os.path.join(dirpath, name)
            if name.startswith("."):
                continue
            real = os.path.realpath(path)
            if os.path.islink(path) and _contains(real, here):
                problems.append((path, f"is a symbolic link loop (to {os.readlink(path)}, a directory that "
                                       f"contains it)"))
            elif real not in seen:  # a directory reached again through another link is walked once
                seen.add(real)
                kept.append(name)
        dirnames[:] = sorted(kept)
        yield dirpath, [name for name in sorted(filenames) if not name.startswith(".")]


def _image_files(directory: str, names: list[str], problems: list[tuple[str, str]]) -> Iterator[Path]:
    """The image files among ``directory``'s file ``names`` (by suffix). A symbolic link that leads
    nowhere goes to ``problems`` when its name has an image suffix or none (a link to a directory
    has none), and so does an image name that is not a regular file."""
    for name in names:
        candidate = Path(directory, name)
        problem = _link_problem(candidate)
        if problem is not None:
            if os.path.splitext(name)[1] == "" or _has_image_suffix(name):
                problems.append((str(candidate), problem))
        elif _has_image_suffix(name):
            if candidate.is_file():
                yield candidate
            else:
                problems.append((str(candidate), "is not a regular file"))


def _walk_directory(top: Path, problems: list[tuple[str, str]]) -> Iterator[Path]:
    """Image files under ``top``, recursively (:func:`_safe_walk`); bad links go to ``problems``."""
    for directory, names in _safe_walk(top, problems):
        yield from _image_files(directory, names, problems)


def _matches(parts: list[str], names: list[str]) -> bool:
    """Whether path components ``names`` match glob components ``parts`` (``**``: any number of
    components, none hidden)."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_matches(parts[1:], names[skip:]) for skip in range(len(names) + 1)
                   if not any(name.startswith(".") for name in names[:skip]))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and \
        (not names[0].startswith(".") or parts[0].startswith(".")) and _matches(parts[1:], names[1:])


def _recursive_glob(pattern: str, problems: list[tuple[str, str]]) -> tuple[list[Path], bool]:
    """``(image files, whether anything matched)`` of a glob ``pattern`` with a ``**`` component:
    matched directories give their images, matched files are kept with an image suffix. Walked
    like a directory (:func:`_safe_walk`), so links to directories are followed once and a link loop
    is reported, not followed until the paths grow too long (as :func:`glob.glob` does)."""
    parts = pattern.split("/")
    fixed = 0
    while fixed < len(parts) - 1 and not _has_glob_magic(parts[fixed]):
        fixed += 1
    root = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else ".")
    rest = [part for part in parts[fixed:] if part]
    if not os.path.isdir(root):
        return [], False
    found: list[Path] = []
    matched = False
    inside: dict[str, bool] = {}  # directory -> it or a directory above it matched the pattern
    for directory, names in _safe_walk(Path(root), problems):
        here = [] if directory == root else os.path.relpath(directory, root).split(os.sep)
        within = inside.get(os.path.dirname(directory), False) or _matches(rest, here)
        inside[directory] = within
        chosen = [name for name in names if within or _matches(rest, [*here, name])]
        matched = matched or within or bool(chosen)
        for path in _image_files(directory, chosen, problems):
            found.append(Path(os.path.relpath(path)) if root == "." else path)
    return found, matched


def _has_image_suffix(name: str) -> bool:
    """True when the lowercase suffix of ``name`` is in IMAGE_EXTENSIONS."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _read_list_file(list_file: Path) -> list[str]:
    """Non-blank, non-comment, stripped lines of a UTF-8 list file."""
    if list_file.is_dir():
        raise ZutisError(f"{list_file}: is a directory, not a list of image paths")
    try:
        text = list_file.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except FileNotFoundError as exc:
        raise ZutisError(f"{list_file}: list file does not exist") from exc
    except UnicodeDecodeError as exc:
        raise ZutisError(
            f"{list_file}: list file is not UTF-8 text (bad byte at offset {exc.start})"
        ) from exc
    except OSError as exc:
        raise ZutisError(f"{list_file}: list file cannot be read: {exc.strerror or exc}") from exc
    entries = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return entries


def _sorted_unique(paths: list[Path]) -> list[Path]:
    """Sort by posix string, then keep the first path for each resolved absolute path."""
    seen: set[str] = set()
    unique: list[Path] = []
    for path in sorted(paths, key=lambda p: p.as_posix()):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique

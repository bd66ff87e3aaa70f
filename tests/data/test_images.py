"""Tests for zutiscli.data.images: decoding to RGB, load errors, and image discovery."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from zutiscli.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DiscoveredImages,
    discover_images,
    load_image,
    read_image,
    to_rgb,
)
from zutiscli.errors import ImageLoadError, ZutisError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def pixels(img: Image.Image) -> np.ndarray:
    """(H, W, 3) int array of an RGB image, for arithmetic without uint8 wrap-around."""
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def row_image(mode: str, values: list) -> Image.Image:
    """A 1-pixel-high image of ``mode`` whose pixels are ``values``, left to right."""
    img = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    return img


def two_colour_palette(mode: str = "P") -> Image.Image:
    """P/PA image, 2x1: index 0 is red, index 1 is blue."""
    img = Image.new(mode, (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])
    return img


def sixteen_bit(mode: str, values: list[int]) -> Image.Image:
    """A 1-row 16-bit image built from raw bytes in the byte order ``mode`` declares."""
    order = ">" if mode == "I;16B" else "<"
    raw = np.array(values, dtype=f"{order}u2").tobytes()
    return Image.frombytes(mode, (len(values), 1), raw)


# --------------------------------------------------------------------------------------------
# conversion to RGB, every mode
# --------------------------------------------------------------------------------------------


def test_mode_1_is_black_and_white() -> None:
    out = pixels(to_rgb(row_image("1", [0, 1])))
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_mode_l_replicates_grey() -> None:
    assert pixels(to_rgb(row_image("L", [77, 200])))[0].tolist() == [[77] * 3, [200] * 3]


def test_mode_p_without_transparency_looks_up_palette() -> None:
    img = two_colour_palette()
    img.putpixel((1, 0), 1)
    assert pixels(to_rgb(img))[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_mode_p_with_transparent_index_becomes_white() -> None:
    img = two_colour_palette()
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0  # red index is transparent
    assert pixels(to_rgb(img))[0].tolist() == [[255, 255, 255], [0, 0, 255]]


def test_mode_p_with_transparency_survives_png_round_trip(tmp_path: Path) -> None:
    img = two_colour_palette()
    img.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=1)  # blue index is transparent
    out = pixels(load_image(path))
    assert out[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_mode_l_and_rgb_colour_key_transparency_become_white() -> None:
    grey = row_image("L", [7, 90])
    grey.info["transparency"] = 7
    assert pixels(to_rgb(grey))[0].tolist() == [[255] * 3, [90] * 3]
    rgb = row_image("RGB", [(1, 2, 3), (9, 8, 7)])
    rgb.info["transparency"] = (1, 2, 3)
    assert pixels(to_rgb(rgb))[0].tolist() == [[255] * 3, [9, 8, 7]]


def test_mode_la_composites_over_white() -> None:
    out = pixels(to_rgb(row_image("LA", [(13, 0), (40, 255), (0, 128)])))[0]
    assert out[0].tolist() == [255, 255, 255]  # fully transparent, garbage grey ignored
    assert out[1].tolist() == [40, 40, 40]  # opaque, unchanged
    assert abs(out[2][0] - 127) <= 1  # half-transparent black over white is mid grey


def test_mode_la_premultiplied_matches_straight() -> None:
    straight = row_image("LA", [(13, 0), (40, 255), (200, 128)])
    premultiplied = straight.convert("La")
    assert premultiplied.mode == "La"
    diff = pixels(to_rgb(premultiplied)) - pixels(to_rgb(straight))
    assert np.abs(diff).max() <= 1
    assert pixels(to_rgb(premultiplied))[0, 0].tolist() == [255, 255, 255]


def test_mode_rgba_half_transparent_red_over_white() -> None:
    out = pixels(to_rgb(row_image("RGBA", [(255, 0, 0, 128), (1, 2, 3, 0), (9, 8, 7, 255)])))
    assert np.abs(out[0, 0] - [255, 128, 128]).max() <= 1
    assert out[0, 1].tolist() == [255, 255, 255]  # garbage colour under alpha 0
    assert out[0, 2].tolist() == [9, 8, 7]


def test_mode_rgba_premultiplied() -> None:
    img = row_image("RGBA", [(255, 0, 0, 128), (1, 2, 3, 0), (200, 100, 50, 64)]).convert("RGBa")
    assert img.mode == "RGBa"
    out = pixels(to_rgb(img))
    assert np.abs(out[0, 0] - [255, 128, 128]).max() <= 1
    assert out[0, 1].tolist() == [255, 255, 255]
    expected = [round((c * 64 + 255 * 191) / 255) for c in (200, 100, 50)]
    assert np.abs(out[0, 2] - expected).max() <= 1


def test_mode_pa_composites_palette_colour_over_white() -> None:
    img = two_colour_palette("PA")
    img.putpixel((0, 0), (0, 0))  # red, transparent
    img.putpixel((1, 0), (1, 255))  # blue, opaque
    assert pixels(to_rgb(img))[0].tolist() == [[255, 255, 255], [0, 0, 255]]


def test_mode_cmyk_plain_formula() -> None:
    out = pixels(to_rgb(row_image("CMYK", [(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])))
    assert np.abs(out[0, 0] - [0, 255, 255]).max() <= 2  # pure cyan
    assert out[0, 1].tolist() == [0, 0, 0]  # full black ink
    assert out[0, 2].tolist() == [255, 255, 255]  # no ink is paper white


def test_mode_cmyk_with_unusable_icc_profile_falls_back() -> None:
    img = row_image("CMYK", [(255, 0, 0, 0)])
    img.info["icc_profile"] = b"not an icc profile"
    assert np.abs(pixels(to_rgb(img))[0, 0] - [0, 255, 255]).max() <= 2
    # An RGB-space profile attached to CMYK data cannot be used either.
    img.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert np.abs(pixels(to_rgb(img))[0, 0] - [0, 255, 255]).max() <= 2


def test_mode_cmyk_tiff_file(tmp_path: Path) -> None:
    path = tmp_path / "cyan.tif"
    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(path)
    out = pixels(load_image(path))
    assert np.abs(out - [0, 255, 255]).max() <= 2


def test_mode_ycbcr_and_hsv() -> None:
    colour = (200, 30, 60)
    ycbcr = row_image("RGB", [colour]).convert("YCbCr")
    assert np.abs(pixels(to_rgb(ycbcr))[0, 0] - colour).max() <= 3
    hsv = row_image("HSV", [(0, 255, 255), (85, 255, 255)])
    out = pixels(to_rgb(hsv))[0]
    assert out[0].tolist() == [255, 0, 0]
    assert np.abs(out[1] - [0, 255, 0]).max() <= 2


def test_mode_lab() -> None:
    # PIL's 8-bit LAB as putpixel takes it: L* * 255 / 100, a* + 128, b* + 128, white D50.
    # sRGB red is L* 54.29, a* 80.81, b* 69.89 relative to D50.
    red = (round(54.29 * 255 / 100), 128 + 81, 128 + 70)
    img = row_image("LAB", [(255, 128, 128), (0, 128, 128), (128, 128, 128), red])
    out = pixels(to_rgb(img))[0]
    assert np.abs(out[0] - 255).max() <= 1  # white
    assert out[1].tolist() == [0, 0, 0]  # black
    assert np.ptp(out[2]) <= 1 and 100 < out[2][0] < 140  # neutral grey stays neutral
    assert out[3][0] >= 250 and out[3][1] <= 8 and out[3][2] <= 8  # red


def test_mode_lab_round_trips_littlecms_output() -> None:
    colours = [(255, 0, 0), (0, 0, 255), (128, 128, 128), (200, 150, 100), (30, 90, 60)]
    rgb = Image.fromarray(np.array([colours], dtype=np.uint8))
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(rgb, to_lab)
    assert lab.mode == "LAB"
    assert np.abs(pixels(to_rgb(lab))[0] - np.array(colours)).max() <= 3


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_modes_scale_full_range(mode: str) -> None:
    img = sixteen_bit(mode, [0, 32768, 65535, 257])
    assert img.mode == mode
    out = pixels(to_rgb(img))[0, :, 0].tolist()
    assert out == [0, 128, 255, 1]


def test_16_bit_png_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert pixels(load_image(path))[0, :, 0].tolist() == [0, 128, 255]


def test_mode_i_small_values_are_8_bit() -> None:
    img = Image.fromarray(np.array([[0, 100, 255, -5]], dtype=np.int32))
    assert img.mode == "I"
    assert pixels(to_rgb(img))[0, :, 0].tolist() == [0, 100, 255, 0]


def test_mode_i_large_values_are_16_bit() -> None:
    img = Image.fromarray(np.array([[0, 32768, 65535, 100, 70000]], dtype=np.int32))
    assert pixels(to_rgb(img))[0, :, 0].tolist() == [0, 128, 255, 0, 255]


def test_mode_f_ranges() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert pixels(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    byte = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert pixels(to_rgb(byte))[0, :, 0].tolist() == [0, 100, 255]
    wide = Image.fromarray(np.array([[-1000.0, 0.0, 1000.0]], dtype=np.float32))
    assert pixels(to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255]  # min-max
    with_nan = Image.fromarray(np.array([[np.nan, 0.25, 1.0]], dtype=np.float32))
    assert pixels(to_rgb(with_nan))[0, :, 0].tolist() == [0, 64, 255]


def test_to_rgb_keeps_size_and_gives_new_image() -> None:
    img = Image.new("RGB", (5, 3), (1, 2, 3))
    out = to_rgb(img)
    assert out is not img and out.size == (5, 3) and out.mode == "RGB"


# --------------------------------------------------------------------------------------------
# load_image: orientation, draft, file handling
# --------------------------------------------------------------------------------------------


def save_jpeg_with_orientation(path: Path, img: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_6_rotates_and_swaps_size(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red stored top-left corner
    path = tmp_path / "rotated.jpg"
    save_jpeg_with_orientation(path, stored, 6)

    out = load_image(path)
    assert out.size == (20, 40)
    arr = pixels(out)
    # Orientation 6 is displayed turned 90 degrees clockwise: top-left goes to top-right.
    assert arr[2, 17, 0] > 200 and arr[2, 17, 2] < 60
    assert arr[2, 2, 0] < 60 and arr[2, 2, 2] > 200


def test_draft_decodes_jpeg_smaller_but_not_below_request(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (800, 600), (10, 120, 30)).save(path)
    full = load_image(path)
    drafted = load_image(path, draft_size=(100, 100))
    assert full.size == (800, 600)
    assert drafted.size[0] < 800 and drafted.size[1] < 600
    assert drafted.size[0] >= 100 and drafted.size[1] >= 100
    assert drafted.mode == "RGB"


def test_draft_uses_stored_orientation(tmp_path: Path) -> None:
    path = tmp_path / "portrait.jpg"
    save_jpeg_with_orientation(path, Image.new("RGB", (800, 400), (50, 50, 50)), 6)
    # Displayed 400x800. Asking the stored image for (350, 100) unswapped would give 200 wide.
    wide = load_image(path, draft_size=(350, 100))
    assert wide.size[0] >= 350 and wide.size[1] >= 100
    small = load_image(path, draft_size=(90, 190))
    assert small.size == (100, 200)


def test_draft_ignored_for_png(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 400)).save(path)
    assert load_image(path, draft_size=(50, 50)).size == (400, 400)


def test_loaded_image_is_independent_of_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    Image.new("RGB", (4, 4), (5, 6, 7)).save(path)
    img = load_image(path)
    path.unlink()
    assert img.getpixel((3, 3)) == (5, 6, 7)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_file_handles_are_closed(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.new("RGB", (8, 8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        load_image(good)
        with pytest.raises(ImageLoadError):
            load_image(bad)
    assert len(os.listdir("/proc/self/fd")) == before


# --------------------------------------------------------------------------------------------
# load_image: errors
# --------------------------------------------------------------------------------------------


def load_error(path: Path, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kwargs)
    error = info.value
    assert error.path == path
    assert str(error).startswith(f"{path}: ")
    return error


def write_cut(path: Path, img: Image.Image, fmt: str) -> None:
    """Save ``img`` then keep only the first 60% of the bytes."""
    img.save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def noise(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def unreadable_files(tmp_path: Path) -> dict[str, tuple[Path, dict]]:
    """Files no image loader may accept, by kind: ``(path, the loader's keyword options)``."""
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    cut_jpeg = tmp_path / "cut.jpg"
    write_cut(cut_jpeg, noise(), "JPEG")
    cut_png = tmp_path / "cut.png"
    write_cut(cut_png, noise(), "PNG")
    folder = tmp_path / "folder"
    folder.mkdir()
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    return {"empty": (empty, {}), "text": (text, {}), "cut_jpeg": (cut_jpeg, {}), "cut_png": (cut_png, {}),
            "missing": (tmp_path / "missing.png", {}), "folder": (folder, {}), "big": (big, {"max_pixels": 5000})}


def test_error_reasons_are_distinct(tmp_path: Path) -> None:
    reasons = {kind: load_error(path, **options).reason for kind, (path, options) in unreadable_files(tmp_path).items()}
    assert reasons["empty"] == "is empty (0 bytes)"
    assert reasons["text"] == "is not an image PIL can read"
    assert reasons["cut_jpeg"].startswith("is truncated or corrupt")
    assert reasons["cut_png"].startswith("is truncated or corrupt")
    assert reasons["missing"] == "does not exist"
    assert "directory" in reasons["folder"]
    assert "10,000 pixels" in reasons["big"] and "5,000" in reasons["big"]
    assert "--max-pixels" in reasons["big"]
    # One kind of reason per failure; only the two truncations share theirs.
    kinds = {reason.split(":")[0] for reason in reasons.values()}
    assert len(kinds) == len(reasons) - 1


def test_truncation_is_not_tolerated_globally() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_pixel_limit_none_and_default(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    Image.new("RGB", (100, 100)).save(path)
    assert load_image(path, max_pixels=None).size == (100, 100)
    assert load_image(path, max_pixels=10_000).size == (100, 100)  # limit is inclusive
    assert DEFAULT_MAX_PIXELS == 178_956_970
    assert Image.MAX_IMAGE_PIXELS is None  # our limit governs, not PIL's


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit grey) with a token IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_our_limit_is_checked_from_header_above_pil_default(tmp_path: Path) -> None:
    # 200 million pixels claimed by a few bytes: rejected before any decoding, by our limit
    # (PIL's own check, with its different limit and message, must not fire first).
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20_000, 10_000))
    reason = load_error(path).reason
    assert reason.startswith("has 200,000,000 pixels")
    assert "178,956,970" in reason
    # Under PIL's default limit but above ours: ours still governs.
    path.write_bytes(png_header_only(1000, 1000))
    assert "1,000,000 pixels" in load_error(path, max_pixels=999_999).reason


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(ValueError):
        load_image(path, max_pixels=0)
    with pytest.raises(ValueError):
        load_image(path, draft_size=(0, 10))


# --------------------------------------------------------------------------------------------
# read_image: one read, the pixels of load_image
# --------------------------------------------------------------------------------------------


def test_read_image_gives_load_images_pixels_bytes_stat_and_full_size(tmp_path: Path) -> None:
    scene = np.asarray(noise(256).resize((640, 480)))
    files = {}
    for width, height in ((640, 480), (333, 250), (97, 131)):
        path = tmp_path / f"photo-{width}.jpg"
        Image.fromarray(np.ascontiguousarray(scene[:height, :width])).save(path, quality=90)
        files[path] = (width, height)
    turned = tmp_path / "turned.jpg"
    save_jpeg_with_orientation(turned, Image.fromarray(np.ascontiguousarray(scene[:200, :300])), 6)
    files[turned] = (200, 300)
    upside = tmp_path / "upside.jpg"
    save_jpeg_with_orientation(upside, Image.fromarray(np.ascontiguousarray(scene[:100, :160])), 3)
    files[upside] = (160, 100)
    grey = tmp_path / "grey.png"
    Image.fromarray(scene[:70, :90, 0]).save(grey)
    files[grey] = (90, 70)
    transparent = tmp_path / "transparent.png"
    Image.fromarray(np.dstack([scene[:50, :60], np.full((50, 60), 100, np.uint8)]), "RGBA").save(transparent)
    files[transparent] = (60, 50)
    for path, full_size in files.items():
        for draft in (None, (32, 32), (64, 48), (224, 224)):
            loaded = read_image(path, draft_size=draft)
            expected = load_image(path, draft_size=draft)
            assert loaded.image.mode == "RGB" and loaded.image.size == expected.size, (path.name, draft)
            assert np.array_equal(np.asarray(loaded.image), np.asarray(expected)), (path.name, draft)
            assert loaded.size == full_size, (path.name, draft)
        assert loaded.data == path.read_bytes()
        assert (loaded.stat.st_size, loaded.stat.st_mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns)
    assert read_image(tmp_path / "photo-640.jpg", draft_size=(64, 64)).image.size == (160, 120)  # 1/4 scale


def test_read_image_fails_with_load_images_reasons(tmp_path: Path) -> None:
    files = unreadable_files(tmp_path)
    big = files["big"][0]
    for path, options in [*files.values(), (files["cut_jpeg"][0], {"draft_size": (8, 8)})]:
        with pytest.raises(ImageLoadError) as info:
            read_image(path, **options)
        assert info.value.path == path and info.value.reason == load_error(path, **options).reason
    with pytest.raises(ValueError):
        read_image(big, draft_size=(0, 10))


# --------------------------------------------------------------------------------------------
# discover_images
# --------------------------------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path/data with nested images, hidden entries and a non-image file."""
    root = tmp_path / "data"
    touch(root / "b.jpg")
    touch(root / "A.PNG")
    touch(root / "sub" / "deep" / "c.webp")
    touch(root / "sub" / "d.tiff")
    touch(root / "notes.txt")
    touch(root / ".hidden.jpg")
    touch(root / ".cache" / "e.jpg")
    return root


def test_extensions() -> None:
    for suffix in (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff"):
        assert suffix in IMAGE_EXTENSIONS
    for suffix in (".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga"):
        assert suffix in IMAGE_EXTENSIONS
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_EXTENSIONS)
    assert ".txt" not in IMAGE_EXTENSIONS


def test_directory_is_walked_recursively_skipping_hidden(tree: Path) -> None:
    found = discover_images([tree])
    assert isinstance(found, DiscoveredImages)
    names = [p.relative_to(tree).as_posix() for p in found.paths]
    assert names == ["A.PNG", "b.jpg", "sub/d.tiff", "sub/deep/c.webp"]
    assert found.problems == []


def test_explicit_file_kept_whatever_its_extension(tree: Path) -> None:
    found = discover_images([tree / "notes.txt", tree / ".hidden.jpg"])
    assert found.paths == [tree / ".hidden.jpg", tree / "notes.txt"]


def test_glob_expansion(tree: Path) -> None:
    found = discover_images([str(tree / "**" / "*")])
    names = [p.relative_to(tree).as_posix() for p in found.paths]
    # notes.txt is filtered out, directories matched are walked, hidden names not matched.
    assert names == ["A.PNG", "b.jpg", "sub/d.tiff", "sub/deep/c.webp"]
    only_jpg = discover_images([str(tree / "*.jpg")])
    assert only_jpg.paths == [tree / "b.jpg"]


def test_glob_without_match_is_an_error(tree: Path) -> None:
    pattern = str(tree / "*.gif")
    with pytest.raises(ZutisError, match="matches no file") as info:
        discover_images([pattern])
    assert str(info.value) == f"{pattern}: matches no file"


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ZutisError) as info:
        discover_images([missing])
    assert str(info.value) == f"{missing}: no such file or directory"


def test_from_list_relative_to_cwd(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    listing.write_text(
        "# images to process\n"
        "\n"
        "  data/b.jpg  \n"
        "data/notes.txt\n"
        "data/missing.jpg\n"
        "   # indented comment\n"
        "data/sub\n",
        encoding="utf-8",
    )
    found = discover_images([], from_list=listing)
    assert [p.as_posix() for p in found.paths] == [
        "data/b.jpg",
        "data/notes.txt",
        "data/sub/d.tiff",
        "data/sub/deep/c.webp",
    ]
    assert found.problems == [("data/missing.jpg", "no such file or directory")]


def test_missing_list_file_is_an_error(tmp_path: Path) -> None:
    listing = tmp_path / "absent.txt"
    with pytest.raises(ZutisError, match="absent.txt"):
        discover_images([], from_list=listing)


def test_order_is_sorted_and_deterministic(tmp_path: Path) -> None:
    names = ["z.jpg", "a.jpg", "m/b.jpg", "B.jpg", "a10.jpg", "a2.jpg"]
    for name in names:
        touch(tmp_path / name)
    forward = discover_images([tmp_path / n for n in names]).paths
    backward = discover_images([tmp_path / n for n in reversed(names)]).paths
    assert forward == backward
    assert [p.as_posix() for p in forward] == sorted((tmp_path / n).as_posix() for n in names)


def test_duplicates_removed_relative_paths_kept(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text(f"data/b.jpg\n{tree / 'b.jpg'}\n", encoding="utf-8")
    found = discover_images(
        ["data", "data/b.jpg", "./data/b.jpg", "data/sub/../b.jpg", "data/*.jpg"],
        from_list=listing,
    )
    # Sorted by posix string first ("/" sorts before "d"), then the first of each file kept.
    assert [p.as_posix() for p in found.paths] == [
        (tree / "b.jpg").as_posix(),
        "data/A.PNG",
        "data/sub/d.tiff",
        "data/sub/deep/c.webp",
    ]

import numpy as np
import pytest
from PIL import Image

from zutiscli.artefacts.labelmap import read_label_png, voc_palette, write_label_png
from zutiscli.errors import ArtefactError


def test_voc_palette_known_colours():
    palette = voc_palette()
    assert len(palette) == 768
    assert palette[0:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0]  # aeroplane
    assert palette[15 * 3:16 * 3] == [192, 128, 128]  # person
    assert palette[255 * 3:] == [224, 224, 192]  # the VOC ignore/border colour


def test_round_trip_keeps_indices_and_palette(tmp_path):
    labels = np.array([[0, 1, 2], [6, 255, 0]], dtype=np.uint8)
    path = write_label_png(tmp_path / "l.png", labels)
    assert np.array_equal(read_label_png(path), labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.convert("RGB").getpixel((1, 0)) == (128, 0, 0)


def test_rgb_label_maps_and_bad_values_are_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ArtefactError, match="RGB image"):
        read_label_png(tmp_path / "rgb.png")
    with pytest.raises(ArtefactError, match="no such label map"):
        read_label_png(tmp_path / "missing.png")
    with pytest.raises(ValueError):
        write_label_png(tmp_path / "x.png", np.full((2, 2), 300))

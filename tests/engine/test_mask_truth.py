"""Ground-truth classes of pseudo-label masks: images paired by path or name, masks by best IoU."""

import numpy as np
import pytest

from zutiscli.artefacts.coco import CocoBuilder
from zutiscli.engine.mask_truth import truth_labels
from zutiscli.errors import ArtefactError, UsageError
from zutiscli.ops.masks import encode_mask, rle_iou_matrix


def _mask(rows, cols, shape=(8, 8)):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


LEFT, RIGHT = _mask(slice(0, 8), slice(0, 4)), _mask(slice(0, 8), slice(4, 8))


def test_rle_iou_matrix():
    top = _mask(slice(0, 4), slice(0, 8))
    iou = rle_iou_matrix([encode_mask(LEFT), encode_mask(top)], [encode_mask(LEFT), encode_mask(RIGHT)])
    np.testing.assert_allclose(iou, [[1.0, 0.0], [16 / 48, 16 / 48]])
    assert rle_iou_matrix([encode_mask(LEFT)], []).shape == (1, 0)
    with pytest.raises(ValueError, match="several sizes"):
        rle_iou_matrix([encode_mask(LEFT)], [encode_mask(np.zeros((4, 4), bool))])


def test_images_pair_by_joined_path_by_tail_and_by_name(tmp_path):
    root = tmp_path / "data"
    (root / "hidden").mkdir(parents=True)
    truth = CocoBuilder(["cat", "dog"])
    tail = truth.add_image("images/a.png", 8, 8)  # relative to data/, not to data/hidden/: paired by its tail
    name = truth.add_image("b.png", 8, 8)  # just the name
    joined = truth.add_image("../images/c.png", 8, 8)  # relative to the JSON's folder
    truth.add_image("x/d.png", 8, 8)
    truth.add_image("y/d.png", 8, 8)  # two d.png, neither path a tail of z/d.png: not paired
    for image in (tail, name, joined):
        truth.add_mask(image, "cat", LEFT)
        truth.add_mask(image, "dog", RIGHT)
    truth.add_mask(joined, "cat", RIGHT, iscrowd=1)  # crowd regions label nothing
    gt = truth.write(root / "hidden" / "instances.json")

    images = root / "images"
    paths = [images / "a.png", images / "a.png", root / "elsewhere" / "b.png", images / "c.png", root / "z" / "d.png"]
    masks = [LEFT, RIGHT, _mask(slice(0, 8), slice(0, 3)), _mask(slice(0, 2), slice(0, 8)), LEFT]
    found = truth_labels(gt, paths, [encode_mask(m) for m in masks])
    assert found.classes == ["cat", "dog"]
    # a.png: cat, dog; b.png: 24 of LEFT's 32 pixels (IoU 0.75) -> cat; c.png: a strip (IoU 0.2) -> unmatched
    np.testing.assert_array_equal(found.labels, [0, 1, 0, -1, -1])
    assert (found.images, found.images_paired) == (4, 3)


def test_ground_truth_of_other_images_or_not_coco_is_refused(tmp_path):
    truth = CocoBuilder(["cat"])
    truth.add_image("other.png", 8, 8)
    gt = truth.write(tmp_path / "gt.json")
    with pytest.raises(UsageError, match="none of its 1 images is one of the 1 pseudo-labelled images"):
        truth_labels(gt, [tmp_path / "mine.png"], [encode_mask(LEFT)])
    text = tmp_path / "notes.json"
    text.write_text("[]")
    with pytest.raises(ArtefactError, match="notes.json: is not a COCO instances JSON"):
        truth_labels(text, [tmp_path / "mine.png"], [encode_mask(LEFT)])

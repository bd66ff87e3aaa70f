import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from zutiscli.artefacts.coco import CocoBuilder, load_coco
from zutiscli.errors import ArtefactError
from zutiscli.ops.masks import (
    decode_mask,
    encode_mask,
    encode_masks,
    rle_area,
    rle_bbox,
    rle_problems,
    segmentation_to_rle,
)


def _mask(h=20, w=30):
    mask = np.zeros((h, w), dtype=bool)
    mask[3:9, 5:17] = True
    mask[15, 29] = True
    return mask


def test_rle_round_trip_and_json_ready():
    mask = _mask()
    rle = encode_mask(mask)
    assert rle["size"] == [20, 30]
    assert isinstance(rle["counts"], str)
    json.dumps(rle)
    assert np.array_equal(decode_mask(rle), mask)


def test_area_and_bbox_in_coco_convention():
    rle = encode_mask(_mask())
    assert rle_area(rle) == 6 * 12 + 1
    assert rle_bbox(rle) == [5.0, 3.0, 25.0, 13.0]
    assert rle_bbox(encode_mask(np.zeros((4, 4), bool))) == [0.0, 0.0, 0.0, 0.0]


def test_stack_encoding_matches_single():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 17, 13)) > 0.5
    assert encode_masks(masks) == [encode_mask(m) for m in masks]
    assert encode_masks(np.zeros((0, 4, 4), bool)) == []
    with pytest.raises(ValueError):
        encode_mask(masks)


def test_polygon_and_uncompressed_segmentations():
    square = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]
    rle = segmentation_to_rle(square, 10, 10)
    decoded = decode_mask(rle)
    assert decoded[4, 4] and not decoded[0, 0]
    assert 30 <= rle_area(rle) <= 50
    mask = _mask()
    flat = mask.flatten(order="F")
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    uncompressed = {"size": [20, 30], "counts": counts}
    assert np.array_equal(decode_mask(uncompressed), mask)
    assert np.array_equal(decode_mask(segmentation_to_rle(uncompressed, 20, 30)), mask)


def test_builder_output_opens_in_pycocotools(tmp_path):
    builder = CocoBuilder(["cat", "dog"])
    image_id = builder.add_image("sub/a.png", 30, 20)
    builder.add_mask(image_id, "dog", _mask(), score=0.9)
    builder.add_mask(image_id, "zebra", _mask())
    path = builder.write(tmp_path / "masks.json")
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog", "zebra"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    assert anns[0]["category_id"] == 2 and anns[0]["score"] == 0.9
    assert np.array_equal(coco.annToMask(anns[1]).astype(bool), _mask())
    assert load_coco(path)["images"][0]["file_name"] == "sub/a.png"


def test_load_coco_rejects_broken_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(ArtefactError, match="no annotations, categories"):
        load_coco(bad)
    bad.write_text('{"images": [{"id": 1}], "categories": [], "annotations": [{"id": 5, "image_id": 1, "category_id": 3}]}')
    with pytest.raises(ArtefactError, match="unknown category 3"):
        load_coco(bad)
    with pytest.raises(ArtefactError, match="no such file"):
        load_coco(tmp_path / "missing.json")


def _runs_of(counts: str) -> list[int] | None:
    """The runs of a compressed RLE string, decoded one character at a time (None: malformed)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position == len(counts) or not 48 <= ord(counts[position]) < 112 or shift > 30:
                return None
            group = ord(counts[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
    return runs


def test_rle_problems_accepts_every_encoded_mask_and_refuses_what_does_not_decode_to_its_size():
    rng = np.random.default_rng(3)
    masks = [rng.random((int(h), int(w))) < rng.random() for h, w in rng.integers(1, 40, (200, 2))]
    masks += [np.zeros((0, 0), bool), np.zeros((3, 0), bool), np.ones((70, 90), bool), np.zeros((5, 5), bool)]
    rles = [encode_mask(m) for m in masks]
    assert rle_problems(rles) == {}
    assert rle_problems([{"size": [2, 3], "counts": [1, 5]}, {"size": [2, 3], "counts": [0, 6, 0]}]) == {}
    mutants, expected = [], {}
    for position, rle in enumerate(rles):
        counts = list(rle["counts"])
        if counts:
            counts[rng.integers(len(counts))] = chr(48 + int(rng.integers(64)))
        mutant = {"size": rle["size"], "counts": "".join(counts)}
        runs = _runs_of(mutant["counts"])
        if runs is None or min(runs, default=0) < 0 or sum(runs) != rle["size"][0] * rle["size"][1]:
            expected[position] = True
        mutants.append(mutant)
    assert set(rle_problems(mutants)) == set(expected) and expected  # checked together, as one file's masks
    garbage = [{"size": [8, 8], "counts": c} for c in ("garbage", "", "0", "PPPPPP", "é", None, 7)]
    garbage += [{"size": [8], "counts": "0"}, {"size": [8, 8], "counts": [-1, 65]}, {"size": [8, 8], "counts": [3]},
                "0PX2"]
    assert sorted(rle_problems(rles[:3] + garbage)) == list(range(3, 3 + len(garbage)))

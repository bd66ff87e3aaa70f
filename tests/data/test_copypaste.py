"""Copy-paste invariants: disjoint masks, RLE areas, semantic = union of instances, determinism."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from zutiscli.artefacts.coco import CocoBuilder
from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.artefacts.manifest import read_manifest, write_manifest
from zutiscli.artefacts.pseudolabels import PSEUDOLABELS_NAME, load_pseudolabels
from zutiscli.cli.app import main
from zutiscli.data.copypaste import CopyPasteConfig, CopyPasteDataset, ObjectPool, scene_rng, synthesize
from zutiscli.errors import ArtefactError, UsageError
from zutiscli.ops.masks import decode_mask
from zutiscli.pipeline.copypaste import write_dataset
from zutiscli.shapes.world import SHAPES

from helpers import make_pseudolabels  # noqa: E402


@pytest.fixture(scope="module")
def pseudo(tmp_path_factory):
    return make_pseudolabels(tmp_path_factory.mktemp("cp"))


SMALL = CopyPasteConfig(size=96, max_objects=6)


def assert_semantic_is_its_instances(scene) -> np.ndarray:
    """Disjoint instance masks, and outside ignore the semantic map is exactly their classes + 1;
    returns the ``(S, S)`` bool map of the pixels not ignored."""
    assert (scene.masks.sum(axis=0) <= 1).all()  # disjoint
    expected = np.zeros(scene.semantic.shape, dtype=np.uint8)
    for mask, cls in zip(scene.masks, scene.classes):
        expected[mask] = cls + 1
    labelled = scene.semantic != 255
    assert np.array_equal(scene.semantic[labelled], expected[labelled])
    return labelled


def test_scene_invariants(pseudo):
    pool = ObjectPool(load_pseudolabels(pseudo))
    saw_several = saw_ignore = saw_same = False
    for index in range(40):
        scene = synthesize(pool, SMALL, scene_rng(0, index))
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert scene.masks.shape[1:] == (96, 96) and scene.masks.dtype == bool
        assert len(scene.classes) == len(scene.masks)
        assert (scene.masks.reshape(len(scene.masks), -1).sum(1) > 0).all()
        labelled = assert_semantic_is_its_instances(scene)
        assert not scene.masks[:, ~labelled].any()
        saw_several |= len(scene.masks) >= 3
        saw_ignore |= (~labelled).any()
        saw_same |= len(scene.classes) >= 2 and len(set(scene.classes.tolist())) == 1
    assert saw_several and saw_ignore and saw_same


def test_canvas_scale_shrinks_the_canvas_onto_its_own_background(pseudo):
    """With canvas_scale < 1 the canvas object keeps its shape at f x its size; outside lies background."""
    pool = ObjectPool(load_pseudolabels(pseudo))
    full = CopyPasteConfig(size=96, max_objects=1, hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    small = CopyPasteConfig(**{**full.__dict__, "canvas_scale": (0.4, 0.5)})
    shrunk = 0
    for index in range(12):
        big, little = synthesize(pool, full, scene_rng(3, index)), synthesize(pool, small, scene_rng(3, index))
        assert np.array_equal(big.classes, little.classes)
        big_area, little_area = big.masks.sum(), little.masks.sum()
        assert little_area <= 0.25 * big_area + 2 * 96 * 0.5 + 1  # f <= 0.5, plus nearest-rounding slack
        rows, cols = np.nonzero(little.semantic != 0)
        if len(rows):
            assert np.ptp(rows) < 0.5 * 96 + 1 and np.ptp(cols) < 0.5 * 96 + 1  # everything labelled lies in the canvas
            shrunk += 1
        assert_semantic_is_its_instances(little)
    assert shrunk >= 6
    assert CopyPasteConfig().canvas_scale == (1.0, 1.0)  # the default keeps the official full-size canvas


def test_outside_cuts_objects_at_the_scene_edge_and_zero_keeps_them_inside(pseudo):
    """outside > 0 lets pasted objects (and the shrunk canvas) run off the edge, cut there and kept as
    instances (what stays inside is what counts against the occlusion rule)."""
    pool = ObjectPool(load_pseudolabels(pseudo))
    base = CopyPasteConfig(size=96, max_objects=6, scale_range=(0.3, 0.5), canvas_scale=(0.4, 0.6), hflip_prob=0.0,
                           jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    cut = CopyPasteConfig(**{**base.__dict__, "outside": 0.5})

    def edge_objects(config: CopyPasteConfig) -> int:
        touching = 0
        for index in range(30):
            scene = synthesize(pool, config, scene_rng(1, index))
            assert all(mask.any() for mask in scene.masks)
            assert_semantic_is_its_instances(scene)
            masks = scene.masks
            edges = np.concatenate([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], 1)
            touching += int(edges.any(1).sum())
        return touching

    # in the canvas an object touches the edge only when its box lands there exactly
    inside, cut_off = edge_objects(base), edge_objects(cut)
    assert cut_off >= 10 and cut_off >= 3 * inside, (inside, cut_off)
    assert CopyPasteConfig().outside == 0.0
    with pytest.raises(UsageError, match="--outside"):
        CopyPasteConfig(outside=1.0).validate()


def test_same_seed_same_scene_and_dataset_matches_online(pseudo, tmp_path):
    pool = ObjectPool(load_pseudolabels(pseudo))
    a = synthesize(pool, SMALL, scene_rng(3, 5))
    b = synthesize(pool, SMALL, scene_rng(3, 5))
    c = synthesize(pool, SMALL, scene_rng(3, 6))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, c.image)
    dataset = CopyPasteDataset(pool, SMALL, seed=3, length=10)
    image, semantic, masks, classes = dataset[5]
    assert image.shape == (3, 96, 96) and float(image.max()) <= 1.0
    assert np.array_equal(semantic.numpy(), a.semantic) and np.array_equal(masks.numpy(), a.masks)
    assert np.array_equal(classes.numpy(), a.classes)


def test_dataset_on_disk(pseudo, tmp_path):
    first = write_dataset(pseudo, 6, SMALL, seed=2, output=tmp_path / "a", image_format="png")
    second = write_dataset(pseudo, 6, SMALL, seed=2, output=tmp_path / "b", image_format="png", workers=2)
    for name in ("images/000003.png", "semantic/000003.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert json.loads((first / "instances.json").read_text()) == json.loads((second / "instances.json").read_text())
    manifest = read_manifest(first, "zutis.dataset")
    assert manifest.summary["images"] == 6 and manifest.inputs[0].kind == "zutis.pseudolabels"
    coco = COCO(str(first / "instances.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    for image in coco.loadImgs(coco.getImgIds()):
        semantic = read_label_png(first / image["semantic"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        union = np.zeros_like(semantic)
        for ann in anns:
            mask = decode_mask(ann["segmentation"])
            assert mask.sum() == ann["area"]
            assert (union[mask] == 0).all()
            union[mask] = ann["category_id"]
        labelled = semantic != 255
        assert np.array_equal(union[labelled], semantic[labelled])
    # the same scene as online training for that seed
    online = synthesize(ObjectPool(load_pseudolabels(pseudo)), SMALL, scene_rng(2, 3))
    assert np.array_equal(read_label_png(first / "semantic" / "000003.png"), online.semantic)


def test_pseudolabels_round_trip_through_pycocotools(pseudo):
    labels = load_pseudolabels(pseudo)
    coco = COCO(str(pseudo / PSEUDOLABELS_NAME))
    for obj in labels.objects[:10]:
        ann = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[obj.image_id]))][0]
        assert ann["segmentation"]["counts"] == labels.by_image()[obj.image_id][0].rle["counts"]
        assert np.array_equal(coco.annToMask(ann).astype(bool), decode_mask(labels.by_image()[obj.image_id][0].rle))


def test_bad_inputs(tmp_path, pseudo):
    with pytest.raises(ArtefactError, match="zutis pseudolabel"):
        load_pseudolabels(tmp_path)
    with pytest.raises(UsageError):
        CopyPasteConfig(scale_range=(0.0, 1.0)).validate()
    with pytest.raises(UsageError):
        CopyPasteConfig(hflip_prob=2).validate()
    for bad in ((0.0, 1.0), (0.6, 0.4), (0.5, 1.5)):
        with pytest.raises(UsageError, match="--canvas-min/--canvas-max"):
            CopyPasteConfig(canvas_scale=bad).validate()
    empty = tmp_path / "empty"
    empty.mkdir()
    CocoBuilder(["a"]).write(empty / PSEUDOLABELS_NAME)
    write_manifest(empty, "zutis.pseudolabels")
    with pytest.raises(ArtefactError, match="no object masks"):
        write_dataset(empty, 2, SMALL, output=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli(pseudo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["copypaste", str(pseudo), "-n", "3", "--size", "64", "-o", str(tmp_path / "ds"), "--json"])
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["images"] == 3 and document["path"] == str(tmp_path / "ds")
    with pytest.raises(SystemExit) as exit_info:
        main(["copypaste", str(tmp_path / "nope"), "-n", "3"])
    assert exit_info.value.code == 1 and "no such directory" in capsys.readouterr().err

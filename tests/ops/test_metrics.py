"""zutiscli.ops.metrics against straightforward references and hand-made cases."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zutiscli.ops import metrics as M


def _loop_reference(gts, preds, num_classes, ignore=255):
    """Per-class IoU, mIoU and pixel accuracy the slow, obvious way."""
    ious = []
    correct = total = 0
    for c in range(num_classes):
        inter = union = 0
        for gt, pred in zip(gts, preds):
            valid = gt != ignore
            inter += np.sum((gt == c) & (pred == c) & valid)
            union += np.sum(((gt == c) | (pred == c)) & valid)
        ious.append(inter / union if union > 0 else np.nan)
    for gt, pred in zip(gts, preds):
        valid = gt != ignore
        correct += np.sum((gt == pred) & valid)
        total += np.sum(valid)
    finite = [v for v in ious if not np.isnan(v)]
    return np.array(ious), float(np.mean(finite)), correct / total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_equals_loop_reference_with_ignore_and_absent_classes(seed):
    rng = np.random.default_rng(seed)
    classes = 9
    gts, preds = [], []
    for _ in range(4):
        shape = tuple(rng.integers(5, 40, size=2))
        gt = rng.choice([0, 1, 2, 3, 5, 255], size=shape, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]).astype(np.uint8)
        pred = rng.choice([0, 1, 2, 4, 6, 255], size=shape).astype(np.uint8)  # 4, 6: predicted, never in GT
        gts.append(gt)
        preds.append(pred)
    conf = sum(M.confusion_matrix(g, p, classes) for g, p in zip(gts, preds))
    assert conf.shape == (classes, classes + 1) and conf.dtype == np.int64
    scores = M.semantic_scores(conf)
    ref_iou, ref_miou, ref_acc = _loop_reference(gts, preds, classes)
    np.testing.assert_allclose(scores.iou, ref_iou, equal_nan=True)
    assert scores.miou == pytest.approx(ref_miou, abs=1e-12)
    assert scores.pixel_accuracy == pytest.approx(ref_acc, abs=1e-12)
    # classes 7 and 8 are nowhere: NaN, left out of the mean; 4 and 6 only predicted: IoU 0, counted
    assert np.isnan(scores.iou[[7, 8]]).all() and scores.iou[4] == 0 and scores.iou[6] == 0


def test_unlabelled_predictions_are_misses_and_ignored_gt_is_not_scored():
    gt = np.array([[1, 1, 255, 0]])
    pred = np.array([[1, 255, 1, 0]])
    conf = M.confusion_matrix(gt, pred, 2)
    assert conf.tolist() == [[1, 0, 0], [0, 1, 1]]
    scores = M.semantic_scores(conf)
    assert scores.iou.tolist() == [1.0, 0.5] and scores.pixel_accuracy == pytest.approx(2 / 3)


def test_main_confusions_name_where_each_class_went():
    # rows: truth (bg, cat, dog); columns: predicted bg, cat, dog, unlabelled
    conf = np.array([[10, 0, 0, 0],
                     [1, 6, 3, 0],
                     [0, 1, 1, 2],
                     ], dtype=np.int64)
    out = M.main_confusions(conf, ["bg", "cat", "dog"])
    assert out["bg"] == {"correct": 1.0, "confused_with": None, "fraction": 0.0}
    assert out["cat"] == {"correct": 0.6, "confused_with": "dog", "fraction": pytest.approx(0.3)}
    assert out["dog"]["confused_with"] == "unlabelled" and out["dog"]["fraction"] == 0.5
    absent = M.main_confusions(np.array([[4, 0, 0], [0, 0, 0]]), ["bg", "cat"])
    assert set(absent) == {"bg"}  # a class without ground-truth pixels is left out
    with pytest.raises(ValueError):
        M.main_confusions(conf, ["bg", "cat"])


def test_many_classes_and_wide_integer_maps():
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 920, size=(50, 60))
    conf = M.confusion_matrix(gt, gt, 920, ignore_index=1000)
    assert conf.shape == (920, 921) and M.semantic_scores(conf).miou == 1.0


def test_hungarian_recovers_a_known_permutation():
    rng = np.random.default_rng(0)
    permutation = rng.permutation(7)  # class c is predicted as cluster permutation[c]
    gt = rng.integers(0, 7, size=(64, 64))
    pred = permutation[gt]
    noise = rng.random(gt.shape) < 0.1
    pred[noise] = rng.integers(0, 7, size=noise.sum())
    conf = M.confusion_matrix(gt, pred, 7)
    mapping = M.hungarian_mapping(conf[:, :-1])
    assert (mapping[permutation] == np.arange(7)).all()
    remapped = M.remap_confusion(conf, mapping)
    direct = M.confusion_matrix(gt, M.remap_labels(pred, mapping), 7)
    assert (remapped == direct).all()
    assert M.semantic_scores(remapped).pixel_accuracy > 0.85


def test_hungarian_with_more_clusters_than_classes_leaves_extras_unassigned():
    table = np.array([[5, 0, 1, 0], [0, 4, 0, 3]])
    mapping = M.hungarian_mapping(table)
    assert mapping.tolist() == [0, 1, -1, -1]
    assert M.majority_mapping(table).tolist() == [0, 1, 0, 1]
    assert M.majority_mapping(np.array([[0, 2], [0, 1]])).tolist() == [-1, 0]


def test_remap_confusion_of_a_stack():
    conf = np.arange(2 * 2 * 4).reshape(2, 2, 4)  # two (G=2, K=3 + 1) matrices
    out = M.remap_confusion(conf, np.array([1, -1, 1]))
    assert out.shape == (2, 2, 3)
    assert out[0].tolist() == [[0, 0 + 2, 1 + 3], [0, 4 + 6, 5 + 7]]


def test_size_buckets_follow_imagenet_s():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt.flat[:5] = 1  # 5 % -> S (<= 5)
    gt.flat[5:11] = 2  # 6 % -> MS
    gt.flat[11:41] = 3  # 30 % -> ML
    gt.flat[41:42] = 255  # ignored, still in the image's pixel count
    pred = gt.copy()
    pred[pred == 255] = 0
    pred.flat[0] = 3  # one pixel of class 1 predicted as 3
    pred.flat[99] = 3  # one background pixel predicted as 3
    conf = M.confusion_matrix(gt, pred, 5)
    buckets = M.class_size_buckets(conf, gt.size)
    assert buckets.tolist() == [-1, 0, 1, 2, -1]
    split = M.size_bucket_confusions(conf, gt.size)
    assert split.shape == (4, 5, 6)
    assert (split[0][[0, 1]] == conf[[0, 1]]).all() and split[0][2:].sum() == 0
    assert split[3].sum() == 0  # no large class: the bucket stays empty (no background either)
    miou = M.bucket_miou(split)
    background = 57 / 58  # 58 background pixels, one predicted as class 3, in every used bucket
    # a bucket scores only its own classes' rows: class 1's stray pixel hurts S, not ML
    assert miou["S"] == pytest.approx(np.mean([background, 4 / 5]))
    assert miou["MS"] == pytest.approx(np.mean([background, 1.0]))
    assert miou["ML"] == pytest.approx(np.mean([background, 30 / 31])) and np.isnan(miou["L"])


def test_cluster_votes_follow_u2seg_thresholds():
    boxes_gt = np.array([[0, 0, 10, 10], [20, 20, 10, 10]], dtype=float)
    classes = np.array([1, 0])
    detections = [(np.array([3, 3, 0, 2]), np.array([0.9, 0.59, 0.8, 0.95]),
                   np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 10, 9], [20, 20, 10, 6]], dtype=float))]
    votes = M.cluster_votes(detections, [(classes, boxes_gt)], num_clusters=4, num_classes=2)
    # cluster 3 votes once (the 0.59 detection is below the score threshold), cluster 0 once (IoU 0.9),
    # cluster 2 never (IoU 0.6 is not above 0.7)
    assert votes.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    assert M.majority_mapping(votes).tolist() == [0, -1, -1, 1]
    rles = [mask_utils.encode(np.asfortranarray(np.pad(np.ones((10, 10), np.uint8), ((0, 20), (0, 20)))))]
    votes = M.cluster_votes([(np.array([1]), np.array([0.7]), rles)], [(np.array([0]), rles)], 2, 1)
    assert votes.tolist() == [[0, 1]]


def _segments(ids, classes, crowd=None):
    return M.Segments(np.array(ids), np.array(classes), np.array(crowd if crowd is not None else [0] * len(ids)))


def test_pq_perfect_and_split_by_things_and_stuff():
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[:4] = 1  # stuff "sky" (class 1)
    gt[4:, :4] = 2  # thing class 0
    gt[4:, 4:] = 3  # another thing of class 0
    seg = _segments([1, 2, 3], [1, 0, 0])
    stats = M.panoptic_stats(gt, seg, gt, seg, 2)
    assert stats[M.PQ_TP].tolist() == [2, 1] and stats[M.PQ_FP].sum() == 0 and stats[M.PQ_FN].sum() == 0
    quality = M.panoptic_quality(stats, np.array([True, False]))
    assert quality["all"]["PQ"] == 1.0 and quality["things"]["n"] == 1 and quality["stuff"]["n"] == 1


def test_pq_hand_case_with_miss_void_and_crowd():
    gt = np.zeros((10, 10), dtype=np.int64)  # 0 = VOID
    gt[0:5, 0:5] = 1  # thing A, 25 px
    gt[5:10, 5:10] = 2  # thing B, 25 px
    gt[0:3, 7:10] = 3  # crowd region of the class, 9 px
    gt_seg = _segments([1, 2, 3], [0, 0, 0], [0, 0, 1])
    pred = np.zeros_like(gt)
    pred[0:5, 0:6] = 7  # A plus a column: 25 on A, 5 on VOID -> IoU 25 / (30 - 5) = 1
    pred[5:10, 5:7] = 8  # 10 px of B: IoU 0.4 -> FP, and B -> FN
    pred[0:3, 6:10] = 9  # 9 px on crowd + 3 on VOID: ignored, not a false positive
    pred[9, 0:2] = 10  # 2 px on VOID only: ignored too
    pred_seg = _segments([7, 8, 9, 10], [0, 0, 0, 0])
    stats = M.panoptic_stats(gt, gt_seg, pred, pred_seg, 1)
    tp, fp, fn, iou = stats[:, 0]
    assert (tp, fp, fn) == (1, 1, 1) and iou == pytest.approx(1.0)
    quality = M.panoptic_quality(stats, np.array([True]))
    assert quality["all"]["PQ"] == pytest.approx(1.0 / (1 + 0.5 + 0.5))
    assert quality["all"]["SQ"] == pytest.approx(1.0) and quality["all"]["RQ"] == pytest.approx(0.5)
    assert np.isnan(quality["stuff"]["PQ"]) and quality["stuff"]["n"] == 0


def test_pq_needs_same_class_and_iou_above_half():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, :2] = 1
    pred = np.zeros_like(gt)
    pred[:, :2] = 5
    stats = M.panoptic_stats(gt, _segments([1], [0]), pred, _segments([5], [1]), 2)
    assert stats[M.PQ_TP].sum() == 0 and stats[M.PQ_FN, 0] == 1 and stats[M.PQ_FP, 1] == 1
    pred[:2, :2] = 0  # exactly half of the segment, no VOID overlap: IoU 0.5 is not > 0.5
    gt_half = gt.copy()
    stats = M.panoptic_stats(gt_half, _segments([1], [0]), pred, _segments([5], [0]), 1)
    assert stats[M.PQ_TP, 0] == 0


def test_rgb_to_id():
    rgb = np.array([[[1, 2, 3]]], dtype=np.uint8)
    assert M.rgb_to_id(rgb)[0, 0] == 1 + 2 * 256 + 3 * 65536


def test_panoptic_cluster_votes_count_the_segments_pq_matches_whatever_their_class():
    gt = np.zeros((4, 8), dtype=np.int64)
    gt[:, :4] = 1  # class 0
    gt[:, 4:] = 2  # class 1
    gt[0, :] = 3   # a crowd segment of class 1 over the top row
    pred = np.zeros((4, 8), dtype=np.int64)
    pred[1:, :4] = 10  # cluster 2 on the class-0 segment: IoU 1
    pred[1:, 4:7] = 11  # cluster 0 on most of the class-1 segment: IoU 9/12 > 0.5
    pred[1:, 7] = 12   # cluster 1: a sliver, IoU 3/12
    pred[0, :] = 13    # cluster 1 on the crowd: never a vote
    votes = M.panoptic_cluster_votes(gt, M.Segments([1, 2, 3], [0, 1, 1], [False, False, True]),
                                     pred, M.Segments([10, 11, 12, 13], [2, 0, 1, 1]), 3, 2)
    assert votes.tolist() == [[0, 0, 1], [1, 0, 0]]  # classes x clusters
    assert M.hungarian_mapping(votes).tolist() == [1, -1, 0]

"""Exact block-wise top-k search against brute force; merging; the faiss-index path."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from zutiscli.ops.knn import configure_search, merge_topk, search_index, sort_topk, topk_blocks


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def blocks_of(data, size):
    return [(start, data[start:start + size]) for start in range(0, len(data), size)]


def brute_force(queries, data, k, active=None):
    """Top-k by numpy over the full score matrix: score descending, ties by ascending row."""
    scores = queries.astype(np.float64) @ data.astype(np.float64).T
    rows = np.broadcast_to(np.arange(len(data)), scores.shape)
    if active is not None:
        scores = np.where(active[None, :], scores, -np.inf)
    order = np.lexsort((rows, -scores), axis=-1)[:, : min(k, int(np.sum(active)) if active is not None else len(data))]
    return np.take_along_axis(scores, order, -1), order


def quantised(x):
    """Multiples of 1/64: products and their sums are exact in float32 in any order, so faiss'
    BLAS and numpy agree to the bit and comparisons can be exact (ties included)."""
    return np.round(x * 64) / 64


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    embeddings = quantised(unit(rng, 3000, 24)).astype(np.float16)
    queries = quantised(unit(rng, 13, 24)).astype(np.float32)
    active = rng.random(3000) > 0.2
    return embeddings, queries, active


@pytest.mark.parametrize("gathered", [1, 333, 131072])
@pytest.mark.parametrize(
    "block, k",
    [(1, 10), (1, 300)] + [(block, k) for block in (7, 256, 1000, 5000) for k in (1, 10, 300, 3000)],
)
def test_chunked_search_equals_brute_force(data, block, k, gathered):
    """Blocks and search buffers smaller and larger than k and than each other; k above the active rows."""
    embeddings, queries, active = data
    scores, rows = topk_blocks(queries, blocks_of(embeddings, block), k, active=active, query_batch=5,
                               block_rows=gathered)
    want_scores, want_rows = brute_force(queries, embeddings, k, active)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert rows.shape == (13, min(k, int(active.sum())))
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)
    assert active[rows].all()
    assert (np.diff(scores, axis=1) <= 0).all()


def test_without_mask_every_row_counts(data):
    embeddings, queries, _ = data
    scores, rows = topk_blocks(queries, blocks_of(embeddings, 512), 40)
    np.testing.assert_array_equal(rows, brute_force(queries, embeddings, 40)[1])


@pytest.mark.parametrize("gathered", [256, 131072])
@pytest.mark.parametrize("masked", [False, True])
def test_float32_blocks_and_progress_callback(data, gathered, masked):
    """float32 blocks larger than the buffer are searched in place (no mask) or gathered (mask)."""
    embeddings, queries, active = data
    mask = active if masked else None
    seen = []
    scores, rows = topk_blocks(queries, blocks_of(embeddings.astype(np.float32), 700), 25, active=mask,
                               block_rows=gathered, on_block=seen.append)
    assert sum(seen) == len(embeddings) and len(seen) == 5
    np.testing.assert_array_equal(rows, brute_force(queries, embeddings, 25, mask)[1])


def test_ties_keep_the_lowest_rows_whatever_the_block_size():
    # Small integers: every score is exact in fp16/fp32 whatever the summation order, and each
    # vector appears 1-4 times, so ties at the k-th place are common but small.
    rng = np.random.default_rng(3)
    base = rng.integers(-50, 51, size=(150, 8))
    copies = rng.integers(1, 5, size=150)
    embeddings = np.repeat(base, copies, axis=0)[rng.permutation(int(copies.sum()))].astype(np.float16)
    queries = rng.integers(-50, 51, size=(9, 8)).astype(np.float32)
    for k in (1, 7, 50, 200):
        want_scores, want_rows = brute_force(queries, embeddings, k)
        for block, gathered in ((1, 3), (5, 131072), (64, 100), (10_000, 131072), (10_000, 77)):
            scores, rows = topk_blocks(queries, blocks_of(embeddings, block), k, block_rows=gathered)
            np.testing.assert_array_equal(rows, want_rows, err_msg=f"k={k} block={block} gathered={gathered}")
            np.testing.assert_array_equal(scores, want_scores)


def test_merging_two_databases_equals_searching_their_concatenation(data):
    embeddings, queries, active = data
    first, second = embeddings[:1800], embeddings[1800:]
    mask_a, mask_b = active[:1800], active[1800:]
    for k in (5, 150, 2000):
        a = topk_blocks(queries, blocks_of(first, 333), k, active=mask_a)
        b = topk_blocks(queries, blocks_of(second, 256), k, active=mask_b)
        scores, sources, rows = merge_topk([a, b], k)
        whole_scores, whole_rows = topk_blocks(queries, blocks_of(embeddings, 1000), k, active=active)
        np.testing.assert_array_equal(np.where(sources == 1, rows + 1800, rows), whole_rows)
        np.testing.assert_allclose(scores, whole_scores, atol=1e-6)


def test_merge_breaks_ties_by_source_then_row():
    scores = np.array([[0.5, 0.5, 0.1]], np.float32)
    a = (scores, np.array([[4, 9, 1]]))
    b = (np.array([[0.5, 0.7]], np.float32), np.array([[2, 3]]))
    merged_scores, sources, rows = merge_topk([b, a], 4)
    assert sources.tolist() == [[0, 0, 1, 1]] and rows.tolist() == [[3, 2, 4, 9]]
    assert merged_scores.tolist()[0] == pytest.approx([0.7, 0.5, 0.5, 0.5])


def test_k_beyond_the_active_rows_and_degenerate_inputs(data):
    embeddings, queries, active = data
    small_mask = np.zeros(len(embeddings), bool)
    small_mask[[5, 2999, 1700]] = True
    scores, rows = topk_blocks(queries, blocks_of(embeddings, 1000), 50, active=small_mask)
    assert rows.shape == (13, 3) and set(rows.ravel()) == {5, 1700, 2999}
    scores, rows = topk_blocks(queries, blocks_of(embeddings, 1000), 50, active=np.zeros(3000, bool))
    assert rows.shape == (13, 0)
    scores, rows = topk_blocks(queries[:0], blocks_of(embeddings, 1000), 5)
    assert rows.shape == (0, 5) and scores.shape == (0, 5)


def test_bad_inputs_raise(data):
    embeddings, queries, active = data
    with pytest.raises(ValueError, match="k must be"):
        topk_blocks(queries, blocks_of(embeddings, 100), 0)
    with pytest.raises(ValueError, match="contiguous"):
        topk_blocks(queries, [(0, embeddings[:10]), (20, embeddings[20:30])], 3)
    with pytest.raises(ValueError, match="shape"):
        topk_blocks(queries, [(0, embeddings[:10, :5])], 3)
    with pytest.raises(ValueError, match="NaN"):
        topk_blocks(np.full((1, 24), np.nan, np.float32), blocks_of(embeddings, 100), 3)
    with pytest.raises(ValueError, match="active mask"):
        topk_blocks(queries, blocks_of(embeddings, 100), 3, active=active[:50])
    broken = embeddings[:20].copy()
    broken[:] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        topk_blocks(queries, [(0, broken)], 3)


def test_sort_topk_orders_padding_last():
    scores = np.array([[0.2, -np.inf, 0.9, 0.2]], np.float32)
    rows = np.array([[8, -1, 3, 1]])
    sorted_scores, sorted_rows = sort_topk(scores, rows)
    assert sorted_rows.tolist() == [[3, 1, 8, -1]]


def test_faiss_index_path_drops_inactive_rows_and_matches_exact_search(data):
    embeddings, queries, active = data
    data32 = embeddings.astype(np.float32)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(24))
    flat.add_with_ids(data32, np.arange(len(data32)))  # inactive rows included on purpose
    for k in (1, 20, 500):
        scores, rows = search_index(flat, queries, k, active=active)
        want_scores, want_rows = brute_force(queries, embeddings, k, active)
        np.testing.assert_array_equal(rows, want_rows)
        assert active[rows].all()
    quantizer = faiss.IndexFlatIP(24)
    ivf = faiss.IndexIVFFlat(quantizer, 24, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(data32)
    wrapped = faiss.IndexIDMap2(ivf)
    wrapped.add_with_ids(data32[active], np.flatnonzero(active))
    assert configure_search(wrapped, 50) == {"nprobe": 8}  # max(32, nlist // 16) clamped to nlist
    assert configure_search(wrapped, 50, nprobe=2) == {"nprobe": 2}
    configure_search(wrapped, 50, nprobe=8)
    _, rows = search_index(wrapped, queries, 50, active=active)
    np.testing.assert_array_equal(rows, brute_force(queries, embeddings, 50, active)[1])


def test_faiss_l2_index_scores_become_inner_products(data):
    embeddings, queries, _ = data
    data32 = embeddings.astype(np.float32)
    data32 /= np.linalg.norm(data32, axis=1, keepdims=True)
    index = faiss.IndexFlatL2(24)
    index.add(data32)
    scores, rows = search_index(index, queries, 10)
    want_scores, want_rows = brute_force(queries, data32, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_hnsw_ef_search_is_raised_to_k():
    index = faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT)
    assert configure_search(index, 300) == {"efSearch": 300}
    assert configure_search(faiss.IndexFlatIP(8), 300) == {}


def test_approximate_index_pads_missing_hits():
    rng = np.random.default_rng(0)
    vectors = unit(rng, 64, 8)
    quantizer = faiss.IndexFlatIP(8)
    ivf = faiss.IndexIVFFlat(quantizer, 8, 16, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = 1
    scores, rows = search_index(ivf, unit(rng, 4, 8), 60)
    assert rows.shape == (4, 60)
    assert (rows == -1).any() and np.isneginf(scores[rows == -1]).all()
    assert (rows[rows >= 0] < 64).all()

"""Top-k inner-product search: exact over embeddings streamed in blocks, approximate over a faiss index.

Conventions shared by every function here:

- ``queries`` are ``(C, D)`` float32 (one row per class); database embeddings are ``(N, D)``
  float16 or float32, addressed by their *row*: the position in the concatenation of the blocks.
- Results are ``scores (C, k) float32`` and ``rows (C, k) int64``, each row sorted by score
  descending; equal scores are ordered by ascending row (and ascending source in :func:`merge_topk`).
- Ties at the k-th place keep the lower rows too. faiss' heaps break ties among equal scores in
  no documented order (it changes with the block size), so :func:`topk_blocks` keeps
  ``tie_margin`` extra candidates and re-sorts: the rule is exact whenever fewer than
  ``tie_margin`` rows share the k-th score beyond the k-th place (e.g. an image indexed a few
  times). Results are deterministic in every case.
- ``active`` is an optional ``(N,)`` bool mask; rows where it is False are never returned.

Exact search keeps memory small whatever N: blocks are converted to float32 into one reusable
buffer of ``block_rows`` rows (512 MiB by default; small blocks are gathered until it is full),
each full buffer is searched with faiss' BLAS kernel (``faiss.knn``), and a running top-k per
query (a faiss ``ResultHeap`` per batch of queries) absorbs the buffer's top-k. Peak memory is
about ``block_rows * D * 4`` bytes plus the ``C * k`` results, whatever N.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: Queries searched together in one faiss call (faiss blocks them by 4096 internally as well).
DEFAULT_QUERY_BATCH = 4096
#: Extra candidates kept per query so that ties at the k-th score resolve to the lowest rows.
DEFAULT_TIE_MARGIN = 16
#: Size of the float32 buffer of exact search: 262,144 rows at dimension 512, 174,762 at 768.
#: Each buffer restarts faiss' top-k selection; at 1,000 queries and k = 500 that costs ~5% of
#: the search at this size and ~12% at half of it.
DEFAULT_BLOCK_BYTES = 512 << 20


def default_block_rows(dim: int) -> int:
    """Rows of :data:`DEFAULT_BLOCK_BYTES` of float32 embeddings of dimension ``dim``."""
    return max(1, DEFAULT_BLOCK_BYTES // (4 * max(1, dim)))


def sort_topk(scores: np.ndarray, rows: np.ndarray, sources: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Order each row of a top-k result: score descending, then source ascending, then row ascending.

    Args:
        scores: ``(C, k)`` float32.
        rows: ``(C, k)`` int64; ``-1`` marks padding (it sorts last only through its score ``-inf``).
        sources: optional ``(C, k)`` int64 (which result set each hit came from).

    Returns:
        ``(scores, rows)`` or ``(scores, sources, rows)`` reordered, same shapes and dtypes.
    """
    keys = [rows] if sources is None else [rows, sources]
    order = np.lexsort(keys + [-scores.astype(np.float64)], axis=-1)
    out = [np.take_along_axis(scores, order, axis=-1)]
    if sources is not None:
        out.append(np.take_along_axis(sources, order, axis=-1))
    out.append(np.take_along_axis(rows, order, axis=-1))
    return tuple(out)


def _as_queries(queries: np.ndarray) -> np.ndarray:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries must be (C, D), got shape {queries.shape}")
    if not np.isfinite(queries).all():
        raise ValueError("queries contain NaN or infinity")
    return queries


class _Gather:
    """A reused ``(capacity, D)`` float32 buffer that rows of incoming blocks are copied into.

    Blocks of any size (an index written in chunks of 1,024 images yields many small ones) are
    gathered until the buffer is full and then searched at once, so faiss restarts its top-k
    selection every ``capacity`` rows, not every block. ``ids`` holds the row of each buffer row.
    """

    def __init__(self, capacity: int, dim: int):
        # np.empty maps pages lazily: a small index never touches (nor pays for) the whole buffer
        self.data = np.empty((capacity, dim), dtype=np.float32)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.fill = 0

    @property
    def room(self) -> int:
        return len(self.data) - self.fill

    def add(self, block: np.ndarray, rows: np.ndarray) -> None:
        """Copy ``block`` ``(n, D)`` (float16 or float32, n <= room) and its ``rows`` ``(n,)`` in."""
        stop = self.fill + len(block)
        out = self.data[self.fill:stop]
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency; numpy's cast is ~10x slower
            np.copyto(out, block, casting="same_kind")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only memory maps: only read here
                torch.from_numpy(out).copy_(torch.from_numpy(np.asarray(block)))
        self.ids[self.fill:stop] = rows
        self.fill = stop

    def take(self) -> tuple[np.ndarray, int, np.ndarray]:
        """``(data, 0, ids)``: the gathered ``(n, D)`` float32 rows and their ``(n,)`` rows (views;
        the buffer is reset), in the argument order of the search step."""
        filled = self.fill
        self.fill = 0
        return self.data[:filled], 0, self.ids[:filled]


def topk_blocks(
    queries: np.ndarray,
    blocks: Iterable[tuple[int, np.ndarray]],
    k: int,
    *,
    active: np.ndarray | None = None,
    block_rows: int | None = None,
    query_batch: int = DEFAULT_QUERY_BATCH,
    tie_margin: int = DEFAULT_TIE_MARGIN,
    on_block: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` against embeddings streamed in blocks.

    Args:
        queries: ``(C, D)`` float32 (converted if not), finite.
        blocks: ``(first_row, block)`` pairs in ascending, contiguous row order (as
            :meth:`IndexReader.iter_embeddings` yields them); ``block`` is ``(n, D)`` float16 or
            float32, of any size, and may be a read-only memory map.
        k: results wanted per query, >= 1.
        active: optional ``(N,)`` bool mask over all rows; False rows are skipped.
        block_rows: rows gathered (as float32) before each search; memory is ``block_rows * D * 4``
            bytes. Larger blocks mean fewer restarts of the top-k selection. None: 512 MiB worth.
        query_batch: queries searched together; bounds the per-call result arrays.
        tie_margin: extra candidates kept per query to resolve ties at the k-th score (see the
            module docstring); 0 leaves ties at the boundary to faiss.
        on_block: called with the number of rows of each block once it has been consumed.

    Returns:
        ``(scores, rows)``: ``(C, k')`` float32 and int64 with ``k' = min(k, active rows seen)``,
        sorted by score descending, ties by ascending row. Every returned row is a real, active row.

    Raises:
        ValueError: bad shapes, ``k < 1``, non-finite queries, blocks out of order, an ``active``
            mask shorter than the rows, or non-finite embeddings (they cannot be ranked).
    """
    import faiss

    queries = _as_queries(queries)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    count, dim = queries.shape
    block_rows = default_block_rows(dim) if block_rows is None else block_rows
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    batches = [(start, min(start + query_batch, count)) for start in range(0, count, max(1, query_batch))]
    keep_k = k + max(0, tie_margin)
    heaps = [faiss.ResultHeap(stop - start, keep_k, keep_max=True) for start, stop in batches]
    gather = _Gather(block_rows, dim)
    seen = 0

    def search(data: np.ndarray, first_row: int, ids: np.ndarray | None = None) -> None:
        """Search ``data`` ``(n, D)`` float32; its rows are ``ids`` or ``first_row + arange(n)``."""
        width = min(keep_k, len(data))
        for (start, stop), heap in zip(batches, heaps):
            scores, local = faiss.knn(queries[start:stop], data, width, faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, ids[local] if ids is not None else local + first_row)

    expected_row = 0
    for first_row, block in blocks:
        if block.ndim != 2 or block.shape[1] != dim:
            raise ValueError(f"block at row {first_row} has shape {block.shape}; expected (n, {dim})")
        if first_row != expected_row:
            raise ValueError(f"block starts at row {first_row}, expected {expected_row} (blocks must be contiguous)")
        size = len(block)
        expected_row += size
        rows = None
        if active is not None:
            if first_row + size > len(active):
                raise ValueError(f"active mask has {len(active)} rows; block reaches row {first_row + size}")
            keep = active[first_row:first_row + size]
            if not keep.all():
                rows = first_row + np.flatnonzero(keep)
                block = block[keep]
        seen += len(block)
        if count and len(block) >= block_rows and rows is None and gather.fill == 0 \
                and block.dtype == np.float32 and block.flags.c_contiguous:
            for position in range(0, len(block), block_rows):  # float32 already: search in place
                search(block[position:position + block_rows], first_row + position)
        elif count and len(block):
            position = 0
            while position < len(block):
                take = min(gather.room, len(block) - position)
                piece_rows = rows[position:position + take] if rows is not None else np.arange(
                    first_row + position, first_row + position + take)
                gather.add(block[position:position + take], piece_rows)
                position += take
                if gather.room == 0:
                    search(*gather.take())
        if on_block is not None:
            on_block(size)
    if gather.fill:
        search(*gather.take())
    width = min(k, seen)
    if not count:
        return np.zeros((0, width), np.float32), np.zeros((0, width), np.int64)
    kept = min(keep_k, seen)
    for heap in heaps:
        heap.finalize()
    scores = np.concatenate([heap.D[:, :kept] for heap in heaps])
    rows_out = np.concatenate([heap.I[:, :kept] for heap in heaps])
    if kept and (rows_out < 0).any():
        raise ValueError("some embeddings are NaN or infinite, so fewer than k rows could be ranked")
    scores, rows_out = sort_topk(scores, rows_out)
    return np.ascontiguousarray(scores[:, :width]), np.ascontiguousarray(rows_out[:, :width])


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge top-k results of the same queries over several databases into one top-``k``.

    Args:
        results: ``[(scores_i, rows_i)]``, each ``(C, k_i)`` float32 / int64 (``k_i`` may differ;
            padding ``-1`` rows with ``-inf`` scores are allowed and sort last).
        k: results wanted per query.

    Returns:
        ``(scores, sources, rows)``, each ``(C, min(k, sum k_i))``: float32, int64 (the position of
        the result set in ``results``), int64. Sorted by score descending, ties by ascending source,
        then row, so merging equals searching the concatenated databases with each source's rows
        placed after the previous source's.
    """
    if not results:
        raise ValueError("nothing to merge")
    count = results[0][0].shape[0]
    if any(s.shape[0] != count or r.shape != s.shape for s, r in results):
        raise ValueError("result sets must have the same number of queries and matching shapes")
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in results], axis=1)
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for _, r in results], axis=1)
    sources = np.concatenate(
        [np.full(s.shape, i, dtype=np.int64) for i, (s, _) in enumerate(results)], axis=1
    )
    scores, sources, rows = sort_topk(scores, rows, sources)
    width = min(k, scores.shape[1])
    return scores[:, :width], sources[:, :width], rows[:, :width]


def configure_search(index: Any, k: int, nprobe: int | None = None) -> dict[str, int]:
    """Set the search-time parameters of a faiss index for top-``k`` retrieval; returns what was set.

    IVF indices (also inside ``IndexIDMap``/``IndexPreTransform``): ``nprobe`` lists are visited;
    ``None`` picks ``max(32, nlist // 16)`` (about 6% of the data), clamped to ``nlist``. HNSW:
    ``efSearch`` is raised to at least ``k`` (it bounds how many results HNSW can return).
    Other index types (flat, PQ) have nothing to set.
    """
    import faiss

    chosen: dict[str, int] = {}
    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError, TypeError):
        ivf = None
    if ivf is not None:
        probes = nprobe if nprobe is not None else max(32, ivf.nlist // 16)
        ivf.nprobe = int(max(1, min(probes, ivf.nlist)))
        chosen["nprobe"] = int(ivf.nprobe)
    inner = index
    while True:
        inner = faiss.downcast_index(inner)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(max(inner.hnsw.efSearch, k))
            chosen["efSearch"] = int(inner.hnsw.efSearch)
            break
        nested = getattr(inner, "index", None)
        if nested is None:
            break
        inner = nested
    return chosen


def search_index(
    index: Any,
    queries: np.ndarray,
    k: int,
    *,
    active: np.ndarray | None = None,
    query_batch: int = DEFAULT_QUERY_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` search of a faiss index whose ids are rows (approximate unless the index is flat).

    Args:
        index: a faiss index over unit vectors, inner-product or L2 metric (squared L2 distances
            ``d`` are turned into inner products ``(|q|^2 + 1 - d) / 2``, exact for unit vectors).
        queries: ``(C, D)`` float32.
        k: results wanted per query.
        active: optional ``(N,)`` bool mask; rows where it is False (or beyond it) are dropped.
            The search fetches ``k`` + the number of inactive rows so that ``k`` active ones remain.

    Returns:
        ``(scores, rows)`` ``(C, min(k, ntotal))`` float32 / int64, sorted by score descending,
        ties by row. An approximate index can find fewer than ``k`` hits for some queries: those
        places hold row ``-1`` and score ``-inf``.
    """
    import faiss

    queries = _as_queries(queries)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if queries.shape[1] != index.d:
        raise ValueError(f"queries have dimension {queries.shape[1]}, the faiss index {index.d}")
    if index.metric_type not in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
        raise ValueError(f"faiss index metric {index.metric_type} is neither inner product nor L2")
    inactive = int((~active).sum()) if active is not None else 0
    fetch = int(min(index.ntotal, k + inactive))
    width = int(min(k, index.ntotal))
    out_scores = np.full((len(queries), width), -np.inf, dtype=np.float32)
    out_rows = np.full((len(queries), width), -1, dtype=np.int64)
    if fetch == 0 or width == 0:
        return out_scores, out_rows
    for start in range(0, len(queries), max(1, query_batch)):
        scores, rows = index.search(queries[start:start + query_batch], fetch)
        if index.metric_type == faiss.METRIC_L2:  # |q - x|^2 = |q|^2 + 1 - 2 q.x for unit x
            norms = np.einsum("ij,ij->i", queries[start:start + query_batch], queries[start:start + query_batch])
            scores = (norms[:, None] + 1.0 - scores) / 2.0
        valid = rows >= 0
        if active is not None:
            inside = valid & (rows < len(active))
            valid = inside & active[np.where(inside, rows, 0)]
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        rows = np.where(valid, rows, -1)
        scores, rows = sort_topk(scores, rows)
        out_scores[start:start + len(scores)] = scores[:, :width]
        out_rows[start:start + len(rows)] = rows[:, :width]
    return out_scores, out_rows
